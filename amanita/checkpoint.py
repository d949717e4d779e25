"""Checkpoints: one plain dict, assembled and read here, written atomically, loaded with ``weights_only=True``.

:class:`Checkpointer` is the one place a training run is saved (:meth:`Checkpointer.save`) and
restored; :func:`checkpoint_state` says what a checkpoint holds and :func:`restore_state` puts
it back into a :class:`~amanita.run.Run`.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import random
import re
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from amanita.backbone import ModelSpec, weights_loaded_next
from amanita.distributed import broadcast_from_main, stop_all_if_any
from amanita.faults import fault_point
from amanita.io import UserError, atomic_torch_save, atomic_write_stream, git_sha, load_tensor_file
from amanita.lora import (LoraSpec, adapt, base_weights, frozen_digest, frozen_names, load_partial,
                          merge_adapters, without)
from amanita.model import create_multitask_model, create_single_head_model
from amanita.taxonomy import LEAF, Taxonomy

# 2: the category_id head is named "leaf" (version 1 called it "species"); see upgrade_checkpoint
CHECKPOINT_VERSION = 2


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (no ``module.``/``_orig_mod.``)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def capture_rng() -> dict:
    """Every RNG the training step draws from, as tensors and plain types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Atomic save: a kill at any instant leaves the previous file whole."""
    atomic_torch_save(state, path)


def load_checkpoint(path: str | os.PathLike, mmap: bool = False, for_model: bool = False) -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True``; problems are a one-line :class:`UserError`.

    ``mmap=True``: the file is mapped, not read, so what the caller does not use (a training
    checkpoint's optimizer state, when evaluating) is never read from the disk.
    ``for_model``: the model will be rebuilt from it, so everything that takes is checked now
    (:func:`check_checkpoint`); otherwise only that it is a dict with weights.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    ckpt = load_tensor_file(path, "an amanita checkpoint or model file", mmap)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        what = f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else f"a dict of {len(ckpt)} entries"
        raise UserError(f"{path} is not an amanita checkpoint ({what}, no 'model' entry); expected {WRITTEN_BY}")
    if for_model:
        check_checkpoint(ckpt, path)
    return upgrade_checkpoint(ckpt)


DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct")
WRITTEN_BY = "one written by train_multitask.py, train_minimal.py or distill.py"


def check_checkpoint(ckpt, path: str | os.PathLike) -> None:
    """One line saying what ``ckpt`` is and what was expected, unless it is a whole amanita checkpoint.

    Checked once at the loading boundary, so no script meets a ``KeyError`` later: the weights,
    the taxonomy (its structure too), the architecture and a complete data config.
    """
    missing = [k for k in ("taxonomy", "architecture", "data_config") if not ckpt.get(k)]
    if missing:
        raise UserError(f"{path} holds model weights without {', '.join(repr(k) for k in missing)}: a bare "
                        f"state_dict (e.g. published backbone weights) is not an amanita checkpoint; expected "
                        f"{WRITTEN_BY} (start from published weights with --model/--pretrained-file)")
    cfg = ckpt["data_config"]
    absent = [k for k in DATA_CONFIG_KEYS if not isinstance(cfg, dict) or cfg.get(k) in (None, "", [], ())]
    if absent:
        raise UserError(f"{path}: its data_config lacks {', '.join(absent)}; expected {WRITTEN_BY}, whose "
                        f"data_config holds {', '.join(DATA_CONFIG_KEYS)}")
    if not isinstance(ckpt["taxonomy"], dict):
        raise UserError(f"{path}: its 'taxonomy' is a {type(ckpt['taxonomy']).__name__}, not a mappings document")
    from amanita.taxonomy import check_mappings
    check_mappings(ckpt["taxonomy"], f"the taxonomy stored in {path}")


def upgrade_checkpoint(ckpt: dict) -> dict:
    """A checkpoint of an earlier format with today's names, so it loads and resumes as it was.

    Version 1 named the ``category_id`` head ``species``: its weights (``heads.species.*``), its
    head size and its training loss (``train/species/loss``) become ``leaf``.
    """
    if ckpt.get("format_version", 1) >= CHECKPOINT_VERSION:
        return ckpt
    old = "heads.species."
    ckpt = dict(ckpt, format_version=CHECKPOINT_VERSION)
    for key in ("model", "model_ema"):
        if ckpt.get(key) is not None:
            ckpt[key] = {("heads.leaf." + k[len(old):] if k.startswith(old) else k): v
                         for k, v in ckpt[key].items()}
    if ckpt.get("head_sizes"):
        ckpt["head_sizes"] = {(LEAF if k == "species" else k): v for k, v in ckpt["head_sizes"].items()}
    if "history" in ckpt:
        ckpt["history"] = [{(f"train/{LEAF}/loss" if k == "train/species/loss" else k): v for k, v in h.items()}
                           for h in ckpt["history"]]
    return ckpt


PLAIN_TYPES = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value, where: str) -> None:
    """Raise a UserError unless ``value`` is plain (dicts, lists, numbers, strings, tensors)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise UserError(f"{where}: key {k!r} is not a str or int")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, PLAIN_TYPES):
        raise UserError(f"{where} is a {type(value).__name__}, not a plain type a weights_only load accepts")


