import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from amanita.cli import parse_train_config
from amanita.taxonomy import HEADS, KEYS, Taxonomy
from tests.helpers import ROOT, SMALL_MODEL, make_image_dataset, rows, run_in_process, script_env

pytestmark = pytest.mark.slow  # end-to-end: trains in subprocesses

CKPT_KEYS = {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "sampler", "rng", "args",
             "taxonomy_sha256", "species_f1", "species_acc1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return make_image_dataset(root) | {"root": root}


def common(data, save_dir, *extra):
    return ["--train-path", data["train"], "--val-path", data["val"], "--mappings", data["root"] / "m.json",
            *SMALL_MODEL, "--batch-size", 8, "--workers", 0, "--save-dir", save_dir, "--auto-augment", "none",
            *extra]


def test_minimal_then_multitask_from_it(data, tmp_path):
    proc = run_in_process("train_minimal.py", *common(data, tmp_path / "min", "--epochs", 2, "--accum-steps", 2,
                                                       "--lr", 0.05, "--test-path", data["val"]))
    best = torch.load(tmp_path / "min" / "best_model.pth", weights_only=True)
    assert CKPT_KEYS <= set(best) and best["kind"] == "single"
    assert 0.0 <= best["species_acc1"] <= 1.0 and best["model"]["head.weight"].shape[0] == 6
    assert "species" in proc.stdout and "val top-1" in proc.stdout and "layer scales" in proc.stdout
    proc = run_in_process("train_multitask.py", *common(data, tmp_path / "mt", "--epochs", 1, "--init-from",
                                                        tmp_path / "min" / "best_model.pth", "--use-class-weights",
                                                        "--test-path", data["val"], "--consistency-weight", 0.1))
    lines = [json.loads(x) for x in (tmp_path / "mt" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["epoch"] == 1
    assert {f"train/{k}/loss" for k in HEADS} <= set(lines[0]) and "train/species/loss" not in lines[0]
    assert {f"val/{k}/{m}" for k in KEYS for m in ("acc1", "f1")} <= set(lines[0])
    assert lines[0]["images_per_s"] > 0 and "lr" in lines[0]
    test = json.loads((tmp_path / "mt" / "test_metrics.json").read_text())
    assert 0 <= test["test/phylum/acc1"] <= 1
    args = yaml.safe_load((tmp_path / "mt" / "args.yaml").read_text())  # the flags as given, for --config
    assert args["consistency_weight"] == 0.1 and args["use_class_weights"] is True and args["lr"] is None
    replayed = parse_train_config("t", True, ["--config", str(tmp_path / "mt" / "args.yaml")])
    assert replayed.flags() == args and replayed.test_path == str(data["val"])
    assert "test split, best checkpoint" in proc.stdout and "(heads)" in proc.stdout


def _train_cmd(data, save_dir):
    return [sys.executable, str(ROOT / "train_multitask.py"),
            *map(str, common(data, save_dir, "--epochs", 3, "--save-every-steps", 1, "--lr", 1e-3,
                             "--drop-path", 0.1, "--drop", 0.1, "--auto-augment", "rand-m9-n2", "--workers", 1))]


def test_sigkill_during_a_background_write_then_resume_gives_identical_weights(data, tmp_path):
    env = script_env(OMP_NUM_THREADS="1")
    subprocess.run(_train_cmd(data, tmp_path / "straight"), env=env, check=True, capture_output=True, timeout=600)
    # the writer thread holds each write for 1 s before its rename: a kill lands inside one
    slow = dict(env, AMANITA_TEST_CHECKPOINT_WRITE_DELAY_S="1.0")
    proc = subprocess.Popen(_train_cmd(data, tmp_path / "killed"), env=slow, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    folder = tmp_path / "killed"
    last, deadline, in_flight = folder / "last.pth", time.time() + 300, []
    while time.time() < deadline and proc.poll() is None:  # kill inside epoch 1 (6 updates per epoch)
        if last.exists() and torch.load(last, weights_only=True)["step"] >= 8:
            in_flight = list(folder.glob(".last.pth.*.tmp"))
            if in_flight:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert in_flight and all(p.exists() for p in in_flight), "was not killed during a write"
    c = torch.load(last, weights_only=True)  # the previous checkpoint, whole
    assert c["epoch"] == 1 and 0 < c["sampler"]["batch_in_epoch"] < 6, "was not killed mid-epoch"
    out = subprocess.run(_train_cmd(data, folder), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "resumed from" in out.stdout
    assert not list(folder.glob(".*.tmp"))  # the killed write's temporary was removed at start-up
    a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["step"] == b["step"] == 18
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert [h["val/species/acc1"] for h in a["history"]] == [h["val/species/acc1"] for h in b["history"]]
    assert b["lr_scaling"]["lr"] == 1e-3 and b["lr_scaling"]["global_batch"] == 8
    best = torch.load(folder / "best_model.pth", weights_only=True)
    assert best["epoch"] == a["history"].index(max(a["history"], key=lambda h: h["val/species/f1"])) + 1


def test_resume_refuses_another_taxonomy_or_head_layout(data, tmp_path):
    run_in_process("train_multitask.py", *common(data, tmp_path / "a", "--epochs", 1))
    heads = run_in_process("train_multitask.py", *common(data, tmp_path / "a", "--epochs", 2, "--head-mode", "independent"),
                           check=False)
    assert heads.returncode == 2 and "has residual coarse heads, this run asks for independent" in heads.stderr
    other = tmp_path / "other.csv"
    rows([0, 1, 2, 5]).to_csv(other, index=False)
    run_in_process("create_taxonomic_mappings.py", "--train-path", other, "--output", tmp_path / "other.json")
    # rows outside the other mappings would stop the run first: let them pass to reach the resume check
    args = common(data, tmp_path / "a", "--epochs", 2, "--max-bad-image-fraction", 1)
    args[args.index("--mappings") + 1] = tmp_path / "other.json"
    proc = run_in_process("train_multitask.py", *args, check=False)
    assert proc.returncode == 2
    assert "was trained with another taxonomy" in proc.stderr and "Traceback" not in proc.stderr
    assert Taxonomy.load(tmp_path / "other.json").n_leaves == 4
