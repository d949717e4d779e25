import json
import math
import subprocess
import sys

import pytest
import timm
import torch

from amanita.backbone import create_timm_model, resolve_data_config
from amanita.io import UserError
from amanita.model import MultiTaskModel, create_multitask_model, create_single_head_model, single_head
from amanita.taxonomy import HEADS, LEAF, build_taxonomy
from amanita.training import group_table, make_optimizer
from tests.helpers import (TINY_BEIT, TRAIN_IDS, rows, script_env, tiny_checkpoint, tiny_single_head_checkpoint,
                           train_config, write_hub_cache_model)

SMALL = {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}
# category_id of each helper lineage in this test: not contiguous, not in lineage order
REMAP = {0: 7, 1: 3, 2: 0, 3: 5, 4: 1, 5: 6}


@pytest.fixture
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def hub_config(num_classes):
    """Like the real BVRA config.json: architecture, model args, and no mean/std."""
    return {"architecture": "beit_base_patch16_224", "num_classes": num_classes, "num_features": 64,
            "global_pool": "avg", "model_args": SMALL,
            "pretrained_cfg": {"tag": "in1k_ft_fungitastic_224", "custom_load": False, "input_size": [3, 32, 32],
                               "fixed_input_size": True, "interpolation": "bicubic", "crop_pct": 0.875,
                               "crop_mode": "center", "num_classes": num_classes, "pool_size": None,
                               "first_conv": "patch_embed.proj", "classifier": "head"}}


@pytest.mark.slow
def test_stock_start_from_hub_cache_offline(tmp_path):
    """A small BEiT written into the hub cache under the stock id loads with HF_HUB_OFFLINE=1;
    at step 0 the leaf logits equal the stock logits and (residual heads) every coarse rank
    equals the stock probabilities summed up the tree; independent heads start from descendants."""
    torch.manual_seed(0)
    stock = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=8, **SMALL)
    write_hub_cache_model(tmp_path / "hub", stock, hub_config(8))
    df = rows(TRAIN_IDS)
    df["category_id"] = df["category_id"].map(REMAP)
    df.to_csv(tmp_path / "train.csv", index=False)
    code = f"""
import json, torch, pandas as pd
from amanita.backbone import *
from amanita.model import *
from amanita.taxonomy import build_taxonomy
tax = build_taxonomy([pd.read_csv({str(tmp_path / 'train.csv')!r})])
stock = create_timm_model(STOCK_MODEL).eval()
mt = create_multitask_model(STOCK_MODEL, tax).eval()
ind = create_multitask_model(STOCK_MODEL, tax, head_mode="independent").eval()
x = torch.randn(3, 3, 32, 32)
with torch.no_grad():
    s, out = stock(x), mt(x)
ids = torch.tensor(tax.category_ids)
summed = {{r: torch.softmax(s[:, ids], 1) @ tax.rollup_matrix(r) for r in ("phylum", "order", "genus")}}
amanita = tax.rollup_matrix("genus")[:, tax.index("genus")["Amanita"]].bool()
w = ind.heads["leaf"].weight[amanita].mean(0)
print(json.dumps(dict(
    equal=torch.allclose(out["leaf"], s[:, ids], atol=1e-5),
    coarse_equal_summed=all(torch.allclose(torch.softmax(out[r], 1), p, atol=1e-5) for r, p in summed.items()),
    genus_from_descendants=torch.allclose(ind.heads["genus"].weight[tax.index("genus")["Amanita"]], w),
    genus_bias=(ind.heads["genus"].bias[tax.index("genus")["Amanita"]] - ind.heads["leaf"].bias[amanita].mean()).item(),
    data_config=resolve_data_config(mt.backbone, STOCK_MODEL), arch=resolve_architecture(STOCK_MODEL))))
"""
    env = script_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["equal"] and out["coarse_equal_summed"] and out["genus_from_descendants"]
    assert out["genus_bias"] == pytest.approx(math.log(2), abs=1e-5)  # two Amanita leaves
    # the FungiTastic transform, not timm's ImageNet mean/std and 0.875 crop
    assert out["data_config"] == {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3,
                                  "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "squash"}
    assert out["arch"] == ["beit_base_patch16_224", SMALL]


def test_unknown_model_data_config_follows_timm():
    m = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=0, **SMALL)
    cfg = resolve_data_config(m, "beit_base_patch16_224")
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 0.9 and cfg["crop_mode"] == "center"


