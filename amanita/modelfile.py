"""The inference model file (``export.py --format pth``): a checkpoint made for answering.

It is an amanita checkpoint without what only training needs: one set of weights (the EMA's
when the run kept one), optionally stored in bf16/fp16, beside everything inference reads — the
architecture, data config, taxonomy and its digest, temperatures, the stored unknown-species
threshold, and any other entry validation or later tools stored (metadata priors, a prior
weight): only the training state is dropped, so entries this module does not know are carried.
It loads with ``torch.load(weights_only=True)`` and everywhere a checkpoint does
(:func:`amanita.checkpoint.load_for_eval` reads both).
"""
from __future__ import annotations

import os

import torch

from amanita.checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from amanita.io import UserError

# what a training checkpoint holds only to train on (optimizer, schedule, position, RNG, log)
TRAINING_ONLY = ("optimizer", "scheduler", "scaler", "rng", "sampler", "model_ema", "history", "best_metric",
                 "bad_epochs", "lr_scaling")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FILE_KIND = "inference"


def inference_state(ckpt: dict, use_ema: bool = True, dtype: str = "float32") -> dict:
    """The model file's dict from a loaded checkpoint: weights (EMA when kept and ``use_ema``) in ``dtype``."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    ema = bool(use_ema and ckpt.get("model_ema") is not None) or bool(ckpt.get("ema_weights"))
    weights = ckpt["model_ema"] if use_ema and ckpt.get("model_ema") is not None else ckpt["model"]
    cast = DTYPES[dtype]
    out = {k: v for k, v in ckpt.items() if k not in TRAINING_ONLY}
    out.update(format_version=max(CHECKPOINT_VERSION, ckpt.get("format_version", 1)), file=FILE_KIND,
               model={k: v.to(cast) if v.is_floating_point() else v for k, v in weights.items()},
               weights_dtype=dtype, ema_weights=ema)
    return out


def write_model_file(checkpoint: str | os.PathLike, path: str | os.PathLike, use_ema: bool = True,
                     dtype: str = "float32") -> dict:
    """Write the model file of ``checkpoint`` to ``path`` atomically; returns what it holds."""
    state = inference_state(load_checkpoint(checkpoint, mmap=True), use_ema, dtype)
    save_checkpoint(state, path)
    return state


def tolerance(dtype: str) -> float:
    """Largest logit difference expected from storing weights in ``dtype`` (float32: none but rounding)."""
    return {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1.5e-1}[dtype]


def check_model_file(model: torch.nn.Module, path: str | os.PathLike, images: torch.Tensor,
                     atol: float | None = None) -> dict[str, float]:
    """Largest absolute difference per output between ``model`` and the model file at ``path`` on
    ``images``; a :class:`UserError` past ``atol`` (default: :func:`tolerance` of the file's dtype)."""
    from amanita.checkpoint import load_for_eval
    loaded, _, _, info = load_for_eval(path, "cpu")
    with torch.no_grad():
        ref, got = model.eval()(images), loaded(images)
    diffs = {k: float((ref[k].float() - got[k].float()).abs().max()) for k in ref}
    limit = atol if atol is not None else tolerance(info.get("weights_dtype") or "float32")
    bad = {k: v for k, v in diffs.items() if not v <= limit}
    if bad:
        raise UserError(f"{path}: the model file differs from its checkpoint by more than {limit}: {bad}")
    return diffs
