"""LoRA adapters (amanita/lora.py): every target really adapts, BEiT's fused qkv included; merging;
layer decay, resume and the training scripts with adapters."""
import copy

import pytest
import torch

from amanita.lora import LoraSpec, add_adapters, adapters, merge_adapters, trainable_parameters
from amanita.model import create_multitask_model
from amanita.taxonomy import build_taxonomy
from tests.helpers import TRAIN_IDS, make_image_dataset, rows, run_in_process, run_script, tiny_checkpoint, train_config

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}
ARCHS = ["beit_base_patch16_224", "vit_base_patch16_224"]


@pytest.fixture(scope="module")
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def _model(arch, tax, rank=4, seed=0):
    torch.manual_seed(seed)
    model = create_multitask_model(arch, tax, model_args=dict(TINY), pretrained=False)
    kinds = add_adapters(model.backbone, LoraSpec(rank, 8.0), (3, 32, 32)) if rank else {}
    return model, kinds


def test_peft_alone_never_runs_on_beits_qkv():
    """The trap: PEFT wraps BEiT's qkv, but BEiT reads qkv.weight itself, so the output does not move."""
    import timm
    from peft import LoraConfig, inject_adapter_in_model
    model = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=0, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x).detach()
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["blocks.0.attn.qkv"]), model)
    b = model.blocks[0].attn.qkv.lora_B["default"].weight
    torch.nn.init.normal_(b)
    after = model(x)
    assert float((after - before).abs().max()) < 1e-6  # run-to-run rounding only
    assert b.requires_grad and not after.requires_grad  # the only trainable weights are not in the graph


@pytest.mark.parametrize("arch", ARCHS)
def test_every_targeted_layer_changes_the_output_and_receives_a_gradient(tax, arch):
    model, kinds = _model(arch, tax)
    assert len(kinds) == 8  # qkv, proj, fc1, fc2 in each of 2 blocks; not the patch embedding's proj
    want = "weight" if arch.startswith("beit") else "peft"
    assert {k: v for k, v in kinds.items() if k.endswith("qkv")} == {f"blocks.{i}.attn.qkv": want for i in (0, 1)}
    assert all(v == "peft" for k, v in kinds.items() if not k.endswith("qkv"))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)["leaf"].detach()
    for name, (a, b) in adapters(model.backbone).items():
        with torch.no_grad():
            b.normal_(std=0.1)  # B starts at zero: the adapter starts as the identity update
        after = model(x)["leaf"].detach()
        assert float((after - before).abs().max()) > 1e-4, f"{name} does not change the output"
        before = after
    sum(v.float().square().sum() for v in model(x).values()).backward()
    for name, (a, b) in adapters(model.backbone).items():
        assert a.grad is not None and a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0, name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n.startswith("heads.") for n in trainable)
    assert {n for n in trainable if n.startswith("heads.")} == {n for n, _ in model.heads.named_parameters(prefix="heads")}
    assert trainable_parameters(model) < 0.5 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_model_answers_as_the_adapted_one_with_plain_weight_names(tax, arch):
    model, _ = _model(arch, tax)
    for _, b in adapters(model).values():
        torch.nn.init.normal_(b, std=0.1)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        merged = merge_adapters(copy.deepcopy(model))
        got = merged(x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)
    plain, _ = _model(arch, tax, rank=0)
    assert list(merged.state_dict()) == list(plain.state_dict()) and not adapters(merged)


def _args(**kw):
    return train_config("--layer-decay", 0.75, "--weight-decay", 0.05, "--head-lr-scale", 10.0, "--opt", "adamw",
                        "--lr", 1e-3, "--momentum", 0.9, multitask=True).replace(**kw)


