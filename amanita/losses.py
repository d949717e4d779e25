"""Class weights and the multi-task criterion."""
from __future__ import annotations

import numpy as np
import torch

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
