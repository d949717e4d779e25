"""Answers that weigh the poison: which leaf to name, given the leaf probabilities.

- ``argmax``: the decoding as it is (``--decode``: the best consistent lineage, or per rank).
- ``min-cost``: the leaf of minimum expected cost (FungiCLEF's cost, as another top FungiCLEF
  2024 entry decided), with the cost of naming species ``j`` when the truth is ``i``
  ``mistake · [i ≠ j] + poisonous_as_edible · [i poisonous, j edible] + edible_as_poisonous ·
  [i edible, j poisonous]`` (species level: synonyms are the same species). Its expectation is
  ``mistake · (1 - p(j)) + poisonous_as_edible · P(poisonous) · [j edible] + edible_as_poisonous
  · (1 - P(poisonous)) · [j poisonous]``, so an edible species is named only when the
  probability that the find is poisonous is small against the gap in probability.
- ``min-severity``: the leaf of minimum expected tree distance ``Σ_i p(i) · LCA-height(i, j)``
  (the risk-minimising decision of Karthik et al., ICLR 2021, *No Cost Likelihood Manipulation
  at Test Time for Making Better Mistakes in Deep Networks*).

Both name a leaf; every rank is then that leaf's ancestor (a real lineage). Ties go to the more
probable leaf. :func:`poison_probability` is the total probability that the find is poisonous
(a leaf counts when it, or its accepted species, is flagged), whatever the top species is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from amanita.decode import Decoder
from amanita.taxonomy import LEAF, RANKS, Taxonomy, roll_up

from amanita.config import DECISION_HELP, DECISIONS, DEFAULT_DECISION, DecisionConfig  # noqa: F401
SPECIES_COL = RANKS.index("species")


@dataclass(frozen=True)
class Costs:
    """FungiCLEF's costs: naming a poisonous species edible, an edible one poisonous, any other mistake."""
    poisonous_as_edible: float = 100.0
    edible_as_poisonous: float = 1.0
    mistake: float = 1.0


def poisonous_leaves(tax: Taxonomy) -> np.ndarray:
    """Per leaf: poisonous itself, or any synonym of its accepted species is (n_leaves,) bool."""
    species = tax.ancestors[:, SPECIES_COL]
    by_species = tax.class_poisonous("species")[species.clip(min=0)] & (species >= 0)
    return tax.class_poisonous("leaf") | by_species


def poison_probability(leaf_log_probs: torch.Tensor, poisonous: torch.Tensor) -> torch.Tensor:
    """``(B,)`` total probability of the poisonous leaves; ``poisonous`` (n_leaves,) bool on the same device."""
    return (leaf_log_probs.float().exp() * poisonous.float()[None, :]).sum(1).clamp(0, 1)


def species_of_leaf_probability(leaf_p: torch.Tensor, species: torch.Tensor, n_species: int) -> torch.Tensor:
    """``(B, n_leaves)``: the probability of each leaf's accepted species (its own where unknown)."""
    summed = roll_up(leaf_p, species, n_species)  # (B, n_species)
    return torch.where(species[None, :] >= 0, summed.index_select(1, species.clamp_min(0)), leaf_p)


def expected_cost(leaf_p: torch.Tensor, species: torch.Tensor, n_species: int, poisonous: torch.Tensor,
                  costs: Costs) -> torch.Tensor:
    """``(B, n_leaves)`` expected cost of naming each leaf (see the module doc)."""
    p_pois = (leaf_p * poisonous.float()[None, :]).sum(1, keepdim=True)
    cost = costs.mistake * (1 - species_of_leaf_probability(leaf_p, species, n_species))
    return cost + torch.where(poisonous[None, :], costs.edible_as_poisonous * (1 - p_pois),
                              costs.poisonous_as_edible * p_pois)


