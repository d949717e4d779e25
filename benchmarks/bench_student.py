#!/usr/bin/env python3
"""Teacher against distilled student: parameters, ONNX file size, CPU latency, top-1 at every rank.

For each checkpoint: export it with export.py's code (into --out-dir/<name>/), check the ONNX
file against PyTorch, and score the validation CSV with PyTorch (the numbers validate.py gives,
consistent decoding). Latency: one image through onnxruntime on one CPU thread, the models
timed in turn (interleaved, so load from other jobs falls on all alike), median of --runs.
With --full-size, also the same architectures at 224x224 with untrained weights (the
real-data setting; accuracy is not measured there). Prints one JSON object.

Examples:
  python benchmarks/bench_student.py --teacher checkpoints/bench_teacher/best_model.pth \\
      --student checkpoints/bench_student/best_model.pth --val-path data/demo/metadata/FungiTastic/FungiTastic-ClosedSet-Val.csv
  python benchmarks/bench_student.py --smoke     # two untrained tiny models, a few demo images: seconds
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from amanita.checkpoint import load_checkpoint, load_for_eval, save_checkpoint
from amanita.data import DeviceLoader, FungiTasticDataset, create_transforms, read_split
from amanita.demo.dataset import csv_path, generate_dataset
from amanita.engine import predict, summarize
from amanita.export import INPUT_NAME, check_export, onnx_session, write_bundle
from amanita.backbone import resolve_data_config
from amanita.model import count_parameters, create_multitask_model
from amanita.taxonomy import build_taxonomy

SMOKE = {"teacher": "", "student": "", "val_path": "", "out_dir": "", "runs": 3, "batch_size": 8}
SMOKE_MODELS = {"teacher": {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8},
                "student": {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default=None, help="teacher checkpoint (required unless --smoke)")
    p.add_argument("--student", default=None, help="student checkpoint (distill.py; required unless --smoke)")
    p.add_argument("--val-path", default=None, help="validation CSV scored by both (required unless --smoke)")
    p.add_argument("--out-dir", default="benchmarks/out/student", help="where the ONNX bundles are written")
    p.add_argument("--runs", type=int, default=100, help="timed single-image runs per model")
    p.add_argument("--batch-size", type=int, default=64, help="batch for the accuracy pass")
    p.add_argument("--full-size", action="store_true", help="also time both architectures at 224x224 (untrained)")
    p.add_argument("--smoke", action="store_true", help="a size that runs in seconds: untrained tiny teacher and "
                   "student, a few demo images, in a temporary folder (tests/test_benchmarks.py runs it so)")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    args = p.parse_args(argv)
    if not args.smoke and not (args.teacher and args.student and args.val_path):
        p.error("give --teacher, --student and --val-path (or --smoke)")
    return args


def smoke_inputs(args, folder: Path) -> None:
    """--smoke: a few demo images and two untrained tiny checkpoints in ``folder`` (where not given)."""
    generate_dataset(folder / "data", n_observations=1, max_images=8)
    val = csv_path(folder / "data", "val")
    tax = build_taxonomy([read_split(csv_path(folder / "data", s)) for s in ("train", "val", "test")])
    for seed, (name, kwargs) in enumerate(SMOKE_MODELS.items()):
        if not getattr(args, name):
            torch.manual_seed(seed)
            arch = "beit_base_patch16_224"
            model = create_multitask_model(arch, tax, model_args=kwargs, pretrained=False)
            save_checkpoint(dict(model=model.state_dict(), kind="multitask", architecture=arch, model_kwargs=kwargs,
                                 head_mode="residual", head_sizes=tax.head_sizes(), taxonomy=tax.to_dict(),
                                 taxonomy_sha256=tax.sha256(), data_config=resolve_data_config(model.backbone, arch),
                                 epoch=0, step=0), folder / f"{name}.pth")
            setattr(args, name, str(folder / f"{name}.pth"))
    args.val_path = args.val_path or str(val)
    args.out_dir = args.out_dir or str(folder / "out")


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
    with tempfile.TemporaryDirectory(prefix="bench_student_smoke_") if args.smoke else contextlib.nullcontext() as tmp:
        if args.smoke:
            smoke_inputs(args, Path(tmp))
        compare(args)


def compare(args) -> None:
    """Export, score and time the teacher and the student; print the JSON."""
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