def update_checkpoint(path: str | os.PathLike, **fields) -> None:
    """Add or replace top-level entries of a checkpoint file, atomically.

    What validation measures for later inference (an unknown-species threshold, per-rank
    temperatures) is stored this way beside the weights, so test.py finds it with the model.
    Values must be plain types (checked first, nothing is written otherwise); a kill while
    writing leaves the previous file whole.
    """
    for key, value in fields.items():
        _check_plain(value, key)
    ckpt = load_checkpoint(path)
    ckpt.update(fields)
    save_checkpoint(ckpt, path)


def check_compatible(ckpt: dict, taxonomy: Taxonomy, kind: str, path: str | os.PathLike,
                     head_mode: str = "residual") -> None:
    """Refuse a checkpoint made with another taxonomy or another head layout."""
    if ckpt.get("taxonomy_sha256") not in (None, taxonomy.sha256()):
        raise UserError(f"{path} was trained with another taxonomy (sha256 {ckpt['taxonomy_sha256'][:12]}…, "
                        f"this run {taxonomy.sha256()[:12]}…); use its mappings or start a new --save-dir")
    if ckpt.get("kind") != kind:
        raise UserError(f"{path} holds a {ckpt.get('kind')} model, this run trains a {kind} model")
    if kind == "multitask":
        if ckpt.get("head_mode", "residual") != head_mode:
            raise UserError(f"{path} has {ckpt.get('head_mode')} coarse heads, this run asks for {head_mode}")
        want = taxonomy.head_sizes()
        have = ckpt.get("head_sizes")
        if have != want:
            raise UserError(f"{path} has heads {have}, this run needs {want}")


def model_spec(ckpt: dict) -> ModelSpec:
    """What the checkpoint says rebuilds its model (architecture, kwargs, data config, heads)."""
    multitask = ckpt.get("kind") == "multitask"
    return ModelSpec("multitask" if multitask else "single", ckpt["architecture"],
                     dict(ckpt.get("model_kwargs") or {}), dict(ckpt.get("data_config") or {}),
                     ckpt.get("head_mode", "residual") if multitask else None, ckpt.get("lora"))


def build_from_checkpoint(ckpt: dict, device="cpu") -> tuple[nn.Module, Taxonomy, dict]:
    """Rebuild the model a checkpoint or model file describes (no weights downloaded) and load its weights.

    The backbone is made without initialising its weights (they are loaded next) and takes the
    file's tensors as they are (``assign``); weights stored in bf16/fp16 are widened to fp32.
    """
    tax, spec = Taxonomy.from_dict(ckpt["taxonomy"], "the checkpoint's taxonomy"), model_spec(ckpt)
    kw = dict(model_args=spec.kwargs, pretrained=False)
    if spec.kind == "multitask":
        make, kw["head_mode"] = create_multitask_model, spec.head_mode
    else:
        make = create_single_head_model
    weights = {k: v.float() if v.dtype in (torch.bfloat16, torch.float16) else v for k, v in ckpt["model"].items()}
    try:
        with weights_loaded_next():
            model = make(spec.architecture, tax, **kw)
        if spec.lora:  # the run's adapters, folded into plain weights once loaded
            adapt(model, LoraSpec.from_plain(spec.lora), spec.data_config["input_size"], spec.kind == "multitask")
            if spec.lora.get("adapters_only"):
                weights = _lora_base(model, spec) | weights
        model.load_state_dict(weights, assign=True)
        if spec.lora:
            merge_adapters(model)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"checkpoint weights do not fit {spec.architecture}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), tax, spec.data_config