def expected_distance(leaf_p: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """``(B, n_leaves)`` expected LCA height of naming each leaf; ``distance`` (n_leaves, n_leaves)."""
    return leaf_p @ distance


def least(risk: torch.Tensor, leaf_p: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """``(B,)`` the leaf of least risk, ties (within ``tol``) to the more probable leaf."""
    tied = risk <= risk.min(1, keepdim=True).values + tol
    return torch.where(tied, leaf_p, torch.full_like(leaf_p, -1.0)).argmax(1)


class DecisionDecoder(Decoder):
    """A :class:`~amanita.decode.Decoder` whose leaf is chosen by a decision rule; ranks are its ancestors."""

    def __init__(self, taxonomy: Taxonomy, device, mode: str, decision: str = DEFAULT_DECISION,
                 costs: Costs | None = None):
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; choose from {DECISIONS}")
        super().__init__(taxonomy, device, mode)
        self.decision, self.costs = decision, costs or Costs()
        self.poisonous = torch.as_tensor(poisonous_leaves(taxonomy), device=device)
        self.species = self.ancestors[:, SPECIES_COL]
        self.distance = (torch.as_tensor(taxonomy.distance_matrix(), dtype=torch.float32, device=device)
                         if decision == "min-severity" else None)

    def choose_leaf(self, leaf_log_probs: torch.Tensor) -> torch.Tensor:
        """``(B,)`` the leaf named by the decision rule (not for ``argmax``)."""
        p = leaf_log_probs.float().exp()
        if self.decision == "min-cost":
            risk = expected_cost(p, self.species, self.taxonomy.num_classes("species"), self.poisonous, self.costs)
        else:
            risk = expected_distance(p, self.distance.to(p.device))
        return least(risk, p)

    def decode(self, log_probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.decision == "argmax":
            return super().decode(log_probs)
        leaf = self.choose_leaf(log_probs[LEAF])
        preds = {LEAF: leaf}
        for j, rank in enumerate(RANKS):
            anc = self.ancestors[leaf, j]
            preds[rank] = torch.where(anc >= 0, anc, log_probs[rank].argmax(1))
        return preds


def make_decoder(taxonomy: Taxonomy, device, mode: str, decision: str = DEFAULT_DECISION,
                 costs: Costs | None = None) -> Decoder:
    """A plain :class:`Decoder` for ``argmax``, else a :class:`DecisionDecoder`."""
    if decision == DEFAULT_DECISION:
        return Decoder(taxonomy, device, mode)
    return DecisionDecoder(taxonomy, device, mode, decision, costs)


def costs_of(cfg: DecisionConfig) -> Costs:
    """The cost flags as :class:`Costs`."""
    return Costs(cfg.poisonous_as_edible_cost, cfg.edible_as_poisonous_cost, cfg.mistake_cost)


# ---------------------------------------------------------------------- the cost sweep
def sweep_stats(leaf_log_probs: torch.Tensor, decoder: DecisionDecoder | Decoder) -> torch.Tensor:
    """``(B, 5)`` what a min-cost sweep needs per sample: the best edible and best poisonous leaf,
    their species' probabilities and P(poisonous) (leaf -1 / probability 0 where there is none)."""
    tax = decoder.taxonomy
    pois = torch.as_tensor(poisonous_leaves(tax), device=leaf_log_probs.device)
    species = decoder.ancestors[:, SPECIES_COL]
    p = leaf_log_probs.float().exp()
    ps = species_of_leaf_probability(p, species, tax.num_classes("species"))
    out = []
    for group in (~pois, pois):
        score = torch.where(group[None, :], ps + 1e-9 * p, torch.full_like(p, -1.0))
        best = score.argmax(1)
        has = group.any()
        out += [torch.where(has, best, torch.full_like(best, -1)).float(),
                torch.where(has, ps.gather(1, best[:, None]).squeeze(1), torch.zeros_like(best, dtype=p.dtype))]
    return torch.stack(out + [(p * pois.float()).sum(1)], 1)


def sweep(stats: np.ndarray, true_species: np.ndarray, tax: Taxonomy, poisonous_costs, costs: Costs) -> list[dict]:
    """Species top-1 and FungiCLEF poison cost of the min-cost decision at each ``poisonous_costs`` value.

    ``stats`` (N, 5) from :func:`sweep_stats`, ``true_species`` (N,) (-1 unknown: left out).
    """
    keep = true_species >= 0
    s, t = stats[keep], true_species[keep]
    species = tax.ancestors[:, SPECIES_COL]
    pois_sp = tax.class_poisonous("species")
    out = []
    for c in poisonous_costs:
        risk_e = costs.mistake * (1 - s[:, 1]) + c * s[:, 4]
        risk_p = costs.mistake * (1 - s[:, 3]) + costs.edible_as_poisonous * (1 - s[:, 4])
        use_p = (s[:, 2] >= 0) & ((risk_p < risk_e) | (s[:, 0] < 0))
        leaf = np.where(use_p, s[:, 2], s[:, 0]).astype(np.int64)
        pred = species[leaf]
        tp, pp = pois_sp[t], pois_sp[pred.clip(min=0)] & (pred >= 0)
        n = max(len(t), 1)
        out.append({"poisonous_as_edible_cost": float(c), "species_top1": float((pred == t).mean()) if len(t) else None,
                    "poison_cost": float((100 * (tp & ~pp).sum() + (~tp & pp).sum()) / n) if len(t) else None})
    return out
