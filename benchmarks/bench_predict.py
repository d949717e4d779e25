#!/usr/bin/env python3
"""``amanita.engine.predict`` throughput against a bare forward loop over the same loader.

Both loops read the same loader (in-memory uint8 images normalised on the device by
``amanita.data.DeviceLoader``, as in training and validate.py, so the model and the per-sample
work are what is measured) with a MultiTaskModel whose heads have FungiTastic's sizes (2,829 leaves, 2,786
species, ...; a synthetic taxonomy). The bare loop only runs the model under
``torch.inference_mode``; ``predict`` adds log-probabilities at every rank, decoding, top-5,
confidences, the on-device accumulation, the host copy and the DataFrame. Rounds are
interleaved and medians reported. Target (issue 8): predict >= 0.95x the bare loop.

Prints one JSON object. Examples:
  python benchmarks/bench_predict.py --images 512 --batch-size 64 --rounds 3
  python benchmarks/bench_predict.py --smoke      # a tiny BEiT on 16 images: seconds
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset

from amanita.backbone import parse_model_args
from amanita.data import DeviceLoader
from amanita.demo.synthetic_predictions import synthetic_taxonomy
from amanita.engine import predict
from amanita.model import create_multitask_model

DEMO_MODEL_ARGS = '{"depth": 4, "embed_dim": 192, "num_heads": 3, "img_size": 96}'
SMOKE = {"images": 16, "batch_size": 8, "rounds": 1,  # --smoke (tests/test_benchmarks.py runs every benchmark so)
         "model_args": '{"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="beit_base_patch16_224", help="timm model name")
    p.add_argument("--model-args", default=DEMO_MODEL_ARGS, help="JSON kwargs for timm.create_model")
    p.add_argument("--images", type=int, default=512, help="images per pass")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--decode", default="consistent", choices=("consistent", "independent"), help="predict's decoding")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device")
    p.add_argument("--smoke", action="store_true", help=f"a size that runs in seconds: {SMOKE}")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    return p.parse_args(argv)


class InMemory(Dataset):
    """(uint8 image, labels[7], index) from tensors already in memory."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], i


def bare_loop(model, loader, device) -> float:
    model.eval()
    t0, n = time.perf_counter(), 0
    with torch.inference_mode():
        for images, _, _ in loader:
            model(images.to(device, non_blocking=True))
            n += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def predict_loop(model, loader, tax, device, decode) -> float:
    t0 = time.perf_counter()
    df = predict(model, loader, tax, device, decode)
    return len(df) / (time.perf_counter() - t0)


def main():
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    tax = synthetic_taxonomy()
    model = create_multitask_model(args.model, tax, parse_model_args(args.model_args), pretrained=False).to(device)
    size = model.backbone.pretrained_cfg.get("input_size", (3, 224, 224))
    size = (3, *[parse_model_args(args.model_args).get("img_size", size[1])] * 2)
    leaves = torch.randint(0, tax.n_leaves, (args.images,))
    labels = torch.cat([leaves[:, None], tax.ancestor_matrix()[leaves]], 1)
    images = torch.randint(0, 256, (args.images, *size), dtype=torch.uint8)
    loader = DeviceLoader(DataLoader(InMemory(images, labels), batch_size=args.batch_size), device,
                          {"mean": (0.5,) * 3, "std": (0.5,) * 3})
    bare_loop(model, loader, device)  # warm-up: allocator and oneDNN caches
    predict_loop(model, loader, tax, device, args.decode)
    bare, ours = [], []
    for _ in range(args.rounds):  # interleaved, so a busy neighbour slows both alike
        bare.append(bare_loop(model, loader, device))
        ours.append(predict_loop(model, loader, tax, device, args.decode))
    bare, ours = statistics.median(bare), statistics.median(ours)
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads), {device}",
        "model_args": args.model_args, "input": list(size), "taxonomy": tax.summary(),
        "images": args.images, "batch_size": args.batch_size, "decode": args.decode, "rounds": args.rounds,
        "images_per_s": {"predict": round(ours, 1), "bare_forward": round(bare, 1), "ratio": round(ours / bare, 3)},
    }, indent=1))


if __name__ == "__main__":
    main()