def _lora_base(model: nn.Module, spec: ModelSpec) -> dict:
    """The frozen weights of an adapters-only LoRA checkpoint, from the start it names (checked by digest)."""
    path = spec.lora["base"]
    try:
        base, _, _ = build_from_checkpoint(load_checkpoint(path, mmap=True))
    except UserError as e:
        raise UserError(f"this checkpoint holds LoRA adapters only; their frozen weights come from {path}: {e}") from None
    weights = base_weights(model, base.state_dict(), spec.kind == "multitask")
    probe = {n: p for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, value in weights.items():
            probe[name].copy_(value)
    if frozen_digest(model) != spec.lora["base_sha256"]:
        raise UserError(f"{path} no longer holds the weights these LoRA adapters were trained on (its digest "
                        "differs); use the run's start checkpoint as it was")
    return weights


def load_for_eval(path: str | os.PathLike, device="cpu", use_ema: bool = True
                  ) -> tuple[nn.Module, Taxonomy, dict, dict]:
    """``(model, taxonomy, data_config, info)`` for evaluation; EMA weights when present."""
    ckpt = load_checkpoint(path, mmap=True, for_model=True)
    if use_ema and ckpt.get("model_ema") is not None:
        ckpt = dict(ckpt, model=ckpt["model_ema"])
    model, tax, data_config = build_from_checkpoint(ckpt, device)
    info = {k: ckpt.get(k) for k in ("kind", "epoch", "step", "val_f1", "val_acc", "taxonomy_sha256",
                                     "git_sha", "architecture", "created", "temperatures", "calibration",
                                     "open_set", "metadata_priors", "file", "weights_dtype")}
    info["args"] = ckpt.get("args", {})
    info["path"] = str(path)
    info["ema"] = bool(use_ema and ckpt.get("model_ema") is not None) or bool(ckpt.get("ema_weights"))
    return model, tax, data_config, info


# ---------------------------------------------------------------------- a training run's checkpoint
def plain_args(args) -> dict:
    """Arguments (a Namespace or dict) as plain types, so ``torch.load(weights_only=True)`` reads them."""
    d = vars(args) if not isinstance(args, dict) else args
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()
            if v is None or isinstance(v, (str, int, float, bool, list, tuple, dict))}


def _last(history: list, key: str):
    vals = [h[key] for h in history if key in h]
    return vals[-1] if vals else None


@functools.lru_cache(maxsize=1)
def process_git_sha() -> str | None:
    """The package's commit, read once per process: its code does not change under it, and two ``git``
    subprocesses at every save would hold rank 0's loop (seconds on a network file system)."""
    return git_sha()


