#!/usr/bin/env python3
"""Full fine-tuning against LoRA (two ranks) against the heads only, at an equal budget (issue 21).

From one single-head start (``--start``, or trained here with ``--start-epochs`` of the demo's
train_minimal.py recipe), each variant trains the multi-task model for ``--epochs`` with
train_multitask.py (same data order, schedule and updates), each run in its own process:

  full       every weight trains (layer decay 0.75)
  lora-R     --lora-rank R for each of --ranks: adapters on qkv, proj, fc1, fc2; the heads
  heads      --freeze-backbone: the heads only (a linear probe of the start's features)

Reported per variant: val leaf top-1 and coarse (genus, family) top-1 of the last epoch,
trainable parameters, images/s of the training epoch (metrics.jsonl) and the run's peak RSS.
Prints one JSON object. Examples:
  python benchmarks/bench_lora.py --data-root data/demo --work checkpoints/bench_lora
  python benchmarks/bench_lora.py --smoke
"""
import argparse
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

from _measure import measure  # benchmarks/_measure.py: a child's own peak memory

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ["--model", "beit_base_patch16_224", "--model-args",
              '{"depth": 4, "embed_dim": 192, "num_heads": 3, "img_size": 96}', "--crop-pct", "1",
              "--crop-mode", "squash", "--interpolation", "bilinear"]
SMOKE_MODEL = ["--model", "beit_base_patch16_224", "--model-args",
               '{"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}']


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="data/demo", help="a FungiTastic-layout dataset (the demo's)")
    p.add_argument("--work", default=None, help="folder for the runs (default: a temporary folder)")
    p.add_argument("--start", default=None, help="single-head checkpoint to start from (default: trained here)")
    p.add_argument("--start-epochs", type=int, default=4, help="epochs of the start when it is trained here")
    p.add_argument("--epochs", type=int, default=2, help="epochs of every variant (the equal budget)")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 16], help="LoRA ranks compared")
    p.add_argument("--lr-full", type=float, default=3e-4, help="peak lr of full fine-tuning (the demo's)")
    p.add_argument("--lr-lora", type=float, default=2e-3, help="peak lr of LoRA and of the heads only")
    p.add_argument("--smoke", action="store_true", help="a tiny generated dataset and model: checks the benchmark runs")
    return p.parse_args()


def run(script: str, *flags) -> tuple[str, float]:
    """Run a script; its stdout and peak RSS (MiB)."""
    m = measure(ROOT / script, flags, ROOT)
    return m["stdout"], m["peak_mb"]


def splits(root: Path, size_folder: str = "300p") -> list:
    meta = root / "metadata" / "FungiTastic"
    return ["--image-size-folder", size_folder, "--train-path", meta / "FungiTastic-Train.csv", "--val-path", meta / "FungiTastic-ClosedSet-Val.csv",
            "--mappings", root / "taxonomic_mappings.json", "--workers", 2, "--auto-augment", "none",
            "--drop-path", 0, "--resume", "none"]


def variant(name: str, args, common: list, start: Path, work: Path) -> dict:
    flags = {"full": ["--lr", args.lr_full], "heads": ["--lr", args.lr_lora, "--freeze-backbone"]}.get(name)
    if flags is None:
        flags = ["--lr", args.lr_lora, "--lora-rank", name.removeprefix("lora-"), "--lora-alpha",
                 2 * int(name.removeprefix("lora-"))]
    t0 = time.perf_counter()
    out, peak = run("train_multitask.py", *common, "--init-from", start, "--epochs", args.epochs,
                    "--warmup-epochs", 0.5, "--head-lr-scale", 3, "--save-dir", work / name, *flags)
    last = json.loads((work / name / "metrics.jsonl").read_text().splitlines()[-1])
    trainable = float(re.search(r"; ([0-9.]+) M trainable", out).group(1))
    return {"leaf_top1": last["val/leaf/acc1"], "genus_top1": last["val/genus/acc1"],
            "family_top1": last["val/family/acc1"], "trainable_m": trainable,
            "images_per_s": round(last["images_per_s"], 1), "peak_rss_mb": round(peak), "seconds": round(time.perf_counter() - t0)}


def main():
    args = parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_lora_"))
    root = Path(args.data_root)
    model = DEMO_MODEL
    if args.smoke:
        root, model = work / "data", SMOKE_MODEL
        args.start_epochs, args.epochs, args.ranks = 1, 1, [2]
        run("create_synthetic_dataset.py", "--output-dir", root, "--n-observations", 60, "--image-size", 48)
    common = [*splits(root, "48p" if args.smoke else "300p"), *model, "--batch-size", 16 if args.smoke else 64]
    start = Path(args.start) if args.start else work / "start" / "best_model.pth"
    if not args.start:
        run("train_minimal.py", *common, "--opt", "adamw", "--lr", 1e-3, "--weight-decay", 0.05, "--accum-steps", 1,
            "--epochs", args.start_epochs, "--warmup-epochs", 1, "--save-dir", work / "start")
    names = ["full", *(f"lora-{r}" for r in args.ranks), "heads"]
    rows = {name: variant(name, args, common, start, work) for name in names}
    print(json.dumps({"variants": rows, "epochs": args.epochs, "start": str(start), "smoke": args.smoke,
                      "machine": platform.machine(), "cpus": os.cpu_count(), "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
