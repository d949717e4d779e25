"""timm backbones by name (an ``hf-hub:`` id, a timm name or a weights file), their preprocessing,
and the :class:`ModelSpec` that rebuilds a model offline from a checkpoint."""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
from dataclasses import dataclass

import torch.nn as nn

from amanita.io import UserError, load_tensor_file

from amanita.config import STOCK_MODEL  # noqa: F401

# The FungiTastic validation transform: squash-resize to 224x224 (no crop), mean = std = 0.5.
# The hub config.json of these models has no mean/std, so timm alone would give ImageNet's
# statistics and a 0.875 centre crop.
FUNGITASTIC_DATA_CONFIG = dict(input_size=(3, 224, 224), interpolation="bilinear",
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0,
                               crop_mode="squash")
KNOWN_DATA_CONFIGS = {re.compile(r"^hf-hub:BVRA/.*fungitastic.*", re.I): FUNGITASTIC_DATA_CONFIG}


@dataclass
class ModelSpec:
    """What rebuilds a model offline: its kind, timm architecture and kwargs, and its preprocessing."""
    kind: str                          # "multitask" or "single" (a single-head model): the stored values
    architecture: str
    kwargs: dict
    data_config: dict
    head_mode: str | None = None       # multitask only: "residual" or "independent"
    lora: dict | None = None           # LoRA adapters on the backbone (amanita.lora.LoraSpec.plain()), if any


def parse_model_args(text: str | dict | None) -> dict:
    """``--model-args`` JSON → kwargs for ``timm.create_model``."""
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        out = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--model-args is not valid JSON ({e.msg}): {text}") from None
    if not isinstance(out, dict):
        raise UserError(f"--model-args must be a JSON object, got {text}")
    return out


def create_timm_model(name: str, model_args: dict | None = None, pretrained: bool | None = None,
                      pretrained_file: str | None = None, **kwargs) -> nn.Module:
    """A timm model by name: an ``hf-hub:`` id, a timm name, or a local weights file.

    Everything goes through ``timm.create_model`` so the hub cache, ``HF_HUB_OFFLINE=1`` and
    ``pretrained_cfg_overlay`` behave as timm users expect. A local weights file (``.safetensors``,
    ``.pth``, ``.bin``) is given either as ``name`` (the architecture then defaults to
    ``beit_base_patch16_224``, the output count read from its ``head.weight``) or as
    ``pretrained_file`` beside an architecture ``name``. Inside :func:`weights_loaded_next`, a model
    without pretrained weights is made with uninitialised ones (:func:`empty_model`).
    """
    import timm
    model_args = dict(model_args or {})
    if os.path.isfile(name):
        pretrained_file, name = name, model_args.pop("architecture", "beit_base_patch16_224")
    if pretrained_file:
        n_out = _head_size(pretrained_file)
        if n_out is not None:
            kwargs.setdefault("num_classes", n_out)
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file), num_classes=n_out or 0)
        pretrained = True
    if pretrained is None:
        pretrained = name.startswith("hf-hub:")
    try:
        if _LOADED_NEXT.get() and not pretrained:
            return empty_model(lambda: timm.create_model(name, pretrained=False, **model_args, **kwargs))
        return timm.create_model(name, pretrained=pretrained, **model_args, **kwargs)
    except (OSError, RuntimeError, TypeError) as e:
        raise model_error(name, e, pretrained_file) from None


_LOADED_NEXT = contextvars.ContextVar("amanita_weights_loaded_next", default=False)


@contextlib.contextmanager
def weights_loaded_next():
    """Inside this block, :func:`create_timm_model` skips initialising weights that the caller loads
    next (a checkpoint's): the backbone of an evaluation model is built in a fraction of the time."""
    token = _LOADED_NEXT.set(True)
    try:
        yield
    finally:
        _LOADED_NEXT.reset(token)


