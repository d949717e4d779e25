"""From a model's outputs to predictions: per-rank log-probabilities, then a decoded class per rank.

A model gives ``{head: logits}``: the leaf head over the taxonomy's leaves and, when multi-task,
the coarse ranks (:mod:`amanita.model`). :func:`rank_log_probs` turns them into log-probabilities
at the leaf and all six ranks; :func:`decode` picks a class per rank, independently or as the
best real lineage. :class:`Decoder` does both per batch with its matrices built once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from amanita.taxonomy import COARSE_RANKS, LEAF, RANKS, Taxonomy, log_roll_up

from amanita.config import DECODE_HELP, DECODE_MODES, DEFAULT_DECODE  # noqa: F401


def rank_log_probs(outputs: dict[str, torch.Tensor], taxonomy: Taxonomy,
                   ancestors: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Log-probabilities at the leaf and all six ranks from a model's outputs.

    ``outputs`` holds ``"leaf"`` logits over leaves and optionally coarse-rank logits; ranks without
    a head (a single-head model) and the species rank are the log of summed leaf probabilities.
    Returns ``{"leaf": (B, n_leaves), rank: (B, n_classes)}`` in float32. Pass ``ancestors``
    (``taxonomy.ancestor_matrix()`` on the device) when calling per batch, to build it once.
    """
    out = {LEAF: F.log_softmax(outputs[LEAF].float(), dim=1)}
    leaf_p = out[LEAF].exp()
    if ancestors is None:
        ancestors = taxonomy.ancestor_matrix().to(leaf_p.device)
    for j, rank in enumerate(RANKS):
        if rank in outputs:
            out[rank] = F.log_softmax(outputs[rank].float(), dim=1)
        else:
            out[rank] = log_roll_up(leaf_p, ancestors[:, j], taxonomy.num_classes(rank), floor=1e-30)
    return out


def decode(log_probs: dict[str, torch.Tensor], ancestors: torch.Tensor, mode: str = DEFAULT_DECODE
           ) -> dict[str, torch.Tensor]:
    """Predicted class index at the leaf and each rank, ``{key: (B,)}``.

    ``independent``: argmax of each rank's own distribution. ``consistent``: the leaf whose
    root-to-leaf path has the largest sum of log-probabilities over the leaf and the five coarse
    ranks, then every rank is that leaf's ancestor, so the prediction is always a real lineage.
    ``ancestors`` is the ``(n_leaves, 6)`` ancestor matrix (-1 unknown) on the same device.
    """
    if mode == "independent":
        return {k: v.argmax(1) for k, v in log_probs.items()}
    if mode != "consistent":
        raise ValueError(f"unknown decoding {mode!r}; choose from {DECODE_MODES}")
    score = log_probs[LEAF].clone()  # (B, n_leaves)
    for j, rank in enumerate(COARSE_RANKS):
        col = ancestors[:, j]
        lp = log_probs[rank]
        # an unknown ancestor neither helps nor hurts: it scores as the rank's best class
        gathered = lp.index_select(1, col.clamp_min(0))
        score += torch.where(col >= 0, gathered, lp.max(1, keepdim=True).values)
    leaf = score.argmax(1)
    preds = {LEAF: leaf}
    for j, rank in enumerate(RANKS):
        anc = ancestors[leaf, j]
        preds[rank] = torch.where(anc >= 0, anc, log_probs[rank].argmax(1))
    return preds


class Decoder:
    """Outputs of a batch → log-probabilities → predictions, for one taxonomy on one device.

    The ancestor matrix moves to the device once, here, not per batch.
    """

    def __init__(self, taxonomy: Taxonomy, device: torch.device | str = "cpu", mode: str = DEFAULT_DECODE):
        if mode not in DECODE_MODES:
            raise ValueError(f"unknown decoding {mode!r}; choose from {DECODE_MODES}")
        self.taxonomy, self.mode = taxonomy, mode
        self.ancestors = taxonomy.ancestor_matrix().to(device)  # (n_leaves, 6)

    def log_probs(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:func:`rank_log_probs` of a model's outputs."""
        return rank_log_probs(outputs, self.taxonomy, self.ancestors)

    def decode(self, log_probs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:func:`decode` with this decoder's mode and ancestors."""
        return decode(log_probs, self.ancestors, self.mode)
