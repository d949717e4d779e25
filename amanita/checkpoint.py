"""The checkpoint format: one plain dict, assembled and read here, written atomically, loaded with ``weights_only=True``.

:func:`checkpoint_state` says what a training checkpoint holds and :func:`restore_state` puts it
back, both from plain objects (:class:`Trainables`, a ``TrainState``, :class:`RunFacts`) — no run
object; :func:`upgrade_checkpoint` renames what earlier formats called otherwise; the model is
rebuilt for evaluation by :func:`load_for_eval`. Writing a run's checkpoints (in the background,
on a schedule) is :mod:`amanita.checkpoint_writer`'s, which this module does not import.
"""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from amanita.backbone import ModelSpec, weights_loaded_next
from amanita.distributed import stop_all_if_any
from amanita.io import UserError, atomic_torch_save, git_sha, load_tensor_file
from amanita.lora import (LoraSpec, adapt, base_weights, frozen_digest, frozen_names, load_partial,
                          merge_adapters, without)
from amanita.model import create_multitask_model, create_single_head_model
from amanita.seeding import capture_rng, restore_rng, seed_everything
from amanita.taxonomy import LEAF, Taxonomy

# 2: the category_id head is named "leaf" (version 1 called it "species")
# 3: the species-rank results are named species_f1 / species_acc1 (version 2: val_f1 / val_acc); see upgrade_checkpoint
CHECKPOINT_VERSION = 3


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (no ``module.``/``_orig_mod.``)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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
    head size and its training loss (``train/species/loss``) become ``leaf``. Versions 1 and 2 stored
    the species-rank validation results as ``val_f1``/``val_acc``: they become ``species_f1``/``species_acc1``
    (the metrics ``species/f1``, ``species/acc1``). The dict given is left as it is.
    """
    version = ckpt.get("format_version", 1)
    if version >= CHECKPOINT_VERSION:
        return ckpt
    ckpt = dict(ckpt, format_version=CHECKPOINT_VERSION)
    if version < 2:
        _name_the_leaf_head(ckpt)
    for old, new in RENAMED_RESULTS.items():  # version 2 → 3
        if old in ckpt:
            value = ckpt.pop(old)
            ckpt.setdefault(new, value)
    return ckpt


RENAMED_RESULTS = {"val_f1": "species_f1", "val_acc": "species_acc1"}  # format 2's names → format 3's


def _name_the_leaf_head(ckpt: dict) -> None:
    """Version 1 → 2, in place on a copy: ``species`` was the ``category_id`` head, now ``leaf``."""
    old = "heads.species."
    for key in ("model", "model_ema"):
        if ckpt.get(key) is not None:
            ckpt[key] = {("heads.leaf." + k[len(old):] if k.startswith(old) else k): v
                         for k, v in ckpt[key].items()}
    if ckpt.get("head_sizes"):
        ckpt["head_sizes"] = {(LEAF if k == "species" else k): v for k, v in ckpt["head_sizes"].items()}
    if "history" in ckpt:
        ckpt["history"] = [{(f"train/{LEAF}/loss" if k == "train/species/loss" else k): v for k, v in h.items()}
                           for h in ckpt["history"]]


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
            adapt(model, LoraSpec.from_plain(spec.lora), spec.data_config["input_size"])
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
    weights = base_weights(model, base.state_dict())
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
    info = {k: ckpt.get(k) for k in ("kind", "epoch", "step", "species_f1", "species_acc1", "taxonomy_sha256",
                                     "git_sha", "architecture", "created", "temperatures", "calibration",
                                     "open_set", "metadata_priors", "file", "weights_dtype", "tracking")}
    info["args"] = ckpt.get("args", {})
    info["path"] = str(path)
    info["ema"] = bool(use_ema and ckpt.get("model_ema") is not None) or bool(ckpt.get("ema_weights"))
    return model, tax, data_config, info


# ---------------------------------------------------------------------- a training run's checkpoint
def plain_flags(flags: dict) -> dict:
    """A run's flags (a config's ``to_dict()``) as plain types, so ``torch.load(weights_only=True)`` reads
    them (the checkpoint's ``args``)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in flags.items()
            if v is None or isinstance(v, (str, int, float, bool, list, tuple, dict))}


def _last(history: list, key: str):
    vals = [h[key] for h in history if key in h]
    return vals[-1] if vals else None


@functools.lru_cache(maxsize=1)
def process_git_sha() -> str | None:
    """The package's commit, read once per process: its code does not change under it, and two ``git``
    subprocesses at every save would hold rank 0's loop (seconds on a network file system)."""
    return git_sha()


