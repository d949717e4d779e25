"""Metadata priors (amanita.priors) against a hand-worked 3-leaf example: tables, application, leak, digest."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from amanita.io import UserError
from amanita.priors import Priors, build_priors, circular_spread, field_values, fit_prior_weight, load_priors, parse_metadata
from amanita.taxonomy import LEAF, build_taxonomy
from tests.helpers import TRAIN_IDS, rows

# Leaves 0 Amanita phalloides, 1 Amanita muscaria (genus Amanita), 2 Agaricus campestris.
# Habitat per training image: leaf 0: A A B; leaf 1: A and one missing; leaf 2: B B B B.
# N = 9, P(leaf) = (3, 2, 4) / 9; smoothing alpha = 2:
#   P(leaf | A) = ((2, 1, 0) + 2 (3, 2, 4) / 9) / (3 + 2) = (8/15, 13/45, 8/45)
#   P(leaf | B) = ((1, 0, 4) + 2 (3, 2, 4) / 9) / (5 + 2) = (5/21, 4/63, 44/63)
TABLE_A = [8 / 15, 13 / 45, 8 / 45]
TABLE_B = [5 / 21, 4 / 63, 44 / 63]


def three_leaves():
    train = rows([0, 0, 0, 1, 1, 2, 2, 2, 2])
    train["habitat"] = ["A", "A", "B", "A", None, "B", "B", "B", "B"]
    train["month"] = [10, 10, 11, 9, 9, 12, 12, 12, 1]
    return build_taxonomy([train]), train


def test_smoothed_tables_match_the_hand_worked_example():
    tax, train = three_leaves()
    doc = build_priors(train, tax, ["habitat"], smoothing=2.0)
    assert doc["leaf_prior"].tolist() == pytest.approx([3 / 9, 2 / 9, 4 / 9])
    t = doc["fields"]["habitat"]
    assert t["values"] == ["A", "B"]
    assert t["counts"].tolist() == [[2, 1, 0], [1, 0, 4]]
    assert t["table"][0].tolist() == pytest.approx(TABLE_A)
    assert t["table"][1].tolist() == pytest.approx(TABLE_B)


def test_month_is_circular_december_next_to_january():
    counts = np.zeros((12, 2))
    counts[11, 0] = 4  # four December finds of leaf 0
    spread = circular_spread(counts, 0.25)
    assert spread[:, 0].tolist() == pytest.approx([1] + [0] * 9 + [1, 2])  # November, December, January
    tax, train = three_leaves()
    doc = build_priors(train, tax, ["month"], smoothing=0.0, month_neighbour=0.0)
    assert doc["fields"]["month"]["values"] == [str(m) for m in range(1, 13)]
    assert doc["fields"]["month"]["counts"][0].tolist() == [0, 0, 1]  # January: the one Agaricus find


def test_values_as_keys():
    assert list(field_values([10.0, "3", 13, None, float("nan")], "month")) == ["10", "3", None, None, None]
    assert list(field_values([" soil ", 13.0, "", None], "substrate")) == ["soil", "13", None, None]


def test_application_renormalises_with_the_weight():
    tax, train = three_leaves()
    priors = Priors.from_doc(build_priors(train, tax, ["habitat"], smoothing=2.0), tax)
    p = torch.tensor([[0.2, 0.3, 0.5]])
    logp = {LEAF: p.log()}
    codes = priors.codes(pd.DataFrame({"habitat": ["A"]}))
    ratio = torch.tensor(TABLE_A) / torch.tensor([3 / 9, 2 / 9, 4 / 9])  # (1.6, 1.3, 0.4)
    assert ratio.tolist() == pytest.approx([1.6, 1.3, 0.4])
    out = priors.apply(logp, codes)[LEAF].exp()
    assert out[0].tolist() == pytest.approx([0.32 / 0.91, 0.39 / 0.91, 0.20 / 0.91], abs=1e-6)
    half = priors.apply(logp, codes, weight=0.5)[LEAF].exp()[0]
    expected = p[0] * ratio.sqrt()
    assert half.tolist() == pytest.approx((expected / expected.sum()).tolist(), abs=1e-6)


def test_a_rank_gets_the_table_summed_up_the_tree():
    tax, train = three_leaves()
    priors = Priors.from_doc(build_priors(train, tax, ["habitat"], smoothing=2.0), tax)
    amanita = tax.classes["genus"].index("Amanita")
    # P(Amanita | A) / P(Amanita) = (8/15 + 13/45) / (5/9) = 37/25
    assert priors.log_ratio["habitat"]["genus"][0, amanita].item() == pytest.approx(math.log(37 / 25), rel=1e-5)


def test_missing_never_seen_and_validation_only_values_change_nothing():
    tax, train = three_leaves()
    priors = Priors.from_doc(build_priors(train, tax, ["habitat", "month"], smoothing=2.0), tax)
    logp = {LEAF: torch.tensor([[0.2, 0.3, 0.5]] * 3).log(), "genus": torch.tensor([[0.5, 0.5]] * 3).log()}
    # the leak test: "C" appears only in the validation CSV, so it has no row in the tables
    val = pd.DataFrame({"habitat": [None, "C", float("nan")], "month": [None, 13, "x"]})
    codes = priors.codes(val)
    assert (codes == -1).all()
    out = priors.apply(logp, codes)
    for k in logp:
        assert torch.allclose(out[k], logp[k])
    assert torch.equal(priors.codes(pd.DataFrame({"other": [1]})), torch.tensor([[-1, -1]]))  # no such column


def test_leak_test_through_the_tables():
    """A value only in the validation CSV: the tables built from train are the same with or without it."""
    tax, train = three_leaves()
    doc = build_priors(train, tax, ["habitat"], smoothing=2.0)
    assert "C" not in doc["fields"]["habitat"]["values"]


def test_another_taxonomy_is_refused(tmp_path):
    tax, train = three_leaves()
    path = tmp_path / "priors.pt"
    torch.save(build_priors(train, tax, ["habitat"]), path)
    assert load_priors(path, tax)["taxonomy_sha256"] == tax.sha256()
    other = build_taxonomy([rows(TRAIN_IDS)])
    with pytest.raises(UserError, match="another taxonomy"):
        load_priors(path, other)
    torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="not a metadata priors file"):
        load_priors(tmp_path / "x.pt", tax)


def test_a_missing_column_or_label_is_one_clear_error():
    tax, train = three_leaves()
    with pytest.raises(UserError, match="no column.*substrate"):
        build_priors(train, tax, ["habitat", "substrate"])
    with pytest.raises(UserError, match="no row whose category_id is a leaf"):
        build_priors(train.assign(category_id=99), tax, ["habitat"])


def test_weight_fit_finds_the_generating_weight():
    torch.manual_seed(0)
    n, c = 4000, 5
    logits = torch.randn(n, c)
    bonus = torch.randn(n, c)
    y = torch.distributions.Categorical(logits=logits + 0.7 * bonus).sample()
    fit = fit_prior_weight(torch.log_softmax(logits, 1), bonus, y)
    assert fit["weight"] == pytest.approx(0.7, abs=0.1)
    assert fit["nll_with"] < fit["nll_without"]
    # useless priors (pure noise) get a weight near 0
    noise = fit_prior_weight(torch.log_softmax(logits, 1), torch.randn(n, c), y)
    assert noise["weight"] < 0.15


def test_the_weight_stored_in_a_checkpoint_is_used_for_the_same_file_and_fields(tmp_path):
    from amanita.checkpoint import load_for_eval, update_checkpoint
    from amanita.io import file_sha256
    from amanita.config import PriorsConfig
    from amanita.priors import resolve_priors
    from tests.helpers import tiny_checkpoint
    tax, train = three_leaves()
    path = tmp_path / "priors.pt"
    torch.save(build_priors(train, tax, ["habitat", "month"]), path)
    ckpt = tmp_path / "m.pth"
    tiny_checkpoint(ckpt, tax)
    update_checkpoint(ckpt, metadata_priors={"weight": 0.4, "fields": ["habitat", "month"],
                                             "priors_sha256": file_sha256(path)})
    info = load_for_eval(ckpt)[3]

    def weight(fields, flag=None):
        cfg = PriorsConfig(priors=str(path), prior_fields=fields, prior_weight=flag)
        return resolve_priors(cfg, tax, info).weight

    assert weight(None) == 0.4 and weight(["habitat", "month"]) == 0.4
    assert weight(["habitat"]) == 1.0  # fitted for other fields: not used
    assert weight(None, flag=0.7) == 0.7  # the flag wins


def test_metadata_flag_items():
    assert parse_metadata(["habitat=Deciduous woodland", "month=10"]) == {"habitat": "Deciduous woodland", "month": "10"}
    with pytest.raises(UserError, match="expected FIELD=VALUE"):
        parse_metadata(["habitat"])
    with pytest.raises(UserError, match="unknown field 'colour'"):
        parse_metadata(["colour=red"])


def test_validate_refuses_priors_and_decisions_without_a_model():
    from amanita.cli import parse_validate_config
    for extra in (["--priors", "p.pt"], ["--decision", "min-cost"]):
        with pytest.raises(UserError, match="need --checkpoint"):
            parse_validate_config("validate.py", ["--from-predictions", "p.csv", "--mappings", "m.json", *extra])
    with pytest.raises(UserError, match="--fit-prior-weight needs --priors"):
        parse_validate_config("validate.py", ["--checkpoint", "c.pth", "--val-path", "v.csv", "--fit-prior-weight"])


# ---------------------------------------------------------------------- the scripts, end to end
@pytest.mark.slow
def test_priors_and_decisions_through_the_scripts(tmp_path):
    """compute_metadata_priors.py → validate.py (weight fitted and stored, variants, sweep) → test.py
    (--metadata, poison probability) → a submission with priors; another taxonomy is refused."""
    import json

    from amanita.checkpoint import load_checkpoint
    from tests.helpers import make_image_dataset, run_in_process, tiny_checkpoint
    paths = make_image_dataset(tmp_path, n_train=24, n_val=12)
    for split, path in paths.items():
        df = pd.read_csv(path)
        df["habitat"] = np.where(df["category_id"] < 3, "forest", "grass")
        df["month"] = 2 * df["category_id"] + 1
        df["substrate"] = "soil"
        if split == "val":
            df.loc[:2, "habitat"] = "only in validation"
        df.to_csv(path, index=False)
    tax = build_taxonomy([pd.read_csv(p) for p in paths.values()])
    tax.save(tmp_path / "mappings.json")
    ckpt = tmp_path / "model.pth"
    tiny_checkpoint(ckpt, tax)
    priors = tmp_path / "priors.pt"
    run_in_process("compute_metadata_priors.py", "--train-path", paths["train"], "--mappings", tmp_path / "mappings.json",
                   "--output", priors)
    out = tmp_path / "report"
    run_in_process("validate.py", "--checkpoint", ckpt, "--val-path", paths["val"], "--priors", priors,
                   "--fit-prior-weight", "--decision", "min-cost", "--workers", "0", "--output-dir", out)
    doc = json.loads((out / "metrics.json").read_text())["metadata_priors"]
    assert [r["variant"] for r in doc["rows"]] == ["without priors", "habitat", "substrate", "month", "all fields"]
    stored = load_checkpoint(ckpt)["metadata_priors"]
    assert stored["weight"] == pytest.approx(doc["weight"]) and stored["nll_with"] <= stored["nll_without"]
    assert (out / "poison_cost_sweep.png").stat().st_size > 0
    assert "Metadata priors and poison-weighted decisions" in (out / "validation_report.html").read_text()
    image = paths["val"].parents[2] / "FungiTastic" / "val" / "300p" / pd.read_csv(paths["val"])["filename"][0]
    rec = json.loads(run_in_process("test.py", "--checkpoint", ckpt, "--priors", priors, "--metadata", "habitat=forest",
                                    "month=1", image, "--json", "--workers", "0").stdout)
    assert 0 <= rec["poisonous_probability"] <= 1 and isinstance(rec["poison_warning"], bool)
    sub = tmp_path / "sub.csv"
    run_in_process("test.py", "--checkpoint", ckpt, "--priors", priors, "--decision", "min-severity", "--submission", sub,
                   "--test-path", paths["val"], "--workers", "0")
    assert len(pd.read_csv(sub)) == 12
    other = build_taxonomy([rows([0, 1, 2])])  # three of the model's six leaves: another digest
    torch.save(build_priors(pd.read_csv(paths["train"]).assign(category_id=0), other, ["habitat"]), tmp_path / "o.pt")
    bad = run_in_process("validate.py", "--checkpoint", ckpt, "--val-path", paths["val"], "--priors", tmp_path / "o.pt",
                         "--workers", "0", "--output-dir", tmp_path / "bad", check=False)
    assert bad.returncode == 2 and "another taxonomy" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
