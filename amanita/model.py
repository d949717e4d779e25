"""The models: the multi-task model (a timm backbone with one linear head per rank) and the single-head
model (a timm classifier with one output per ``category_id``, like the stock FungiTastic BEiT).

Every model the package builds or loads answers ``{head: logits}`` (:class:`MultiTaskModel`,
:class:`SingleHeadModel`), with the leaf head over the taxonomy's leaves, so losses, decoding,
distillation and export never ask which kind they hold. Backbones and preprocessing come from
:mod:`amanita.backbone`; the heads start from a single-head classifier through :mod:`amanita.heads`."""
from __future__ import annotations

import functools
import os
import re

import torch
import torch.nn as nn

from amanita.backbone import create_timm_model
from amanita.heads import init_heads_from_classifier
from amanita.io import UserError
from amanita.taxonomy import COARSE_RANKS, LEAF, Taxonomy, log_roll_up

HEAD_MODES = ("residual", "independent")
MAX_SPARSE_OUTPUTS = 100_000  # a single-head model has one output per id 0..max: refuse absurdly sparse ids


class MultiTaskModel(nn.Module):
    """A timm backbone (``num_classes=0``) and one ``nn.Linear`` per rank.

    ``forward`` returns ``{head: logits}`` for the five coarse ranks and ``"leaf"``, whose
    head has one output per leaf (``category_id``) exactly like a single-head model's (the stock model's).

    With ``parents`` (``{rank: (n_leaves,)}`` each leaf's class at the rank, -1 unknown: the
    *residual* head mode) a coarse rank's logits are the log of the leaf probabilities summed up
    to that rank (:func:`~amanita.taxonomy.log_roll_up`, in fp32 under any autocast) plus its own
    linear head: with that head at zero the coarse ranks equal the single-head model's summed
    probabilities exactly, and training learns only what the coarse labels add. In the
    *independent* mode each coarse head stands alone.
    """

    def __init__(self, backbone: nn.Module, head_sizes: dict[str, int], drop_rate: float = 0.0,
                 parents: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.backbone = backbone
        dim = feature_size(backbone)
        self.head_drop = nn.Dropout(drop_rate)
        self.heads = nn.ModuleDict({r: nn.Linear(dim, n) for r, n in head_sizes.items()})
        self.residual_ranks = tuple(r for r in (parents or {}) if r in head_sizes and r != LEAF)
        for r in self.residual_ranks:  # derived from the taxonomy, so not saved in state_dict
            self.register_buffer(f"parent_{r}", parents[r].long(), persistent=False)

    @property
    def num_features(self) -> int:
        return feature_size(self.backbone)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.head_drop(self.backbone(x))  # (batch, dim), pooled and normed by timm
        out = {r: head(feats) for r, head in self.heads.items()}
        if self.residual_ranks:
            leaf_p = out[LEAF].float().softmax(1)  # (batch, n_leaves), fp32 under autocast
            for r in self.residual_ranks:
                prior = log_roll_up(leaf_p, getattr(self, f"parent_{r}"), self.heads[r].out_features)
                out[r] = out[r].float() + prior
        return out

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """The backbone's layer groups under ``backbone.``, for timm's layer-wise lr decay.

        Each backbone regex is wrapped as ``^backbone\\.(?:...)`` so an alternation such as
        ``^cls_token|pos_embed`` keeps its meaning; the heads fall in the last group (scale 1).
        """
        inner = self.backbone.group_matcher(coarse)
        return {k: _prefix_matcher(v) for k, v in inner.items()}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in inner}

    def head_parameters(self):
        """The heads' parameters (they train under ``--lora-rank`` and ``--freeze-backbone``)."""
        return self.heads.parameters()


class SingleHeadModel(nn.Module):
    """A timm classifier with one output per ``category_id`` (0..max id) that answers ``{"leaf": logits}``.

    Not built directly: :func:`single_head` gives a timm model this class as a mixin (the timm
    class stays its base), so parameter names, state_dict keys (a checkpoint written before the
    wrapper loads unchanged), LoRA's layer names and timm's ``group_matcher``, ``no_weight_decay``
    and ``get_classifier`` are the timm model's own; a wrapping module would prefix every name.
    ``forward`` picks the leaves' columns (``leaf_index``, a buffer not saved; None when the
    outputs are the leaves already, ``category_id`` 0..n-1), so the leaf logits are
    ``(B, n_leaves)`` in leaf order like a multi-task model's.
    """
    leaf_index: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = super().forward(x)  # (B, max category_id + 1)
        return {LEAF: logits if self.leaf_index is None else logits.index_select(1, self.leaf_index)}

    @property
    def backbone(self) -> nn.Module:
        """What LoRA adapts and ``--freeze-backbone`` freezes: the whole classifier (its head trains again)."""
        return self

    def head_parameters(self):
        """The classifier's parameters (they train under ``--lora-rank`` and ``--freeze-backbone``)."""
        return self.get_classifier().parameters()


