"""Checkpoints: one plain dict, written atomically, read with ``weights_only=True``."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from amanita.io import UserError, atomic_torch_save
from amanita.taxonomy import Taxonomy

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


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Atomic save: a kill at any instant leaves the previous file whole."""
    atomic_torch_save(state, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; problems are a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
        raise UserError(f"{path} cannot be read as an amanita checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path} is not an amanita checkpoint (no 'model' entry)")
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


def build_from_checkpoint(ckpt: dict, device="cpu") -> tuple[nn.Module, Taxonomy, dict]:
    """Rebuild the model a checkpoint describes (no weights downloaded) and load its weights."""
    from amanita.model import create_multitask_model, create_single_head_model
    tax = Taxonomy.from_dict(ckpt["taxonomy"])
    arch = ckpt["architecture"]
    kw = dict(model_args=dict(ckpt.get("model_kwargs") or {}), pretrained=False)
    if ckpt.get("kind") == "multitask":
        make, kw["head_mode"] = create_multitask_model, ckpt.get("head_mode", "residual")
    else:
        make = create_single_head_model
    try:
        model = make(arch, tax, **kw)
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError) as e:
        raise UserError(f"checkpoint weights do not fit {arch}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), tax, dict(ckpt.get("data_config", {}))


def load_for_eval(path: str | os.PathLike, device="cpu", use_ema: bool = True
                  ) -> tuple[nn.Module, Taxonomy, dict, dict]:
    """``(model, taxonomy, data_config, info)`` for evaluation; EMA weights when present."""
    ckpt = load_checkpoint(path)
    if use_ema and ckpt.get("model_ema") is not None:
        ckpt = dict(ckpt, model=ckpt["model_ema"])
    model, tax, data_config = build_from_checkpoint(ckpt, device)
    info = {k: ckpt.get(k) for k in ("kind", "epoch", "step", "val_f1", "val_acc", "taxonomy_sha256",
                                     "git_sha", "architecture", "created", "temperatures", "calibration")}
    info["args"] = ckpt.get("args", {})
    info["path"] = str(path)
    info["ema"] = bool(use_ema and ckpt.get("model_ema") is not None)
    return model, tax, data_config, info
