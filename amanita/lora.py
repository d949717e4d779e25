"""LoRA adapters on a timm backbone: low-rank updates of chosen linear layers, the rest frozen.

PEFT's LoRA wraps a layer as a module, which works wherever the model *calls* that layer
(ViT's ``qkv``, ``proj``, ``fc1``, ``fc2``). timm's BEiT does not call its ``qkv``: with q/v
biases it computes ``F.linear(x, self.qkv.weight, bias)`` itself, so a wrapped ``qkv`` is never
run (outputs differ by exactly 0.0 and nothing trains, silently). :func:`add_adapters`
therefore wraps every target with PEFT, runs one probe image, and moves each wrapped layer
that the forward did not call to :class:`LoraWeight`, a parametrization of its weight
(``W + scale·B·A`` is what ``layer.weight`` returns), which every path that reads the weight uses.
:func:`merge_adapters` folds both kinds into plain weights for evaluation, export and inference.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from amanita.config import LORA_TARGETS as DEFAULT_TARGETS  # noqa: F401


@dataclass(frozen=True)
class LoraSpec:
    """The adapters of a run: rank (0: none), alpha (update scale = alpha / rank), dropout on the
    adapted layers' input (PEFT layers; a weight parametrization has no input to drop), and the
    names of the linear layers adapted (the last part of their module name)."""
    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def plain(self) -> dict:
        return asdict(self) | {"targets": list(self.targets)}

    @classmethod
    def from_plain(cls, d: dict | None) -> "LoraSpec | None":
        return None if not d else cls(int(d["rank"]), float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]))


class LoraWeight(nn.Module):
    """A parametrization ``W ↦ W + (alpha / rank)·B·A``: LoRA for a weight the model reads itself.

    ``A`` starts as PEFT's (Kaiming-uniform), ``B`` at zero, so the layer starts unchanged.
    """

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scaling * (self.lora_B @ self.lora_A).to(weight.dtype)


def target_names(backbone: nn.Module, targets) -> list[str]:
    """Full names of the ``nn.Linear`` layers whose own name is one of ``targets`` (a patch
    embedding's ``proj`` convolution is not one)."""
    return [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear) and n.rpartition(".")[2] in targets]


def add_adapters(backbone: nn.Module, spec: LoraSpec, input_size) -> dict[str, str]:
    """Add LoRA adapters to ``backbone`` in place and freeze everything else in it.

    Returns ``{layer name: "peft" | "weight"}``: how each target is adapted. ``input_size``
    (C, H, W) is the probe image's, which finds the layers the forward does not call.
    """
    from peft import LoraConfig, inject_adapter_in_model
    names = target_names(backbone, spec.targets)
    if not names:
        raise ValueError(f"no linear layer of {type(backbone).__name__} is named {', '.join(spec.targets)}")
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=names)
    inject_adapter_in_model(config, backbone)
    kinds = {n: "peft" for n in names}
    for name in uncalled(backbone, names, input_size):
        _to_weight_adapter(backbone, name, spec)
        kinds[name] = "weight"
    for n, p in backbone.named_parameters():
        p.requires_grad_(".lora_" in n)
    return kinds


def adapt(model: nn.Module, spec: LoraSpec, input_size) -> dict[str, str]:
    """Adapters on the backbone of ``model`` (an :mod:`amanita.model` model: a single-head model's backbone is
    the whole classifier), which is frozen but them; the heads (the classifier) train. Returns
    :func:`add_adapters`'s ``{layer: kind}``."""
    kinds = add_adapters(model.backbone, spec, input_size)
    for p in model.head_parameters():
        p.requires_grad_(True)
    return kinds


def adapters(model: nn.Module) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
    """``{layer name: (A, B)}`` of every adapter in ``model`` (A: (rank, in), B: (out, rank))."""
    from peft.tuners.lora import LoraLayer
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            key = next(iter(module.lora_A))
            out[name] = (module.lora_A[key].weight, module.lora_B[key].weight)
        elif parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, LoraWeight):
                    out[name] = (p.lora_A, p.lora_B)
    return out


def uncalled(backbone: nn.Module, names: list[str], input_size) -> list[str]:
    """The wrapped layers of ``names`` that one forward pass of a probe image never calls."""
    modules = dict(backbone.named_modules())
    called, hooks = set(), []
    for name in names:
        hooks.append(modules[name].register_forward_hook(lambda m, i, o, name=name: called.add(name)))
    was_training = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, *input_size, device=next(backbone.parameters()).device))
    finally:
        backbone.train(was_training)
        for h in hooks:
            h.remove()
    return [n for n in names if n not in called]


def _to_weight_adapter(backbone: nn.Module, name: str, spec: LoraSpec) -> None:
    """Replace the PEFT wrapper at ``name`` by its base layer with a :class:`LoraWeight` on its weight."""
    parent_name, _, attr = name.rpartition(".")
    parent = backbone.get_submodule(parent_name) if parent_name else backbone
    layer = getattr(parent, attr).get_base_layer()
    setattr(parent, attr, layer)
    adapter = LoraWeight(layer.out_features, layer.in_features, spec.rank, spec.alpha).to(layer.weight.device)
    parametrize.register_parametrization(layer, "weight", adapter)
    layer.parametrizations.weight.original.requires_grad_(False)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight, in place: plain ``nn.Linear`` layers again, with the
    state_dict names of the model without adapters. Returns ``model``."""
    from peft.tuners.lora import LoraLayer
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, module.get_base_layer())
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, LoraWeight) for p in module.parametrizations.weight):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def freeze(module: nn.Module) -> None:
    """Every parameter of ``module`` stops receiving gradients (``--freeze-backbone``: the heads only)."""
    for p in module.parameters():
        p.requires_grad_(False)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------- adapters-only checkpoints
def plain_name(name: str) -> str:
    """A parameter's name in the model without adapters (``...fc1.base_layer.weight`` → ``...fc1.weight``)."""
    return name.replace(".base_layer.", ".").replace(".parametrizations.weight.original", ".weight")


def frozen_names(model: nn.Module) -> set[str]:
    """Names of the parameters that do not train (the frozen backbone of a LoRA run)."""
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def frozen_digest(model: nn.Module) -> str:
    """SHA-256 of the frozen weights (names and bytes): an adapters-only checkpoint's base must match it."""
    import hashlib
    h = hashlib.sha256()
    params = dict(model.named_parameters())
    for name in sorted(frozen_names(model), key=plain_name):
        h.update(plain_name(name).encode())
        h.update(params[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def without(state: dict, names: set[str]) -> dict:
    """``state`` without the entries ``names`` (the frozen weights, which the base file holds)."""
    return {k: v for k, v in state.items() if k not in names}


def load_partial(model: nn.Module, state: dict, frozen: set[str]) -> None:
    """Load an adapters-only ``state``: every entry but the ``frozen`` weights must be there."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    lacking = sorted(set(missing) - frozen)
    if unexpected or lacking:
        raise RuntimeError(f"adapter weights do not fit: missing {lacking[:3]}, unexpected {unexpected[:3]}")


def base_weights(model: nn.Module, base: dict) -> dict:
    """The frozen weights of ``model`` (adapters added) from ``base``, the plain state_dict of the run's
    start (a single-head start's names lack a multi-task model's ``backbone.``)."""
    out = {}
    for name in frozen_names(model):
        key = plain_name(name)
        if key not in base:
            key = key.removeprefix("backbone.")
        if key not in base:
            raise KeyError(f"the base weights have no {key}")
        out[name] = base[key]
    return out
