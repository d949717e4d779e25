"""test.py: inference on images with a multi-task and a single-head checkpoint trained here.

test.py's flags and main run in this process (amanita.cli.parse_identify_config, amanita.identify);
one test runs the script itself."""
import json
import shutil

import pytest
import torch

from amanita.checkpoint import load_for_eval, update_checkpoint
from amanita.cli import cli_main, parse_identify_config
from amanita.data import create_transforms, read_image
from amanita.identify import identify
from amanita.taxonomy import LEAF, RANKS, Taxonomy
from tests.helpers import LINEAGES, SMALL_MODEL, make_image_dataset, run_in_process, run_script

pytestmark = pytest.mark.slow  # end-to-end: trains in subprocesses

POISONOUS = {name for name, *_, poisonous in LINEAGES.values() if poisonous}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny single-head and multi-task checkpoints (one epoch each) and a few validation images."""
    root = tmp_path_factory.mktemp("infer")
    data = make_image_dataset(root, n_train=36, n_val=12)
    common = ["--train-path", data["train"], "--val-path", data["val"], "--mappings", root / "m.json",
              *SMALL_MODEL, "--batch-size", 12, "--workers", 0, "--auto-augment", "none", "--epochs", 1]
    run_in_process("train_minimal.py", *common, "--save-dir", root / "single", "--accum-steps", 1, "--lr", 0.05)
    run_in_process("train_multitask.py", *common, "--save-dir", root / "multi", "--lr", 1e-3)
    images = sorted((root / "FungiTastic" / "val" / "300p").iterdir())
    return {"root": root, "single": root / "single" / "best_model.pth", "multi": root / "multi" / "best_model.pth",
            "mappings": root / "m.json", "images": images}


def run(capsys, *args):
    """test.py's parsing, main and error handling in this process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(lambda: identify(parse_identify_config("test.py", [str(a) for a in args])))()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def records(out):
    return [json.loads(line) for line in out.splitlines()]


def test_human_output_lists_lineage_topk_and_backoff(trained, capsys):
    images = trained["images"][:2]
    code, out, err = run(capsys, "--checkpoint", trained["multi"], "--top-k", 3, "--workers", 0, *images)
    assert code == 0, err
    _, js, _ = run(capsys, "--checkpoint", trained["multi"], "--top-k", 3, "--workers", 0, "--json", *images)
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 2 and "multi-task model" in err
    for block, rec in zip(blocks, records(js)):
        lines = block.splitlines()
        assert lines[0] == rec["path"]
        for line, step in zip(lines[1:7], rec["lineage"]):
            assert line.split()[0] == step["rank"] and step["name"] in line and f"{step['confidence']:.3f}" in line
        assert "top-3 species:" in block
        for t in rec["topk"]:
            assert t["species"] in block and t["scientificName"] in block


def test_json_lines_topk_sorted_and_consistent_lineage(trained, capsys):
    images = trained["images"]
    code, out, err = run(capsys, "--checkpoint", trained["multi"], "--json", "--decode", "consistent",
                         "--top-k", 4, "--batch-size", 5, "--workers", 0, *images)
    assert code == 0, err
    recs = records(out)
    tax = Taxonomy.load(trained["mappings"])
    assert [r["path"] for r in recs] == [str(p) for p in images]
    for rec in recs:
        probs = [t["probability"] for t in rec["topk"]]
        assert len(probs) == 4 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
        # a real lineage: every rank is the ancestor of the predicted species
        species = rec["lineage"][-1]["name"]
        leaf = next(i for i in range(tax.n_leaves) if tax.lineage(i)["species"] == species)
        assert [s["name"] for s in rec["lineage"]] == [tax.lineage(leaf)[r] for r in RANKS]
        assert [s["rank"] for s in rec["lineage"]] == list(RANKS)
        for t in rec["topk"]:
            assert t["poisonous"] == (t["species"] in POISONOUS)
            assert t["scientificName"] == LINEAGES[t["category_id"]][0]
        assert rec["poisonous_in_topk"] == any(t["poisonous"] for t in rec["topk"])


