"""The inference model file (export.py --format pth, amanita/modelfile.py) and the fast evaluation load."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from amanita.checkpoint import load_checkpoint, load_for_eval, restore_state, save_checkpoint
from amanita.io import UserError
from amanita.modelfile import TRAINING_ONLY, inference_state, tolerance, write_model_file
from amanita.taxonomy import LEAF, build_taxonomy
from tests.helpers import TRAIN_IDS, make_image_dataset, rows, run_in_process, run_script, tiny_checkpoint


@pytest.fixture
def training_checkpoint(tmp_path):
    """A tiny checkpoint with everything a training run and validation put in it, plus two entries
    this module does not know (as metadata priors added later would be)."""
    tax = build_taxonomy([rows(TRAIN_IDS)])
    model, cfg = tiny_checkpoint(tmp_path / "c.pth", tax)
    ckpt = load_checkpoint(tmp_path / "c.pth")
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    opt = torch.optim.AdamW(model.parameters())
    ckpt.update(model_ema=ema, optimizer=opt.state_dict(), scheduler={"t_initial": 3}, scaler=None,
                rng={"torch": torch.get_rng_state()}, sampler={"epoch": 1}, history=[{"epoch": 1}],
                temperatures={LEAF: 1.5}, open_set={"score": "msp", "threshold": 0.4},
                metadata_priors={"month": torch.rand(12, 6)}, prior_weight=0.3)
    save_checkpoint(ckpt, tmp_path / "c.pth")
    return tmp_path / "c.pth", tax, cfg


def _outputs(path, x, use_ema=True):
    model, _, _, info = load_for_eval(path, use_ema=use_ema)
    with torch.no_grad():
        return model(x), info


def test_model_file_drops_training_state_and_keeps_what_inference_reads(training_checkpoint, tmp_path):
    path, tax, _ = training_checkpoint
    write_model_file(path, tmp_path / "model.pth", dtype="bfloat16")
    f = torch.load(tmp_path / "model.pth", weights_only=True)  # no pickled code
    assert not set(TRAINING_ONLY) & set(f)
    assert f["temperatures"] == {LEAF: 1.5} and f["open_set"]["threshold"] == 0.4
    assert f["prior_weight"] == 0.3 and f["metadata_priors"]["month"].shape == (12, 6)  # unknown keys carried
    assert f["taxonomy_sha256"] == tax.sha256() and f["data_config"]["input_size"] == (3, 32, 32)
    src = load_checkpoint(path)
    assert {v.dtype for v in f["model"].values() if v.is_floating_point()} == {torch.bfloat16}
    name = "heads.leaf.weight"  # the EMA's weights, rounded to bf16
    torch.testing.assert_close(f["model"][name], src["model_ema"][name].to(torch.bfloat16), rtol=0, atol=0)
    assert f["ema_weights"] is True and f["file"] == "inference"
    raw = inference_state(src, use_ema=False)
    assert raw["ema_weights"] is False and torch.equal(raw["model"][name], src["model"][name])
    assert (tmp_path / "model.pth").stat().st_size < 0.4 * path.stat().st_size


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_model_file_answers_as_its_checkpoint(training_checkpoint, tmp_path, dtype):
    path, _, _ = training_checkpoint
    write_model_file(path, tmp_path / "model.pth", dtype=dtype)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    want, _ = _outputs(path, x)
    got, info = _outputs(tmp_path / "model.pth", x)
    assert info["ema"] and info["temperatures"] == {LEAF: 1.5} and info["weights_dtype"] == dtype
    for k in want:
        diff = float((want[k] - got[k]).abs().max())
        assert diff == 0.0 if dtype == "float32" else 0 < diff <= tolerance(dtype), (k, diff)
    assert torch.equal(want[LEAF].argmax(1), got[LEAF].argmax(1))


def test_evaluation_model_built_without_initialising_equals_the_trained_one(training_checkpoint):
    """The uninitialised (meta-device) build takes every weight and rebuilds BEiT's computed buffers."""
    path, tax, _ = training_checkpoint
    from amanita.model import create_multitask_model
    from tests.helpers import TINY_BEIT
    ref = create_multitask_model(TINY_BEIT[0], tax, model_args=dict(TINY_BEIT[1]), pretrained=False).eval()
    ref.load_state_dict(load_checkpoint(path)["model"])
    x = torch.randn(3, 3, 32, 32)
    got, _ = _outputs(path, x, use_ema=False)
    with torch.no_grad():
        want = ref(x)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_empty_build_falls_back_when_a_computed_buffer_cannot_be_rebuilt():
    from amanita.backbone import empty_model

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))
            self.register_buffer("table", torch.arange(4.0), persistent=False)  # no init_non_persistent_buffers

    model = empty_model(Odd)
    assert model.table.device.type == "cpu" and model.table.tolist() == [0, 1, 2, 3]


