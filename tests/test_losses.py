"""amanita.losses: class weights and the multi-task criterion (per-head losses, unknown labels, consistency)."""
import math

import numpy as np
import pytest
import torch

from amanita.losses import MultiTaskLoss, class_weights_from_counts
from amanita.taxonomy import LEAF, RANKS, build_taxonomy
from tests.helpers import TRAIN_IDS, rows


@pytest.fixture
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def test_class_weights_hand_computed():
    counts = [1, 4, 16, 0]
    w = class_weights_from_counts(counts, "inverse")
    raw = np.array([1, 1 / 4, 1 / 16])
    np.testing.assert_allclose(w[:3], raw / raw.mean(), rtol=1e-6)
    assert w[3] == w[:3].max()       # absent from train: finite, as rare as the rarest
    w = class_weights_from_counts(counts, "sqrt_inverse")
    raw = np.array([1, 1 / 2, 1 / 4])
    np.testing.assert_allclose(w[:3], raw / raw.mean(), rtol=1e-6)
    w = class_weights_from_counts(counts, "effective_number", beta=0.5)
    raw = np.array([0.5 / 0.5, 0.5 / (1 - 0.5 ** 4), 0.5 / (1 - 0.5 ** 16)])
    np.testing.assert_allclose(w[:3], raw / raw.mean(), rtol=1e-6)
    assert w[:3].mean().item() == pytest.approx(1.0)


def test_loss_hand_computed_with_unknown_labels(tax):
    out = {"genus": torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]),
           LEAF: torch.zeros(2, 6)}
    labels = torch.tensor([[2, 1, 1, 1, 1, 1, 1], [-1, -1, -1, -1, -1, -1, -1]])
    weights = {r: torch.ones(n) for r, n in zip(RANKS, [2, 2, 3, 4, 4, 5])} | {LEAF: torch.ones(6)}
    weights["genus"] = torch.tensor([1.0, 3.0, 1.0, 1.0])
    crit = MultiTaskLoss(tax, {"genus": 0.5, LEAF: 1.0}, weights)
    got = crit(out, labels)
    ce_genus = -torch.log_softmax(out["genus"][0], 0)[1]      # row 2 is unknown: ignored
    assert got["loss/genus"].item() == pytest.approx(ce_genus.item(), rel=1e-6)
    assert got["loss/leaf"].item() == pytest.approx(math.log(6), rel=1e-6)
    assert got["loss"].item() == pytest.approx(0.5 * ce_genus.item() + math.log(6), rel=1e-6)
    none_known = crit({"genus": out["genus"], LEAF: out[LEAF]}, torch.full((2, 7), -1))
    assert none_known["loss"].item() == 0.0


def test_consistency_term_is_zero_when_heads_agree_with_the_leaf_head(tax):
    leaf_logits = torch.randn(4, 6)
    p = torch.softmax(leaf_logits, 1)
    out = {LEAF: leaf_logits} | {r: (p @ tax.rollup_matrix(r)).log() for r in RANKS[:-1]}
    crit = MultiTaskLoss(tax, {LEAF: 1.0}, consistency_weight=1.0)
    assert crit(out, torch.full((4, 7), -1))["loss/consistency"].item() == pytest.approx(0.0, abs=1e-5)
    out["genus"] = torch.zeros(4, 4)
    assert crit(out, torch.full((4, 7), -1))["loss/consistency"].item() > 0.01
