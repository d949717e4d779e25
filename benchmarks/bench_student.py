#!/usr/bin/env python3
"""Teacher against distilled student: parameters, ONNX file size, CPU latency, top-1 at every rank.

For each checkpoint: export it with export.py's code (into --out-dir/<name>/), check the ONNX
file against PyTorch, and score the validation CSV with PyTorch (the numbers validate.py gives,
consistent decoding). Latency: one image through onnxruntime on one CPU thread, the models
timed in turn (interleaved, so load from other jobs falls on all alike), median of --runs.
With --full-size, also the same architectures at 224x224 with untrained weights (the
real-data setting; accuracy is not measured there). Prints one JSON object.

Example:
  python benchmarks/bench_student.py --teacher checkpoints/bench_teacher/best_model.pth \\
      --student checkpoints/bench_student/best_model.pth --val-path data/demo/metadata/FungiTastic/FungiTastic-ClosedSet-Val.csv
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from amanita.checkpoint import load_checkpoint, load_for_eval
from amanita.data import DeviceLoader, FungiTasticDataset, create_transforms
from amanita.engine import predict, summarize
from amanita.export import INPUT_NAME, check_export, onnx_session, write_bundle
from amanita.backbone import resolve_data_config
from amanita.model import count_parameters, create_multitask_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", required=True, help="student checkpoint (distill.py)")
    p.add_argument("--val-path", required=True, help="validation CSV scored by both")
    p.add_argument("--out-dir", default="benchmarks/out/student", help="where the ONNX bundles are written")
    p.add_argument("--runs", type=int, default=100, help="timed single-image runs per model")
    p.add_argument("--batch-size", type=int, default=64, help="batch for the accuracy pass")
    p.add_argument("--full-size", action="store_true", help="also time both architectures at 224x224 (untrained)")
    return p.parse_args(argv)


def export(name: str, model, taxonomy, data_config, info, args, check: bool) -> dict:
    """Params, ONNX file size and (``check``) the PyTorch/ONNX agreement; the session for timing."""
    folder = Path(args.out_dir) / name
    write_bundle(folder, model, taxonomy, data_config, info)
    onnx_path = folder / "model.onnx"
    row = {"model": name, "architecture": info.get("architecture"), "input_size": list(data_config["input_size"]),
           "params_M": round(count_parameters(model) / 1e6, 3), "onnx_MB": round(os.path.getsize(onnx_path) / 2**20, 2)}
    if check:
        images = torch.randn(4, *data_config["input_size"], generator=torch.Generator().manual_seed(0))
        row["onnx_max_abs_diff"] = max(check_export(model, onnx_path, images).values())
    return row | {"_session": onnx_session(onnx_path, threads=1)}


def interleaved_latency_ms(rows: list[dict], runs: int, warmup: int = 5) -> None:
    """Median single-image onnxruntime time of every row's session, timed in turn."""
    inputs = [np.random.default_rng(0).standard_normal((1, *r["input_size"])).astype(np.float32) for r in rows]
    times = [[] for _ in rows]
    for i in range(warmup + runs):
        for k, (row, x) in enumerate(zip(rows, inputs)):
            t0 = time.perf_counter()
            row["_session"].run(None, {INPUT_NAME: x})
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    for row, t in zip(rows, times):
        row["latency_ms_1thread"] = round(1e3 * float(np.median(t)), 2)
        del row["_session"]


def accuracy(model, taxonomy, data_config, args) -> dict:
    ds = FungiTasticDataset(args.val_path, taxonomy, create_transforms(data_config, False),
                            input_size=data_config["input_size"])
    loader = DeviceLoader(torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=0), "cpu", data_config)
    metrics = summarize(predict(model, loader, taxonomy, "cpu", "consistent", None), taxonomy)
    return {k.replace("/acc1", "_top1"): round(v, 4) for k, v in metrics.items() if k.endswith("/acc1")}


def full_size(name: str, ckpt: dict, taxonomy, args) -> dict:
    """The architecture of a checkpoint rebuilt at 224x224 with untrained weights (size and latency)."""
    arch = ckpt["architecture"]
    kwargs = {} if arch.startswith("beit") else dict(ckpt.get("model_kwargs") or {})  # BEiT: the stock B/16
    model = create_multitask_model(arch, taxonomy, model_args=kwargs, pretrained=False).eval()
    cfg = resolve_data_config(model.backbone, arch) | {"input_size": (3, 224, 224)}
    return export(f"{name}_224_untrained", model, taxonomy, cfg, {"architecture": arch}, args, check=False)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, path in (("teacher", args.teacher), ("student", args.student)):
        model, tax, cfg, info = load_for_eval(path)
        rows.append(export(name, model, tax, cfg, info, args, check=True) | accuracy(model, tax, cfg, args))
        if args.full_size:
            rows.append(full_size(name, load_checkpoint(path), tax, args))
    interleaved_latency_ms(rows, args.runs)
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
                                 f"{os.getloadavg()[0]:.1f}", "torch": torch.__version__, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
