"""The training step loop and batch inference, shared by the training scripts, validate.py and test.py."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm import tqdm

from amanita.data import BAD_IMAGE, check_normalised
from amanita.decode import DEFAULT_DECODE, Decoder
from amanita.faults import fault_point
from amanita.io import UserError
from amanita.distributed import all_gather_objects, all_reduce_sum, is_main_process, sync_batchnorm, world_size
from amanita.run import Run
from amanita.taxonomy import KEYS, LEAF, Taxonomy, label_column
from amanita.openset import leaf_energy, unknown_scores
from amanita.predictions import COLUMNS, FLOAT_COLUMNS, INT_COLUMNS
from amanita.config import TTA_MODES  # noqa: F401


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto`` = bf16 on CUDA and none on CPU; ``bf16``/``fp16``/``none`` as asked."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(run: Run, loader) -> dict[str, float]:
    """One epoch of ``run`` (or its remainder after a resume); returns mean losses and images/s.

    Both cover the whole epoch: the sums, batches, images and seconds before a resume come from
    ``run.state`` (restored from the checkpoint; under DDP, rank 0's share stands for every rank's).

    Gradients are accumulated over ``run.step_config.accum_steps`` batches; after each update the
    EMA, the scheduler and the checkpointer (``after_update``) follow. Losses stay on the device
    and are read back only every ``log_interval`` batches.
    """
    model, step, state, device = run.trained, run.step_config, run.state, run.dist.device
    model.train()
    sums = _epoch_sums(state, device)
    window: dict[str, torch.Tensor] = {}  # losses since the last log_interval, for the tracker
    n_batches, n_images, t0, seconds0 = 0, 0, time.perf_counter(), state.epoch_seconds
    bad_count = torch.zeros((), dtype=torch.long, device=device)
    total = len(loader) + state.batch_in_epoch
    bar = tqdm(loader, total=total, initial=state.batch_in_epoch, disable=not run.dist.is_main,
               desc=f"epoch {state.epoch + 1}", dynamic_ncols=True, leave=False)
    for images, labels, _ in bar:
        images = images.to(device, non_blocking=True)
        check_normalised(images)
        torch._dynamo.maybe_mark_dynamic(images, 0)  # --compile: the epoch's short last batch reuses the graph
        labels = labels.to(device, non_blocking=True)
        group, boundary = accumulation_group(state.batch_in_epoch, total, step.accum_steps)
        sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, step.amp):
                losses = run.criterion(model(images), labels)
            loss = losses["loss"] / group
            (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0) + v.detach()
            window[k] = window.get(k, 0) + v.detach()
        bad_count += (label_column(labels, LEAF) == BAD_IMAGE).sum()
        n_batches += 1
        n_images += images.shape[0]
        state.batch_in_epoch += 1
        state.epoch_batches += 1
        state.epoch_images += images.shape[0]
        if boundary:
            state.epoch_seconds = seconds0 + time.perf_counter() - t0  # what a checkpoint of this update records
            _update(run)
        if n_batches % step.log_interval == 0:
            _count_bad(run, bad_count)
            if run.tracker:
                run.tracker.log(update_record(run, window, step.log_interval, n_images / (time.perf_counter() - t0)),
                                state.step)
            window = {}
            if run.dist.is_main:
                bar.set_postfix(loss=f"{(sums['loss'] / state.epoch_batches).item():.3f}",
                                lr=f"{run.optimizer.param_groups[-1]['lr']:.2e}",
                                img_s=f"{n_images / (time.perf_counter() - t0):.0f}")
    _count_bad(run, bad_count)
    sync_batchnorm(run.model, run.ema.module if run.ema is not None else None)  # ranks' statistics drift apart
    bar.close()
    state.epoch_seconds = seconds0 + time.perf_counter() - t0
    out = {k: (v / max(state.epoch_batches, 1)).item() for k, v in sums.items()}
    out["images_per_s"] = state.epoch_images / max(state.epoch_seconds, 1e-9)
    return out


def _epoch_sums(state, device) -> dict[str, torch.Tensor]:
    """The epoch's running loss sums on the device, kept in ``state`` (and so in the checkpoint): a resumed
    epoch's means cover all of it. A fresh epoch (no batch done) starts them, and its counts, at zero."""
    if state.batch_in_epoch == 0:
        state.epoch_sums, state.epoch_batches, state.epoch_images, state.epoch_seconds = {}, 0, 0, 0.0
    state.epoch_sums = {k: torch.as_tensor(v, device=device) for k, v in state.epoch_sums.items()}
    return state.epoch_sums


