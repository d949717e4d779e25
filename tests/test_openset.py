"""Open set: scores, detection numbers against worked examples and scikit-learn, unknown rows in taxonomy/data."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from amanita.openset import (detection_metrics, fungiclef_scores, named_at_rank, open_set_metrics,
                             unknown_scores)
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