@dataclass(frozen=True)
class Trainables:
    """The objects whose states a checkpoint holds (like DINO's ``restart_from_checkpoint(**objects)``).

    ``ema``: the averaged model (or timm's ``ModelEmaV3`` holding it); the others may be None
    where a run has none (no scheduler, no AMP scaler).
    """
    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object | None = None    # timm scheduler
    scaler: object | None = None       # torch.amp.GradScaler
    ema: nn.Module | None = None


@dataclass(frozen=True)
class RunFacts:
    """Plain values about a run: what its checkpoint records beside the states, and what a resume checks."""
    spec: ModelSpec                    # what builds the model (architecture, kwargs, data config, heads)
    taxonomy: Taxonomy
    flags: dict = field(default_factory=dict)  # the run's flags as plain types (plain_flags)
    seed: int = 0
    layout: tuple[int, int, int] = (1, 1, 1)  # (batch size, world size, accumulation): what an update is
    rank: int = 0
    updates_per_epoch: int | None = None  # in this layout: sizes the schedule
    lr_scaling: dict | None = None     # amanita.optim.resolve_lr: the peak lr and the global batch
    tracking: dict = field(default_factory=dict)  # the tracker's state (W&B id, TensorBoard dir)


def checkpoint_state(objects: Trainables, state, facts: RunFacts) -> dict:
    """Everything a checkpoint holds, as plain types and tensors: the states of ``objects``, where
    training stands (``state``, a :class:`~amanita.run.TrainState`) and ``facts``."""
    s, spec, tax = state, facts.spec, facts.taxonomy
    frozen = _frozen(objects.model, spec)
    return {
        "format_version": CHECKPOINT_VERSION,
        "model": without(unwrap(objects.model).state_dict(), frozen),
        "model_ema": without(unwrap(objects.ema).state_dict(), frozen) if objects.ema is not None else None,
        "optimizer": objects.optimizer.state_dict(),
        "scheduler": objects.scheduler.state_dict() if objects.scheduler is not None else None,
        "scaler": objects.scaler.state_dict() if objects.scaler is not None else None,
        "epoch": s.epoch, "step": s.step,
        "epoch_progress": {"loss_sums": {k: float(v) for k, v in s.epoch_sums.items()}, "batches": s.epoch_batches,
                           "images": s.epoch_images, "seconds": s.epoch_seconds},  # the epoch's log record so far
        "sampler": {"epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch, "batch_size": facts.layout[0],
                    "world_size": facts.layout[1], "accum_steps": facts.layout[2]},
        "rng": capture_rng(), "args": plain_flags(facts.flags), "kind": spec.kind,
        "architecture": spec.architecture, "model_kwargs": spec.kwargs, "lora": spec.lora,
        "head_sizes": tax.head_sizes() if spec.kind == "multitask" else None, "head_mode": spec.head_mode,
        "taxonomy": tax.to_dict(), "taxonomy_sha256": tax.sha256(),
        "data_config": dict(spec.data_config), "history": s.history,
        "best_metric": s.best_metric, "bad_epochs": s.bad_epochs,
        "species_f1": _last(s.history, "val/species/f1"), "species_acc1": _last(s.history, "val/species/acc1"),
        "lr_scaling": facts.lr_scaling,  # the resolved peak lr and global batch (amanita.optim.resolve_lr)
        "git_sha": process_git_sha(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tracking": dict(facts.tracking),  # W&B id, TensorBoard dir
    }


def _frozen(model: nn.Module, spec: ModelSpec) -> set[str]:
    """The weights an adapters-only LoRA checkpoint leaves out (``--lora-save adapters``), else none."""
    return frozen_names(unwrap(model)) if (spec.lora or {}).get("adapters_only") else set()


def _load_weights(module: nn.Module, state: dict, frozen: set[str]) -> None:
    if frozen:
        load_partial(module, state, frozen)
    else:
        module.load_state_dict(state)


def restore_state(ckpt: dict, path: str | os.PathLike, objects: Trainables, state, facts: RunFacts) -> None:
    """Put every state of ``ckpt`` back: weights, optimizer, schedule and scaler into ``objects``; epoch,
    step, position in the epoch, history into ``state`` (a :class:`~amanita.run.TrainState`); the RNG.

    ``facts`` describe the resuming run; a checkpoint of another run (model, flags, taxonomy) is refused.
    """
    if ckpt.get("file") == "inference":  # amanita.modelfile
        raise UserError(f"{path} is a model file for inference (export.py --format pth): it holds no training "
                        "state to resume; start from it with --init-from and a new --save-dir")
    check_compatible(ckpt, facts.taxonomy, facts.spec.kind, path, facts.spec.head_mode or "residual")
    check_same_run(ckpt, facts.spec, facts.flags, path)
    _restore_objects(ckpt, path, objects, _frozen(objects.model, facts.spec))
    same_layout = saved_layout(ckpt) == tuple(facts.layout)
    if objects.scheduler is not None and ckpt.get("scheduler") and same_layout:  # else: the one sized for this layout
        objects.scheduler.load_state_dict(ckpt["scheduler"])
    if objects.scaler is not None and ckpt.get("scaler"):
        objects.scaler.load_state_dict(ckpt["scaler"])
    state.epoch, state.step, state.history = ckpt["epoch"], ckpt["step"], list(ckpt.get("history", []))
    state.best_metric, state.bad_epochs = ckpt.get("best_metric"), ckpt.get("bad_epochs", 0)
    state.batch_in_epoch = ckpt["sampler"]["batch_in_epoch"]
    if not same_layout:
        adopt_layout(state, ckpt, path, facts)
    restore_epoch_progress(state, ckpt)
    restore_rng(ckpt["rng"])  # rank 0's streams; the other ranks draw their own from seed + rank
    if facts.rank:
        seed_everything(facts.seed + facts.rank + 7919 * ckpt["step"])


def _restore_objects(ckpt: dict, path: str | os.PathLike, objects: Trainables, frozen: set[str]) -> None:
    """The weights (and the EMA's) and the optimizer's state; one line when they do not fit."""
    try:
        _load_weights(unwrap(objects.model), ckpt["model"], frozen)
        if objects.ema is not None and ckpt.get("model_ema") is not None:
            _load_weights(unwrap(objects.ema), ckpt["model_ema"], frozen)
        if objects.optimizer is not None:
            objects.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{path} does not fit this run ({str(e).strip().splitlines()[0][:160]}); resume with "
                        "the flags it was trained with or start a new --save-dir (or --resume none)") from None


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


