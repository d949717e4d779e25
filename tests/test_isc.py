"""fungitastic_multitask.isc: a valid ISC launch file whose command trains, survives a kill and resumes."""
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, SMALL_MODEL, make_image_dataset, script_env

ISC_FILE = ROOT / "fungitastic_multitask.isc"
ISC_VARIABLES = ("$NNODES", "$N_PROC", "$MASTER_ADDR", "$MASTER_PORT", "$NODE_RANK")
EPOCHS, UPDATES_PER_EPOCH = 4, 4  # 32 images / (2 processes x batch 4)


@pytest.fixture(scope="module")
def isc():
    with open(ISC_FILE, "rb") as f:
        return tomllib.load(f)


def test_launch_file_has_the_isc_fields(isc):
    assert isinstance(isc["isc_project_id"], str) and isc["isc_project_id"]
    assert isinstance(isc["experiment_name"], str) and isc["experiment_name"]
    assert isinstance(isc["gpus"], int) and 1 <= isc["gpus"] <= 72  # the ISC's documented range
    assert isc["compute_mode"] == "burst"  # "cycle" is 90-second turns: a full run would never reach a save
    text = ISC_FILE.read_text()
    assert '"interruptible"' in text and '"cycle"' in text  # the other modes are explained beside it
    ids = isc["dataset_id_list"]
    assert isinstance(ids, list) and len(ids) == 1 and all(isinstance(i, str) for i in ids)
    command = isc["command"]
    assert isinstance(command, str) and "\n" not in command  # one shell line, however the ISC runs it
    torchrun = command.split(" && ")[-1]
    assert torchrun.startswith("torchrun ") and "train_multitask.py" in torchrun
    for var in ISC_VARIABLES:
        assert var in torchrun
    assert f'DATA="/data/{ids[0]}"' in command
    for csv in ("FungiTastic-Train.csv", "FungiTastic-ClosedSet-Val.csv", "FungiTastic-ClosedSet-Test.csv"):
        assert f'"$DATA/metadata/FungiTastic/{csv}"' in torchrun
    assert "--save-every-minutes" in torchrun and "--batch-size 128" in torchrun


