"""The fault matrix: the real training scripts killed at chosen moments and restarted with the same command.

Every run is a subprocess of train_minimal.py, train_multitask.py or distill.py on a 14-image
demo set with a tiny model, under 1 or 2 gloo processes started as torchrun starts them (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``; when one process dies the others are sent
SIGTERM, as torchrun's agent does). A kill lands at a named point, deterministically, through
``AMANITA_FAULT`` (:mod:`amanita.faults`), never after a sleep.

Configurations (2 epochs, ``--save-every-steps 1``, no drop-path/dropout, so two runs are bitwise equal):

=========  ===================  =====  =====  ==========================================
name       script               batch  accum  batches per rank (1 → 2 processes)
=========  ===================  =====  =====  ==========================================
mt-a1      train_multitask.py   3      1      5 (last 2 images) → 3 (last 1)
mt-a2      train_multitask.py   3      2      5 → 3: the last group is a remainder of 1 batch
minimal    train_minimal.py     3      2      as mt-a2
distill    distill.py           4      1      4 (last 2) → 2 (last 3); a BatchNorm student
=========  ===================  =====  =====  ==========================================

(The student's batch is 4: at 32 px its last stages are 1×1, and BatchNorm cannot train on one image.)

The cells (:data:`CELLS`) are a covering design, not the whole product (4 configurations × 6 kill
points × 4 restarts × 2 signals = 192 cells would take hours here): every configuration, kill point
(mid-epoch update, an epoch's final update, validation, inside a background write, between the two
names of an epoch-end save, right after ``best_model.pth`` is linked), restart (1 → 1, 2 → 2,
1 → 2, 2 → 1) and signal is in a cell, and the cells that matter most are present: a kill during
validation after ``last.pth`` was saved on an epoch's final update with a partial last batch, the
final-update kill of an accumulation remainder under 2 processes (its ``last.pth`` is the same
end-of-epoch position), the BatchNorm student under 2 processes, and both layout changes. One
uninterrupted reference run per configuration and layout serves every cell.

After every run: each process's parameters and buffers are equal (``AMANITA_DUMP_RANK_STATE``),
no temporary file is left, the restart succeeds at its first try, and ``best_model.pth`` is the
epoch the history says is best. Same world size: ``last.pth`` and ``best_model.pth`` are
``torch.equal`` to the reference's. 1 → 2 and 2 → 1: the run finishes and its schedule
(update count, scheduler state, last lr) is the reference's of the new layout.

Precisions: one epoch of each head mode under CPU autocast bf16 and fp16 gives finite losses, and
the fp16 loss of a confident model (leaf logit gap 25) is within 1% of its fp32 loss.

The matrix is printed at the end of the module and written to ``fault_matrix.md`` in pytest's
temporary folder; BENCHMARKS.md ("Fault matrix") keeps the figure.
"""
from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, SMALL_MODEL, image_dataset_and_taxonomy, script_env, tiny_checkpoint

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Config:
    script: str
    args: tuple


CONFIGS = {
    "mt-a1": Config("train_multitask.py", (*SMALL_MODEL, "--batch-size", 3, "--accum-steps", 1)),
    "mt-a2": Config("train_multitask.py", (*SMALL_MODEL, "--batch-size", 3, "--accum-steps", 2)),
    "minimal": Config("train_minimal.py", (*SMALL_MODEL, "--batch-size", 3, "--accum-steps", 2, "--lr", 0.01)),
    "distill": Config("distill.py", ("--model", "mobilenetv3_small_050", "--batch-size", 4, "--accum-steps", 1,
                                     "--lr", 1e-3)),
}


@dataclass(frozen=True)
class Cell:
    config: str
    fault: str        # AMANITA_FAULT: point:n:signal (rank 0)
    killed_world: int
    restart_world: int
    why: str


