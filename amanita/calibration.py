"""Confidences that mean what they say: per-head temperature scaling and lineage confidences.

**Temperature scaling** (Guo et al., *On Calibration of Modern Neural Networks*, ICML 2017).
Each key (the leaf head and the six ranks) gets one temperature ``T``, fitted on the
validation split by minimising the NLL of ``softmax(log p / T)``; accuracy under independent
decoding is unchanged (``argmax`` is invariant), confidences are not. For a rank with its own
head ``log p`` is that head's log-softmax, so this is the usual ``softmax(logits / T)``; for a
rank without one (the species rank, every coarse rank of a single-head model) it sharpens or
flattens the leaf probabilities summed up the tree. The temperatures are stored in the
checkpoint (``temperatures``, written by ``validate.py --calibrate``) and applied by
``validate.py`` and ``test.py``.

**Lineage confidence.** The confidence printed for a rank of a decoded lineage is the
probability, under the (calibrated) leaf distribution, that the true leaf lies under the
predicted class at that rank *and* at every coarser rank: the summed probability of the leaves
whose ancestors match the prediction from the phylum down. For a real lineage (consistent
decoding) this is the probability mass of the predicted node. It never rises from a rank to a
finer one, since each finer rank keeps a subset of the leaves; the leaf's own value is the
predicted leaf's probability when it lies on the predicted lineage, else 0. A leaf with an
unknown ancestor at a rank matches any prediction there.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from amanita.taxonomy import KEYS, LEAF, RANKS, label_column

MIN_T, MAX_T = 0.05, 20.0


def fit_temperature(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The ``T`` minimising the mean NLL of ``log_softmax(log_probs / T)`` over ``labels >= 0``.

    ``log_probs`` (N, C) are logits or log-probabilities, ``labels`` (N,) class indices (-1
    unknown, ignored). The NLL is convex in ``1 / T``; L-BFGS runs on ``log(1 / T)``. The result
    is clipped to [0.05, 20]; 1.0 when no label is known.
    """
    known = labels >= 0
    if not bool(known.any()):
        return 1.0
    z, y = log_probs[known].float(), labels[known].long()
    log_beta = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_beta], lr=1.0, max_iter=100, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z * log_beta.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(1.0 / log_beta.detach().exp().item(), MIN_T, MAX_T))


def fit_temperatures(log_probs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """One temperature per key; ``labels`` is (N, 7) in :data:`~amanita.taxonomy.KEYS` order."""
    return {k: fit_temperature(log_probs[k], label_column(labels, k)) for k in KEYS}


def apply_temperatures(log_probs: dict[str, torch.Tensor], temperatures: dict[str, float] | None
                       ) -> dict[str, torch.Tensor]:
    """``{key: log_softmax(log_probs[key] / T[key])}``; keys without a temperature pass unchanged."""
    if not temperatures:
        return log_probs
    return {k: F.log_softmax(v / float(temperatures[k]), dim=1) if temperatures.get(k, 1.0) != 1.0 else v
            for k, v in log_probs.items()}


@torch.no_grad()
def lineage_confidence(leaf_log_probs: torch.Tensor, preds: dict[str, torch.Tensor],
                       ancestors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per key ``(B,)``: probability that the prediction is right down to that rank (see module doc).

    ``leaf_log_probs`` (B, n_leaves), ``preds`` the decoded class per key (B,), ``ancestors``
    the (n_leaves, 6) ancestor matrix on the same device. Non-increasing from phylum to leaf.
    """
    p = leaf_log_probs.float().exp()
    on_path = torch.ones_like(p, dtype=torch.bool)  # (B, n_leaves): leaf under every predicted node so far
    out, previous = {}, torch.ones(p.shape[0], device=p.device)
    for j, rank in enumerate(RANKS):
        col = ancestors[:, j][None, :]
        on_path &= (col == preds[rank][:, None]) | (col < 0)
        previous = torch.minimum(previous, (p * on_path).sum(1))  # the min guards against rounding only
        out[rank] = previous
    leaf = torch.arange(p.shape[1], device=p.device)[None, :] == preds[LEAF][:, None]
    out[LEAF] = torch.minimum(previous, (p * (on_path & leaf)).sum(1))
    return out


def ece_table(log_probs: dict[str, torch.Tensor], labels: torch.Tensor, temperatures: dict[str, float]) -> dict:
    """Per key: ECE of the top-1 confidence before and after ``temperatures`` (15 bins), and ``T``."""
    from amanita.metrics import expected_calibration_error
    out = {}
    for k in KEYS:
        y = label_column(labels, k)
        known = y >= 0
        row = {"temperature": temperatures.get(k, 1.0), "n": int(known.sum())}
        for name, t in (("ece_before", 1.0), ("ece_after", temperatures.get(k, 1.0))):
            p = F.softmax(log_probs[k][known].float() / t, dim=1)
            conf, pred = p.max(1)
            row[name] = expected_calibration_error(conf.numpy(), (pred == y[known]).numpy())
        out[k] = row
    return out


def cross_fitted_ece(log_probs: dict[str, torch.Tensor], labels: torch.Tensor, seed: int = 0) -> dict:
    """ECE after scaling, each half of the samples scored with the temperatures fitted on the other half.

    An honest "after" number when only one split is at hand (fitting and scoring on the same
    samples flatters it). Returns ``{key: ece}``.
    """
    from amanita.metrics import expected_calibration_error
    n = labels.shape[0]
    half = torch.from_numpy(np.random.default_rng(seed).permutation(n) < n // 2)
    conf, correct = {k: [] for k in KEYS}, {k: [] for k in KEYS}
    for fit_mask in (half, ~half):
        temps = fit_temperatures({k: v[fit_mask] for k, v in log_probs.items()}, labels[fit_mask])
        for k in KEYS:
            y = label_column(labels, k)
            score = ~fit_mask & (y >= 0)
            c, pred = F.softmax(log_probs[k][score].float() / temps[k], dim=1).max(1)
            conf[k].append(c.numpy())
            correct[k].append((pred == y[score]).numpy())
    return {k: expected_calibration_error(np.concatenate(conf[k]), np.concatenate(correct[k])) for k in KEYS}


def calibration_summary(log_probs: dict[str, torch.Tensor], labels: torch.Tensor, split: str) -> dict:
    """Temperatures fitted on all samples, ECE before/after, and the 2-fold cross-fitted ECE (plain JSON)."""
    temps = fit_temperatures(log_probs, labels)
    table = ece_table(log_probs, labels, temps)
    for k, ece in cross_fitted_ece(log_probs, labels).items():
        table[k]["ece_after_cross_fitted"] = ece
    return {"temperatures": temps, "fitted_on": split, "n_samples": int(labels.shape[0]), "keys": table}