def local_command(isc, data_root, *extra):
    """The launch command made runnable here: no environment set-up, this interpreter, the tiny data.

    The set-up steps (``source`` the venv, ``cd`` to the clone) are the ``&&``-joined prefix;
    flags appended at the end override the file's (argparse keeps the last value).
    """
    steps = isc["command"].split(" && ")
    kept = [s for s in steps if s.split()[0] not in ("source", "cd")]
    assert len(steps) - len(kept) == 2, steps
    local = " && ".join(kept).replace(f"/data/{isc['dataset_id_list'][0]}", str(data_root))
    local = local.replace("torchrun ", f"{shlex.quote(sys.executable)} -m torch.distributed.run ", 1)
    return local + " " + " ".join(shlex.quote(str(a)) for a in extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_fungitastic(root):
    """make_image_dataset plus a ClosedSet-Test split (a copy of val), in the FungiTastic layout."""
    paths = make_image_dataset(root, n_train=32, n_val=9)
    shutil.copy(paths["val"], paths["val"].parent / "FungiTastic-ClosedSet-Test.csv")
    shutil.copytree(root / "FungiTastic" / "val", root / "FungiTastic" / "test")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [c for c, p in parent.items() if p == pid]
        out += kids
        todo += kids
    return out


def kill_mid_run(cmd, env, last, min_step):
    """Start ``cmd``; SIGKILL it and every process under it once ``last`` records ``min_step``.

    The process group is not enough: torchrun starts each worker in a session of its own, so the
    workers would outlive their agent. A preempted ISC node loses all of them at once.
    """
    proc = subprocess.Popen(["bash", "-c", cmd], env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["step"] >= min_step:
            break
        time.sleep(0.02)
    alive = proc.poll() is None
    tree = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    stderr = proc.communicate()[1]
    assert alive, f"the run ended before it could be killed:\n{stderr[-3000:]}"


@pytest.mark.slow
def test_command_trains_is_killed_and_resumes_from_the_checkpoint_artifact(isc, tmp_path):
    tiny_fungitastic(tmp_path / "data")
    ckpt, lossy = tmp_path / "checkpoints", tmp_path / "lossy"
    cmd = local_command(isc, tmp_path / "data", *SMALL_MODEL, "--mappings", tmp_path / "m.json", "--workers", 0,
                        "--batch-size", 4, "--epochs", EPOCHS, "--save-every-steps", 1, "--auto-augment", "none")
    env = script_env(OMP_NUM_THREADS="1", NNODES="1", N_PROC="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), NODE_RANK="0",
               CHECKPOINT_ARTIFACT_PATH=str(ckpt), LOSSY_ARTIFACT_PATH=str(lossy))
    kill_mid_run(cmd, env, ckpt / "last.pth", min_step=UPDATES_PER_EPOCH + 1)
    killed = torch.load(ckpt / "last.pth", weights_only=True)
    assert UPDATES_PER_EPOCH < killed["step"] < EPOCHS * UPDATES_PER_EPOCH
    assert killed["sampler"]["world_size"] == 2
    # the cycle starts again: the very same command, nothing pointing at the checkpoint
    env["MASTER_PORT"] = str(free_port())
    proc = subprocess.run(["bash", "-c", cmd], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # same epoch, same sample: the update count comes out exactly as without the kill
    assert (f"resumed from {ckpt / 'last.pth'}: epoch {killed['epoch'] + 1}, batch {killed['sampler']['batch_in_epoch']}, "
            f"update {killed['step']}") in proc.stdout
    done = torch.load(ckpt / "last.pth", weights_only=True)
    assert done["epoch"] == EPOCHS and done["step"] == EPOCHS * UPDATES_PER_EPOCH
    history = [json.loads(line) for line in (lossy / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert (ckpt / "best_model.pth").is_file() and (ckpt / "test_metrics.json").is_file()


def readme_dry_run_block() -> str:
    """The bash block of README_ISC.md's section 7 (the local dry run)."""
    text = (ROOT / "README_ISC.md").read_text()
    section = text[text.index("## 7. Local dry run"):]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_dry_run_block_trains_on_a_demo_set(tmp_path):
    """The README block as pasted, on a small generated demo set, with shorter training appended."""
    demo = tmp_path / "data" / "demo"
    subprocess.run([sys.executable, str(ROOT / "create_synthetic_dataset.py"), "--output-dir", str(demo),
                    "--n-observations", "300", "--image-size", "48", "--workers", "1"],
                   check=True, capture_output=True, env=script_env(), timeout=120)
    block = readme_dry_run_block()
    assert block.startswith("source .venv/bin/activate\n") and "MASTER_PORT=29500" in block
    # the venv is this interpreter's (on PATH below); paths and the port made local to the test
    block = block.removeprefix("source .venv/bin/activate\n").replace("MASTER_PORT=29500", f"MASTER_PORT={free_port()}")
    block = block.replace('"data/demo"', shlex.quote(str(demo))).replace("$PWD/isc_dry_run", str(tmp_path / "run"))
    block = block.rstrip() + " --epochs 1 --model-args '{\"depth\": 1, \"embed_dim\": 32, \"num_heads\": 2, " \
                             "\"img_size\": 32, \"patch_size\": 8}' --workers 0 --save-every-steps 2 --image-size-folder 48p"
    env = script_env(OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-c", block], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pth", weights_only=True)["epoch"] == 1
    assert len((tmp_path / "run" / "lossy" / "metrics.jsonl").read_text().splitlines()) == 1
    assert (demo / "taxonomic_mappings.json").is_file()  # built from the CSVs where the README points


# ---------------------------------------------------------------------- fungitastic_preflight.isc
PREFLIGHT_FILE = ROOT / "fungitastic_preflight.isc"


@pytest.fixture(scope="module")
def preflight_isc():
    with open(PREFLIGHT_FILE, "rb") as f:
        return tomllib.load(f)


def test_preflight_launch_file_runs_the_training_command_with_preflight_py(isc, preflight_isc):
    """A cycle-mode experiment whose command is the training run's, flag for flag, with preflight.py."""
    assert preflight_isc["compute_mode"] == "cycle"
    for key in ("isc_project_id", "gpus", "dataset_id_list"):
        assert preflight_isc[key] == isc[key]
    train_setup, train_flags = isc["command"].split(" train_multitask.py ")
    setup, flags = preflight_isc["command"].split(" preflight.py ")
    assert setup == train_setup  # the same environment, nodes and GPUs
    assert flags.startswith(train_flags + " ")  # every training flag, then the preflight's own
    own = shlex.split(flags.removeprefix(train_flags))
    assert own[0::2] == ["--sample-images", "--max-seconds"] and float(own[3]) < 90  # fits one 90-second turn


@pytest.mark.slow
def test_preflight_command_passes_under_two_gloo_processes(preflight_isc, tmp_path):
    """The launch command made local (2 processes, gloo): every check on both ranks, the all-reduce timed,
    the checkpoint artifact found shared, preflight.json in the lossy artifact and nothing left behind."""
    tiny_fungitastic(tmp_path / "data")
    ckpt, lossy = tmp_path / "checkpoints", tmp_path / "lossy"
    cmd = local_command(preflight_isc, tmp_path / "data", *SMALL_MODEL, "--mappings", tmp_path / "m.json",
                        "--workers", 0, "--batch-size", 4, "--sample-images", 8, "--max-seconds", 20)
    env = script_env(OMP_NUM_THREADS="1", NNODES="1", N_PROC="2", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port()), NODE_RANK="0", HF_HUB_OFFLINE="1",
                     CHECKPOINT_ARTIFACT_PATH=str(ckpt), LOSSY_ARTIFACT_PATH=str(lossy))
    proc = subprocess.run(["bash", "-c", cmd], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((lossy / "preflight.json").read_text())
    checks = report["checks"]
    assert report["world_size"] == 2 and len(checks["model"]["per_rank"]) == 2
    assert checks["distributed"]["status"] == "PASS"
    reduce = checks["distributed"]["numbers"]
    assert reduce["backend"] == "gloo" and reduce["bus_gb_per_s"] > 0 and 0 < reduce["share_of_step"] < 1
    # the gradients of the tiny model, in fp32
    assert reduce["buffer_mb"] == pytest.approx(checks["model"]["numbers"]["grad_mb"])
    assert checks["checkpoint"]["numbers"]["shared"] is True and checks["checkpoint"]["numbers"]["ranks_reading"] == 2
    assert checks["data"]["status"] == "WARN" and "builds it from the CSVs" in checks["data"]["why"]  # no m.json yet
    sampled = [n["images"]["train"]["sampled"] for n in checks["data"]["per_rank"]]
    assert sampled == [8, 8]  # each rank its own 8 of the 32
    assert proc.stdout.count("preflight of 2 process(es)") == 1  # the table on rank 0 only
    assert not ckpt.exists() and not (tmp_path / "m.json").exists()
