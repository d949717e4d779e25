#!/usr/bin/env python3
"""Cost of amanita's training loop and data pipeline against bare PyTorch and plain PIL.

1. ``--parts loop``: images/s of ``amanita.engine.train_one_epoch`` (MultiTaskModel,
   MultiTaskLoss, AdamW, scheduler, grad clipping) against a bare loop (same model, batch and
   optimizer; six cross-entropies; data already in memory for both). Needs the demo data.
2. ``--parts data``: per-core images/s of one sample's preparation on real photographs at
   FungiTastic 300p sizes (scikit-learn's ``china.jpg`` and ``flower.jpg`` cut and re-encoded
   to 400×300, 300×400 and 500×375 JPEGs) by one DataLoader worker (one core, one thread;
   collate included, timed after the first batch), in interleaved rounds:
   - ``plain_pil``: PIL decode + convert + resize to the input size + float tensor (the baseline,
     what a plain loader ships); ``plain_pil_uint8`` the same shipping uint8 (the strictest);
   - ``eval``: ``FungiTasticDataset`` with the eval transform (decode_jpeg, squash-resize, uint8);
   - ``train``: the same with the stock train transform (RandomResizedCrop, flips,
     RandAugment m20 n2) and per-sample seeding;
   - ``before_eval`` / ``before_train``: the pipeline this replaced (PIL decode, timm's float
     transform with normalisation, seeding that saves and restores every RNG).
   Then each stage's cost per image in this process, the DataLoader rates with ``--workers`` (collate, worker IPC; uint8 vs float32
   batches) and the cost of the on-device normalisation, here on the CPU.
   ``cores_per_gpu_for_3000_img_s`` is 3000 divided by the per-core train rate.

Prints one JSON object. Examples:
  python benchmarks/bench_train.py --parts data --rounds 5
  python benchmarks/bench_train.py --parts loop --data-root data/demo --batches 20
  python benchmarks/bench_train.py --smoke      # both parts, a tiny BEiT, a few images: seconds
"""
import argparse
import contextlib
import io
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from amanita.backbone import FUNGITASTIC_DATA_CONFIG, parse_model_args, resolve_data_config
from amanita.data import FungiTasticDataset, create_transforms, load_rgb, make_loader, read_split, to_model_input
from amanita.distributed import DistInfo
from amanita.engine import train_one_epoch
from amanita.losses import MultiTaskLoss
from amanita.model import create_multitask_model
from amanita.run import Run, StepConfig
from amanita.taxonomy import HEADS, KEYS, build_taxonomy, label_column

