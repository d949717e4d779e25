"""Metrics against hand-worked examples and scikit-learn; the predictions file round trip."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

from amanita.demo.synthetic_predictions import synthetic_predictions, synthetic_taxonomy
from amanita.io import UserError
from amanita.metrics import (compute_metrics, confused_pairs, expected_calibration_error, focus_species,
                             hierarchy_metrics, jsonable, key_metrics, per_class_table, poison_metrics,
                             reliability_bins, resolve_species, safety_table)
from amanita.predictions import read_predictions, topk_columns, write_predictions
from amanita.taxonomy import KEYS, LEAF, RANKS, Taxonomy

# ---------------------------------------------------------------------- the worked example
# One phylum, class and order; two families; two genera; four species (one leaf each):
#   0 Agaricus campestris (edible)   Agaricaceae / Agaricus
#   1 Amanita phalloides (poisonous) Amanitaceae / Amanita
#   2 Amanita rubescens (edible)     Amanitaceae / Amanita
#   3 Amanita virosa (poisonous)     Amanitaceae / Amanita   -- absent from the validation set
TOY_ANCESTORS = np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 2], [0, 0, 0, 1, 1, 3]])
LEAF_TRUE = [0, 0, 1, 1, 2, 2]
LEAF_PRED = [0, 2, 1, 2, 1, 2]
CONF = [0.90, 0.55, 0.85, 0.75, 0.35, 0.95]  # each in its own 1/15 bin


def toy_taxonomy() -> Taxonomy:
    classes = {"phylum": ["Basidiomycota"], "class": ["Agaricomycetes"], "order": ["Agaricales"],
               "family": ["Agaricaceae", "Amanitaceae"], "genus": ["Agaricus", "Amanita"],
               "species": ["Agaricus campestris", "Amanita phalloides", "Amanita rubescens", "Amanita virosa"]}
    tax = Taxonomy(classes, [0, 1, 2, 3], list(classes["species"]), TOY_ANCESTORS.copy(),
                   [False, True, False, True])
    tax.counts = {LEAF: [10, 5, 1, 0], "species": [10, 5, 1, 0]}
    return tax


def toy_predictions() -> pd.DataFrame:
    """Six predictions; rank predictions are the predicted leaf's ancestors except where noted."""
    tax = toy_taxonomy()
    true, pred = np.array(LEAF_TRUE), np.array(LEAF_PRED)
    cols = {"index": np.arange(6), "filename": [f"{i}.JPG" for i in range(6)], "observationID": np.arange(6)}
    for key, j in [(LEAF, None)] + [(r, i) for i, r in enumerate(RANKS)]:
        t = true if j is None else tax.ancestors[true, j]
        p = pred if j is None else tax.ancestors[pred, j]
        cols[f"{key}_true"], cols[f"{key}_pred"], cols[f"{key}_conf"] = t.copy(), p.copy(), np.array(CONF)
        n = tax.num_classes(key)
        # top-k: the prediction, then the other classes in index order, padded with -1
        top = [[c] + [k for k in range(n) if k != c] + [-1] * (5 - n) for c in p]
        for k, name in enumerate(topk_columns(key)):
            cols[name] = np.array([row[k] for row in top])
        cols[f"{key}_ptrue"] = np.where(t == p, CONF, 0.1)
    cols["family_pred"][0] = 1  # sample 0: leaf right, family wrong (inconsistent)
    cols["family_pred"][1] = 0  # sample 1: family right although leaf wrong (inconsistent)
    cols["genus_true"][5] = -1  # sample 5: genus unknown
    return pd.DataFrame(cols)


@pytest.fixture
def toy():
    return toy_predictions(), toy_taxonomy()


def test_toy_leaf_metrics_by_hand(toy):
    preds, tax = toy
    m = key_metrics(preds, LEAF, tax.num_classes(LEAF))
    assert m["top1"] == pytest.approx(3 / 6)
    assert m["top5"] == 1.0  # four classes, all in the padded top-5
    # per class F1: campestris 2/3, phalloides 1/2, rubescens 2/5, virosa (absent) 0
    assert m["macro_f1_present"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 5) / 3)  # 47/90
    assert m["macro_f1_all"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 5) / 4)  # 47/120
    assert (m["n_classes_present"], m["n_classes_head"]) == (3, 4)
    assert m["avg_confidence"] == pytest.approx(4.35 / 6)
    # one sample per bin: ECE = mean |correct - conf| = (.10 + .55 + .15 + .75 + .35 + .05) / 6
    assert m["ece"] == pytest.approx(1.95 / 6)
    assert m["nll"] == pytest.approx(np.mean(-np.log([0.9, 0.1, 0.85, 0.1, 0.1, 0.95])))