@functools.cache
def _single_head_class(base: type) -> type:
    return type(f"SingleHead{base.__name__}", (SingleHeadModel, base), {"__module__": __name__})


def single_head(model: nn.Module, taxonomy: Taxonomy) -> SingleHeadModel:
    """``model``, a timm classifier with one output per ``category_id``, made a :class:`SingleHeadModel`
    over ``taxonomy``'s leaves, in place (see there why not a wrapping module). Returns ``model``."""
    ids = list(taxonomy.category_ids)
    n_out = getattr(model.get_classifier(), "out_features", None)
    if n_out is not None and max(ids) >= n_out:
        raise UserError(f"the single-head model has {n_out} outputs (category_id 0..{n_out - 1}), but the taxonomy "
                        f"has category_id {max(ids)}; use the mappings the model was trained with")
    if not isinstance(model, SingleHeadModel):
        model.__class__ = _single_head_class(type(model))
    index = None if ids == list(range(n_out or -1)) else torch.tensor(ids, device=_device(model))
    model.register_buffer("leaf_index", index, persistent=False)
    return model


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def feature_size(backbone: nn.Module) -> int:
    """Width of what a timm model with ``num_classes=0`` returns: ``head_hidden_size`` where the model
    has a pre-logits layer (MobileNetV3: 1280, while its ``num_features`` is 960), else ``num_features``."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def _prefix_matcher(spec):
    if isinstance(spec, str):
        return r"^backbone\.(?:" + re.sub(r"(^|\|)\^", r"\1", spec) + ")"
    return [(_prefix_matcher(p), suffix) for p, suffix in spec]


def create_multitask_model(name: str, taxonomy: Taxonomy, model_args: dict | None = None,
                           pretrained: bool | None = None, pretrained_file: str | None = None,
                           drop_path_rate: float = 0.0, drop_rate: float = 0.0,
                           head_mode: str = "residual") -> MultiTaskModel:
    """Backbone by name through timm + heads sized by the taxonomy (see :class:`MultiTaskModel`).

    When the named model comes with trained weights and a classifier covering every
    ``category_id`` (the stock FungiTastic model), the heads start from that classifier
    (:func:`init_heads_from_classifier`); otherwise they start from timm's initialisation.
    """
    base = create_timm_model(name, model_args, pretrained, pretrained_file, drop_path_rate=drop_path_rate)
    head = base.get_classifier()
    loaded = bool(pretrained_file) or os.path.isfile(name) or (
        pretrained if pretrained is not None else name.startswith("hf-hub:"))
    classifier = (loaded and isinstance(head, nn.Linear) and head.out_features > max(taxonomy.category_ids))
    w, b = (head.weight.detach().clone(), head.bias.detach().clone()) if classifier else (None, None)
    base.reset_classifier(0)
    if head_mode not in HEAD_MODES:
        raise ValueError(f"unknown head mode {head_mode!r}; choose from {HEAD_MODES}")
    ancestors = taxonomy.ancestor_matrix()
    parents = ({r: ancestors[:, j] for j, r in enumerate(COARSE_RANKS)} if head_mode == "residual" else None)
    model = MultiTaskModel(base, taxonomy.head_sizes(), drop_rate, parents)
    if classifier:
        init_heads_from_classifier(model, w, b, taxonomy)
    return model


def create_single_head_model(name: str, taxonomy: Taxonomy, model_args: dict | None = None,
                             pretrained: bool | None = None, pretrained_file: str | None = None,
                             drop_path_rate: float = 0.0, drop_rate: float = 0.0) -> SingleHeadModel:
    """A single-head model: a timm classifier with one output per ``category_id`` (0..max id), answering
    ``{"leaf": logits}`` over the taxonomy's leaves (:func:`single_head`)."""
    n_out = max(taxonomy.category_ids) + 1
    if n_out > max(MAX_SPARSE_OUTPUTS, 10 * taxonomy.n_leaves):
        raise UserError(f"category_id {n_out - 1} would give the single-head model {n_out:,} outputs for "
                        f"{taxonomy.n_leaves} classes; number the category_ids 0..{taxonomy.n_leaves - 1}")
    model = create_timm_model(name, model_args, pretrained, pretrained_file,
                              drop_path_rate=drop_path_rate, drop_rate=drop_rate)
    if model.get_classifier().out_features != n_out:
        model.reset_classifier(n_out)
    return single_head(model, taxonomy)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: nn.Module) -> str:
    n = count_parameters(model)
    return f"{type(model).__name__} with {n / 1e6:.2f} M parameters" + (
        f", heads {dict((r, h.out_features) for r, h in model.heads.items())}"
        if isinstance(model, MultiTaskModel) else "")
