"""Decisions that weigh the poison (amanita.decisions) against hand-computed expected costs and distances."""
import numpy as np
import pytest
import torch

from amanita.decisions import Costs, DecisionDecoder, poison_probability, poisonous_leaves, sweep, sweep_stats
from amanita.taxonomy import LEAF
from tests.test_metrics import toy_taxonomy

# toy taxonomy: 0 Agaricus campestris (edible), 1 Amanita phalloides (poisonous),
# 2 Amanita rubescens (edible), 3 Amanita virosa (poisonous); Agaricus vs Amanita: LCA height 3
# (same order), two Amanitas: 1 (same genus).


def decide(p, decision, costs=None):
    tax = toy_taxonomy()
    dec = DecisionDecoder(tax, "cpu", "consistent", decision, costs)
    logp = torch.tensor([p]).log()
    logp = {LEAF: logp} | {r: torch.zeros(1, tax.num_classes(r)) for r in
                           ("phylum", "class", "order", "family", "genus", "species")}
    return dec.decode(logp)


def test_min_cost_names_the_poisonous_species_when_the_poison_is_likely():
    # P(poisonous) = 0.12 + 0.08 = 0.2; expected costs (100, 1, 1):
    #   leaf 0: (1 - .5) + 100 * .2 = 20.5   leaf 1: (1 - .12) + 1 * .8 = 1.68
    #   leaf 2: (1 - .3) + 20 = 20.7         leaf 3: (1 - .08) + .8 = 1.72
    preds = decide([0.5, 0.12, 0.3, 0.08], "min-cost")
    assert preds[LEAF].item() == 1
    assert preds["genus"].item() == toy_taxonomy().classes["genus"].index("Amanita")  # its lineage
    # with a cost of 1 for naming a poisonous one edible: leaf 0: .5 + .2 = .7 is the least
    assert decide([0.5, 0.12, 0.3, 0.08], "min-cost", Costs(1, 1, 1))[LEAF].item() == 0
    assert decide([0.5, 0.12, 0.3, 0.08], "argmax")[LEAF].item() == 0


def test_min_severity_names_the_leaf_of_least_expected_distance():
    # expected LCA height: leaf 0: .6 * 3 = 1.8; leaf 1: .4*3 + .22 + .19 = 1.61;
    # leaf 2: 1.2 + .19 + .19 = 1.58; leaf 3: 1.2 + .19 + .22 = 1.61
    p = [0.4, 0.19, 0.22, 0.19]
    assert decide(p, "min-severity")[LEAF].item() == 2
    assert decide(p, "argmax")[LEAF].item() == 0


def test_ties_go_to_the_more_probable_leaf():
    # leaves 1 and 3 tie at (1 - .1) + .8 = 1.7 under min-cost; equal probability: the first
    assert decide([0.5, 0.1, 0.3, 0.1], "min-cost")[LEAF].item() == 1


def test_poison_probability():
    tax = toy_taxonomy()
    pois = torch.as_tensor(poisonous_leaves(tax))
    assert pois.tolist() == [False, True, False, True]
    p = torch.tensor([[0.5, 0.12, 0.3, 0.08], [0.0, 1.0, 0.0, 0.0]])
    assert poison_probability(p.clamp_min(1e-30).log(), pois).tolist() == pytest.approx([0.2, 1.0], abs=1e-6)


def test_cost_sweep_moves_from_the_edible_to_the_poisonous_answer():
    tax = toy_taxonomy()
    dec = DecisionDecoder(tax, "cpu", "consistent", "min-cost")
    stats = sweep_stats(torch.tensor([[0.5, 0.12, 0.3, 0.08]]).log(), dec).numpy()
    assert stats[0].tolist() == pytest.approx([0, 0.5, 1, 0.12, 0.2], abs=1e-6)
    # truth: Agaricus campestris (species 0). Cost 0: the edible answer, right; cost 100: Amanita
    # phalloides, wrong and an edible named poisonous (ESC = 1): poison cost 1 / 1
    curve = sweep(stats, np.array([0]), tax, [0, 100], Costs())
    assert [c["species_top1"] for c in curve] == [1.0, 0.0]
    assert [c["poison_cost"] for c in curve] == [0.0, 1.0]


def test_test_py_shows_the_poison_probability_and_warns_whatever_the_top_species():
    from amanita.identify import format_human, poison_answer
    record = {"path": "a.jpg", "backoff": None,
              "lineage": [{"rank": "species", "name": "Amanita rubescens", "confidence": 0.9}],
              "topk": [{"species": "Amanita rubescens", "scientificName": "Amanita rubescens", "probability": 0.9,
                        "poisonous": False}]}
    poison_answer(record, {"poison": np.array([0.08])}, 0, warn_above=0.05)
    assert record["poisonous_probability"] == pytest.approx(0.08) and record["poison_warning"]
    text = format_human(record, 1, 0.9)
    assert "probability that the find is poisonous: 0.080" in text and "⚠ poisonous with probability 0.08" in text
    poison_answer(record, {"poison": np.array([0.01])}, 0, warn_above=0.05)
    assert not record["poison_warning"] and "⚠" not in format_human(record, 1, 0.9)