def test_toy_rank_metrics_skip_unknown_labels(toy):
    preds, tax = toy
    genus = key_metrics(preds, "genus", 2)
    assert (genus["n"], genus["n_unknown"]) == (5, 1)
    assert genus["top1"] == pytest.approx(4 / 5)  # sample 1 (campestris → rubescens) wrong
    assert key_metrics(preds, "family", 2)["top1"] == pytest.approx(5 / 6)  # sample 0 wrong
    assert key_metrics(preds, "species", 4)["top1"] == pytest.approx(3 / 6)
    assert key_metrics(preds, "phylum", 1)["top1"] == 1.0


def test_toy_hierarchy_by_hand(toy):
    preds, tax = toy
    h = hierarchy_metrics(preds, tax)
    # all six known for samples 0-4; all six right only for sample 2
    assert h["n_all_ranks_known"] == 5
    assert h["hierarchical_accuracy"] == pytest.approx(1 / 5)
    # samples 0 and 1 have an inconsistent family prediction
    assert h["consistency_rate"] == pytest.approx(4 / 6)
    assert h["consistency_by_rank"]["family"] == pytest.approx(4 / 6)
    assert h["consistency_by_rank"]["genus"] == 1.0
    # mistakes: campestris→rubescens (same order: 3), phalloides→rubescens (1), rubescens→phalloides (1)
    assert h["n_mistakes"] == 3
    assert h["mistake_severity"] == pytest.approx(5 / 3)
    assert h["mistake_relations"] == {"same species": 0, "same genus": 2, "same family": 0, "same order": 1,
                                      "same class": 0, "same phylum": 0, "different phylum": 0}
    assert h["hdist@1"] == pytest.approx(5 / 6)
    # top-5 holds all four leaves: mean height to all leaves is 9/4 (campestris), 5/4 (the Amanitas)
    assert h["hdist@5"] == pytest.approx((2 * 9 / 4 + 4 * 5 / 4) / 6)


def test_toy_poison_cost_by_hand(toy):
    preds, tax = toy
    p = poison_metrics(preds, tax)
    # species rank: PSC phalloides → rubescens (sample 3); ESC rubescens → phalloides (sample 4)
    assert (p["psc"], p["esc"], p["n"]) == (1, 1, 6)
    assert p["cost"] == pytest.approx((100 * 1 + 1) / 6)
    assert (p["n_poisonous_samples"], p["n_edible_samples"]) == (2, 4)


def test_toy_safety_table_and_focus(toy):
    preds, tax = toy
    s = safety_table(preds, tax)
    assert s["n_poisonous_species"] == 2 and s["n_poisonous_species_absent"] == 1
    [row] = s["rows"]
    assert row["species"] == "Amanita phalloides"
    assert (row["support"], row["recall"], row["genus_recall"], row["predicted_edible"]) == (2, 0.5, 1.0, 1)
    assert row["as_edible_species"] == [["Amanita rubescens", 1]]
    f = focus_species(preds, tax, "amanita phalloides")
    assert f["found"] and f["poisonous"] and f["support"] == 2
    assert f["accuracy"]["species"] == 0.5 and f["accuracy"]["genus"] == 1.0 and f["accuracy"]["family"] == 1.0
    assert f["mistaken_for"] == [{"species": "Amanita rubescens", "count": 1, "poisonous": False,
                                  "relation": "same genus"}]
    assert f["predicted_from"][0]["species"] == "Amanita rubescens"
    assert f["precision"] == pytest.approx(1 / 2) and f["predicted_edible"] == 1


def test_focus_species_not_found_suggests_close_names(toy):
    preds, tax = toy
    f = focus_species(preds, tax, "Amanita phaloides")
    assert not f["found"] and f["suggestions"][0] == "Amanita phalloides"