def adopt_layout(state, ckpt: dict, path: str | os.PathLike, facts: RunFacts) -> None:
    """Resume under another layout: the schedule is the one sized for this layout (timm's scheduler
    counts updates), and the run restarts the saved epoch where a fresh run of this layout starts it."""
    (b, w, a), (b2, w2, a2), upe = saved_layout(ckpt), facts.layout, facts.updates_per_epoch
    state.batch_in_epoch = 0
    if upe is not None:
        state.step = state.epoch * upe
    if facts.rank == 0:
        redo = f" (its {ckpt['sampler']['batch_in_epoch']} batches done are trained again)" \
            if ckpt["sampler"]["batch_in_epoch"] else ""
        print(f"{path} was saved with batch {b} × {w} process(es) × accumulation {a}, this run uses {b2} × {w2} × "
              f"{a2}: schedule rebuilt for this layout ({upe} updates per epoch), resuming at "
              f"update {state.step}, the start of epoch {state.epoch + 1}{redo}", flush=True)


def check_same_run(ckpt: dict, spec: ModelSpec, flags: dict, path: str | os.PathLike) -> None:
    """Resuming needs the same architecture and optimizer layout; say which flag differs.

    ``spec`` builds the resuming run's model; ``flags`` are its flags as plain types (:func:`plain_flags`)."""
    def canon(x):
        return json.dumps(x, sort_keys=True, default=str)
    have = (ckpt.get("architecture"), canon(dict(ckpt.get("model_kwargs") or {})))
    want = (spec.architecture, canon(dict(spec.kwargs or {})))
    if have != want:
        raise UserError(f"{path} holds a {have[0]} {have[1]} model, this run builds {want[0]} {want[1]}; "
                        "resume with its --model/--model-args or start a new --save-dir (or --resume none)")
    base = (ckpt.get("lora") or {}).get("base_sha256")
    if base and base != (spec.lora or {}).get("base_sha256"):
        raise UserError(f"{path} holds LoRA adapters trained on other frozen weights than --init-from gives now; "
                        "resume from the run's start checkpoint as it was, or start a new --save-dir")
    saved = ckpt.get("args") or {}
    for flag in ("layer_decay", "opt", "lora_rank", "lora_alpha", "lora_targets", "freeze_backbone"):
        if flag in saved and saved[flag] != flags.get(flag):
            raise UserError(f"{path} was trained with --{flag.replace('_', '-')} {saved[flag]}, this run asks "
                            f"for {flags.get(flag)}; resume with the same value or start a new "
                            "--save-dir (or --resume none)")


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