DEMO_MODEL_ARGS = '{"depth": 4, "embed_dim": 192, "num_heads": 3, "img_size": 96}'
STOCK_CONFIG = FUNGITASTIC_DATA_CONFIG  # the stock model's: squash-resize to 224, bilinear, mean = std = 0.5
PHOTO_SIZES = ((400, 300), (300, 400), (500, 375))  # (width, height): FungiTastic 300p shapes
SMOKE = {"parts": "all", "data_root": "", "batch_size": 4, "batches": 2, "warmup": 1, "samples": 8, "rounds": 1,
         "workers": 1,  # --smoke: seconds (tests/test_benchmarks.py runs every benchmark so)
         "model_args": '{"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="data", choices=("data", "loop", "all"), help="what to measure")
    p.add_argument("--data-root", default="data/demo",
                   help="a FungiTastic-layout dataset for --parts loop ('': the demo's taxonomy, planned in memory)")
    p.add_argument("--model", default="beit_base_patch16_224", help="timm model name for --parts loop")
    p.add_argument("--model-args", default=DEMO_MODEL_ARGS, help="JSON kwargs for timm.create_model")
    p.add_argument("--batch-size", type=int, default=32, help="batch size")
    p.add_argument("--batches", type=int, default=30, help="timed batches per loop measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--samples", type=int, default=320, help="images per per-core measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader comparison")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device")
    p.add_argument("--smoke", action="store_true", help=f"a size that runs in seconds: {SMOKE}")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    return p.parse_args(argv)


# ---------------------------------------------------------------------- the training loop
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
    run = Run(model, opt, crit, dist=DistInfo(device=device), step_config=StepConfig(clip_grad=1.0), scheduler=sched)
    t0 = time.perf_counter()
    out = train_one_epoch(run, batches)
    _sync(device)
    return sum(x.shape[0] for x, _, _ in batches) / (time.perf_counter() - t0), out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def loop_taxonomy(data_root: str):
    """The taxonomy of ``data_root``'s train CSV, or ('') of the demo's train split planned in memory."""
    if not data_root:
        from amanita.demo.metadata import plan_dataset
        return build_taxonomy([plan_dataset(seed=0, n_observations=1)["train"]])
    csv = Path(data_root) / "metadata" / "FungiTastic" / "FungiTastic-Train.csv"
    if not csv.is_file():
        sys.exit(f"error: {csv} not found; run `make demo-data` first or pass --data-root")
    return build_taxonomy([read_split(csv)])


def measure_loop(args, device) -> dict:
    tax = loop_taxonomy(args.data_root)
    model = create_multitask_model(args.model, tax, parse_model_args(args.model_args), pretrained=False).to(device)
    size = resolve_data_config(model.backbone, args.model)["input_size"][1:]
    batches = [(torch.randn(args.batch_size, 3, *size, device=device),
                torch.stack([torch.randint(0, tax.num_classes(k), (args.batch_size,), device=device)
                             for k in KEYS], 1), None) for _ in range(args.batches + args.warmup)]
    # first passes are slow (allocator and oneDNN caches): one untimed pass of each first
    bare_loop(model, batches[: args.warmup], device)
    amanita_loop(model, batches[: args.warmup], tax, device)
    bare, ours = [], []
    for _ in range(args.rounds):  # interleaved, so a busy neighbour slows both alike
        bare.append(bare_loop(model, batches[args.warmup:], device))
        ours.append(amanita_loop(model, batches[args.warmup:], tax, device)[0])
    bare, ours = statistics.median(bare), statistics.median(ours)
    return {"model_args": args.model_args, "amanita": round(ours, 1), "bare_pytorch": round(bare, 1),
            "ratio": round(ours / bare, 3)}


# ---------------------------------------------------------------------- the data pipeline
def write_photos(folder: Path, n: int) -> pd.DataFrame:
    """``n`` rows over JPEGs cut from scikit-learn's two photographs at FungiTastic 300p sizes."""
    from sklearn.datasets import load_sample_images
    files = []
    for k, photo in enumerate(load_sample_images().images):  # (427, 640, 3) each
        im = Image.fromarray(photo)
        for w, h in PHOTO_SIZES:
            for j, x0 in enumerate((0, 120, 240)):  # three cuts per size, so no two files are alike
                box_w = min(photo.shape[1] - x0, round(photo.shape[0] * w / h))
                cut = im.crop((x0, 0, x0 + box_w, photo.shape[0])).resize((w, h), Image.BICUBIC)
                path = folder / f"photo{k}_{w}x{h}_{j}.jpg"
                cut.save(path, quality=90)
                files.append(str(path))
    lineage = dict(scientificName="Amanita phalloides", phylum="Basidiomycota", **{"class": "Agaricomycetes"},
                   order="Agaricales", family="Amanitaceae", genus="Amanita", species="Amanita phalloides")
    return pd.DataFrame([dict(lineage, category_id=0, filename=Path(files[i % len(files)]).name,
                              image_path=files[i % len(files)]) for i in range(n)])


class PlainPIL(Dataset):
    """The baseline: PIL open, convert, resize, float tensor (or uint8 with ``uint8``); nothing else."""

    def __init__(self, paths, size, uint8: bool = False):
        self.paths, self.size, self.uint8 = paths, size, uint8

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from torchvision.transforms.functional import pil_to_tensor
        with Image.open(self.paths[i]) as im:
            x = pil_to_tensor(im.convert("RGB").resize(self.size, Image.BILINEAR))
        return (x if self.uint8 else x.float().div_(255)), i


class Before(Dataset):
    """The pipeline this replaced: PIL decode, timm's float transform, seeding that restores every RNG."""

    def __init__(self, paths, cfg, train: bool):
        from timm.data import create_transform
        common = dict(input_size=cfg["input_size"], interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"])
        self.tf = (create_transform(**common, is_training=True, scale=(0.8, 1.0), hflip=0.5, vflip=0.5,
                                    auto_augment="rand-m20-n2") if train else
                   create_transform(**common, crop_pct=cfg["crop_pct"], crop_mode=cfg["crop_mode"]))
        self.paths, self.train = paths, train

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = load_rgb(self.paths[i])
        if not self.train:
            return self.tf(img), i
        py, npst = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(i), np.random.seed(i), torch.manual_seed(i)
            out = self.tf(img)
            random.setstate(py), np.random.set_state(npst)
        return out, i


def per_core_rate(ds, n: int, batch_size: int) -> float:
    """Images/s of one loader worker (one core): decode, transform, collate; timed after its first batch."""
    loader = make_loader(ds, batch_size, 1, torch.device("cpu"), persistent=False, prefetch_factor=4)
    it = iter(loader)
    next(it)
    t0, done = time.perf_counter(), 0
    for batch in it:
        done += batch[0].shape[0]
        if done >= n:
            break
    return done / (time.perf_counter() - t0)


def loader_rate(ds, args, batches: int = 20) -> float:
    loader = make_loader(ds, args.batch_size, args.workers, torch.device("cpu"), persistent=False)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += batch[0].shape[0]
        if n >= batches * args.batch_size:
            break
    return n / (time.perf_counter() - t0)


def stage_costs(paths: list[str], cfg: dict, rounds: int) -> dict[str, float]:
    """Milliseconds per image of each stage of the train and eval paths, in this process (median of rounds)."""
    from amanita.data import _seed_rngs, _to_pil, read_image
    train, ev = create_transforms(cfg, True), create_transforms(cfg, False)
    crop, flips, ra = train.tensor_steps[0], train.tensor_steps[1:], train.pil_steps[0]
    decoded = [read_image(p) for p in paths[:18]]
    cropped = [crop(x) for x in decoded]
    pil = [_to_pil(x) for x in cropped]

    def flip(k):
        x = cropped[k]
        for f in flips:
            x = f(x)
        return x
    stages = {"read_and_decode_jpeg": lambda k: read_image(paths[k]),
              "pil_decode": lambda k: load_rgb(paths[k]),
              "eval_resize": lambda k: ev(decoded[k]), "random_resized_crop": lambda k: crop(decoded[k]),
              "flips": flip, "to_pil_and_back": lambda k: torch.from_numpy(np.array(_to_pil(cropped[k]))),
              "randaugment_m20_n2": lambda k: ra(pil[k]), "per_sample_seeding": lambda k: _seed_rngs(k)}
    times = {k: [] for k in stages}
    for _ in range(rounds):
        for name, fn in stages.items():
            t0 = time.perf_counter()
            for k in range(36):
                fn(k % 18)
            times[name].append((time.perf_counter() - t0) / 36 * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


def normalise_ms(args, cfg) -> float:
    """Milliseconds of :func:`to_model_input` per batch on the CPU (on a GPU it is one fused pass)."""
    batch = torch.randint(0, 256, (args.batch_size, *cfg["input_size"]), dtype=torch.uint8)
    to_model_input(batch, torch.device("cpu"), cfg["mean"], cfg["std"])
    t0 = time.perf_counter()
    for _ in range(10):
        to_model_input(batch, torch.device("cpu"), cfg["mean"], cfg["std"])
    return (time.perf_counter() - t0) / 10 * 1e3


def measure_data(args) -> dict:
    cfg = STOCK_CONFIG
    with tempfile.TemporaryDirectory() as tmp:
        df = write_photos(Path(tmp), max(args.samples + 6 * args.batch_size, 4 * args.batch_size * 20))
        tax = build_taxonomy([df])
        ds = {"eval": FungiTasticDataset(df, tax, create_transforms(cfg, False), input_size=cfg["input_size"]),
              "train": FungiTasticDataset(df, tax, create_transforms(cfg, True), input_size=cfg["input_size"])}
        ds["train"].seed = 0
        paths = df["image_path"].tolist()
        ds |= {"plain_pil": PlainPIL(paths, cfg["input_size"][1:][::-1]),
               "plain_pil_uint8": PlainPIL(paths, cfg["input_size"][1:][::-1], uint8=True),
               "before_eval": Before(paths, cfg, False), "before_train": Before(paths, cfg, True)}
        torch.set_num_threads(1)
        rates = {k: [] for k in ds}
        for _ in range(args.rounds):  # interleaved, so a busy neighbour slows all alike
            for k in ds:
                rates[k].append(per_core_rate(ds[k], args.samples, args.batch_size))
        per_core = {k: round(statistics.median(v), 1) for k, v in rates.items()}
        stages = stage_costs(paths, cfg, args.rounds)
        loaders = {k: round(loader_rate(ds[k], args), 1) for k in ("plain_pil", "eval", "train")}
        norm = normalise_ms(args, cfg)
    plain = per_core["plain_pil"]
    return {
        "photos": "china.jpg, flower.jpg cut to " + ", ".join(f"{w}x{h}" for w, h in PHOTO_SIZES) + " JPEG q90",
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "per_core_images_per_s": per_core,
        "ratio_to_plain_pil": {k: round(v / plain, 3) for k, v in per_core.items() if k != "plain_pil"},
        "cores_per_gpu_for_3000_img_s": {"train": round(3000 / per_core["train"], 1),
                                          "before_train": round(3000 / per_core["before_train"], 1),
                                          "eval": round(3000 / per_core["eval"], 1)},
        "stage_ms_per_image": stages,
        "loader_images_per_s": loaders | {"workers": args.workers, "batch_size": args.batch_size},
        "normalise_on_cpu_ms_per_batch": round(norm, 2),
    }


def main():
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    out = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {device}",
           "torch": torch.__version__}
    if args.parts in ("loop", "all"):
        out["train_loop_images_per_s"] = measure_loop(args, device)
    if args.parts in ("data", "all"):
        out["data"] = measure_data(args)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
