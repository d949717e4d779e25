import argparse
import json
import math
import subprocess
import sys

import pytest
import timm
import torch

from amanita.decode import decode, rank_log_probs
from amanita.losses import MultiTaskLoss
from amanita.backbone import create_timm_model, resolve_data_config
from amanita.model import MultiTaskBEiT
from amanita.taxonomy import LEAF, RANKS, build_taxonomy
from amanita.training import group_table, make_optimizer
from tests.helpers import TRAIN_IDS, rows, script_env, write_hub_cache_model

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
    args = argparse.Namespace(layer_decay=0.75, weight_decay=0.05, head_lr_scale=1.0, opt="adamw", lr=1e-4,
                              momentum=0.9)
    opt = make_optimizer(model, args, torch.device("cpu"), multitask=True)
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
    args.head_lr_scale = 10.0
    opt = make_optimizer(model, args, torch.device("cpu"), multitask=True)
    assert {g["lr_scale"] for g in opt.param_groups if g.get("is_head")} == {10.0}


def test_consistent_decoding_picks_the_best_real_lineage(tax):
    # leaves: 0 A. phalloides, 1 A. muscaria, 2 Agaricus campestris, 3/4 Phlebia, 5 Morchella
    leaf = torch.tensor([[0.3, 0.2, 0.4, 0.04, 0.04, 0.02]]).log()
    heads = {"phylum": [0.1, 0.9], "class": [0.1, 0.9], "order": [0.1, 0.8, 0.1],
             "family": [0.02, 0.08, 0.88, 0.02], "genus": [0.02, 0.08, 0.88, 0.02]}
    logp = {LEAF: leaf} | {r: torch.tensor([v]).log() for r, v in heads.items()}
    logp["species"] = (leaf.exp() @ tax.rollup_matrix("species")).log()
    ind = decode(logp, tax.ancestor_matrix(), "independent")
    assert ind[LEAF].item() == 2 and ind["genus"].item() == 2  # Agaricus leaf under genus Amanita
    con = decode(logp, tax.ancestor_matrix(), "consistent")
    # Agaricus: log .4 + 2 log .08 = -5.97 < A. phalloides: log .3 + 2 log .88 = -1.46
    assert con[LEAF].item() == 0
    assert [con[r].item() for r in RANKS] == tax.ancestors[0].tolist()


def test_rank_log_probs_sum_leaves_for_a_single_head_model(tax):
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0, -1.0, 0.5, 9.0]])  # 7 stock outputs, 6 leaves
    idx = torch.tensor([0, 1, 2, 3, 4, 5])
    lp = rank_log_probs({"leaf": logits}, tax, idx)
    p = torch.softmax(logits[:, :6], 1)
    torch.testing.assert_close(lp[LEAF].exp(), p)
    torch.testing.assert_close(lp["genus"].exp(), p @ tax.rollup_matrix("genus"))
    torch.testing.assert_close(lp["species"].exp()[0, 4], p[0, 3] + p[0, 4])  # the two Phlebia synonyms


def test_loss_hand_computed_with_unknown_labels(tax):
    out = {"genus": torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]),
           LEAF: torch.zeros(2, 6)}
    labels = torch.tensor([[2, 1, 1, 1, 1, 1, 1], [-1, -1, -1, -1, -1, -1, -1]])
    weights = {r: torch.ones(n) for r, n in zip(RANKS, [2, 2, 3, 4, 4, 5])} | {LEAF: torch.ones(6)}
    weights["genus"] = torch.tensor([1.0, 3.0, 1.0, 1.0])
    crit = MultiTaskLoss(tax, {"genus": 0.5, LEAF: 1.0}, weights)
    got = crit(out, labels)
    ce_genus = -torch.log_softmax(out["genus"][0], 0)[1]      # row 2 is unknown: ignored
    assert got["loss/genus"].item() == pytest.approx(ce_genus.item(), rel=1e-6)
    assert got["loss/leaf"].item() == pytest.approx(math.log(6), rel=1e-6)
    assert got["loss"].item() == pytest.approx(0.5 * ce_genus.item() + math.log(6), rel=1e-6)
    none_known = crit({"genus": out["genus"], LEAF: out[LEAF]}, torch.full((2, 7), -1))
    assert none_known["loss"].item() == 0.0


def test_consistency_term_is_zero_when_heads_agree_with_the_leaf_head(tax):
    leaf_logits = torch.randn(4, 6)
    p = torch.softmax(leaf_logits, 1)
    out = {LEAF: leaf_logits} | {r: (p @ tax.rollup_matrix(r)).log() for r in RANKS[:-1]}
    crit = MultiTaskLoss(tax, {LEAF: 1.0}, consistency_weight=1.0)
    assert crit(out, torch.full((4, 7), -1))["loss/consistency"].item() == pytest.approx(0.0, abs=1e-5)
    out["genus"] = torch.zeros(4, 4)
    assert crit(out, torch.full((4, 7), -1))["loss/consistency"].item() > 0.01


def test_layer_decay_flag_takes_none():
    from amanita.cli import build_train_parser
    base = ["--train-path", "t.csv", "--val-path", "v.csv"]
    p = build_train_parser("", multitask=True)
    assert p.parse_args(base).layer_decay == 0.75
    assert p.parse_args(base + ["--layer-decay", "none"]).layer_decay is None
    assert p.parse_args(base + ["--layer-decay", "0.65"]).layer_decay == 0.65


def test_roll_up_is_the_rollup_matrix_product_unknown_ancestors_included():
    from amanita.taxonomy import roll_up
    from amanita.demo.predictions import synthetic_taxonomy
    tax = synthetic_taxonomy({"phylum": 3, "class": 5, "order": 8, "family": 12, "genus": 20, "species": 40}, seed=1)
    p = torch.rand(4, tax.n_leaves).softmax(1)
    anc = tax.ancestor_matrix()
    anc[::7, 2] = -1  # some leaves with an unknown order
    for j, rank in enumerate(("phylum", "class", "order", "family", "genus", "species")):
        m = (anc[:, j] >= 0).float()[:, None] * torch.nn.functional.one_hot(
            anc[:, j].clamp_min(0), tax.num_classes(rank)).float()  # the roll-up matrix by hand
        dense = p @ m
        torch.testing.assert_close(roll_up(p, anc[:, j], tax.num_classes(rank)), dense)
        if rank != "order":
            torch.testing.assert_close(roll_up(p, anc[:, j], tax.num_classes(rank)), p @ tax.rollup_matrix(rank))
