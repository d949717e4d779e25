"""Observation-level answers: one find photographed several times gets one answer.

A FungiTastic observation (``observationID``) holds several images of one fruit body;
FungiCLEF scores one answer per observation. The answer combines the images' outputs at
every key (the leaf and the six ranks), then decodes the combined distributions like an image:

- ``mean-prob`` (default): the mean of the images' probabilities (an average of experts);
- ``mean-logp``: the mean of their log-probabilities, renormalised (a product of experts:
  the geometric mean, which lets one sharp image veto a class the others allow).

:func:`pool_observations` is the one function from per-image outputs and observationIDs to
per-observation outputs (validate.py, test.py and FungiCLEF submissions use it);
:class:`ObservationPooler` does the same while streaming batches through
:func:`amanita.engine.predict`, so no per-image probability matrix is kept.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from amanita.config import COMBINE  # noqa: F401


def observation_codes(observation_ids) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, first)``: per image the index of its observation, per observation its first image.

    Observations are numbered in order of first appearance; a missing observationID (NaN)
    makes the image an observation of its own.
    """
    ids = pd.Series(np.asarray(observation_ids, dtype=object))
    missing = ids.isna().to_numpy()
    keys = ids.astype(str).to_numpy(dtype=object)
    keys[missing] = [f"\0row{i}" for i in np.flatnonzero(missing)]
    codes, _ = pd.factorize(keys, sort=False)
    first = np.full(codes.max() + 1 if len(codes) else 0, -1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]  # the last write per code is its first image
    return codes.astype(np.int64), first


class ObservationPooler:
    """Sums per-observation probabilities (or log-probabilities) batch by batch.

    ``observation_ids`` holds one id per dataset row (see :func:`observation_codes`);
    ``first`` is then each observation's first row. :meth:`add` takes a batch's ``{key: (B, C)}`` log-probabilities with the dataset indices
    of its rows; :meth:`result` returns the pooled ``{key: (n_obs, C)}`` log-probabilities
    (after summing over DDP ranks: each sample must be seen by exactly one rank) and the
    number of images behind each observation. An observation with no image gets NaN rows.
    """

    def __init__(self, observation_ids, combine: str = "mean-prob"):
        if combine not in COMBINE:
            raise ValueError(f"unknown combination {combine!r} (one of {', '.join(COMBINE)})")
        codes, self.first = observation_codes(observation_ids)
        self.codes = torch.as_tensor(codes, dtype=torch.long)
        self.n_obs = len(self.first)
        self.combine = combine
        self.sums: dict[str, torch.Tensor] = {}
        self.extra: dict[str, torch.Tensor] = {}
        self.count: torch.Tensor | None = None

    def add(self, logp: dict[str, torch.Tensor], index, extra: dict[str, torch.Tensor] | None = None) -> None:
        """Add one batch: ``logp`` ``{key: (B, C)}``, ``index`` (B,) dataset rows; ``extra`` ``{name: (B,)}``
        per-image numbers averaged per observation as they are (e.g. the energy score)."""
        first = next(iter(logp.values()))
        codes = self.codes[torch.as_tensor(index, dtype=torch.long).cpu()].to(first.device)
        if self.count is None:
            self.count = torch.zeros(self.n_obs, device=first.device, dtype=torch.float64)
        self.count.index_add_(0, codes, torch.ones(len(codes), device=first.device, dtype=torch.float64))
        for k, lp in logp.items():
            v = lp.float().exp() if self.combine == "mean-prob" else lp.float().clamp_min(-1e4)
            if k not in self.sums:
                self.sums[k] = torch.zeros(self.n_obs, lp.shape[1], device=lp.device)
            self.sums[k].index_add_(0, codes, v)
        for k, v in (extra or {}).items():
            if k not in self.extra:
                self.extra[k] = torch.zeros(self.n_obs, device=v.device, dtype=torch.float64)
            self.extra[k].index_add_(0, codes, v.double())

    def result(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """``(logp, n_images, extra)``: pooled log-probabilities per key, images per observation
        and the per-observation means of the extra numbers."""
        from amanita.distributed import all_reduce_sum
        if self.count is None:
            return {}, torch.zeros(self.n_obs), {}
        count = all_reduce_sum(self.count)
        n = count.clamp_min(1)[:, None].float()
        out = {}
        for k, s in self.sums.items():
            s = all_reduce_sum(s) / n
            out[k] = torch.log(s.clamp_min(1e-30)) if self.combine == "mean-prob" else torch.log_softmax(s, 1)
            out[k][count == 0] = float("nan")
        extra = {k: (all_reduce_sum(v) / count.clamp_min(1)).float() for k, v in self.extra.items()}
        return out, count.long(), extra


def pool_observations(logp: dict[str, torch.Tensor], observation_ids, combine: str = "mean-prob",
                      extra: dict[str, torch.Tensor] | None = None):
    """Per-image outputs → per-observation outputs, in one call.

    ``logp``: ``{key: (n_images, C)}`` log-probabilities; ``observation_ids``: (n_images,) any
    hashable ids (NaN: an observation of its own). Returns ``(obs_logp, first, n_images, extra)``:
    ``{key: (n_obs, C)}`` pooled log-probabilities, the index of each observation's first image
    (observations in order of first appearance), the images per observation and the
    per-observation means of ``extra``.
    """
    pooler = ObservationPooler(observation_ids, combine)
    if len(pooler.codes):
        pooler.add(logp, np.arange(len(pooler.codes)), extra)
    pooled, count, means = pooler.result()
    return pooled, pooler.first, count, means