def test_layer_decay_groups_for_beit_base():
    backbone = create_timm_model("beit_base_patch16_224", pretrained=False, num_classes=0)
    model = MultiTaskModel(backbone, {"phylum": 7, "genus": 10, "leaf": 20})
    cfg = train_config("--layer-decay", 0.75, "--weight-decay", 0.05, "--head-lr-scale", 1.0, "--opt", "adamw",
                       "--lr", 1e-4, "--momentum", 0.9, multitask=True)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    scales = sorted({round(s, 10) for s in scale_of.values()})
    assert len(scales) == 14
    assert scale_of[id(named["backbone.patch_embed.proj.weight"])] == pytest.approx(0.75 ** 13)
    assert scale_of[id(named["backbone.cls_token"])] == pytest.approx(0.75 ** 13)
    assert scale_of[id(named["backbone.blocks.0.attn.qkv.weight"])] == pytest.approx(0.75 ** 12)
    assert scale_of[id(named["backbone.blocks.11.mlp.fc2.weight"])] == pytest.approx(0.75)
    assert scale_of[id(named["heads.leaf.weight"])] == 1.0
    assert "14 layer scales" in group_table(model, opt)
    opt = make_optimizer(model, cfg.replace(head_lr_scale=10.0), torch.device("cpu"))
    assert {g["lr_scale"] for g in opt.param_groups if g.get("is_head")} == {10.0}


def test_layer_decay_flag_takes_none():
    from amanita.cli import build_train_parser
    base = ["--train-path", "t.csv", "--val-path", "v.csv"]
    p = build_train_parser("", multitask=True)
    assert p.parse_args(base).layer_decay == 0.75
    assert p.parse_args(base + ["--layer-decay", "none"]).layer_decay is None
    assert p.parse_args(base + ["--layer-decay", "0.65"]).layer_decay == 0.65



# ---------------------------------------------------------------------- one output contract
SPARSE_IDS = [0, 2, 3, 5, 5]  # category_ids 0, 2, 3, 5: 4 leaves, 6 outputs of a single-head model


@pytest.fixture
def sparse_tax():
    return build_taxonomy([rows(SPARSE_IDS)])


def _single_head_checkpoint(tmp_path, tax):
    if not (tmp_path / "single.pth").exists():
        tiny_single_head_checkpoint(tmp_path / "single.pth", tax)
    return tmp_path / "single.pth"


def _baseline_model(tmp_path, tax, monkeypatch):
    """validate.py --baseline-model: a timm classifier like the stock model, here a tiny one instead of the hub's."""
    from amanita import backbone, inference
    monkeypatch.setattr(backbone, "create_timm_model", lambda name: timm.create_model(
        TINY_BEIT[0], pretrained=False, num_classes=8, **TINY_BEIT[1]))
    return inference.load_single_head_model("hf-hub:BVRA/stock", "cpu", tax).model


def _init_from(multitask):
    def build(tmp_path, tax, monkeypatch):
        from amanita.training import _model_from_checkpoint
        return _model_from_checkpoint(_single_head_checkpoint(tmp_path, tax), tax, train_config(multitask=multitask))[0]
    return build


def _teacher(tmp_path, tax, monkeypatch):
    from amanita.config import DistillConfig
    from amanita.distill import load_teacher
    cfg = train_config(multitask=True, cls=DistillConfig, extra={
        "teacher": str(_single_head_checkpoint(tmp_path, tax)), "distill_alpha": 0.5, "distill_temperature": 2.0})
    return load_teacher(cfg, tax, "cpu").model


def _model_file(tmp_path, tax, monkeypatch):
    from amanita.checkpoint import load_for_eval
    from amanita.modelfile import write_model_file
    write_model_file(_single_head_checkpoint(tmp_path, tax), tmp_path / "model.pth", dtype="bfloat16")
    return load_for_eval(tmp_path / "model.pth")[0]


def _loaded(write):
    def build(tmp_path, tax, monkeypatch):
        from amanita.checkpoint import load_for_eval
        return load_for_eval(write(tmp_path, tax))[0]
    return build


BUILDS = {  # every way the package builds or loads a model: name → (build, heads it answers)
    "multi-task": (lambda p, tax, mp: create_multitask_model(TINY[0], tax, model_args=TINY[1], pretrained=False), HEADS),
    "multi-task checkpoint": (_loaded(lambda p, tax: tiny_checkpoint(p / "multi.pth", tax) and p / "multi.pth"), HEADS),
    "single-head (train_minimal.py)": (lambda p, tax, mp: create_single_head_model(TINY[0], tax, model_args=TINY[1], pretrained=False),
                                       (LEAF,)),
    "single-head checkpoint": (_loaded(_single_head_checkpoint), (LEAF,)),
    "inference model file": (_model_file, (LEAF,)),
    "--baseline-model": (_baseline_model, (LEAF,)),
    "--init-from single-head, single-head": (_init_from(False), (LEAF,)),
    "--init-from single-head, multi-task": (_init_from(True), HEADS),
    "distillation teacher (single-head)": (_teacher, (LEAF,)),
}
TINY = (TINY_BEIT[0], dict(TINY_BEIT[1]))


@pytest.mark.parametrize("name", list(BUILDS))
def test_every_model_built_or_loaded_answers_head_logits_with_the_leaf_over_the_leaves(name, sparse_tax, tmp_path,
                                                                                        monkeypatch):
    build, heads = BUILDS[name]
    model = build(tmp_path, sparse_tax, monkeypatch).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, dict) and set(out) == set(heads)
    assert out[LEAF].shape == (2, sparse_tax.n_leaves)  # 4 leaves, not the 6 (or 8) category_id outputs
    assert {k: v.shape[1] for k, v in out.items()} == {k: sparse_tax.head_sizes()[k] for k in heads}