def test_resolve_species_accepts_author_strings():
    tax = toy_taxonomy()
    tax.scientific_names[2] = "Amanita rubescens Pers."
    tax.classes["species"][2] = "Amanita rubescens"
    assert resolve_species(tax, "Amanita rubescens Pers.") == 2
    assert resolve_species(tax, "Amanita rubescens") == 2
    assert resolve_species(tax, "Boletus edulis") is None


def test_toy_confused_pairs_and_per_class_table(toy):
    preds, tax = toy
    pairs = confused_pairs(preds, tax, LEAF)
    assert [(p["true"], p["pred"], p["count"]) for p in pairs] == [
        ("Agaricus campestris", "Amanita rubescens", 1), ("Amanita phalloides", "Amanita rubescens", 1),
        ("Amanita rubescens", "Amanita phalloides", 1)]
    assert pairs[1]["true_poisonous"] and not pairs[1]["pred_poisonous"] and pairs[0]["relation"] == "same order"
    t = per_class_table(preds, tax, LEAF).set_index("name")
    assert t.loc["Amanita rubescens", ["support", "correct", "predicted"]].tolist() == [2, 1, 3]
    assert t.loc["Amanita rubescens", "precision"] == pytest.approx(1 / 3)
    assert t.loc["Amanita rubescens", "f1"] == pytest.approx(0.4)
    assert t.loc["Agaricus campestris", "confused_with"] == "Amanita rubescens"
    assert t.loc["Amanita virosa", "support"] == 0 and np.isnan(t.loc["Amanita virosa", "recall"])
    assert t.loc["Amanita phalloides", "genus"] == "Amanita" and t.loc["Amanita phalloides", "train_images"] == 5


def test_a_rank_without_any_known_label_gives_nulls_not_errors(toy):
    preds, tax = toy
    preds["genus_true"] = -1
    m = compute_metrics(preds, tax)
    genus = m.summary["keys"]["genus"]
    assert (genus["n"], genus["n_unknown"]) == (0, 6)
    assert genus["top1"] is None and genus["macro_f1_all"] is None and genus["ece"] is None
    assert m.summary["hierarchy"]["n_all_ranks_known"] == 0
    assert m.summary["hierarchy"]["hierarchical_accuracy"] is None


# ---------------------------------------------------------------------- calibration
def test_ece_weights_bins_by_count():
    conf = np.array([0.91, 0.93, 0.2])  # two samples in bin 13, one in bin 2
    correct = np.array([1, 0, 0])
    # bin 13: acc 0.5, conf 0.92 → gap 0.42 × 2/3; bin 2: acc 0, conf 0.2 → 0.2 × 1/3
    assert expected_calibration_error(conf, correct) == pytest.approx(0.42 * 2 / 3 + 0.2 / 3)
    rel = reliability_bins(conf, correct)
    assert rel["count"][13] == 2 and rel["accuracy"][13] == 0.5 and rel["accuracy"][0] is None


def test_ece_bin_edges_are_right_closed():
    # 1.0 falls in the last bin, 0.0 in the first, 1/15 (upper edge of bin 0) in bin 0
    rel = reliability_bins(np.array([0.0, 1 / 15, 1.0]), np.array([1, 1, 1]))
    assert rel["count"][0] == 2 and rel["count"][14] == 1


def test_ece_matches_a_loop_implementation():
    rng = np.random.default_rng(3)
    conf, correct = rng.random(500), rng.random(500) < 0.6
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    assert expected_calibration_error(conf, correct) == pytest.approx(ece)


# ---------------------------------------------------------------------- against scikit-learn
SMALL = {"phylum": 2, "class": 3, "order": 5, "family": 8, "genus": 14, "species": 30, LEAF: 34}


@pytest.fixture(scope="module")
def small():
    tax = synthetic_taxonomy(SMALL, seed=1)
    return synthetic_predictions(tax, 600, seed=2, unknown_fraction=0.05), tax


