"""The multi-task BEiT: a timm backbone with one linear head per rank, its data config and decoding."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from amanita.io import UserError, load_tensor_file
from amanita.taxonomy import LEAF, RANKS, Taxonomy

STOCK_MODEL = "hf-hub:BVRA/beit_base_patch16_224.in1k_ft_fungitastic_224"
MAX_SPARSE_OUTPUTS = 100_000  # a single-head model has one output per id 0..max: refuse absurdly sparse ids
COARSE_RANKS = RANKS[:-1]  # the species head is over leaves (category_ids)

# The FungiTastic validation transform: squash-resize to 224x224 (no crop), mean = std = 0.5.
# The hub config.json of these models has no mean/std, so timm alone would give ImageNet's
# statistics and a 0.875 centre crop.
FUNGITASTIC_DATA_CONFIG = dict(input_size=(3, 224, 224), interpolation="bilinear",
                               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0,
                               crop_mode="squash")
KNOWN_DATA_CONFIGS = {re.compile(r"^hf-hub:BVRA/.*fungitastic.*", re.I): FUNGITASTIC_DATA_CONFIG}


# ---------------------------------------------------------------------- backbone creation
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
    ``pretrained_file`` beside an architecture ``name``.
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
        return timm.create_model(name, pretrained=pretrained, **model_args, **kwargs)
    except (OSError, RuntimeError, TypeError) as e:
        raise model_error(name, e, pretrained_file) from None


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


# ---------------------------------------------------------------------- the model
HEAD_MODES = ("residual", "independent")


class MultiTaskBEiT(nn.Module):
    """A timm backbone (``num_classes=0``) and one ``nn.Linear`` per rank.

    ``forward`` returns ``{rank: logits}`` for the five coarse ranks and ``"species"``, whose
    head has one output per leaf (``category_id``) exactly like the stock head.

    With ``rollups`` (``{rank: (n_leaves, n_classes)}``, the *residual* head mode) a coarse
    rank's logits are the log of the species probabilities summed up to that rank plus its own
    linear head: with that head at zero the coarse ranks equal the stock model's summed
    probabilities exactly, and training learns only what the coarse labels add. In the
    *independent* mode each coarse head stands alone.
    """

    def __init__(self, backbone: nn.Module, head_sizes: dict[str, int], drop_rate: float = 0.0,
                 rollups: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.backbone = backbone
        dim = backbone.num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.heads = nn.ModuleDict({r: nn.Linear(dim, n) for r, n in head_sizes.items()})
        self.residual_ranks = tuple(r for r in (rollups or {}) if r in head_sizes and r != "species")
        for r in self.residual_ranks:  # derived from the taxonomy, so not saved in state_dict
            self.register_buffer(f"rollup_{r}", rollups[r].float(), persistent=False)

    @property
    def head_mode(self) -> str:
        return "residual" if self.residual_ranks else "independent"

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.head_drop(self.backbone(x))  # (batch, dim), pooled and normed by timm
        out = {r: head(feats) for r, head in self.heads.items()}
        if self.residual_ranks:
            leaf_p = out["species"].float().softmax(1)  # (batch, n_leaves), fp32 under autocast
            for r in self.residual_ranks:
                prior = (leaf_p @ getattr(self, f"rollup_{r}")).clamp_min(1e-12).log()
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

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)


def _prefix_matcher(spec):
    if isinstance(spec, str):
        return r"^backbone\.(?:" + re.sub(r"(^|\|)\^", r"\1", spec) + ")"
    return [(_prefix_matcher(p), suffix) for p, suffix in spec]


def create_multitask_model(name: str, taxonomy: Taxonomy, model_args: dict | None = None,
                           pretrained: bool | None = None, pretrained_file: str | None = None,
                           drop_path_rate: float = 0.0, drop_rate: float = 0.0,
                           head_mode: str = "residual") -> MultiTaskBEiT:
    """Backbone by name through timm + heads sized by the taxonomy (see :class:`MultiTaskBEiT`).

    When the named model comes with trained weights and a classifier covering every
    ``category_id`` (the stock FungiTastic model), the heads start from that classifier
    (:func:`init_heads_from_classifier`); otherwise they start from timm's initialisation.
    """
    base = create_timm_model(name, model_args, pretrained, pretrained_file, drop_path_rate=drop_path_rate)
    head = base.get_classifier()
    loaded = bool(pretrained_file) or os.path.isfile(name) or (
        pretrained if pretrained is not None else name.startswith("hf-hub:"))
    stock = (loaded and isinstance(head, nn.Linear) and head.out_features > max(taxonomy.category_ids))
    w, b = (head.weight.detach().clone(), head.bias.detach().clone()) if stock else (None, None)
    base.reset_classifier(0)
    if head_mode not in HEAD_MODES:
        raise ValueError(f"unknown head mode {head_mode!r}; choose from {HEAD_MODES}")
    rollups = ({r: taxonomy.rollup_matrix(r) for r in COARSE_RANKS} if head_mode == "residual" else None)
    model = MultiTaskBEiT(base, taxonomy.head_sizes(), drop_rate, rollups)
    if stock:
        init_heads_from_classifier(model, w, b, taxonomy)
    return model


def create_single_head_model(name: str, taxonomy: Taxonomy, model_args: dict | None = None,
                             pretrained: bool | None = None, pretrained_file: str | None = None,
                             drop_path_rate: float = 0.0, drop_rate: float = 0.0) -> nn.Module:
    """A stock-style timm classifier with one output per ``category_id`` (0..max id)."""
    n_out = max(taxonomy.category_ids) + 1
    if n_out > max(MAX_SPARSE_OUTPUTS, 10 * taxonomy.n_leaves):
        raise UserError(f"category_id {n_out - 1} would give the single-head model {n_out:,} outputs for "
                        f"{taxonomy.n_leaves} classes; number the category_ids 0..{taxonomy.n_leaves - 1}")
    model = create_timm_model(name, model_args, pretrained, pretrained_file,
                              drop_path_rate=drop_path_rate, drop_rate=drop_rate)
    if model.get_classifier().out_features != n_out:
        model.reset_classifier(n_out)
    return model


@torch.no_grad()
def init_from_stock(model: MultiTaskBEiT, stock: nn.Module, taxonomy: Taxonomy) -> None:
    """Start ``model`` from a single-head (stock) timm classifier: its backbone and its head."""
    backbone_sd = {k: v for k, v in stock.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = model.backbone.load_state_dict(backbone_sd, strict=False)
    if unexpected or missing:
        raise ValueError(f"the single-head model's weights do not fit the backbone "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    head = stock.get_classifier()
    init_heads_from_classifier(model, head.weight.detach(), head.bias.detach(), taxonomy)


@torch.no_grad()
def init_heads_from_classifier(model: MultiTaskBEiT, weight: torch.Tensor, bias: torch.Tensor,
                               taxonomy: Taxonomy) -> None:
    """Heads from a stock classifier (one row per ``category_id``).

    The species head takes the row of each leaf's ``category_id``, so species logits equal the
    stock logits at step 0. In the residual mode the coarse heads start at zero, so each coarse
    rank starts as the stock species probabilities summed up the tree, exactly. In the
    independent mode each coarse head starts from its descendants' rows: mean weight, mean
    bias plus log(number of descendants), a linear stand-in for the log-sum-exp of their
    logits (which it equals when the descendants' logits are equal).
    """
    ids = torch.tensor(taxonomy.category_ids)
    if ids.max() >= weight.shape[0]:
        raise ValueError(f"the stock head has {weight.shape[0]} outputs but the taxonomy has "
                         f"category_id {int(ids.max())}")
    w_leaf, b_leaf = weight[ids], bias[ids]  # (n_leaves, dim), rows in leaf order
    model.heads["species"].weight.copy_(w_leaf)
    model.heads["species"].bias.copy_(b_leaf)
    for rank in COARSE_RANKS:
        if rank in model.residual_ranks:
            model.heads[rank].weight.zero_()
            model.heads[rank].bias.zero_()
            continue
        m = taxonomy.rollup_matrix(rank, dtype=weight.dtype)  # (n_leaves, n_classes)
        n = m.sum(0)
        has = n > 0
        head = model.heads[rank]
        head.weight[has] = (m.T @ w_leaf)[has] / n[has, None]
        head.bias[has] = (m.T @ b_leaf)[has] / n[has] + torch.log(n[has])


# ---------------------------------------------------------------------- probabilities and decoding
def rank_log_probs(outputs: dict[str, torch.Tensor], taxonomy: Taxonomy,
                   leaf_index: torch.Tensor | None = None,
                   rollups: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Log-probabilities at the leaf and all six ranks from a model's outputs.

    ``outputs`` holds ``"species"`` logits over leaves (or over all stock outputs, then
    ``leaf_index`` picks the leaves' columns) and optionally coarse-rank logits; ranks without
    a head (a single-head model) and the species rank are the log of summed leaf probabilities.
    Returns ``{"leaf": (B, n_leaves), rank: (B, n_classes)}`` in float32. Pass ``rollups``
    (``taxonomy.rollup_matrices()`` on the device) when calling per batch, to build them once.
    """
    leaf_logits = outputs["species"].float()
    if leaf_index is not None:
        leaf_logits = leaf_logits.index_select(1, leaf_index)
    out = {LEAF: F.log_softmax(leaf_logits, dim=1)}
    leaf_p = out[LEAF].exp()
    for rank in RANKS:
        if rank in outputs and rank != "species":
            out[rank] = F.log_softmax(outputs[rank].float(), dim=1)
        else:
            m = rollups[rank] if rollups is not None else taxonomy.rollup_matrix(rank).to(leaf_p.device)
            out[rank] = torch.log((leaf_p @ m).clamp_min(1e-30))
    return out


def decode(log_probs: dict[str, torch.Tensor], ancestors: torch.Tensor, mode: str = "independent"
           ) -> dict[str, torch.Tensor]:
    """Predicted class index at the leaf and each rank, ``{key: (B,)}``.

    ``independent``: argmax of each rank's own distribution. ``consistent``: the leaf whose
    root-to-leaf path has the largest sum of log-probabilities over the leaf and the five coarse
    ranks, then every rank is that leaf's ancestor, so the prediction is always a real lineage.
    ``ancestors`` is the ``(n_leaves, 6)`` ancestor matrix (-1 unknown) on the same device.
    """
    if mode == "independent":
        return {k: v.argmax(1) for k, v in log_probs.items()}
    if mode != "consistent":
        raise ValueError(f"unknown decoding {mode!r} (independent or consistent)")
    score = log_probs[LEAF].clone()  # (B, n_leaves)
    for j, rank in enumerate(COARSE_RANKS):
        col = ancestors[:, j]
        lp = log_probs[rank]
        # an unknown ancestor neither helps nor hurts: it scores as the rank's best class
        gathered = lp.index_select(1, col.clamp_min(0))
        score += torch.where(col >= 0, gathered, lp.max(1, keepdim=True).values)
    leaf = score.argmax(1)
    preds = {LEAF: leaf}
    for j, rank in enumerate(RANKS):
        anc = ancestors[leaf, j]
        preds[rank] = torch.where(anc >= 0, anc, log_probs[rank].argmax(1))
    return preds


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model: nn.Module) -> str:
    n = count_parameters(model)
    return f"{type(model).__name__} with {n / 1e6:.2f} M parameters" + (
        f", heads {dict((r, h.out_features) for r, h in model.heads.items())}"
        if isinstance(model, MultiTaskBEiT) else "")


def hub_cache_folder(cache_dir: str | os.PathLike, model_id: str = STOCK_MODEL) -> Path:
    """The Hugging Face hub-cache folder of a model id (``models--org--name``)."""
    repo = model_id.removeprefix("hf-hub:")
    return Path(cache_dir) / ("models--" + repo.replace("/", "--"))


def write_hub_cache_model(cache_dir: str | os.PathLike, model: nn.Module, config: dict,
                          model_id: str = STOCK_MODEL, revision: str = "0" * 40) -> Path:
    """Write ``model`` into a hub-cache folder as timm would find it offline (tests, air-gapped sites).

    Layout: ``models--org--name/refs/main`` (the revision) and ``snapshots/<rev>/`` holding
    ``config.json`` and ``model.safetensors``.
    """
    from safetensors.torch import save_file
    folder = hub_cache_folder(cache_dir, model_id)
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    (snap / "config.json").write_text(json.dumps(config, indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))
    return snap