def empty_model(build) -> nn.Module:
    """``build()`` with uninitialised weights, for a model whose weights are loaded next.

    Made on the meta device and given uninitialised CPU memory (``to_empty``), so neither timm's
    initialisation of every weight (seconds at BEiT-B size) nor its memory is paid twice; the
    computed buffers a state_dict lacks (BEiT's relative-position index, ``k_bias``) are rebuilt
    by timm's ``reinit_non_persistent_buffers``. A model with such a buffer that timm cannot
    rebuild is built the ordinary way.
    """
    import torch
    from timm.models._manipulate import reinit_non_persistent_buffers
    try:
        with torch.device("meta"):
            model = build()
    except (NotImplementedError, RuntimeError):  # an initialisation that reads values (nonzero, item)
        return build()
    modules = dict(model.named_modules())
    saved = set(model.state_dict())
    computed = {n.rpartition(".")[0] for n, _ in model.named_buffers() if n not in saved}
    if not all(hasattr(modules[m], "init_non_persistent_buffers") for m in computed):
        return build()
    model = model.to_empty(device="cpu")
    reinit_non_persistent_buffers(model)
    return model


def model_error(name: str, e: Exception, pretrained_file: str | None = None) -> UserError:
    """The one-line error for a model timm cannot build: unknown name, hub offline, bad weights."""
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if isinstance(e, RuntimeError) and str(e).startswith("Unknown model"):
        return UserError(f"--model {name}: timm has no such model (give a timm model name, an hf-hub: id "
                         "or a local .safetensors/.pth file)")
    if isinstance(e, TypeError):
        return UserError(f"--model-args do not fit {name}: {reason}")
    if name.startswith("hf-hub:") and isinstance(e, OSError):
        return UserError(f"--model {name} is not in the Hugging Face cache and cannot be downloaded here "
                         f"({type(e).__name__}); pre-fill the cache or pass a local weights file with --model "
                         "(README, 'Working offline')")
    if pretrained_file:
        return UserError(f"{pretrained_file}: its weights do not fit {name} ({reason})")
    return UserError(f"--model {name}: {reason}")


def resolve_architecture(name: str, model_args: dict | None = None) -> tuple[str, dict]:
    """The timm architecture and kwargs that rebuild ``name`` without its weights.

    For an ``hf-hub:`` id they come from the hub's ``config.json`` (read through timm and the
    hub cache), so a checkpoint can be rebuilt offline on a machine without that cache.
    """
    model_args = dict(model_args or {})
    if name.startswith("hf-hub:"):
        from timm.models import load_model_config_from_hf
        try:
            _, arch, hub_args = load_model_config_from_hf(name.removeprefix("hf-hub:"))
        except OSError as e:
            raise model_error(name, e) from None
        return arch, {**(hub_args or {}), **model_args}
    if os.path.isfile(name):
        return model_args.pop("architecture", "beit_base_patch16_224"), model_args
    return name, model_args


def _head_size(path: str) -> int | None:
    """Outputs of the classifier stored in a weights file (None if it has no ``head.weight``)."""
    if str(path).endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(path, "pt") as f:
                return f.get_slice("head.weight").get_shape()[0] if "head.weight" in f.keys() else None
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path} cannot be read as a safetensors weights file ({e})") from None
    sd = load_tensor_file(path, "a weights file (a state_dict saved with torch.save)")
    if isinstance(sd, dict):
        sd = sd.get("state_dict", sd.get("model", sd))
    if not isinstance(sd, dict):
        raise UserError(f"{path} holds no state_dict (a dict of tensors)")
    return sd["head.weight"].shape[0] if "head.weight" in sd else None


def resolve_data_config(model: nn.Module, name: str | None = None) -> dict:
    """The model's preprocessing: timm's data config, corrected for known models.

    ``input_size`` follows the model's actual ``img_size`` (timm keeps the pretrained 224 when
    a model is created smaller). Plain types only, so it can live in a checkpoint.
    """
    from timm.data import resolve_model_data_config
    cfg = dict(resolve_model_data_config(model))
    for pattern, known in KNOWN_DATA_CONFIGS.items():
        if name and pattern.match(name):
            cfg.update(known)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        cfg["input_size"] = (3, int(img_size[0]), int(img_size[1]))
    cfg.setdefault("crop_mode", "center")
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items()}
