#!/usr/bin/env python3
"""Overhead of amanita's training loop and data loader against bare PyTorch.

1. images/s of ``amanita.engine.train_one_epoch`` (MultiTaskBEiT, MultiTaskLoss, AdamW, scheduler,
   grad clipping) against a bare loop (same model, batch and optimizer; six cross-entropies; data
   already in memory for both).
2. images/s of the FungiTasticDataset DataLoader (eval transform) against a DataLoader over plain
   PIL decode + resize + to-tensor, with the same workers and batch size, on the demo images.

Prints one JSON object. Example:
  python benchmarks/bench_train.py --data-root data/demo --batches 30 --workers 2
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from amanita.data import FungiTasticDataset, create_transforms, read_split
from amanita.distributed import DistInfo
from amanita.engine import train_one_epoch
from amanita.losses import MultiTaskLoss
from amanita.backbone import parse_model_args, resolve_data_config
from amanita.model import create_multitask_model
from amanita.run import Run, StepConfig
from amanita.taxonomy import HEADS, KEYS, build_taxonomy, label_column

DEMO_MODEL_ARGS = '{"depth": 4, "embed_dim": 192, "num_heads": 3, "img_size": 96}'


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="data/demo", help="a FungiTastic-layout dataset (make demo-data)")
    p.add_argument("--model", default="beit_base_patch16_224", help="timm model name")
    p.add_argument("--model-args", default=DEMO_MODEL_ARGS, help="JSON kwargs for timm.create_model")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader comparison")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device")
    return p.parse_args()


def bare_loop(model, batches, device) -> float:
    """Plain PyTorch: forward, six cross-entropies, backward, AdamW step. Returns images/s."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    t0, n = time.perf_counter(), 0
    for x, y, _ in batches:
        out = model(x)
        loss = sum(F.cross_entropy(out[k], label_column(y, k)) for k in HEADS)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += x.shape[0]
    _sync(device)
    return n / (time.perf_counter() - t0)


def amanita_loop(model, batches, tax, device) -> float:
    from timm.scheduler import create_scheduler_v2
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched, _ = create_scheduler_v2(opt, "cosine", num_epochs=1, step_on_epochs=False, updates_per_epoch=len(batches))
    crit = MultiTaskLoss(tax, label_smoothing=0.1).to(device)
    run = Run(model, opt, crit, dist=DistInfo(device=device), config=StepConfig(clip_grad=1.0), scheduler=sched)
    t0 = time.perf_counter()
    out = train_one_epoch(run, batches)
    _sync(device)
    return sum(x.shape[0] for x, _, _ in batches) / (time.perf_counter() - t0), out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class PlainPIL(Dataset):
    """The baseline loader: PIL open, convert, resize, to tensor; nothing else."""

    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor
        with Image.open(self.paths[i]) as im:
            return pil_to_tensor(im.convert("RGB").resize(self.size, Image.BILINEAR)).float().div_(255), i


def loader_rate(ds, args) -> float:
    loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, shuffle=False)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += batch[0].shape[0]
        if n >= args.batches * args.batch_size:
            break
    return n / (time.perf_counter() - t0)


def main():
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    csv = Path(args.data_root) / "metadata" / "FungiTastic" / "FungiTastic-Train.csv"
    if not csv.is_file():
        sys.exit(f"error: {csv} not found; run `make demo-data` first or pass --data-root")
    df = read_split(csv)
    tax = build_taxonomy([df])
    model = create_multitask_model(args.model, tax, parse_model_args(args.model_args), pretrained=False).to(device)
    cfg = resolve_data_config(model.backbone, args.model)
    size = cfg["input_size"][1:]
    n = args.batches + args.warmup
    batches = [(torch.randn(args.batch_size, 3, *size, device=device),
                torch.stack([torch.randint(0, tax.num_classes(k), (args.batch_size,), device=device)
                             for k in KEYS], 1), None) for _ in range(n)]
    # first passes are slow (allocator and oneDNN caches): one untimed pass of each first
    bare_loop(model, batches[: args.warmup], device)
    amanita_loop(model, batches[: args.warmup], tax, device)
    bare, ours = [], []
    for _ in range(args.rounds):  # interleaved, so a busy neighbour slows both alike
        bare.append(bare_loop(model, batches[args.warmup:], device))
        ours.append(amanita_loop(model, batches[args.warmup:], tax, device)[0])
    bare, ours = statistics.median(bare), statistics.median(ours)
    ds = FungiTasticDataset(csv, tax, create_transforms(cfg, train=False), input_size=cfg["input_size"])
    train_ds = FungiTasticDataset(csv, tax, create_transforms(cfg, train=True), input_size=cfg["input_size"])
    plain = loader_rate(PlainPIL(ds.paths, (size[1], size[0])), args)
    ours_eval = loader_rate(ds, args)
    ours_train = loader_rate(train_ds, args)
    print(json.dumps({
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, {device}",
        "torch": torch.__version__, "model_args": args.model_args, "batch_size": args.batch_size,
        "train_loop_images_per_s": {"amanita": round(ours, 1), "bare_pytorch": round(bare, 1),
                                    "ratio": round(ours / bare, 3)},
        "loader_images_per_s": {"amanita_eval_transform": round(ours_eval, 1), "plain_pil": round(plain, 1),
                                "ratio": round(ours_eval / plain, 3),
                                "amanita_train_transform": round(ours_train, 1), "workers": args.workers},
    }, indent=1))


if __name__ == "__main__":
    main()