CELLS = [
    Cell("mt-a1", "validation:1:SIGKILL", 1, 1, "last.pth of the final update (partial batch), killed in validation"),
    Cell("mt-a1", "write:4:SIGTERM", 2, 1, "inside the epoch-end background write, resumed on fewer processes"),
    Cell("mt-a2", "update:2:SIGKILL", 2, 2, "final update: accumulation remainder and partial batch, 2 ranks"),
    Cell("mt-a2", "update:2:SIGTERM", 1, 2, "mid-epoch (update 2 of 3), resumed on more processes"),
    Cell("minimal", "best:1:SIGKILL", 1, 1, "right after best_model.pth is linked"),
    Cell("distill", "linked:1:SIGTERM", 2, 2, "BatchNorm student; epoch-end save with one of its two names in place"),
]
KILL_POINT = {"validation": "during validation of epoch", "update": "after update", "write": "during checkpoint write",
              "linked": "between the two names of checkpoint write", "best": "after best_model.pth is linked, write"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, args: list, world: int, folder: Path, fault: str | None = None, timeout: float = 300):
    """Run ``script`` under ``world`` processes as torchrun would; returns (exit code of the first failure or 0,
    rank 0's output). Each process's output goes to ``folder/rank<r>.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    env = script_env(OMP_NUM_THREADS="1", AMANITA_DUMP_RANK_STATE=str(folder / "ranks"))
    env.pop("AMANITA_FAULT", None)
    if fault:
        env["AMANITA_FAULT"] = fault
    if world > 1:
        env |= {"WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port())}
    procs, logs = [], []
    for rank in range(world):
        log = open(folder / f"rank{rank}.log", "w")
        extra = {"RANK": str(rank), "LOCAL_RANK": str(rank)} if world > 1 else {}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], env=env | extra,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
        logs.append(log)
    code = _wait_all(procs, timeout)
    for log in logs:
        log.close()
    return code, (folder / "rank0.log").read_text()


def _wait_all(procs: list, timeout: float) -> int:
    """Wait for every process; the first to fail stops the others (SIGTERM, then SIGKILL), like torchrun."""
    deadline, failed = time.time() + timeout, 0
    while any(p.poll() is None for p in procs):
        codes = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if (codes and not failed) or time.time() > deadline:
            failed = codes[0] if codes else -999
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        time.sleep(0.05)
    return failed or next((p.returncode for p in procs if p.returncode), 0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data, tax = image_dataset_and_taxonomy(root, n_train=14, n_val=6, mappings=root / "m.json")
    tiny_checkpoint(root / "teacher.pth", tax)
    common = ["--train-path", data["train"], "--val-path", data["val"], "--mappings", root / "m.json",
              "--workers", 0, "--auto-augment", "none", "--drop-path", 0, "--epochs", 2,
              "--save-every-steps", 1, "--log-interval", 1]
    return root, common, tax


def config_args(setup, name: str, save_dir: Path) -> list:
    root, common, _ = setup
    teacher = ["--teacher", root / "teacher.pth"] if name == "distill" else []
    return [*common, *CONFIGS[name].args, *teacher, "--save-dir", save_dir]


@pytest.fixture(scope="module")
def matrix(request, tmp_path_factory):
    rows = {}
    yield rows
    lines = ["| configuration | kill point | signal | processes | why this cell | outcome |", "|---|---|---|---|---|---|"]
    for cell, outcome in rows.items():
        if isinstance(cell, str):  # a precision cell
            lines.append(f"| {cell} | – | – | 1 | precision | {outcome} |")
            continue
        point, n, sig = cell.fault.split(":")
        lines.append(f"| {cell.config} ({CONFIGS[cell.config].script}) | {KILL_POINT[point]} {n} | {sig} | "
                     f"{cell.killed_world} → {cell.restart_world} | {cell.why} | {outcome} |")
    text = "\n".join(lines)
    (tmp_path_factory.getbasetemp() / "fault_matrix.md").write_text(text + "\n")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # printed with or without -s
        print("\nfault matrix (configuration × kill point × restart):\n" + text, flush=True)


@pytest.fixture(scope="module")
def references(setup):
    """The uninterrupted run of each configuration and layout the cells need, run once and shared; two at a
    time in the background while the cells run (the machine has two cores, a one-process run uses one)."""
    keys = list(dict.fromkeys((c.config, c.restart_world) for c in CELLS))
    with ThreadPoolExecutor(2) as pool:
        yield {key: pool.submit(reference, setup, *key) for key in keys}


def reference(setup, name: str, world: int) -> dict:
    folder = setup[0] / f"ref-{name}-{world}"
    code, out = launch(CONFIGS[name].script, config_args(setup, name, folder / "ckpt"), world, folder)
    assert code == 0, out[-3000:]
    check_after_run(folder, world)
    return {f: torch.load(folder / "ckpt" / f"{f}.pth", weights_only=True) for f in ("last", "best_model")}


def check_after_run(folder: Path, world: int) -> None:
    """Every process holds the same parameters and buffers; no temporary file is left beside the checkpoints."""
    stale = [p.name for p in (folder / "ckpt").glob(".*.tmp")]
    assert not stale, f"stale temporaries left: {stale}"
    states = [torch.load(folder / "ranks" / f"rank{r}.pth", weights_only=True) for r in range(world)]
    for r, other in enumerate(states[1:], 1):
        differ = [k for k, v in states[0].items() if not torch.equal(v, other[k])]
        assert not differ, f"rank {r} differs from rank 0 in {differ[:4]}"


def schedule(ckpt: dict) -> dict:
    """What the schedule of a run is: its update count, the scheduler's state, the last epoch's lr."""
    sched = {k: v for k, v in ckpt["scheduler"].items() if not isinstance(v, torch.Tensor)}
    return {"step": ckpt["step"], "scheduler": sched, "lr": ckpt["history"][-1]["lr"]}


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: f"{c.config}-{c.fault.replace(':', '-')}-"
                                                      f"{c.killed_world}to{c.restart_world}")
def test_a_killed_run_restarts_and_ends_as_an_uninterrupted_one(cell, setup, references, matrix, tmp_path):
    matrix[cell] = "failed"
    try:
        run_cell(cell, setup, references, tmp_path)
    except Exception as e:
        reason = (str(e).splitlines() or [""])[0][:120]
        matrix[cell] = f"failed: {reason}" if isinstance(e, AssertionError) else f"failed: {type(e).__name__}: {reason}"
        raise
    matrix[cell] = "survived"


def run_cell(cell: Cell, setup, references: dict, tmp_path: Path) -> None:
    """Kill, restart with the same command, and check the run against the uninterrupted one."""
    save = tmp_path / "ckpt"
    args = config_args(setup, cell.config, save)
    code, out = launch(CONFIGS[cell.config].script, args, cell.killed_world, tmp_path / "killed", cell.fault)
    point, _, sig = cell.fault.split(":")
    assert code == -signal.Signals[sig], f"not killed by {sig} ({code}): {out[-2000:]}"
    assert f"fault injected: {sig}" in out
    if point == "write":  # the kill landed inside a write: its temporary is there until the restart
        assert list(save.glob(".*.pth.*.tmp")), "the kill did not land inside a write"
    code, out = launch(CONFIGS[cell.config].script, args, cell.restart_world, tmp_path / "restart")
    assert code == 0, f"the restart failed ({code}): {out[-3000:]}"
    assert "resumed from" in out
    ref = references[cell.config, cell.restart_world].result()
    check_after_run(tmp_path / "restart", cell.restart_world)
    final, best = (torch.load(save / f"{name}.pth", weights_only=True) for name in ("last", "best_model"))
    assert final["epoch"] == 2
    assert schedule(final) == schedule(ref["last"])
    f1 = [h["val/species/f1"] for h in final["history"]]
    assert best["epoch"] == f1.index(max(f1)) + 1, "best_model.pth is not the best epoch"
    if cell.killed_world == cell.restart_world:
        for name, ckpt in (("last", final), ("best_model", best)):
            differ = [k for k, v in ref[name]["model"].items() if not torch.equal(v, ckpt["model"][k])]
            assert not differ, f"{name}.pth differs from the uninterrupted run's in {differ[:4]}"
        assert f1 == [h["val/species/f1"] for h in ref["last"]["history"]]


# ---------------------------------------------------------------------- precisions
def confident(setup, head_mode: str) -> Path:
    """A tiny multi-task checkpoint whose leaf head is sure of its first leaf: a logit gap of 25."""
    root, _, tax = setup
    path = root / f"confident-{head_mode}.pth"
    tiny_checkpoint(path, tax)
    ckpt = torch.load(path, weights_only=True)
    ckpt["head_mode"] = head_mode  # the same parameters in both modes (the roll-ups are not saved)
    ckpt["model"]["heads.leaf.weight"].zero_()
    ckpt["model"]["heads.leaf.bias"].copy_(torch.tensor([25.0] + [0.0] * (tax.n_leaves - 1)))
    torch.save(ckpt, path)
    return path


def one_epoch(setup, folder: Path, head_mode: str, amp: str) -> tuple[int, str, dict]:
    """One epoch of the confident model at a learning rate of 1e-8: (exit code, output, metrics record)."""
    args = config_args(setup, "mt-a1", folder / "ckpt")
    args[args.index("--epochs") + 1] = 1
    args += ["--head-mode", head_mode, "--amp", amp, "--init-from", setup[0] / f"confident-{head_mode}.pth",
             "--lr", 1e-8, "--save-every-steps", 0]
    code, out = launch("train_multitask.py", args, 1, folder)
    metrics = folder / "ckpt" / "metrics.jsonl"
    return code, out, json.loads(metrics.read_text().splitlines()[-1]) if code == 0 else {}


PRECISIONS = [("residual", "bf16"), ("residual", "fp16"), ("residual", "none"), ("independent", "bf16"),
              ("independent", "fp16")]


def test_each_head_mode_trains_finite_under_bf16_and_fp16(setup, tmp_path, matrix):
    for head_mode in ("residual", "independent"):  # before the threads: tiny_checkpoint seeds torch's global RNG
        confident(setup, head_mode)
    with ThreadPoolExecutor(2) as pool:  # single-process runs, two at a time on two cores
        runs = dict(zip(PRECISIONS, pool.map(lambda c: one_epoch(setup, tmp_path / "-".join(c), *c), PRECISIONS)))
    failed = []
    for (head_mode, amp), (code, out, record) in runs.items():
        losses = [v for k, v in record.items() if k.startswith("train/")]
        ok = code == 0 and losses and all(map(math.isfinite, losses))
        matrix[f"{head_mode} heads, --amp {amp}, one epoch"] = "finite losses" if ok else "failed"
        failed += [] if ok else [f"{head_mode} {amp} ({code}): {out[-1500:]}"]
    assert not failed, "\n".join(failed)
    fp16, full = runs["residual", "fp16"][2]["train/loss"], runs["residual", "none"][2]["train/loss"]
    assert fp16 == pytest.approx(full, rel=1e-2)  # the roll-up of a confident model must not underflow