@pytest.mark.parametrize("key", KEYS)
def test_metrics_agree_with_sklearn(small, key):
    preds, tax = small
    m = key_metrics(preds, key, tax.num_classes(key))
    known = preds[f"{key}_true"].to_numpy() >= 0
    y, p = preds[f"{key}_true"].to_numpy()[known], preds[f"{key}_pred"].to_numpy()[known]
    n = tax.num_classes(key)
    assert m["top1"] == pytest.approx(accuracy_score(y, p))
    assert m["macro_f1_present"] == pytest.approx(f1_score(y, p, labels=np.unique(y), average="macro"))
    assert m["macro_f1_all"] == pytest.approx(f1_score(y, p, labels=np.arange(n), average="macro", zero_division=0))
    top = preds[topk_columns(key)].to_numpy()[known]
    scores = np.zeros((len(y), n))
    for j in range(5):  # rank-ordered scores: 5 for the first of the top-5, ..., 1 for the fifth
        ok = top[:, j] >= 0
        scores[np.flatnonzero(ok), top[ok, j]] = 5 - j
    if n <= 5:  # every class is in the top-5
        assert m["top5"] == 1.0
    else:
        assert m["top5"] == pytest.approx(top_k_accuracy_score(y, scores, k=5, labels=np.arange(n)))


def test_hierarchy_on_synthetic_matches_direct_computation(small):
    preds, tax = small
    h = hierarchy_metrics(preds, tax)
    lt, lp = preds["leaf_true"].to_numpy(), preds["leaf_pred"].to_numpy()
    heights = np.array([tax.lca_height(a, b) for a, b in zip(lt, lp)])
    assert h["hdist@1"] == pytest.approx(heights.mean())
    assert h["mistake_severity"] == pytest.approx(heights[lt != lp].mean())
    consistent = [all(tax.ancestors[p, i] == preds[f"{r}_pred"].iloc[k] for i, r in enumerate(RANKS))
                  for k, p in enumerate(lp)]
    assert h["consistency_rate"] == pytest.approx(np.mean(consistent))


def test_safety_table_sums_to_psc(small):
    preds, tax = small
    assert sum(r["predicted_edible"] for r in safety_table(preds, tax)["rows"]) == poison_metrics(preds, tax)["psc"]


def test_compute_metrics_is_plain_json(small):
    preds, tax = small
    m = compute_metrics(preds, tax, focus=("Amanita phalloides", "Nonexistent fungus"))
    text = json.dumps(m.summary, allow_nan=False)
    assert json.loads(text)["keys"][LEAF]["n"] == len(preds)
    assert set(m.per_class) == set(KEYS) and len(m.per_class[LEAF]) == tax.n_leaves
    assert [f["found"] for f in m.summary["focus"]] == [True, False]
    assert jsonable({"a": np.float32(np.nan), "b": (np.int64(3),)}) == {"a": None, "b": [3]}


# ---------------------------------------------------------------------- predictions file
def test_predictions_round_trip(tmp_path, small):
    preds, tax = small
    path = tmp_path / "predictions.csv"
    write_predictions(preds, path)
    back = read_predictions(path, tax)
    assert back.shape == preds.shape
    for c in ("leaf_true", "species_pred", "genus_top5"):
        np.testing.assert_array_equal(back[c].to_numpy(), preds[c].to_numpy())
    np.testing.assert_allclose(back["leaf_conf"], preds["leaf_conf"], rtol=1e-5)


def test_read_predictions_errors_name_the_problem(tmp_path, small):
    preds, tax = small
    path = tmp_path / "p.csv"
    write_predictions(preds.drop(columns=["genus_pred", "leaf_top3"]), path)
    with pytest.raises(UserError, match="missing column.*leaf_top3.*genus_pred"):
        read_predictions(path)
    bad = preds.copy()
    bad.loc[0, "leaf_pred"] = tax.n_leaves + 5
    write_predictions(bad, path)
    with pytest.raises(UserError, match="leaf_pred.*another taxonomy"):
        read_predictions(path, tax)
    with pytest.raises(UserError, match="not found"):
        read_predictions(tmp_path / "missing.csv")


def test_synthetic_taxonomy_has_fungitastic_sizes():
    tax = synthetic_taxonomy()
    assert tax.n_leaves == 2829 and [tax.num_classes(r) for r in RANKS] == [7, 28, 95, 308, 918, 2786]
    assert (np.diff(tax.ancestors[:, -1]) >= 0).all()  # leaves in lineage order
    assert resolve_species(tax, "Amanita phalloides") is not None