def _scales(model) -> dict:
    """``{parameter name: lr scale}`` of what ``make_optimizer`` puts in the optimizer."""
    from amanita.training import make_optimizer
    ids = {id(p): n for n, p in model.named_parameters()}
    opt = make_optimizer(model, _args(), torch.device("cpu"))
    return {ids[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}


def test_layer_decay_gives_each_adapter_its_blocks_scale_and_skips_frozen_weights(tax):
    plain, _ = _model("beit_base_patch16_224", tax, rank=0)
    model, _ = _model("beit_base_patch16_224", tax)
    plain_scale, scale_of = _scales(plain), _scales(model)
    assert set(scale_of) == {n for n, p in model.named_parameters() if p.requires_grad}
    for block in (0, 1):
        want = plain_scale[f"backbone.blocks.{block}.mlp.fc1.weight"]  # the plain model's block scale
        assert 0 < want < 1
        for n in scale_of:
            if n.startswith(f"backbone.blocks.{block}."):
                assert scale_of[n] == pytest.approx(want), n
    assert scale_of["backbone.blocks.0.attn.qkv.parametrizations.weight.0.lora_A"] < scale_of[
        "backbone.blocks.1.attn.qkv.parametrizations.weight.0.lora_A"]


def _steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(4, 3, 32, 32, generator=g)
        loss = sum(v.float().logsumexp(1).mean() for v in model(x).values())
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_with_adapters_continues_exactly(tax):
    """Weights and optimizer state saved after 2 updates, loaded into a freshly built adapted model
    (other random adapters), then 2 more updates = 4 updates straight."""
    from amanita.training import make_optimizer
    straight, _ = _model("beit_base_patch16_224", tax)
    opt = make_optimizer(straight, _args(), torch.device("cpu"))
    _steps(straight, opt, 2, seed=1)
    saved = copy.deepcopy({"model": straight.state_dict(), "optimizer": opt.state_dict()})
    _steps(straight, opt, 2, seed=2)
    resumed, _ = _model("beit_base_patch16_224", tax, seed=7)
    opt2 = make_optimizer(resumed, _args(), torch.device("cpu"))
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["optimizer"])
    _steps(resumed, opt2, 2, seed=2)
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n


@pytest.mark.slow
def test_lora_run_trains_adapters_and_heads_only_and_every_script_reads_it(tmp_path, tax):
    """train_multitask.py --lora-rank from a checkpoint: the frozen weights are the start's, bit for bit;
    evaluation merges the adapters (load_for_eval = the adapted model); export.py --format pth and
    test.py take it."""
    from amanita.checkpoint import load_checkpoint, load_for_eval
    data = make_image_dataset(tmp_path, n_train=12, n_val=6)
    tiny_checkpoint(tmp_path / "start.pth", tax)
    tax.save(tmp_path / "m.json")
    proc = run_in_process("train_multitask.py", "--train-path", data["train"], "--val-path", data["val"],
                          "--mappings", tmp_path / "m.json", "--init-from", tmp_path / "start.pth", "--batch-size", 6,
                          "--workers", 0, "--epochs", 1, "--auto-augment", "none", "--lr", 1e-2, "--model-ema",
                          "--lora-rank", 2, "--save-dir", tmp_path / "run")
    assert "trainable (LoRA rank 2 on qkv, proj, fc1, fc2)" in proc.stdout
    start, ckpt = load_checkpoint(tmp_path / "start.pth"), load_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["lora"] == {"rank": 2, "alpha": 16.0, "dropout": 0.0, "targets": ["qkv", "proj", "fc1", "fc2"]}
    sd = ckpt["model"]
    frozen = {k.replace(".base_layer", "").replace(".parametrizations.weight.original", ".weight"): v
              for k, v in sd.items() if k.startswith("backbone.") and ".lora_" not in k}
    assert frozen.keys() == {k for k in start["model"] if k.startswith("backbone.")}
    assert all(torch.equal(v, start["model"][k]) for k, v in frozen.items())
    assert not torch.equal(sd["heads.leaf.weight"], start["model"]["heads.leaf.weight"])
    assert any(k.endswith("qkv.parametrizations.weight.0.lora_B") and v.abs().sum() > 0 for k, v in sd.items())
    model, _, _, info = load_for_eval(tmp_path / "run" / "last.pth", use_ema=False)
    assert not adapters(model) and "backbone.blocks.0.attn.qkv.weight" in model.state_dict()
    run_script("export.py", "--format", "pth", "--checkpoint", tmp_path / "run" / "last.pth",
               "--output-dir", tmp_path / "exp", "--check-csv", data["val"], "--check-images", 2)
    out = run_in_process("test.py", "--checkpoint", tmp_path / "exp" / "model.pth", "--workers", 0, "--json",
                         tmp_path / "FungiTastic" / "val" / "300p").stdout
    assert len(out.strip().splitlines()) == 6