def update_record(run: Run, window: dict[str, torch.Tensor], n_batches: int, images_per_s: float) -> dict:
    """What the tracker gets every ``log_interval`` batches: each head's mean loss over them, the base lr
    and images/s (this process), named as in ``metrics.jsonl``."""
    group = run.optimizer.param_groups[-1]
    out = {("train/loss" if k == "loss" else f"train/{k.removeprefix('loss/')}/loss"): (v / n_batches).item()
           for k, v in window.items()}
    return out | {"lr": group["lr"] / group.get("lr_scale", 1.0), "images_per_s": images_per_s}


def _count_bad(run: Run, bad_count: torch.Tensor) -> None:
    """Tell the bad-image counter (which stops the run past its share) how many were seen so far."""
    if run.bad_images is not None:
        run.bad_images.update(int(bad_count.item()) - run.bad_images.count)


def accumulation_group(batch: int, total: int, accum: int) -> tuple[int, bool]:
    """(size of the accumulation group holding ``batch``, does ``batch`` end it?).

    Groups are ``accum`` batches long except the epoch's last, which holds the remainder: it
    ends on the epoch's last batch, so under DDP that batch all-reduces (stepping inside
    ``no_sync()`` would leave every rank with its own gradients), and its loss is divided by
    the group's real size so a partial update has the same scale as a full one.
    """
    start = batch - batch % accum
    size = min(accum, total - start)
    return size, batch + 1 == start + size


