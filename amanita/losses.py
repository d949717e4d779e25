"""Class weights and the multi-task criterion."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from amanita.taxonomy import COARSE_RANKS, HEADS, LEAF, RANKS, Taxonomy, label_column, roll_up

from amanita.config import WEIGHT_METHODS  # noqa: F401


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
    """One weight tensor per rank (species = accepted names) and one per leaf (the leaf head)."""
    if not tax.counts:
        raise ValueError("the taxonomy has no train counts; rebuild it with a train split")
    return {r: class_weights_from_counts(tax.counts[r], method, beta) for r in (*RANKS, LEAF)}


class MultiTaskLoss(torch.nn.Module):
    """Sum over heads of head weight × class-weighted, label-smoothed cross-entropy.

    ``outputs`` is a model's ``{head: logits}`` (``"leaf"`` over leaves, the coarse ranks over their
    classes; a single-head model has the leaf only);
    ``labels`` is ``(B, 7)`` in :data:`~amanita.taxonomy.KEYS` order, negative = unknown or
    unreadable, ignored. A head with no known label in the batch, or weighted 0, contributes an
    exact zero that still touches its parameters, so DDP needs no ``find_unused_parameters``. With
    ``consistency_weight`` > 0, adds the KL divergence between each coarse head and the leaf
    head's probabilities summed up to that rank.
    Returns ``{"loss": total, "loss/<head>": per head, ["loss/consistency"]}``.
    """

    def __init__(self, taxonomy: Taxonomy, head_weights: dict[str, float] | None = None,
                 class_weights: dict[str, torch.Tensor] | None = None, label_smoothing: float = 0.0,
                 consistency_weight: float = 0.0):
        super().__init__()
        self.head_weights = {k: 1.0 for k in HEADS} if head_weights is None else dict(head_weights)
        self.label_smoothing = label_smoothing
        self.consistency_weight = consistency_weight
        for key in HEADS:
            w = None if class_weights is None else class_weights[key].float()
            self.register_buffer(f"cw_{key}", w, persistent=False)
        if consistency_weight > 0:
            self.register_buffer("ancestors", taxonomy.ancestor_matrix(), persistent=False)  # (n_leaves, 6)
            self.n_classes = {rank: taxonomy.num_classes(rank) for rank in COARSE_RANKS}

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out, total = {}, 0.0
        for key in HEADS:
            if key not in outputs:
                continue
            logits = outputs[key].float()
            out[f"loss/{key}"] = self._ce(logits, label_column(labels, key), getattr(self, f"cw_{key}"))
            # a head weighted 0 stays in the graph (zero gradients): under DDP every parameter must get one
            total = total + self.head_weights.get(key, 0.0) * out[f"loss/{key}"]
        if self.consistency_weight > 0 and LEAF in outputs:
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
        leaf_p = F.softmax(outputs[LEAF].float(), dim=1)  # (B, n_leaves)
        kl = 0.0
        for j, rank in enumerate(COARSE_RANKS):
            if rank not in outputs:
                continue
            summed = roll_up(leaf_p, self.ancestors[:, j], self.n_classes[rank]).clamp_min(1e-8)  # fp32
            log_head = F.log_softmax(outputs[rank].float(), dim=1)
            kl = kl + F.kl_div(log_head, summed, reduction="batchmean")  # KL(summed ‖ head)
        return kl