@pytest.mark.slow
def test_benchmark_smoke_size_compares_full_lora_and_heads_only(tmp_path):
    import json
    out = run_script("benchmarks/bench_lora.py", "--smoke", "--work", tmp_path).stdout
    rows = json.loads(out.strip().splitlines()[-1])["variants"]
    assert list(rows) == ["full", "lora-2", "heads"]
    assert rows["heads"]["trainable_m"] < rows["lora-2"]["trainable_m"] < rows["full"]["trainable_m"]
    assert all(0 <= r["leaf_top1"] <= 1 and r["images_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows.values())


@pytest.mark.slow
def test_adapters_only_checkpoint_is_small_merges_to_the_full_ones_answers_and_resumes(tmp_path, tax):
    """--lora-save adapters: the same run as --lora-save full, a checkpoint without the frozen weights,
    the same evaluation model once merged with the start's weights; a changed start is refused;
    the run resumes from it."""
    from amanita.checkpoint import load_checkpoint, load_for_eval, save_checkpoint
    from amanita.io import UserError
    data = make_image_dataset(tmp_path, n_train=12, n_val=6)
    tiny_checkpoint(tmp_path / "start.pth", tax)
    tax.save(tmp_path / "m.json")
    common = ["--train-path", data["train"], "--val-path", data["val"], "--mappings", tmp_path / "m.json",
              "--init-from", tmp_path / "start.pth", "--batch-size", 6, "--workers", 0, "--auto-augment", "none",
              "--lr", 1e-2, "--lora-rank", 2]
    for save in ("full", "adapters"):
        run_in_process("train_multitask.py", *common, "--epochs", 1, "--lora-save", save, "--save-dir", tmp_path / save)
    full, small = tmp_path / "full" / "last.pth", tmp_path / "adapters" / "last.pth"
    assert small.stat().st_size < 0.5 * full.stat().st_size
    ckpt = load_checkpoint(small)
    assert ckpt["lora"]["adapters_only"] and not any(k.endswith("fc1.base_layer.weight") for k in ckpt["model"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = load_for_eval(full)[0](x), load_for_eval(small)[0](x)
    assert all(torch.equal(want[k], got[k]) for k in want)
    original = load_checkpoint(tmp_path / "start.pth")
    changed = dict(original, model=dict(original["model"]))
    changed["model"]["backbone.blocks.0.mlp.fc1.weight"] = changed["model"]["backbone.blocks.0.mlp.fc1.weight"] + 1e-3
    save_checkpoint(changed, tmp_path / "start.pth")
    with pytest.raises(UserError, match="no longer holds the weights"):
        load_for_eval(small)
    more = [*common, "--epochs", 2, "--lora-save", "adapters", "--save-dir", tmp_path / "adapters"]
    proc = run_in_process("train_multitask.py", *more, check=False)
    assert proc.returncode == 2 and "trained on other frozen weights" in proc.stderr, proc.stderr[-500:]
    save_checkpoint(original, tmp_path / "start.pth")
    assert "resumed from" in run_in_process("train_multitask.py", *more).stdout
    assert load_checkpoint(small)["epoch"] == 2


@pytest.mark.slow
def test_lora_trains_under_torchrun_with_two_processes(tmp_path):
    """DDP over the adapters (BEiT's parametrized qkv included) and the heads: no unused-parameter
    error, and every adapter moved."""
    import subprocess
    import sys

    from amanita.checkpoint import load_checkpoint
    from tests.helpers import ROOT, SMALL_MODEL, script_env
    data = make_image_dataset(tmp_path, n_train=16, n_val=6)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(ROOT / "train_multitask.py"), "--train-path", str(data["train"]), "--val-path", str(data["val"]),
           "--mappings", str(tmp_path / "m.json"), *SMALL_MODEL, "--batch-size", "4", "--workers", "0",
           "--epochs", "1", "--auto-augment", "none", "--lr", "1e-2", "--lora-rank", "2", "--model-ema",
           "--save-dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=script_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert ckpt["sampler"]["world_size"] == 2
    b = {k: v for k, v in ckpt["model"].items() if "lora_B" in k}
    assert len(b) == 8 and all(v.abs().sum() > 0 for v in b.values())