def test_backoff_is_the_finest_rank_reaching_the_threshold(trained, capsys):
    image = trained["images"][0]
    _, out, _ = run(capsys, "--checkpoint", trained["multi"], "--json", "--workers", 0, image)
    lineage = records(out)[0]["lineage"]
    threshold = sorted(s["confidence"] for s in lineage)[3]
    _, out, _ = run(capsys, "--checkpoint", trained["multi"], "--json", "--workers", 0,
                    "--backoff", threshold, image)
    expected = [s for s in lineage if s["confidence"] >= threshold][-1]
    assert records(out)[0]["backoff"] == expected
    _, out, _ = run(capsys, "--checkpoint", trained["multi"], "--workers", 0, "--backoff", 0, image)
    assert f"confident down to species: {lineage[-1]['name']}" in out
    _, out, _ = run(capsys, "--checkpoint", trained["multi"], "--workers", 0, "--backoff", 1, image)
    assert "not confident at any rank" in out


def normalised_by_hand(data_config, paths) -> torch.Tensor:
    """The eval transform's uint8 images, normalised here (test.py does it on the device)."""
    transform = create_transforms(data_config, train=False)
    mean, std = (torch.tensor(data_config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (torch.stack([transform(read_image(p)) for p in paths]) / 255 - mean) / std


def test_single_head_coarse_ranks_are_summed_species_probabilities(trained, capsys):
    images = trained["images"][:6]
    code, out, err = run(capsys, "--checkpoint", trained["single"], "--json", "--decode", "independent",
                         "--top-k", 6, "--workers", 0, *images)
    assert code == 0, err
    model, tax, data_config, info = load_for_eval(trained["single"])
    assert info["kind"] == "single"
    with torch.no_grad():
        logits = model(normalised_by_hand(data_config, images))[LEAF]  # (6 images, 6 leaves), in leaf order
    leaf_p = logits.softmax(1)
    for rec, p in zip(records(out), leaf_p):
        for step in rec["lineage"]:
            summed = p @ tax.rollup_matrix(step["rank"])  # (n_classes,)
            own = summed[tax.index(step["rank"])[step["name"]]].item()
            assert step["rank_confidence"] == pytest.approx(own, abs=1e-5)
            assert step["rank_confidence"] == pytest.approx(summed.max().item(), abs=1e-5)
            assert step["confidence"] <= own + 1e-6  # the lineage down to here is at most as likely
        by_id = {t["category_id"]: t["probability"] for t in rec["topk"]}
        assert by_id == pytest.approx({c: p[i].item() for i, c in enumerate(tax.category_ids)}, abs=1e-5)
        assert sum(by_id.values()) == pytest.approx(1.0, abs=1e-5)


def test_poisonous_warning_follows_the_taxonomy_flags(trained, capsys, tmp_path):
    image = trained["images"][0]
    code, out, _ = run(capsys, "--checkpoint", trained["multi"], "--top-k", 6, "--workers", 0, image)
    warning = [line for line in out.splitlines() if "⚠ POISONOUS" in line]
    assert code == 0 and len(warning) == 1
    assert "Amanita phalloides" in warning[0] and "Amanita muscaria" in warning[0] and "do not eat" in warning[0]
    # the same tree with every flag cleared (the sha256 ignores flags): no warning at all
    tax = Taxonomy.load(trained["mappings"])
    tax.poisonous = [False] * tax.n_leaves
    tax.save(tmp_path / "harmless.json")
    code, out, _ = run(capsys, "--checkpoint", trained["multi"], "--top-k", 6, "--workers", 0,
                       "--mappings", tmp_path / "harmless.json", image)
    assert code == 0 and "POISONOUS" not in out and "☠" not in out


def test_mappings_of_another_tree_are_refused(trained, capsys, tmp_path):
    tax = Taxonomy.load(trained["mappings"])
    tax.classes["genus"][0] = "Verpa"
    tax.save(tmp_path / "other.json")
    code, out, err = run(capsys, "--checkpoint", trained["multi"], "--mappings", tmp_path / "other.json",
                         trained["images"][0])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "not the taxonomy" in err and len(err.strip().splitlines()) == 1


def test_bad_files_are_reported_and_the_rest_still_predicted(trained, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    good = trained["images"][:3]
    proc = run_script("test.py", "--checkpoint", trained["single"], "--json", "--batch-size", 2,
                      good[0], bad, good[1], tmp_path / "missing.png", good[2], check=False)
    assert proc.returncode == 1
    assert [r["path"] for r in records(proc.stdout)] == [str(p) for p in good]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'missing.png'}: no such file or folder",
                      f"error: {bad}: not an image (unrecognised file format)"]


def test_directories_expand_recursively_by_extension(trained, capsys, tmp_path):
    src = trained["images"]
    (tmp_path / "b" / "deep").mkdir(parents=True)
    expected = [tmp_path / "a.PNG", tmp_path / "b" / "deep" / "c.jpeg", tmp_path / "b" / "z.jpg"]
    for s, d in zip(src, expected):
        shutil.copy(s, d)  # JPEG bytes under any image extension: Pillow reads the content
    (tmp_path / "b" / "readme.txt").write_text("skipped: not an image extension")
    code, out, err = run(capsys, "--checkpoint", trained["multi"], "--json", tmp_path)
    assert code == 0, err
    assert [r["path"] for r in records(out)] == [str(p) for p in expected]


def test_help_lists_every_flag_with_its_default():
    proc = run_script("test.py", "--help")
    for flag in ("--checkpoint", "--mappings", "--top-k", "--decode", "--backoff", "--json", "--batch-size",
                 "--device"):
        assert flag in proc.stdout
    assert "Output parameters" in proc.stdout and "(default: 5)" in proc.stdout and "Examples:" in proc.stdout


def test_lineage_confidences_never_rise_and_follow_stored_temperatures(trained, capsys, tmp_path):
    images = trained["images"][:6]
    args = ["--json", "--workers", 0, "--decode", "independent", *images]
    code, out, err = run(capsys, "--checkpoint", trained["multi"], *args)
    assert code == 0 and "uncalibrated confidences" in err, err
    plain = records(out)
    for rec in plain:
        conf = [s["confidence"] for s in rec["lineage"]]
        assert all(fine <= coarse + 1e-9 for coarse, fine in zip(conf, conf[1:])), conf
    calibrated = tmp_path / "calibrated.pth"
    shutil.copyfile(trained["multi"], calibrated)
    update_checkpoint(calibrated, temperatures={k: 4.0 for k in ("leaf",) + RANKS})  # much flatter
    code, out, err = run(capsys, "--checkpoint", calibrated, *args)
    assert code == 0 and "calibrated confidences" in err
    for hot, cold in zip(plain, records(out)):
        assert cold["topk"][0]["probability"] < hot["topk"][0]["probability"]
        assert [s["name"] for s in cold["lineage"]] == [s["name"] for s in hot["lineage"]]  # argmax unchanged
    code, out, _ = run(capsys, "--checkpoint", calibrated, "--no-temperatures", *args)
    assert records(out) == plain


def test_flip_tta_is_the_mean_logit_of_image_and_mirror(trained, capsys):
    image = trained["images"][0]
    code, out, err = run(capsys, "--checkpoint", trained["single"], "--json", "--workers", 0,
                         "--tta", "flip", "--top-k", 6, image)
    assert code == 0, err
    model, tax, data_config, _ = load_for_eval(trained["single"])
    x = normalised_by_hand(data_config, [image])
    with torch.no_grad():
        logits = (model(x)[LEAF] + model(x.flip(-1))[LEAF]) / 2
    p = logits[0].softmax(0)
    by_id = {t["category_id"]: t["probability"] for t in records(out)[0]["topk"]}
    assert by_id == pytest.approx({c: p[i].item() for i, c in enumerate(tax.category_ids)}, abs=1e-5)


# ---------------------------------------------------------------------- finds and unknown species
def test_observation_pools_a_folder_into_one_find_and_one_image_find_equals_the_image(trained, capsys, tmp_path):
    find = tmp_path / "find"
    find.mkdir()
    for p in trained["images"][:3]:
        shutil.copy(p, find / p.name)
    lone = trained["images"][3]
    code, out, err = run(capsys, "--checkpoint", trained["multi"], "--workers", 0, "--json", "--observation",
                         find, lone)
    assert code == 0, err
    finds = records(out)
    assert [r["n_images"] for r in finds] == [3, 1] and finds[0]["path"] == str(find)
    _, single, _ = run(capsys, "--checkpoint", trained["multi"], "--workers", 0, "--json", lone)
    image = records(single)[0]
    assert all(a["name"] == b["name"] and a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
               for a, b in zip(finds[1]["lineage"], image["lineage"]))  # a one-image find is its image
    # three images: the mean of their leaf probabilities
    _, each, _ = run(capsys, "--checkpoint", trained["multi"], "--workers", 0, "--json", "--top-k", 6, find)
    mean = {}
    for r in records(each):
        for t in r["topk"]:
            mean[t["category_id"]] = mean.get(t["category_id"], 0) + t["probability"] / 3
    best = max(mean, key=mean.get)
    assert finds[0]["topk"][0]["category_id"] == best
    assert finds[0]["topk"][0]["probability"] == pytest.approx(mean[best], abs=1e-4)


def test_unknown_threshold_from_the_flag_and_from_the_checkpoint(trained, capsys, tmp_path):
    image = trained["images"][0]
    code, out, _ = run(capsys, "--checkpoint", trained["multi"], "--workers", 0, "--json", "--backoff", 0,
                       "--unknown-threshold", -1, image)
    r = records(out)[0]
    assert code == 0 and r["unknown_species"] is True
    assert r["answer"] == f"an unknown species of genus {r['lineage'][4]['name']}"  # backoff 0: finest above species
    ckpt = tmp_path / "with_threshold.pth"
    shutil.copy(trained["multi"], ckpt)
    update_checkpoint(ckpt, open_set={"score": "msp", "threshold": 2.0})  # msp never exceeds 1
    _, out, _ = run(capsys, "--checkpoint", ckpt, "--workers", 0, "--json", image)
    r = records(out)[0]
    assert r["unknown_species"] is False and 0 <= r["unknown_score"] <= 1 and "answer" not in r
    _, out, _ = run(capsys, "--checkpoint", trained["multi"], "--workers", 0, "--json", image)
    assert "unknown_species" not in records(out)[0]  # no threshold anywhere: no verdict


def test_validate_test_py_and_the_submission_give_one_table(tmp_path, capsys, monkeypatch):
    """One pipeline (amanita.inference.predict): validate.py's predictions.csv and
    observation_predictions.csv, test.py's records on the same photos and finds, and the submission's
    answers are the same predictions."""
    import numpy as np
    import pandas as pd

    from amanita.predictions import read_predictions
    from amanita.taxonomy import build_taxonomy
    from tests.helpers import TRAIN_IDS, rows, tiny_checkpoint
    from tests.test_report import run_validate
    monkeypatch.setattr("amanita.evaluate.make_figures", lambda *a, **k: ([], []))
    data = make_image_dataset(tmp_path, n_train=6, n_val=8)
    folder = tmp_path / "FungiTastic" / "val" / "300p"
    obs = [1, 1, 2, 3, 3, 3, 4, 5]
    val = pd.read_csv(data["val"]).assign(observationID=obs)
    val.to_csv(data["val"], index=False)
    tax = build_taxonomy([rows(TRAIN_IDS)])
    tiny_checkpoint(tmp_path / "m.pth", tax)
    common = ["--checkpoint", tmp_path / "m.pth", "--decode", "independent", "--workers", 0]
    code, _, err = run_validate(*common, "--val-path", data["val"], "--output-dir", tmp_path / "v")
    assert code == 0, err
    images = read_predictions(tmp_path / "v" / "predictions.csv", tax)
    finds = read_predictions(tmp_path / "v" / "observation_predictions.csv", tax)
    assert images["filename"].tolist() == val["filename"].tolist() and finds["observationID"].tolist() == [1, 2, 3, 4, 5]

    def same(record, row):
        for step in record["lineage"]:
            rank = step["rank"]
            assert step["name"] == tax.classes[rank][row[f"{rank}_pred"]]
            assert step["confidence"] == pytest.approx(row[f"{rank}_lconf"], rel=1e-5, abs=1e-6)
            assert step["rank_confidence"] == pytest.approx(row[f"{rank}_conf"], rel=1e-5, abs=1e-6)
        assert record["unknown_score"] == pytest.approx(row["unknown_msp"], rel=1e-5, abs=1e-6)

    code, out, err = run(capsys, *common, "--json", *[folder / f for f in val["filename"]])
    assert code == 0, err
    for record, (_, row) in zip(records(out), images.iterrows(), strict=True):
        same(record, row)
    for o, name in zip(obs, val["filename"]):
        (tmp_path / "finds" / str(o)).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name, tmp_path / "finds" / str(o) / name)
    code, out, err = run(capsys, *common, "--json", "--observation", *[tmp_path / "finds" / str(o) for o in dict.fromkeys(obs)])
    assert code == 0, err
    for record, (_, row) in zip(records(out), finds.iterrows(), strict=True):
        same(record, row)
        assert record["n_images"] == obs.count(row["observationID"])
    val.drop(columns=["category_id"]).to_csv(tmp_path / "test.csv", index=False)
    code, _, err = run(capsys, *common, "--submission", tmp_path / "sub.csv", "--test-path", tmp_path / "test.csv",
                       "--image-root", folder)
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert sub["class_id"].tolist() == np.asarray(tax.category_ids)[finds["leaf_pred"]].tolist()
