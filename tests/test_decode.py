"""amanita.decode: log-probabilities at every rank, the fp32 roll-up and decoding (independent, consistent)."""
import pytest
import torch

from amanita.decode import decode, rank_log_probs
from amanita.taxonomy import LEAF, RANKS, build_taxonomy
from tests.helpers import TRAIN_IDS, rows


@pytest.fixture
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def test_consistent_decoding_picks_the_best_real_lineage(tax):
    # leaves: 0 A. phalloides, 1 A. muscaria, 2 Agaricus campestris, 3/4 Phlebia, 5 Morchella
    leaf = torch.tensor([[0.3, 0.2, 0.4, 0.04, 0.04, 0.02]]).log()
    heads = {"phylum": [0.1, 0.9], "class": [0.1, 0.9], "order": [0.1, 0.8, 0.1],
             "family": [0.02, 0.08, 0.88, 0.02], "genus": [0.02, 0.08, 0.88, 0.02]}
    logp = {LEAF: leaf} | {r: torch.tensor([v]).log() for r, v in heads.items()}
    logp["species"] = (leaf.exp() @ tax.rollup_matrix("species")).log()
    ind = decode(logp, tax.ancestor_matrix(), "independent")
    assert ind[LEAF].item() == 2 and ind["genus"].item() == 2  # Agaricus leaf under genus Amanita
    con = decode(logp, tax.ancestor_matrix(), "consistent")
    # Agaricus: log .4 + 2 log .08 = -5.97 < A. phalloides: log .3 + 2 log .88 = -1.46
    assert con[LEAF].item() == 0
    assert [con[r].item() for r in RANKS] == tax.ancestors[0].tolist()


def test_rank_log_probs_sum_leaves_for_a_single_head_model(tax):
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0, -1.0, 0.5]])  # a single-head model's {leaf: logits}: 6 leaves
    lp = rank_log_probs({"leaf": logits}, tax)
    p = torch.softmax(logits, 1)
    torch.testing.assert_close(lp[LEAF].exp(), p)
    torch.testing.assert_close(lp["genus"].exp(), p @ tax.rollup_matrix("genus"))
    torch.testing.assert_close(lp["species"].exp()[0, 4], p[0, 3] + p[0, 4])  # the two Phlebia synonyms


def test_roll_up_is_the_rollup_matrix_product_unknown_ancestors_included():
    from amanita.taxonomy import roll_up
    from amanita.demo.synthetic_predictions import synthetic_taxonomy
    tax = synthetic_taxonomy({"phylum": 3, "class": 5, "order": 8, "family": 12, "genus": 20, "species": 40}, seed=1)
    p = torch.rand(4, tax.n_leaves).softmax(1)
    anc = tax.ancestor_matrix()
    anc[::7, 2] = -1  # some leaves with an unknown order
    for j, rank in enumerate(("phylum", "class", "order", "family", "genus", "species")):
        m = (anc[:, j] >= 0).float()[:, None] * torch.nn.functional.one_hot(
            anc[:, j].clamp_min(0), tax.num_classes(rank)).float()  # the roll-up matrix by hand
        dense = p @ m
        torch.testing.assert_close(roll_up(p, anc[:, j], tax.num_classes(rank)), dense)
        if rank != "order":
            torch.testing.assert_close(roll_up(p, anc[:, j], tax.num_classes(rank)), p @ tax.rollup_matrix(rank))