def test_a_single_head_checkpoint_of_the_old_layout_loads_with_the_same_keys_and_logits(sparse_tax, tmp_path):
    """Written before the output contract (a bare timm model's state_dict): it loads unchanged, answers its
    leaves' columns exactly, and a model built now saves the same keys."""
    from amanita.checkpoint import load_for_eval
    bare, _ = tiny_single_head_checkpoint(tmp_path / "old.pth", sparse_tax)
    model, _, _, info = load_for_eval(tmp_path / "old.pth")
    assert info["kind"] == "single"
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw, out = bare(x), model(x)  # raw: (3, 6), one column per category_id
    assert torch.equal(out[LEAF], raw[:, sparse_tax.category_ids])
    assert list(model.state_dict()) == list(bare.state_dict())
    built = create_single_head_model(TINY[0], sparse_tax, model_args=TINY[1], pretrained=False)
    assert list(built.state_dict()) == list(bare.state_dict())
    dense = build_taxonomy([rows(TRAIN_IDS)])  # category_id 0..5: the outputs are the leaves, nothing picked
    assert create_single_head_model(TINY[0], dense, model_args=TINY[1], pretrained=False).leaf_index is None


def test_losses_and_decoding_of_a_single_head_model_are_those_of_its_leaf_columns(sparse_tax):
    """The numbers of the old path (the stock outputs' leaf columns picked inside the loss and the decoder)."""
    import torch.nn.functional as F

    from amanita.decode import Decoder
    from amanita.losses import MultiTaskLoss
    torch.manual_seed(0)
    model = create_single_head_model(TINY[0], sparse_tax, model_args=TINY[1], pretrained=False).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        leaf = model.forward_head(model.forward_features(x))[:, sparse_tax.category_ids]  # timm's own forward
        out = model(x)
    labels = torch.tensor([[0, 1, 1, 1, 1, 1, 3], [2, 1, 1, 2, 3, 3, 4], [3, 0, 0, 0, 0, 0, 0]])
    loss = MultiTaskLoss(sparse_tax, {LEAF: 1.0}, label_smoothing=0.1)(out, labels)["loss"]
    assert loss.item() == pytest.approx(F.cross_entropy(leaf, labels[:, 0], label_smoothing=0.1).item(), rel=1e-6)
    logp = Decoder(sparse_tax).log_probs(out)
    p = leaf.softmax(1)
    for rank in ("phylum", "genus", "species"):
        torch.testing.assert_close(logp[rank].exp(), p @ sparse_tax.rollup_matrix(rank))
    torch.testing.assert_close(logp[LEAF], leaf.log_softmax(1))


def test_a_single_head_model_keeps_timms_names_layer_groups_and_adapter_layers(sparse_tax):
    """Made a single-head model in place: parameter names, layer-decay groups and LoRA's layers are the timm
    model's; torch.compile unwraps to it and a copy (the EMA's) answers the same contract."""
    import copy

    from timm.optim import param_groups_layer_decay

    from amanita.checkpoint import unwrap
    from amanita.lora import LoraSpec, adapt, add_adapters
    torch.manual_seed(0)
    bare = timm.create_model(TINY[0], pretrained=False, num_classes=6, **TINY[1])
    model = single_head(copy.deepcopy(bare), sparse_tax)
    assert isinstance(model, type(bare)) and model.backbone is model
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in bare.named_parameters()]

    def groups(m):
        names = {id(p): n for n, p in m.named_parameters()}
        return [(g["lr_scale"], [names[id(p)] for p in g["params"]])
                for g in param_groups_layer_decay(m, 0.05, m.no_weight_decay(), layer_decay=0.75)]
    assert groups(model) == groups(bare) and len({s for s, _ in groups(model)}) == 4  # 2 blocks + stem + head
    assert unwrap(torch.compile(model)) is model
    twin = copy.deepcopy(model)
    assert type(twin) is type(model) and set(twin(torch.randn(1, 3, 32, 32))) == {LEAF}
    kinds = adapt(model, LoraSpec(2, 4.0), (3, 32, 32))
    assert kinds == add_adapters(copy.deepcopy(bare), LoraSpec(2, 4.0), (3, 32, 32))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == (
        {n for n, _ in model.named_parameters() if ".lora_" in n} | {"head.weight", "head.bias"})


def test_a_taxonomy_beyond_a_single_head_models_outputs_is_one_line(sparse_tax):
    bare = timm.create_model(TINY[0], pretrained=False, num_classes=4, **TINY[1])  # category_id 0..3 only
    with pytest.raises(UserError, match="has 4 outputs .* but the taxonomy has category_id 5"):
        single_head(bare, sparse_tax)
