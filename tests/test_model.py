import json
import math
import subprocess
import sys

import pytest
import timm
import torch

from amanita.backbone import create_timm_model, resolve_data_config
from amanita.model import MultiTaskBEiT
from amanita.taxonomy import build_taxonomy
from amanita.training import group_table, make_optimizer
from tests.helpers import TRAIN_IDS, rows, script_env, train_config, write_hub_cache_model

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
    model = MultiTaskBEiT(backbone, {"phylum": 7, "genus": 10, "leaf": 20})
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