def test_resuming_from_a_model_file_is_refused_in_one_line(training_checkpoint, tmp_path):
    path, _, _ = training_checkpoint
    write_model_file(path, tmp_path / "model.pth")
    with pytest.raises(UserError, match="model file for inference .* --init-from"):
        restore_state(load_checkpoint(tmp_path / "model.pth"), tmp_path / "model.pth", None, None, None)


@pytest.mark.slow
def test_scripts_take_the_model_file_and_answer_the_same(tmp_path):
    """export.py --format pth, then test.py (photos and --submission) and validate.py give the
    checkpoint's answers from model.pth (bf16 weights: the same classes, probabilities within 1e-2)."""
    data = make_image_dataset(tmp_path, n_train=6, n_val=8)
    tax = build_taxonomy([rows(TRAIN_IDS)])
    tiny_checkpoint(tmp_path / "c.pth", tax)
    out = run_script("export.py", "--format", "pth", "--dtype", "bfloat16", "--checkpoint", tmp_path / "c.pth",
                     "--output-dir", tmp_path / "exp", "--check-csv", data["val"], "--check-images", 4).stdout
    assert "model.pth = checkpoint on 4 images" in out
    photos = tmp_path / "FungiTastic" / "val" / "300p"
    test_csv = tmp_path / "test.csv"
    pd.read_csv(data["val"]).assign(observationID=[1, 1, 2, 3, 3, 3, 4, 5]).to_csv(test_csv, index=False)
    answers = {}
    for name, ckpt in (("checkpoint", tmp_path / "c.pth"), ("file", tmp_path / "exp" / "model.pth")):
        common = ["--checkpoint", ckpt, "--workers", 0, "--decode", "independent"]
        lines = run_in_process("test.py", *common, "--json", photos).stdout.splitlines()
        run_in_process("test.py", *common, "--submission", tmp_path / f"{name}.csv", "--test-path", test_csv,
                       "--image-root", photos)
        run_in_process("validate.py", "--checkpoint", ckpt, "--val-path", data["val"], "--image-root", photos,
                       "--output-dir", tmp_path / f"val_{name}", "--workers", 0, "--aggregate", "image")
        answers[name] = ([json.loads(line) for line in lines], pd.read_csv(tmp_path / f"{name}.csv"),
                         json.loads((tmp_path / f"val_{name}" / "metrics.json").read_text()))
    (want, sub_want, val_want), (got, sub_got, val_got) = answers["checkpoint"], answers["file"]
    assert len(want) == len(got) == 8
    for a, b in zip(want, got):
        assert [s["name"] for s in a["lineage"]] == [s["name"] for s in b["lineage"]]
        assert [t["species"] for t in a["topk"]] == [t["species"] for t in b["topk"]]
        np.testing.assert_allclose([t["probability"] for t in a["topk"]], [t["probability"] for t in b["topk"]],
                                   atol=1e-2)
    pd.testing.assert_frame_equal(sub_want, sub_got)
    assert len(_headline(val_want)) == 14 and _headline(val_want) == _headline(val_got)


def _headline(metrics: dict) -> dict:
    """Top-1 and macro-F1 of the leaf and every rank in a metrics.json."""
    flat = pd.json_normalize(metrics, sep="/").iloc[0].to_dict()
    return {k: v for k, v in flat.items() if k.startswith("model/keys/") and k.endswith(("/top1", "/macro_f1_all"))}


@pytest.mark.slow
def test_benchmark_smoke_size_runs_and_reports_every_file(tmp_path):
    out = run_script("benchmarks/bench_model_file.py", "--smoke", "--dir", tmp_path).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["runs"]) == {"checkpoint", "model_fp32", "model_bf16"}
    sizes = {k: v["file_mb"] for k, v in result["runs"].items()}
    assert sizes["model_bf16"] < sizes["model_fp32"] < sizes["checkpoint"]  # no optimizer state; half-size weights
    assert all(v["peak_rss_mb"] > v["imports_rss_mb"] > 0 for v in result["runs"].values())
