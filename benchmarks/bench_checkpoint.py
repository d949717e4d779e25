#!/usr/bin/env python3
"""How long a checkpoint save blocks the training loop: synchronous against background writing.

A BEiT-B-sized training state on the CPU (timm ``beit_base_patch16_224`` with FungiTastic's 2,829
outputs, AdamW moments filled, RNG states, a scheduler-sized dict; optionally an EMA copy) is
saved ``--rounds`` times each way, interleaved:
- synchronous: ``amanita.checkpoint.save_checkpoint`` (temp file, fsync, rename), the old path;
- background: ``CheckpointWriter.save`` (CPU snapshot into reused buffers, then a thread writes).
For the background writer the loop is blocked only by ``save``; the write itself is timed apart,
and the next save starts after it ends (as with saves minutes apart). The snapshot buffers are
allocated once before the loop (``CheckpointWriter.reserve``, as the training run does at
start-up) and that one-off cost is reported apart.
Target (issue 8): blocked <= 15% of the synchronous time.

Prints one JSON object. Examples:
  python benchmarks/bench_checkpoint.py --dir /tmp/bench_ckpt --rounds 3
  python benchmarks/bench_checkpoint.py --smoke      # a tiny BEiT, one round: seconds
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from amanita import checkpoint as ck
from amanita.checkpoint_writer import CheckpointWriter
from amanita.seeding import capture_rng
from amanita.backbone import parse_model_args


SMOKE = {"rounds": 1, "classes": 10,  # --smoke (tests/test_benchmarks.py runs every benchmark so)
         "model_args": '{"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=None, help="where the checkpoints are written (default: a temporary folder)")
    p.add_argument("--rounds", type=int, default=3, help="saves of each kind, interleaved; medians are reported")
    p.add_argument("--classes", type=int, default=2829, help="outputs of the head (FungiTastic leaves)")
    p.add_argument("--ema", action="store_true", help="add an EMA copy of the weights, as --model-ema does")
    p.add_argument("--model-args", default="{}", help="JSON kwargs of timm's beit_base_patch16_224 (default: BEiT-B)")
    p.add_argument("--smoke", action="store_true", help=f"a size that runs in seconds: {SMOKE}")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    return p.parse_args(argv)


def training_state(classes: int, ema: bool, model_args: dict) -> dict:
    """What ``Checkpointer.state_dict`` holds for BEiT-B + AdamW, built without a forward pass."""
    import timm
    model = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=classes, **model_args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()  # fills exp_avg / exp_avg_sq
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": {"base_values": [1e-4] * 30, "t_initial": 20}, "rng": capture_rng(),
             "epoch": 3, "step": 1234, "history": [{"epoch": e, "val/leaf/acc1": 0.5} for e in range(3)]}
    if ema:
        state["model_ema"] = {k: v.clone() for k, v in state["model"].items()}
    return state


def main():
    args = parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench_ckpt_"))
    folder.mkdir(parents=True, exist_ok=True)
    state = training_state(args.classes, args.ema, parse_model_args(args.model_args))
    n_bytes = sum(t.numel() * t.element_size() for t in _tensors(state))
    writer = CheckpointWriter()
    reserve = writer.reserve(state)  # what the run does once at start-up
    sync, blocked, written = [], [], []
    try:
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ck.save_checkpoint(state, folder / "sync.pth")
            sync.append(time.perf_counter() - t0)
            blocked.append(writer.save(state, folder / "last.pth", also=[folder / "best_model.pth"]))
            t0 = time.perf_counter()
            writer.wait()
            written.append(time.perf_counter() - t0 + blocked[-1])
        size = os.path.getsize(folder / "last.pth")
    finally:
        writer.close()
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    steady = statistics.median(blocked)
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads)",
        "state": f"BEiT-B{' ' + args.model_args if args.model_args != '{}' else ''} + AdamW"
                 f"{' + EMA' if args.ema else ''}, {args.classes} outputs",
        "state_mb": round(n_bytes / 2**20), "file_mb": round(size / 2**20), "rounds": args.rounds,
        "sync_save_s": round(statistics.median(sync), 3),
        "background_reserve_at_start_s": round(reserve, 3), "background_blocked_s": round(steady, 3),
        "background_write_s": round(statistics.median(written), 3),
        "blocked_over_sync": round(steady / statistics.median(sync), 3),
        "all_s": {"sync": [round(x, 3) for x in sync], "blocked": [round(x, 3) for x in blocked]},
    }, indent=1))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


if __name__ == "__main__":
    main()
