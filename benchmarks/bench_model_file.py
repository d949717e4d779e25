#!/usr/bin/env python3
"""test.py on one photo: from a training checkpoint against the inference model file (issue 21).

Builds a multi-task BEiT-B with random weights over 2,829 leaves (the taxonomy of
``amanita.demo.synthetic_predictions.synthetic_taxonomy``), a training checkpoint as a run writes it
(model, AdamW moments, scheduler, RNG, history), and its model files
(``amanita.modelfile.write_model_file``: float32 and bfloat16 weights). Then ``test.py`` names one
photo from each, every run in its own process, interleaved over ``--rounds``: wall time and peak
RSS (VmHWM of the process). ``--baseline-code DIR`` also runs DIR's test.py on the training
checkpoint (e.g. ``git archive main | tar -x -C DIR``: the code before issue 21).
Target (issue 21): the model file ≥ 3× faster and ≤ half the memory of the training checkpoint.
Each run also reports what its imports alone cost (torch, timm, amanita: the same for every file),
and the ratios of what remains after them.

Prints one JSON object. Examples:
  python benchmarks/bench_model_file.py --rounds 3 --baseline-code /tmp/amanita_main
  python benchmarks/bench_model_file.py --smoke
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _measure import measure  # benchmarks/_measure.py: a child's own peak memory

import numpy as np
import torch
from PIL import Image

from amanita import checkpoint as ck
from amanita.backbone import resolve_data_config
from amanita.demo.synthetic_predictions import synthetic_taxonomy
from amanita.model import create_multitask_model
from amanita.seeding import capture_rng
from amanita.modelfile import write_model_file

ROOT = Path(__file__).resolve().parents[1]

FULL = ("beit_base_patch16_224", {})
SMOKE = ("beit_base_patch16_224", {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8})


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny BEiT (2 blocks, width 64): checks the benchmark runs")
    p.add_argument("--rounds", type=int, default=3, help="interleaved runs of each file; medians are reported")
    p.add_argument("--dir", default=None, help="where the files are written (default: a temporary folder)")
    p.add_argument("--baseline-code", default=None,
                   help="a checkout of older amanita code whose test.py also runs on the training checkpoint")
    return p.parse_args()


def write_files(folder: Path, smoke: bool) -> dict:
    """The training checkpoint, its model files and one photo; returns their paths."""
    arch, kwargs = SMOKE if smoke else FULL
    tax = synthetic_taxonomy(seed=0)
    torch.manual_seed(0)
    model = create_multitask_model(arch, tax, model_args=dict(kwargs), pretrained=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt.step()  # fills exp_avg / exp_avg_sq, as in a run's checkpoint
    cfg = resolve_data_config(model.backbone, arch)
    state = {"format_version": ck.CHECKPOINT_VERSION, "model": model.state_dict(), "model_ema": None,
             "optimizer": opt.state_dict(), "scheduler": {"t_initial": 20}, "scaler": None, "epoch": 3,
             "step": 1234, "sampler": {"epoch": 3, "batch_in_epoch": 0, "batch_size": 64, "world_size": 1},
             "rng": capture_rng(), "args": {}, "kind": "multitask", "architecture": arch, "model_kwargs": kwargs,
             "head_sizes": tax.head_sizes(), "head_mode": "residual", "taxonomy": tax.to_dict(),
             "taxonomy_sha256": tax.sha256(), "data_config": cfg, "history": [{"epoch": e} for e in range(3)]}
    paths = {"checkpoint": folder / "last.pth", "model_fp32": folder / "model_fp32.pth",
             "model_bf16": folder / "model_bf16.pth", "photo": folder / "photo.jpg"}
    ck.save_checkpoint(state, paths["checkpoint"])
    write_model_file(paths["checkpoint"], paths["model_fp32"], dtype="float32")
    write_model_file(paths["checkpoint"], paths["model_bf16"], dtype="bfloat16")
    pixels = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(paths["photo"])
    return paths


def measured(code: Path, checkpoint: Path, photo: Path) -> dict:
    """Wall seconds and peak RSS (MiB) of ``code``'s test.py naming ``photo`` with ``checkpoint``."""
    # the imports every run pays (torch, timm, amanita) are timed before test.py starts
    m = measure(code / "test.py", ["--checkpoint", checkpoint, "--json", "--workers", 0, "--device", "cpu", photo],
                code, preload=("torch", "timm", "amanita.identify"), env={"PYTHONDONTWRITEBYTECODE": "1"})
    answer = json.loads(m["stdout"].strip().splitlines()[-1])["topk"][0]["species"]
    return {"seconds": m["seconds"], "peak_rss_mb": m["peak_mb"], "answer": answer,
            "imports_s": m["imports_s"], "imports_rss_mb": m["imports_rss_mb"]}


def main():
    args = parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench_model_file_"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = write_files(folder, args.smoke)
    runs = {"checkpoint": (ROOT, paths["checkpoint"]), "model_fp32": (ROOT, paths["model_fp32"]),
            "model_bf16": (ROOT, paths["model_bf16"])}
    if args.baseline_code:
        runs["checkpoint_before"] = (Path(args.baseline_code).resolve(), paths["checkpoint"])
    results = {name: [] for name in runs}
    for _ in range(args.rounds if not args.smoke else 1):
        for name, (code, path) in runs.items():
            results[name].append(measured(code, path, paths["photo"]))
    rows = {name: {"seconds": round(statistics.median(r["seconds"] for r in rs), 2),
                   "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in rs)),
                   "file_mb": round(runs[name][1].stat().st_size / 2**20, 1), "answer": rs[0]["answer"],
                   "imports_s": round(statistics.median(r["imports_s"] for r in rs), 2),
                   "imports_rss_mb": round(statistics.median(r["imports_rss_mb"] for r in rs))}
            for name, rs in results.items()}
    base = rows["checkpoint_before" if args.baseline_code else "checkpoint"]
    for row in rows.values():
        row["speedup"] = round(base["seconds"] / row["seconds"], 2)
        row["memory_ratio"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 2)
        # the part the file decides: beyond the imports every run pays
        row["speedup_after_imports"] = round((base["seconds"] - base["imports_s"]) / (row["seconds"] - row["imports_s"]), 2)
        row["memory_ratio_after_imports"] = round((row["peak_rss_mb"] - row["imports_rss_mb"])
                                                  / (base["peak_rss_mb"] - base["imports_rss_mb"]), 2)
    print(json.dumps({"model": "tiny BEiT (smoke)" if args.smoke else "BEiT-B, 2,829 leaves",
                      "rounds": args.rounds if not args.smoke else 1, "runs": rows,
                      "same_answer": len({r["answer"] for r in rows.values()}) == 1,
                      "setup_s": round(time.perf_counter() - t0, 1), "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "load": os.getloadavg(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
