"""Class weights and the multi-task criterion."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from amanita.taxonomy import LEAF, RANKS, Taxonomy

WEIGHT_METHODS = ("inverse", "sqrt_inverse", "effective_number")


def class_weights_from_counts(counts, method: str = "sqrt_inverse", beta: float = 0.999) -> torch.Tensor:
    """Per-class loss weights from training counts, mean 1 over the classes present.

    ``inverse``: 1/n; ``sqrt_inverse``: 1/sqrt(n); ``effective_number`` (Cui et al., CVPR 2019):
    (1-beta)/(1-beta^n). Classes absent from train get the largest weight of a present class
    (they are at least as rare), so every weight is finite.
    """
    n = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    present = n > 0
    if not present.any():
        return torch.ones(len(n), dtype=torch.float32)
    w = torch.zeros_like(n)
    if method == "inverse":
        w[present] = 1.0 / n[present]
    elif method == "sqrt_inverse":
        w[present] = 1.0 / n[present].sqrt()
    elif method == "effective_number":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"--beta must be in (0, 1), got {beta}")
        w[present] = (1.0 - beta) / (1.0 - torch.pow(beta, n[present]))
    else:
        raise ValueError(f"unknown class-weight method {method!r}; choose from {WEIGHT_METHODS}")
    w = w / w[present].mean()
    w[~present] = w[present].max()
    return w.float()


def compute_class_weights(tax: Taxonomy, method: str = "sqrt_inverse", beta: float = 0.999
                          ) -> dict[str, torch.Tensor]:
    """One weight tensor per rank (species = accepted names) and one per leaf (the species head)."""
    if not tax.counts:
        raise ValueError("the taxonomy has no train counts; rebuild it with a train split")
    return {r: class_weights_from_counts(tax.counts[r], method, beta) for r in (*RANKS, LEAF)}


class MultiTaskLoss(torch.nn.Module):
    """Sum over heads of rank weight × class-weighted, label-smoothed cross-entropy.

    ``outputs`` is ``{head: logits}`` (``"species"`` over leaves, or over all stock outputs
    with ``leaf_index`` selecting the leaves' columns); ``labels`` is ``(B, 7)`` (leaf, then the
    six ranks), negative = unknown or unreadable, ignored. A head with no known label in the
    batch contributes an exact zero that still touches its parameters, so DDP needs no
    ``find_unused_parameters``. With ``consistency_weight`` > 0, adds the KL divergence between
    each coarse head and the species head's probabilities summed up to that rank.
    Returns ``{"loss": total, "loss/<rank>": per head, ["loss/consistency"]}``.
    """

    def __init__(self, taxonomy: Taxonomy, rank_weights: dict[str, float] | None = None,
                 class_weights: dict[str, torch.Tensor] | None = None, label_smoothing: float = 0.0,
                 consistency_weight: float = 0.0, leaf_index: torch.Tensor | None = None):
        super().__init__()
        self.rank_weights = {r: 1.0 for r in RANKS} if rank_weights is None else dict(rank_weights)
        self.label_smoothing = label_smoothing
        self.consistency_weight = consistency_weight
        self.register_buffer("leaf_index", leaf_index, persistent=False)
        for rank in RANKS:
            key = LEAF if rank == "species" else rank  # the species head is over leaves
            w = None if class_weights is None else class_weights[key].float()
            self.register_buffer(f"cw_{rank}", w, persistent=False)
        if consistency_weight > 0:
            for rank in RANKS[:-1]:
                self.register_buffer(f"rollup_{rank}", taxonomy.rollup_matrix(rank), persistent=False)

    def _logits(self, outputs: dict, rank: str) -> torch.Tensor:
        x = outputs[rank]
        if rank == "species" and self.leaf_index is not None:
            x = x.index_select(1, self.leaf_index)
        return x.float()

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out, total = {}, 0.0
        for j, rank in enumerate(RANKS):
            if rank not in outputs or self.rank_weights.get(rank, 0.0) == 0.0:
                continue
            logits = self._logits(outputs, rank)
            target = labels[:, 0] if rank == "species" else labels[:, 1 + j]
            out[f"loss/{rank}"] = self._ce(logits, target, getattr(self, f"cw_{rank}"))
            total = total + self.rank_weights[rank] * out[f"loss/{rank}"]
        if self.consistency_weight > 0 and "species" in outputs:
            out["loss/consistency"] = self._consistency(outputs)
            total = total + self.consistency_weight * out["loss/consistency"]
        out["loss"] = total
        return out

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        valid = target >= 0
        safe = torch.where(valid, target, torch.zeros_like(target))
        per_sample = F.cross_entropy(logits, safe, weight=weight, reduction="none",
                                     label_smoothing=self.label_smoothing)
        norm = valid.float() if weight is None else weight[safe] * valid
        # the weighted mean over known labels that F.cross_entropy(weight=...) computes; 0 if none
        return (per_sample * valid).sum() / norm.sum().clamp_min(1e-12)

    def _consistency(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        leaf_p = F.softmax(self._logits(outputs, "species"), dim=1)  # (B, n_leaves)
        kl = 0.0
        for rank in RANKS[:-1]:
            if rank not in outputs:
                continue
            summed = (leaf_p @ getattr(self, f"rollup_{rank}")).clamp_min(1e-8)
            log_head = F.log_softmax(outputs[rank].float(), dim=1)
            kl = kl + F.kl_div(log_head, summed, reduction="batchmean")  # KL(summed ‖ head)
        return kl