def checkpoint_state(run) -> dict:
    """Everything a checkpoint of ``run`` (an :class:`amanita.run.Run`) holds, as plain types and tensors."""
    s, spec, tax = run.state, run.spec, run.taxonomy
    return {
        "format_version": CHECKPOINT_VERSION,
        "model": without(unwrap(run.model).state_dict(), _frozen(run)),
        "model_ema": without(unwrap(run.ema.module).state_dict(), _frozen(run)) if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "epoch": s.epoch, "step": s.step,
        "epoch_progress": {"loss_sums": {k: float(v) for k, v in s.epoch_sums.items()}, "batches": s.epoch_batches,
                           "images": s.epoch_images, "seconds": s.epoch_seconds},  # the epoch's log record so far
        "sampler": {"epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch, "batch_size": run.cfg.batch_size,
                    "world_size": run.dist.world_size, "accum_steps": run.config.accum_steps},
        "rng": capture_rng(), "args": run.cfg.to_dict(), "kind": spec.kind,
        "architecture": spec.architecture, "model_kwargs": spec.kwargs, "lora": spec.lora,
        "head_sizes": tax.head_sizes() if spec.kind == "multitask" else None, "head_mode": spec.head_mode,
        "taxonomy": tax.to_dict(), "taxonomy_sha256": tax.sha256(),
        "data_config": dict(spec.data_config), "history": s.history,
        "best_metric": s.best_metric, "bad_epochs": s.bad_epochs,
        "val_f1": _last(s.history, "val/species/f1"), "val_acc": _last(s.history, "val/species/acc1"),
        "lr_scaling": run.cfg.lr_scaling,  # the resolved peak lr and global batch (amanita.optim.resolve_lr)
        "git_sha": process_git_sha(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tracking": run.tracker.state() if run.tracker else dict(run.tracking),  # W&B id, TensorBoard dir
    }


def _frozen(run) -> set[str]:
    """The weights an adapters-only LoRA checkpoint leaves out (``--lora-save adapters``), else none."""
    return frozen_names(unwrap(run.model)) if (run.spec.lora or {}).get("adapters_only") else set()


def _load_weights(module: nn.Module, state: dict, frozen: set[str]) -> None:
    if frozen:
        load_partial(module, state, frozen)
    else:
        module.load_state_dict(state)


def restore_state(run, ckpt: dict, path: str | os.PathLike) -> None:
    """Put every state of ``ckpt`` back into ``run``: weights, optimizer, schedule, position, RNG."""
    if ckpt.get("file") == "inference":  # amanita.modelfile
        raise UserError(f"{path} is a model file for inference (export.py --format pth): it holds no training "
                        "state to resume; start from it with --init-from and a new --save-dir")
    check_compatible(ckpt, run.taxonomy, run.spec.kind, path, run.spec.head_mode or "residual")
    check_same_run(ckpt, run, path)
    try:
        frozen = _frozen(run)
        _load_weights(unwrap(run.model), ckpt["model"], frozen)
        if run.ema is not None and ckpt.get("model_ema") is not None:
            _load_weights(unwrap(run.ema.module), ckpt["model_ema"], frozen)
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{path} does not fit this run ({str(e).strip().splitlines()[0][:160]}); resume with "
                        "the flags it was trained with or start a new --save-dir (or --resume none)") from None
    same_layout = saved_layout(ckpt) == run_layout(run)
    if run.scheduler is not None and ckpt.get("scheduler") and same_layout:  # else: the one sized for this layout
        run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    s, state, dist = ckpt["sampler"], run.state, run.dist
    state.epoch, state.step, state.history = ckpt["epoch"], ckpt["step"], list(ckpt.get("history", []))
    state.best_metric, state.bad_epochs = ckpt.get("best_metric"), ckpt.get("bad_epochs", 0)
    run.tracking = dict(ckpt.get("tracking") or {})
    state.batch_in_epoch = s["batch_in_epoch"]
    if not same_layout:
        adopt_layout(run, ckpt, path)
    restore_epoch_progress(state, ckpt)
    restore_rng(ckpt["rng"])  # rank 0's streams; the other ranks draw their own from seed + rank
    if dist.rank:
        seed_everything(run.cfg.seed + dist.rank + 7919 * ckpt["step"])


def restore_epoch_progress(state, ckpt: dict) -> None:
    """The interrupted epoch's running loss sums, batch and image counts and seconds (its log record so far);
    nothing when the epoch restarts from its beginning (a finished epoch, or another layout)."""
    progress = (ckpt.get("epoch_progress") or {}) if state.batch_in_epoch else {}
    state.epoch_sums = dict(progress.get("loss_sums", {}))
    state.epoch_batches, state.epoch_images = progress.get("batches", 0), progress.get("images", 0)
    state.epoch_seconds = progress.get("seconds", 0.0)


def saved_layout(ckpt: dict) -> tuple[int, int, int]:
    """``(batch size, world size, accumulation)`` of the run that wrote ``ckpt``: what an update is."""
    s = ckpt["sampler"]
    accum = s.get("accum_steps", (ckpt.get("args") or {}).get("accum_steps", 1))  # older files: the flag
    return s["batch_size"], s["world_size"], max(int(accum or 1), 1)


