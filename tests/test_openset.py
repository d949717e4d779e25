"""Open set: scores, detection numbers against worked examples and scikit-learn, unknown rows in taxonomy/data."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from amanita.io import UserError
from amanita.openset import (detection_metrics, fungiclef_scores, is_unknown, named_at_rank, open_set_metrics,
                             readout_conditions, unknown_rule, unknown_scores)
from amanita.taxonomy import RANKS, build_taxonomy, encode_labels
from tests.helpers import TRAIN_IDS, rows

KNOWN, UNKNOWN = [0.1, 0.2, 0.3, 0.4], [0.35, 0.5]


def test_scores_worked_example():
    logits = torch.tensor([[0.0, math.log(0.5), math.log(0.5)]])  # probabilities .5 .25 .25
    s = unknown_scores(torch.log_softmax(logits, 1), -torch.logsumexp(logits, 1))
    assert s["unknown_msp"].item() == pytest.approx(0.5)
    assert s["unknown_entropy"].item() == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))
    assert s["unknown_energy"].item() == pytest.approx(-math.log(2.0))


@pytest.mark.parametrize("target, threshold, tnr", [(0.95, 0.4, 0.5), (0.75, 0.3, 1.0), (0.5, 0.2, 1.0)])
def test_detection_worked_example(target, threshold, tnr):
    scores = np.array(KNOWN + UNKNOWN)
    unknown = np.array([False] * 4 + [True] * 2)
    d = detection_metrics(scores, unknown, target)
    # AUROC by hand: of the 8 (known, unknown) pairs, 7 have the known image scored lower
    assert d["auroc"] == pytest.approx(7 / 8)
    assert d["threshold"] == pytest.approx(threshold) and d["tnr_at_tpr"] == pytest.approx(tnr)
    assert d["tpr"] >= target and (d["n_known"], d["n_unknown"]) == (4, 2)
    # the threshold's own TNR agrees with scikit-learn's curve
    assert (scores[unknown] > d["threshold"]).mean() == pytest.approx(d["tnr_at_tpr"])


def test_detection_matches_scikit_learn_on_random_scores():
    rng = np.random.default_rng(0)
    unknown = rng.random(500) < 0.3
    scores = np.round(rng.normal(unknown * 1.0, 1.0), 1)  # rounded: many ties
    d = detection_metrics(scores, unknown)
    assert d["auroc"] == pytest.approx(roc_auc_score(unknown, scores))  # either orientation, same area
    fpr, tpr, thr = roc_curve(~unknown, -scores)
    i = np.argmax(tpr >= 0.95)
    assert d["tnr_at_tpr"] == pytest.approx(1 - fpr[i])
    assert d["threshold"] == pytest.approx(-thr[i])
    assert (scores[unknown] > d["threshold"]).mean() == pytest.approx(d["tnr_at_tpr"])


def test_only_unknowns_gives_no_auroc_and_no_threshold():
    d = detection_metrics(np.array(UNKNOWN), np.array([True, True]))
    assert d["auroc"] is None and d["tnr_at_tpr"] is None and d["threshold"] is None and d["n_unknown"] == 2


def _preds(genus_true, genus_pred, unknown, leaf_true, leaf_pred, msp):
    n = len(genus_true)
    df = pd.DataFrame({f"{r}_true": 0 for r in RANKS} | {f"{r}_pred": 0 for r in RANKS}, index=range(n))
    df["genus_true"], df["genus_pred"] = genus_true, genus_pred
    df["leaf_true"], df["leaf_pred"], df["unknown_msp"] = leaf_true, leaf_pred, msp
    df["unknown_species"] = unknown
    return df


def test_named_at_rank_counts_only_names_seen():
    df = _preds([2, 2, -1, 3], [2, 1, 0, 3], [True, True, True, False], [-1, -1, -1, 4], [1, 2, 0, 4],
                [.9, .8, .7, .1])
    g = named_at_rank(df, df["unknown_species"].to_numpy())["genus"]
    assert g == {"n_seen": 2, "n_unseen": 1, "top1": 0.5}


def test_fungiclef_convention_worked_example():
    # truths: unknown, unknown, leaf 4, leaf 5; answers: rejected (-1), leaf 1, leaf 4, rejected (-1)
    df = _preds([0] * 4, [0] * 4, [True, True, False, False], [-1, -1, 4, 5], [1, 1, 4, 5], [.9, .2, .1, .8])
    f = fungiclef_scores(df, np.array([True, False, False, True]))
    assert f["classification_error"] == pytest.approx(2 / 4)
    # classes -1, 1, 4, 5: -1 has TP 1, FP 1 (leaf 5 rejected), FN 1 -> F1 .5; 1: 0; 4: 1; 5: 0
    assert f["macro_f1"] == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert f["unknown_recall"] == 0.5 and f["known_rejected"] == 0.5


def test_open_set_metrics_on_a_csv_of_only_unknowns():
    df = _preds([2, 3], [2, 1], [True, True], [-1, -1], [0, 1], [.9, .5])
    m = open_set_metrics(df)
    assert m["available"] and m["n_unknown"] == 2
    assert m["detection"]["msp"]["auroc"] is None and "fungiclef" not in m
    assert m["named_at_rank"]["genus"]["top1"] == 0.5


def test_taxonomy_skips_unknown_species_and_labels_keep_their_seen_ranks():
    train = rows(TRAIN_IDS)
    openset = rows([0, 2]).assign(category_id=-1)
    openset.loc[0, ["scientificName", "species"]] = "Amanita porphyria"  # a new species of a known genus
    openset.loc[1, ["scientificName", "species", "genus"]] = ["Leucoagaricus leucothites"] * 2 + ["Leucoagaricus"]
    tax = build_taxonomy([train, openset])
    assert tax.summary() == build_taxonomy([train]).summary() and -1 not in tax.category_ids
    labels = encode_labels(tax, openset)
    g, f, s = (1 + RANKS.index(r) for r in ("genus", "family", "species"))
    assert labels[:, 0].tolist() == [-1, -1]  # leaf unknown
    assert labels[0, g] == tax.index("genus")["Amanita"] and labels[0, s] == -1
    assert labels[1, g] == -1 and labels[1, f] == tax.index("family")["Agaricaceae"]


# ---------------------------------------------------------------------- the one unknown-species rule
UNCALIBRATED = readout_conditions(None, "none")
CALIBRATED = readout_conditions({"leaf": 2.0, "genus": 1.5}, "none")


def test_stored_threshold_applies_only_under_the_temperatures_and_tta_it_was_fitted_under():
    stored = {"score": "msp", "threshold": 0.4} | UNCALIBRATED
    assert unknown_rule(stored, None, None, UNCALIBRATED) == ("msp", 0.4)
    with pytest.raises(UserError, match="fitted under no temperatures, tta none, this run applies leaf temperature 2"):
        unknown_rule(stored, None, None, CALIBRATED)
    with pytest.raises(UserError, match="applies no temperatures, tta flip"):
        unknown_rule(stored, None, None, readout_conditions(None, "flip"))
    calibrated = {"score": "entropy", "threshold": 1.1} | CALIBRATED
    assert unknown_rule(calibrated, None, None, readout_conditions({"leaf": 2.0}, "none")) == ("entropy", 1.1)
    # energy is taken before any temperature: calibrating leaves its threshold valid
    assert unknown_rule({"score": "energy", "threshold": -3.0} | UNCALIBRATED, None, None, CALIBRATED) == ("energy", -3.0)
    # an older file (conditions not recorded) counts as fitted uncalibrated, without TTA
    assert unknown_rule({"score": "msp", "threshold": 0.4}, None, None, UNCALIBRATED) == ("msp", 0.4)
    with pytest.raises(UserError, match="not recorded: an older file"):
        unknown_rule({"score": "msp", "threshold": 0.4}, None, None, CALIBRATED)


def test_a_score_flag_other_than_the_stored_score_is_refused_and_a_threshold_flag_wins():
    stored = {"score": "msp", "threshold": 0.4} | UNCALIBRATED
    with pytest.raises(UserError, match="for the msp score, not entropy"):
        unknown_rule(stored, "entropy", None, UNCALIBRATED)
    assert unknown_rule(stored, "entropy", 1.5, CALIBRATED) == ("entropy", 1.5)
    assert unknown_rule(stored, None, 0.7, CALIBRATED) == ("msp", 0.7)
    assert unknown_rule(None, None, None, CALIBRATED) == ("msp", None)
    assert is_unknown([0.2, 0.4, 0.5], 0.4).tolist() == [False, False, True]  # above, not at, the threshold


def _finds(tmp_path):
    """A tiny checkpoint, eight images in five finds (one folder each) and the test CSV of the same finds."""
    from tests.helpers import make_image_dataset, tiny_checkpoint
    data = make_image_dataset(tmp_path, n_train=6, n_val=8)
    val = pd.read_csv(data["val"])
    obs = [1, 1, 2, 3, 3, 3, 4, 5]
    src = tmp_path / "FungiTastic" / "val" / "300p"
    for o, name in zip(obs, val["filename"]):
        (tmp_path / "finds" / f"o{o}").mkdir(parents=True, exist_ok=True)
        (src / name).rename(tmp_path / "finds" / f"o{o}" / name)
    val.assign(observationID=obs, filename=[f"o{o}/{f}" for o, f in zip(obs, val["filename"])]).drop(
        columns="category_id").to_csv(tmp_path / "test.csv", index=False)
    tiny_checkpoint(tmp_path / "m.pth", build_taxonomy([rows(TRAIN_IDS)]))
    folders = [tmp_path / "finds" / f"o{o}" for o in dict.fromkeys(obs)]
    return tmp_path / "m.pth", folders, ["--test-path", tmp_path / "test.csv", "--image-root", tmp_path / "finds"]


def _test_py(capsys, *args):
    import json

    from amanita.cli import cli_main, parse_identify_config
    from amanita.identify import identify
    with pytest.raises(SystemExit) as exit_info:
        cli_main(lambda: identify(parse_identify_config("test.py", [str(a) for a in [*args, "--workers", 0]])))()
    out, err = capsys.readouterr()
    return exit_info.value.code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


@pytest.mark.slow
def test_identify_and_the_submission_apply_one_rule_for_every_score(tmp_path, capsys):
    from amanita.checkpoint import update_checkpoint
    from amanita.openset import SCORES
    ckpt, folders, test_csv = _finds(tmp_path)
    for score in SCORES:
        code, finds, err = _test_py(capsys, "--checkpoint", ckpt, "--json", "--observation", "--unknown-score", score,
                                    "--unknown-threshold", 1e300, *folders)  # the scores, whatever is stored
        assert code == 0, err
        values = [r["unknown_score"] for r in finds]
        threshold = float(np.median(values))
        update_checkpoint(ckpt, open_set={"score": score, "threshold": threshold} | UNCALIBRATED)
        _, finds, _ = _test_py(capsys, "--checkpoint", ckpt, "--json", "--observation", *folders)
        verdicts = [r["unknown_species"] for r in finds]
        assert verdicts == [v > threshold for v in values] and 0 < sum(verdicts) < len(verdicts)
        sub = tmp_path / f"sub_{score}.csv"
        code, _, err = _test_py(capsys, "--checkpoint", ckpt, "--submission", sub, *test_csv)
        assert code == 0, err
        assert (pd.read_csv(sub)["class_id"] == -1).tolist() == verdicts, score
    # a score other than the stored one: both refuse, before any image (no verdict of another scale)
    update_checkpoint(ckpt, open_set={"score": "msp", "threshold": 0.5} | UNCALIBRATED)
    for extra in ([*folders], ["--submission", tmp_path / "sub_x.csv", *test_csv]):
        code, out, err = _test_py(capsys, "--checkpoint", ckpt, "--unknown-score", "entropy", *extra)
        assert code == 2 and out == [] and "for the msp score, not entropy" in err
    assert not (tmp_path / "sub_x.csv").exists()


@pytest.mark.slow
def test_identify_on_images_and_the_submission_give_one_verdict_per_image_for_every_score(tmp_path, capsys):
    """test.py on photos and test.py --submission on the same photos (one observation each) call every
    image unknown or known alike, for each score, with a stored threshold and with a given one."""
    from amanita.checkpoint import update_checkpoint
    from amanita.openset import SCORES
    from tests.helpers import make_image_dataset, tiny_checkpoint
    data = make_image_dataset(tmp_path, n_train=6, n_val=9)
    val = pd.read_csv(data["val"])
    folder = tmp_path / "FungiTastic" / "val" / "300p"
    images = [folder / f for f in val["filename"]]
    val.assign(observationID=range(len(val))).drop(columns="category_id").to_csv(tmp_path / "test.csv", index=False)
    ckpt = tmp_path / "m.pth"
    tiny_checkpoint(ckpt, build_taxonomy([rows(TRAIN_IDS)]))
    test_csv = ["--test-path", tmp_path / "test.csv", "--image-root", folder]
    for score in SCORES:
        code, records, err = _test_py(capsys, "--checkpoint", ckpt, "--json", "--unknown-score", score,
                                      "--unknown-threshold", 1e300, *images)
        assert code == 0, err
        values = np.array([r["unknown_score"] for r in records])
        assert [r["path"] for r in records] == [str(p) for p in images] and np.isfinite(values).all()
        threshold = float(np.median(values))
        update_checkpoint(ckpt, open_set={"score": score, "threshold": threshold} | UNCALIBRATED)
        given = ["--unknown-score", score, "--unknown-threshold", float(np.quantile(values, 0.25))]
        for flags, cut in (([], threshold), (given, given[-1])):
            _, records, _ = _test_py(capsys, "--checkpoint", ckpt, "--json", *flags, *images)
            verdicts = [r["unknown_species"] for r in records]
            assert verdicts == (values > cut).tolist() and 0 < sum(verdicts) < len(verdicts), (score, flags)
            sub = tmp_path / f"sub_{score}_{len(flags)}.csv"
            code, _, err = _test_py(capsys, "--checkpoint", ckpt, "--submission", sub, *flags, *test_csv)
            assert code == 0, err
            answers = pd.read_csv(sub)
            assert answers["observationID"].tolist() == list(range(len(val)))
            assert (answers["class_id"] == -1).tolist() == verdicts, (score, flags)


@pytest.mark.slow
def test_calibrating_refits_the_stored_threshold_and_other_temperatures_are_refused(tmp_path, capsys, monkeypatch):
    """The issue's case: a threshold stored on uncalibrated scores, then validate.py --calibrate."""
    from amanita.checkpoint import load_checkpoint
    from amanita.data import read_split
    from tests.helpers import make_image_dataset
    from tests.test_calibration import write_checkpoint
    from tests.test_report import run_validate
    monkeypatch.setattr("amanita.evaluate.make_figures", lambda *a, **k: ([], []))
    data = make_image_dataset(tmp_path, n_train=6, n_val=30)
    ckpt = tmp_path / "best_model.pth"
    write_checkpoint(ckpt, build_taxonomy([read_split(data["train"])]))  # overconfident: calibration flattens it
    openset = tmp_path / "openset.csv"
    val = pd.read_csv(data["val"])
    val.assign(category_id=np.where(val["category_id"] == 5, -1, val["category_id"])).to_csv(openset, index=False)
    common = ["--checkpoint", ckpt, "--workers", 0, "--decode", "independent"]
    code, _, err = run_validate(*common, "--val-path", openset, "--open-set", "--store-threshold",
                                "--image-root", tmp_path / "FungiTastic" / "val" / "300p", "--output-dir", tmp_path / "o1")
    assert code == 0, err
    first = load_checkpoint(ckpt)["open_set"]
    assert first["temperatures"] is None and first["tta"] == "none"
    code, out, err = run_validate(*common, "--val-path", data["val"], "--calibrate", "--output-dir", tmp_path / "o2")
    assert code == 0, err
    ckpt_after = load_checkpoint(ckpt)
    second = ckpt_after["open_set"]
    assert "refitting the stored threshold" in out and second["temperatures"] == ckpt_after["temperatures"]
    assert second["threshold"] != first["threshold"] and second["target_tpr"] == first["target_tpr"]
    images = sorted((tmp_path / "FungiTastic" / "val" / "300p").iterdir())
    code, records, err = _test_py(capsys, "--checkpoint", ckpt, "--json", "--decode", "independent", *images)
    assert code == 0, err
    assert sum(r["unknown_species"] for r in records) <= 2  # 95% of these known images accepted, as fitted
    code, records, err = _test_py(capsys, "--checkpoint", ckpt, "--no-temperatures", *images)
    assert code == 2 and records == [] and "no temperatures, tta none" in err


@pytest.mark.parametrize("value", ["nan", "inf", "1e999"])
def test_a_threshold_that_is_not_a_finite_number_is_refused_at_parse_time(value, capsys):
    from amanita.cli import parse_identify_config
    with pytest.raises(SystemExit) as e:  # NaN compares False with every score: detection silently off
        parse_identify_config("test.py", ["x.jpg", "--checkpoint", "c.pth", "--unknown-threshold", value])
    assert e.value.code == 2 and f"--unknown-threshold: expected a finite number, got '{value}'" in capsys.readouterr().err