def updates_per_epoch(n_batches: int, accum: int) -> int:
    """Optimizer updates in an epoch of ``n_batches`` batches, the last partial group included."""
    return max(-(-n_batches // accum), 1)


def _update(run: Run) -> None:
    """One optimizer update (unscale, clip, step), then the EMA, the scheduler and the checkpointer."""
    model, optimizer, scaler, state = run.trained, run.optimizer, run.scaler, run.state
    if scaler is not None:
        scaler.unscale_(optimizer)
    if run.step_config.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.step_config.clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if run.ema is not None:
        run.ema.update(model, step=state.step)
    if run.scheduler is not None:
        run.scheduler.step_update(num_updates=state.step)
    if run.checkpointer is not None:
        run.checkpointer.after_update(run)
    fault_point("update", state.step, settle=run.checkpointer.wait if run.checkpointer is not None else None)



def forward_tta(model: nn.Module, images: torch.Tensor, tta: str = "none") -> dict[str, torch.Tensor]:
    """``{head: logits}``; with ``tta="flip"`` the mean of the logits of the image and its mirror image."""
    outputs = model(images)
    if tta == "none":
        return outputs
    if tta != "flip":
        raise ValueError(f"unknown test-time augmentation {tta!r} ({' or '.join(TTA_MODES)})")
    mirrored = model(images.flip(-1))  # horizontal flip: (B, C, H, W) along W
    return {k: (v.float() + mirrored[k].float()) / 2 for k, v in outputs.items()}


@dataclass
class Readout:
    """How outputs become probabilities: test-time augmentation and per-key temperatures."""
    tta: str = "none"                          # none | flip (see forward_tta)
    temperatures: dict[str, float] | None = None  # see amanita.calibration; None: T = 1


class BatchPredictor:
    """The one batch-prediction step: images → log-probabilities at the leaf and six ranks → predictions.

    Used by :func:`predict` (whole splits, through :func:`iter_log_probs`), ``test.py`` (photos)
    and the benchmarks. Puts the model in eval mode; ``amp`` is ``auto``/``bf16``/``fp16``/``none``
    or an autocast dtype; ``readout`` adds test-time augmentation and temperatures.
    """

    def __init__(self, model: nn.Module, taxonomy: Taxonomy, device, decode: str = DEFAULT_DECODE,
                 amp: str | torch.dtype | None = None, readout: Readout | None = None):
        self.model, self.device = model.eval(), torch.device(device)
        self.dtype = amp_dtype(amp, self.device) if isinstance(amp, str) else amp
        self.decoder = Decoder(taxonomy, self.device, decode)
        self.readout = readout or Readout()

    @torch.no_grad()
    def log_probs(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(log_probs, energy)``: ``{key: (B, n_classes)}`` (temperature-scaled when the readout has
        them) and the leaf head's energy −logsumexp(logits) (B,), taken before any temperature."""
        from amanita.calibration import apply_temperatures
        images = images.to(self.device, non_blocking=True)
        check_normalised(images)
        with autocast(self.device, self.dtype):
            outputs = forward_tta(self.model, images, self.readout.tta)
        energy = leaf_energy(outputs[LEAF])
        return apply_temperatures(self.decoder.log_probs(outputs), self.readout.temperatures), energy

    def __call__(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(log_probs, preds)``: preds ``{key: (B,)}`` decoded as asked."""
        logp, _ = self.log_probs(images)
        return logp, self.decoder.decode(logp)


def iter_log_probs(model: nn.Module, loader, taxonomy: Taxonomy, device, amp=None, readout: Readout | None = None,
                   progress: bool = True):
    """Yield ``(log_probs, labels, idx, energy)`` per batch, on the device (see :meth:`BatchPredictor.log_probs`);
    ``progress``: a bar on stderr (rank 0)."""
    step = BatchPredictor(model, taxonomy, device, amp=amp, readout=readout)
    for images, labels, idx in tqdm(loader, disable=not (progress and is_main_process()), desc="predict",
                                    dynamic_ncols=True, leave=False):
        logp, energy = step.log_probs(images)
        yield logp, labels.to(step.device, non_blocking=True), idx, energy


@torch.inference_mode()
def predict(model: nn.Module, loader, taxonomy: Taxonomy, device, decode: str = DEFAULT_DECODE,
            amp: str | torch.dtype | None = None, readout: Readout | None = None) -> pd.DataFrame:
    """Per-sample predictions at the leaf and six ranks, gathered from every rank exactly once.

    Returns one row per readable sample, sorted by ``index`` (the row of the CSV), with
    ``{key}_true``, ``{key}_pred``, ``{key}_conf``, ``{key}_lconf``, ``{key}_ptrue`` and
    ``{key}_top1..5`` for ``key`` in leaf and the six ranks, and the unknown-species scores
    ``unknown_{msp,entropy,energy}`` (see ``amanita/predictions.py``). ``readout``: test-time
    augmentation and temperatures. See :func:`amanita.predictions.with_metadata` for the ``filename``,
    ``observationID`` and ``unknown_species`` columns. Results stay on the device until the split
    ends, then come to the host in two copies (integer and float columns), not per batch.
    """
    return predict_batches(iter_log_probs(model, loader, taxonomy, device, amp, readout), taxonomy, decode)


@torch.inference_mode()
def predict_batches(batches, taxonomy: Taxonomy, decode: str = DEFAULT_DECODE, pooler=None) -> pd.DataFrame:
    """:func:`predict`'s table from :func:`iter_log_probs` batches (``decode``: a mode or a
    :class:`~amanita.decode.Decoder`, e.g. a decision rule's); a ``pooler``
    (:class:`amanita.observations.ObservationPooler`) also receives every readable image."""
    decoder = None
    ints, floats, index = [], [], []
    for logp, labels, idx, energy in batches:
        decoder = decoder or (decode if isinstance(decode, Decoder) else Decoder(taxonomy, energy.device, decode))
        i, f = _device_columns(logp, labels, decoder, energy)
        ints.append(i)
        floats.append(f)
        index.append(torch.as_tensor(idx))
        if pooler is not None:
            ok = label_column(labels, LEAF) != BAD_IMAGE
            pooler.add({k: v[ok] for k, v in logp.items()}, torch.as_tensor(idx)[ok.cpu()], {"energy": energy[ok]})
    gathered = all_gather_objects(_host_columns(ints, floats, index))
    cols = {k: np.concatenate([g[k] for g in gathered]) for k in COLUMNS}
    df = pd.DataFrame(cols)
    df = df[df["leaf_true"] != BAD_IMAGE].drop_duplicates("index").sort_values("index", kind="stable")
    return df.reset_index(drop=True)


def prediction_columns(logp: dict[str, torch.Tensor], labels: torch.Tensor, idx, decoder: Decoder,
                       energy: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Decode ``logp`` (``{key: (B, n_classes)}``) and return the predictions-table columns of these samples.

    What :func:`predict` does per batch (there the columns stay on the device until the split
    ends); also usable on :func:`collect_log_probs`'s output and on pooled observations.
    ``energy`` (B,) feeds the ``unknown_energy`` column (NaN without it).
    """
    ints, floats = _device_columns(logp, labels, decoder, energy)
    return _host_columns([ints], [floats], [torch.as_tensor(idx)])


def predict_observations(pooler, labels: torch.Tensor, taxonomy: Taxonomy, decode: str = DEFAULT_DECODE
                         ) -> pd.DataFrame:
    """The per-observation predictions table from a pooler filled by :func:`predict_batches`.

    Same columns as :func:`predict`'s table, one row per observation with a readable image:
    ``index`` is its first image's, and so are the true labels (as FungiCLEF's evaluate.py,
    which keeps the first row of each observation); plus ``n_images``. ``labels`` is the
    dataset's ``(n, 7)`` label tensor. Pass the result to :func:`amanita.predictions.with_metadata` for names.
    """
    logp, count, extra = pooler.result()
    keep = torch.nonzero(count.cpu() > 0).squeeze(1)
    if not len(keep):
        return pd.DataFrame(columns=[*COLUMNS, "n_images"])
    first = torch.as_tensor(pooler.first)[keep]
    device = next(iter(logp.values())).device
    logp = {k: v[keep.to(device)] for k, v in logp.items()}
    decoder = decode if isinstance(decode, Decoder) else Decoder(taxonomy, device, decode)
    cols = prediction_columns(logp, labels[first].to(device), first, decoder,
                              extra["energy"][keep.to(device)])
    return pd.DataFrame(cols).assign(n_images=count.cpu()[keep].numpy())


def collect_log_probs(model: nn.Module, loader, taxonomy: Taxonomy, device, amp=None,
                      readout: Readout | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every sample's log-probabilities ``{key: (N, n_classes)}`` and labels ``(N, 7)``, on the CPU.

    What temperature fitting needs (one process; unreadable images dropped). Memory is
    N × (all heads' classes) floats: about 2.5 GB for FungiTastic's 89,659 validation images.
    """
    parts, labels = {}, []
    for logp, y, _, _ in iter_log_probs(model, loader, taxonomy, device, amp, readout):
        keep = (label_column(y, LEAF) != BAD_IMAGE).cpu()
        for k, v in logp.items():
            parts.setdefault(k, []).append(v.cpu()[keep])
        labels.append(y.cpu()[keep])
    if not labels:
        return {k: torch.zeros(0, taxonomy.num_classes(k)) for k in KEYS}, torch.zeros(0, len(KEYS), dtype=torch.long)
    return {k: torch.cat(v) for k, v in parts.items()}, torch.cat(labels)


def _device_columns(logp: dict, labels: torch.Tensor, decoder: Decoder, energy: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's columns, on the device: ``(B, len(INT_COLUMNS))`` int64, ``(B, len(FLOAT_COLUMNS))`` float32,
    in the order of :data:`amanita.predictions.COLUMNS`."""
    from amanita.calibration import lineage_confidence
    preds = decoder.decode(logp)
    lconf = lineage_confidence(logp[LEAF], preds, decoder.ancestors)
    ints, floats = [], []
    for k in KEYS:
        lp, pred, true = logp[k], preds[k], label_column(labels, k)
        top = lp.topk(min(5, lp.shape[1]), dim=1).indices
        if top.shape[1] < 5:
            top = torch.cat([top, top.new_full((top.shape[0], 5 - top.shape[1]), -1)], dim=1)
        conf = lp.gather(1, pred[:, None]).squeeze(1).exp()
        ptrue = torch.where(true >= 0, lp.gather(1, true.clamp_min(0)[:, None]).squeeze(1).exp(),
                            torch.full_like(conf, float("nan")))
        ints += [true[:, None], pred[:, None], top]
        floats += [conf[:, None], lconf[k].float()[:, None], ptrue[:, None]]
    if energy is None:
        energy = torch.full((len(labels),), float("nan"), device=logp[LEAF].device)
    floats += [v.float()[:, None] for v in unknown_scores(logp[LEAF], energy).values()]  # SCORE_COLUMNS order
    return torch.cat(ints, 1).long(), torch.cat(floats, 1).float()


def _host_columns(ints: list, floats: list, index: list) -> dict[str, np.ndarray]:
    """Columns as numpy: the blocks joined on the device, then one host copy per dtype."""
    if ints:
        i, f, index = torch.cat(ints).cpu().numpy(), torch.cat(floats).cpu().numpy(), torch.cat(index).numpy()
    else:  # a rank with no samples
        i, f, index = np.zeros((0, len(INT_COLUMNS)), np.int64), np.zeros((0, len(FLOAT_COLUMNS)), np.float32), \
            np.zeros(0, np.int64)
    found = {"index": index} | {k: i[:, n] for n, k in enumerate(INT_COLUMNS)} | {
        k: f[:, n] for n, k in enumerate(FLOAT_COLUMNS)}
    return {k: found[k] for k in COLUMNS}


def summarize(preds: pd.DataFrame, taxonomy: Taxonomy) -> dict[str, float]:
    """Top-1 and macro-F1 (over classes present in the split) per key, for training logs.

    The same numbers as the report (``amanita.metrics.key_metrics``), named ``<key>/acc1``
    and ``<key>/f1``; keys without a known label are left out.
    """
    from amanita.metrics import key_metrics
    out = {}
    for k in KEYS:
        m = key_metrics(preds, k, taxonomy.num_classes(k))
        if m["n"]:
            out[f"{k}/acc1"], out[f"{k}/f1"] = m["top1"], m["macro_f1_present"]
    return out


def reduce_mean(values: dict[str, float], device) -> dict[str, float]:
    """Average per-rank numbers (train losses) over DDP ranks; one collective."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    t = all_reduce_sum(t) / world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def finite_or_raise(losses: dict[str, float], epoch: int) -> None:
    """Stop the run with one line (a :class:`~amanita.io.UserError`) when an epoch's mean loss is not finite."""
    bad = [k for k, v in losses.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise UserError(f"non-finite training loss in epoch {epoch + 1}: {bad}; lower --lr or use --amp bf16")