def run_layout(run) -> tuple[int, int, int]:
    return run.cfg.batch_size, run.dist.world_size, run.config.accum_steps


def adopt_layout(run, ckpt: dict, path: str | os.PathLike) -> None:
    """Resume under another layout: the schedule is the one sized for this layout (timm's scheduler
    counts updates), and the run restarts the saved epoch where a fresh run of this layout starts it."""
    state, (b, w, a), (b2, w2, a2) = run.state, saved_layout(ckpt), run_layout(run)
    state.batch_in_epoch = 0
    if run.updates_per_epoch is not None:
        state.step = state.epoch * run.updates_per_epoch
    if run.dist.is_main:
        redo = f" (its {ckpt['sampler']['batch_in_epoch']} batches done are trained again)" \
            if ckpt["sampler"]["batch_in_epoch"] else ""
        print(f"{path} was saved with batch {b} × {w} process(es) × accumulation {a}, this run uses {b2} × {w2} × "
              f"{a2}: schedule rebuilt for this layout ({run.updates_per_epoch} updates per epoch), resuming at "
              f"update {state.step}, the start of epoch {state.epoch + 1}{redo}", flush=True)


def check_same_run(ckpt: dict, run, path: str | os.PathLike) -> None:
    """Resuming needs the same architecture and optimizer layout; say which flag differs."""
    def canon(x):
        return json.dumps(x, sort_keys=True, default=str)
    have = (ckpt.get("architecture"), canon(dict(ckpt.get("model_kwargs") or {})))
    want = (run.spec.architecture, canon(dict(run.spec.kwargs or {})))
    if have != want:
        raise UserError(f"{path} holds a {have[0]} {have[1]} model, this run builds {want[0]} {want[1]}; "
                        "resume with its --model/--model-args or start a new --save-dir (or --resume none)")
    base = (ckpt.get("lora") or {}).get("base_sha256")
    if base and base != (run.spec.lora or {}).get("base_sha256"):
        raise UserError(f"{path} holds LoRA adapters trained on other frozen weights than --init-from gives now; "
                        "resume from the run's start checkpoint as it was, or start a new --save-dir")
    saved, now = ckpt.get("args") or {}, run.cfg.to_dict()
    for flag in ("layer_decay", "opt", "lora_rank", "lora_alpha", "lora_targets", "freeze_backbone"):
        if flag in saved and saved[flag] != now.get(flag):
            raise UserError(f"{path} was trained with --{flag.replace('_', '-')} {saved[flag]}, this run asks "
                            f"for {now.get(flag)}; resume with the same value or start a new "
                            "--save-dir (or --resume none)")


class Checkpointer:
    """Where and when a run is saved: ``last.pth`` / ``best_model.pth`` in ``save_dir``, on rank 0.

    :meth:`save` is the one place a checkpoint is written: a CPU snapshot that a background
    thread writes (:class:`CheckpointWriter`; ``background=False`` writes in the loop).
    :meth:`after_update` is called by the loop after every optimizer update and saves
    ``last.pth`` when the :class:`SaveSchedule` (every N updates and/or M minutes) says so.
    :meth:`close` waits for the last write; call it before the process ends.
    """

    def __init__(self, save_dir: str | os.PathLike, resume: str | None = "auto", every_steps: int = 0,
                 every_minutes: float = 0.0, background: bool = True):
        self.dir, self.resume = Path(save_dir), resume
        self.schedule = SaveSchedule(every_steps, every_minutes)
        self.writer = CheckpointWriter(background)
        self.reserved = False

    def start(self, run) -> None:
        """Before the loop: start the clock. Rank 0's snapshot buffers are reserved after the first update,
        once the optimizer's state (AdamW's moments: twice the weights) exists, not by the first save."""
        self.schedule.saved()

    def save(self, run, name: str = "last.pth", also: tuple[str, ...] = ()) -> None:
        """Snapshot ``run`` as ``save_dir/name`` (and link ``also`` to it); rank 0 only, written in the background."""
        if run.dist.is_main:
            self.writer.save(checkpoint_state(run), self.dir / name, [self.dir / a for a in also])
        self.schedule.saved()

    def after_update(self, run) -> None:
        """``last.pth`` when the schedule says it is due (neither set: only at the ends of epochs)."""
        if self.schedule.due(run.state.step):
            self.save(run, "last.pth")
        elif not self.reserved and run.dist.is_main:
            self.writer.reserve(checkpoint_state(run))  # a one-off, at the first update
        self.reserved = True

    def wait(self) -> None:
        """Block until the last write is on disk (before reading a checkpoint back); raise if it failed."""
        self.writer.wait()

    def close(self, raise_error: bool = True) -> None:
        """Wait for the last write; with ``raise_error=False`` (the run is failing anyway) a write error was printed."""
        try:
            self.writer.close()
        except CheckpointWriteError:
            if raise_error:
                raise

    def resume_path(self) -> Path | None:
        """The checkpoint to resume: ``--resume`` as given, ``auto`` = ``last.pth`` when it exists.

        Rank 0 decides whether it exists and every rank follows (see :func:`load_on_every_rank`)."""
        if self.resume in (None, "", "none"):
            return None
        if self.resume == "auto":
            p = self.dir / "last.pth"
            return p if broadcast_from_main(p.is_file()) else None
        return Path(self.resume)

    def restore(self, run, path: str | os.PathLike) -> None:
        """Load ``path`` (on every rank) and put every state back into ``run``."""
        restore_state(run, load_on_every_rank(load_resumable, path, run.dist.rank), path)


def load_resumable(path: str | os.PathLike) -> dict:
    """A checkpoint to resume from: one with the training state (a model file is refused by restore_state)."""
    ckpt = load_checkpoint(path)  # the model comes from this run's flags: only the training state is needed
    missing = [k for k in ("optimizer", "sampler", "rng", "epoch", "step") if k not in ckpt]
    if missing and ckpt.get("file") != "inference":
        raise UserError(f"{path} cannot be resumed: it has no {', '.join(missing)} (a model-only checkpoint); "
                        "start from it with --init-from, or use --resume none")
    return ckpt


def load_on_every_rank(load: Callable, path: str | os.PathLike, rank: int):
    """``load(path)`` on every rank, which all call it; when a rank cannot, every rank stops with one line.

    Rank 0 decided that ``path`` is there (it wrote it): a rank that cannot read it is on a node
    that does not share the checkpoint folder, and going on would diverge or hang a collective.
    """
    result, error = None, None
    try:
        result = load(path)
    except (UserError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        error = reason if rank == 0 else (f"rank {rank} cannot read {path}, which rank 0 reads: the checkpoint folder "
                                          f"{Path(path).parent} must be shared by every node ({reason})")
    stop_all_if_any(error)
    return result


# ---------------------------------------------------------------------- background writing
WRITE_DELAY_ENV = "AMANITA_TEST_CHECKPOINT_WRITE_DELAY_S"  # tests: hold each write before its rename
_TEMPORARY = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")  # what io's atomic writes leave when killed


class CheckpointWriteError(UserError):
    """A checkpoint could not be written: the run stops, the previous file is still whole."""


class SaveSchedule:
    """When to save ``last.pth``: every ``every_steps`` updates and/or every ``every_minutes`` minutes.

    Checked at update boundaries; either condition makes a save due, and a save resets the clock.
    """

    def __init__(self, every_steps: int = 0, every_minutes: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.every_steps, self.every_s, self.clock = every_steps, 60.0 * every_minutes, clock
        self.last = clock()

    def due(self, step: int) -> bool:
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = bool(self.every_s) and self.clock() - self.last >= self.every_s
        return by_steps or by_time

    def saved(self) -> None:
        self.last = self.clock()


class CheckpointWriter:
    """Writes checkpoints from a CPU snapshot on a background thread, so training waits only for the copy.

    ``save`` waits for the previous write, copies every tensor of the state into CPU buffers
    (reused from save to save; pinned and asynchronous for CUDA tensors), and returns; a thread
    then writes the file atomically and links the extra names to it. ``close`` waits for the last
    write. A failed write is printed at once and raised as :class:`CheckpointWriteError` by the
    next ``save``/``wait``/``close``. ``background=False`` writes in the caller (the old behaviour).
    """

    def __init__(self, background: bool = True):
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._from_cuda = False

    def save(self, state: dict, path: str | os.PathLike, also: Iterable[str | os.PathLike] = ()) -> float:
        """Snapshot ``state`` and write it to ``path`` (and ``also``); returns the seconds the caller was held."""
        t0 = time.perf_counter()
        self.wait()
        snap, ready = self._snapshot(state)
        job = (snap, ready, Path(path), [Path(a) for a in also])
        if self.background:
            self._thread = threading.Thread(target=self._write, args=job, name="checkpoint-writer")
            self._thread.start()
        else:
            self._write(*job)
            self.wait()
        return time.perf_counter() - t0

    def reserve(self, state: dict) -> float:
        """Allocate (and touch) the snapshot buffers for ``state`` now, e.g. at start-up; returns seconds.

        The first snapshot otherwise pays for faulting in a fresh gigabyte inside the loop.
        """
        t0 = time.perf_counter()
        self.wait()
        snap, ready = self._snapshot(state)
        if ready is not None:
            ready.synchronize()
        return time.perf_counter() - t0

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise if a write failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointWriteError(error)

    close = wait

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _snapshot(self, obj, key: str = ""):
        """``(copy, ready)``: ``obj`` with every tensor copied to CPU; ``ready`` is a CUDA event or None."""
        self._from_cuda = False
        snap = self._copy(obj, key)
        ready = None
        if self._from_cuda:
            ready = torch.cuda.Event()
            ready.record()  # the copies are queued on the current stream, before any later update
        return snap, ready

    def _copy(self, obj, key: str):
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj.detach(), key)
        if isinstance(obj, dict):
            return {k: self._copy(v, f"{key}/{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            items = [self._copy(v, f"{key}/{i}") for i, v in enumerate(obj)]
            return items if isinstance(obj, list) else tuple(items)
        if obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            return obj
        return copy.deepcopy(obj)

    def _copy_tensor(self, t: torch.Tensor, key: str) -> torch.Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            self._buffers[key] = buf
        self._from_cuda |= t.is_cuda
        return buf.copy_(t, non_blocking=t.is_cuda)

    def _write(self, snap: dict, ready, path: Path, also: list[Path]) -> None:
        try:
            if ready is not None:
                ready.synchronize()
            # the extra names (best_model.pth) first, path (last.pth) last: a kill in between leaves an old
            # last.pth, whose resume redoes the epoch and links best again; the other way round, the
            # resumed run would count the epoch as saved and never write its best_model.pth
            names = [*also, path]
            atomic_write_stream(names[0], lambda f: _save_then_pause(snap, f))
            for other in names[1:]:
                fault_point("linked")
                link_or_copy(names[0], other)
            if also:
                fault_point("best")
        except BaseException as e:  # noqa: BLE001 - reported to the training loop, never lost
            reason = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"  # io names the cause
            self._error = (f"writing checkpoint {path} failed: {reason}; "
                           f"the previous {path.name} is intact, training stopped")
            print(f"error: {self._error}", file=sys.stderr, flush=True)


def _save_then_pause(obj, f) -> None:
    torch.save(obj, f)
    fault_point("write")  # the fault matrix: a kill while the temporary file is written, before its rename
    delay = float(os.environ.get(WRITE_DELAY_ENV, 0) or 0)
    if delay:  # tests: a write in flight that a SIGKILL can land in
        f.flush()
        time.sleep(delay)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` the file ``src`` atomically: a hard link (no second write), or a copy where links fail.

    Like timm's ``CheckpointSaver``; ``src`` being replaced later by a rename leaves ``dst`` as it was.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.link(src, tmp)
    except OSError:  # a file system without hard links
        with open(src, "rb") as f:
            atomic_write_stream(dst, lambda out: shutil.copyfileobj(f, out, 16 << 20))
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files a killed atomic write left in ``folder``; returns what was removed.

    With ``names``, only the temporaries of those files (``.<name>.<8 characters>.tmp``) are touched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keep = None if names is None else set(names)
    stale = [p for p in folder.iterdir() if p.is_file() and (m := _TEMPORARY.match(p.name))
             and (keep is None or m.group(1) in keep)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
