#!/usr/bin/env python3
"""Name the fungus in a photo: lineage phylum → species, top-k species, and a poison warning.

For each image: the predicted class and its confidence at each of the six ranks (the lineage
confidence: the probability that the lineage is right from the phylum down to that rank, so it
never rises towards the species; see amanita/calibration.py), the top-k
species (accepted names; a synonym's own scientificName is shown beside it), the finest rank
whose confidence reaches --backoff, and a loud warning when any top-k species is poisonous.
Works with a multi-task checkpoint (train_multitask.py) and with a single-head one
(train_minimal.py, the stock recipe): the coarse ranks of the latter are its species
probabilities summed up the tree.

A model is no basis for eating a wild mushroom: the warning flags danger, its absence proves nothing.

Examples:
  python test.py --checkpoint checkpoints/multitask/best_model.pth photo.jpg
  python test.py --checkpoint checkpoints/multitask/best_model.pth --decode consistent \\
      --top-k 10 --backoff 0.8 my_photos/
  python test.py --checkpoint checkpoints/minimal/best_model.pth --json my_photos/ > predictions.jsonl

Folders are searched recursively for .jpg .jpeg .png .webp .bmp .tif .tiff files (any case).
A file that cannot be read as an image gets one line on stderr and the others are still
processed. Exit code: 0 all images done, 1 some failed, 2 bad arguments or checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from amanita.checkpoint import load_for_eval
from amanita.data import IMAGE_ERRORS, DeviceLoader, create_transforms, make_loader, read_image
from amanita.calibration import apply_temperatures, lineage_confidence
from amanita.cli import HelpFormatter, device_name, nonneg_int, positive_int, probability
from amanita.data import IMAGE_ERRORS, create_transforms, load_rgb
from amanita.engine import TTA_MODES, amp_dtype, autocast, forward_tta
from amanita.io import UserError, cli_main
from amanita.model import decode as decode_predictions
from amanita.model import rank_log_probs
from amanita.taxonomy import LEAF, RANKS, Taxonomy

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    g = p.add_argument_group("Model parameters")
    g.add_argument("--checkpoint", required=True, help="an amanita checkpoint (multi-task or single-head)")
    g.add_argument("--mappings", default=None,
                   help="taxonomic_mappings.json to use instead of the taxonomy stored in the checkpoint "
                        "(must be the same tree; e.g. to update poisonous flags)")
    g.add_argument("--decode", choices=("independent", "consistent"), default="consistent",
                   help="independent: argmax per rank; consistent: the best real root-to-leaf lineage")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights even when the checkpoint has EMA weights")
    g.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: flip = mean logits of each image and its mirror image (2× the time)")
    g.add_argument("--no-temperatures", action="store_true",
                   help="ignore the temperatures stored by validate.py --calibrate (uncalibrated confidences)")
    o = p.add_argument_group("Output parameters")
    o.add_argument("--top-k", type=positive_int, default=5, help="species listed per image")
    o.add_argument("--backoff", type=probability, default=0.9, metavar="THRESHOLD",
                   help="report the finest rank whose confidence reaches this value")
    o.add_argument("--json", action="store_true", help="one JSON object per image on stdout, one per line")
    r = p.add_argument_group("Runtime parameters")
    r.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    r.add_argument("--workers", type=nonneg_int, default=2, help="image-decoding worker processes (0: in this process)")
    r.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    r.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="autocast: auto = bf16 on CUDA, none on CPU")
    return p.parse_args(argv)


# ---------------------------------------------------------------------- inputs
def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Image paths (folders expanded, sorted, recursive) and error lines for missing inputs."""
    paths, errors = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            paths += found
            if not found:
                errors.append(f"{path}: no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        elif path.is_file():
            paths.append(path)  # named explicitly: tried whatever its extension
        else:
            errors.append(f"{path}: no such file or folder")
    return paths, errors


class ImageFiles(Dataset):
    """A map-style dataset: ``(uint8 tensor, error)``; an unreadable file gives zeros and its reason."""

    def __init__(self, paths: list[Path], transform, shape: tuple[int, int, int]):
        self.paths, self.transform, self.shape = paths, transform, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(read_image(self.paths[i])), ""
        except Image.UnidentifiedImageError:
            return torch.zeros(self.shape, dtype=torch.uint8), "not an image (unrecognised file format)"
        except IMAGE_ERRORS as e:
            return torch.zeros(self.shape, dtype=torch.uint8), f"not an image ({type(e).__name__}: {str(e).splitlines()[0]})"


# ---------------------------------------------------------------------- model
def load_model(args: argparse.Namespace):
    """``(model, taxonomy, data_config, info, device)``; --mappings must hold the checkpoint's tree."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model, tax, data_config, info = load_for_eval(args.checkpoint, device, use_ema=not args.no_ema)
    if args.mappings is not None:
        given = Taxonomy.load(args.mappings)
        if given.sha256() != tax.sha256():
            raise UserError(f"--mappings {args.mappings} is not the taxonomy {args.checkpoint} was trained with "
                            f"(sha256 {given.sha256()[:12]}… vs {tax.sha256()[:12]}…); "
                            "leave --mappings out to use the one stored in the checkpoint")
        tax = given
    return model, tax, data_config, info, device


# ---------------------------------------------------------------------- inference
def predict_batch(model, images, tax, device, args: argparse.Namespace, temperatures: dict | None) -> dict:
    """Per-rank predicted index, lineage and own confidence, and the top-k leaves with their probabilities.

    Returns numpy arrays: ``pred[rank]``, ``conf[rank]`` (lineage) and ``head_conf[rank]`` (B,),
    ``top_leaf`` and ``top_p`` (B, k).
    """
    with torch.no_grad(), autocast(device, amp_dtype(args.amp, device)):
        outputs = forward_tta(model, images.to(device), args.tta)
    # a single-head model has one output per category_id 0..max: keep the leaves' columns
    leaf_index = None
    if outputs["species"].shape[1] != tax.n_leaves:
        leaf_index = torch.tensor(tax.category_ids, device=device)
    logp = apply_temperatures(rank_log_probs(outputs, tax, leaf_index), temperatures)
    ancestors = tax.ancestor_matrix().to(device)
    preds = decode_predictions(logp, ancestors, args.decode)
    lineage = lineage_confidence(logp[LEAF], preds, ancestors)
    top = logp[LEAF].topk(min(args.top_k, tax.n_leaves), dim=1)
    return {"pred": {r: preds[r].cpu().numpy() for r in RANKS},
            "conf": {r: lineage[r].cpu().numpy() for r in RANKS},
            "head_conf": {r: logp[r].gather(1, preds[r][:, None]).squeeze(1).exp().cpu().numpy() for r in RANKS},
            "top_leaf": top.indices.cpu().numpy(), "top_p": top.values.exp().cpu().numpy()}


def poisonous_leaves(tax: Taxonomy) -> np.ndarray:
    """Per leaf: poisonous itself, or any synonym of its accepted species is (n_leaves,) bool."""
    species = tax.ancestors[:, RANKS.index("species")]
    by_species = tax.class_poisonous("species")[species.clip(min=0)] & (species >= 0)
    return tax.class_poisonous("leaf") | by_species


def describe(path: Path, batch: dict, i: int, tax: Taxonomy, poisonous: np.ndarray, backoff: float) -> dict:
    """The JSON record of image ``i`` of a batch (see --json)."""
    lineage = [{"rank": r, "name": tax.classes[r][int(batch["pred"][r][i])],
                "confidence": float(batch["conf"][r][i]), "rank_confidence": float(batch["head_conf"][r][i])}
               for r in RANKS]
    species_col = tax.ancestors[:, RANKS.index("species")]
    topk = []
    for leaf, p in zip(batch["top_leaf"][i], batch["top_p"][i]):
        s = int(species_col[leaf])
        topk.append({"species": tax.classes["species"][s] if s >= 0 else tax.scientific_names[leaf],
                     "scientificName": tax.scientific_names[leaf], "category_id": int(tax.category_ids[leaf]),
                     "probability": float(p), "poisonous": bool(poisonous[leaf])})
    confident = [step for step in reversed(lineage) if step["confidence"] >= backoff]
    return {"path": printable(path), "lineage": lineage, "topk": topk,
            "backoff": confident[0] if confident else None,
            "poisonous_in_topk": any(t["poisonous"] for t in topk)}


def printable(path: Path) -> str:
    """The path as valid UTF-8: bytes that are not UTF-8 in a file name are shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def run_inference(args, loaded, paths: list[Path], on_result, on_error) -> None:
    """Predict ``paths`` in batches; ``on_result(record)`` per image, ``on_error(path, reason, bar)`` per bad file."""
    model, tax, data_config, info, device = loaded
    temperatures = None if args.no_temperatures else info.get("temperatures")
    poisonous = poisonous_leaves(tax)
    dataset = ImageFiles(paths, create_transforms(data_config, train=False), tuple(data_config["input_size"]))
    loader = DeviceLoader(make_loader(dataset, args.batch_size, args.workers, device, persistent=False),
                          device, data_config)  # normalised on the device
    folders = any(Path(p).is_dir() for p in args.inputs)
    # disable=None: a bar only on a terminal, so logs and pipes stay clean; always on stderr
    bar = tqdm(total=len(paths), disable=None if folders else True, desc="images", unit="img", file=sys.stderr)
    start = 0
    for images, errors in loader:
        batch = predict_batch(model, images, tax, device, args, temperatures)
        for i, error in enumerate(errors):
            if error:
                on_error(paths[start + i], error, bar)
            else:
                on_result(describe(paths[start + i], batch, i, tax, poisonous, args.backoff))
        start += len(errors)
        bar.update(len(errors))
    bar.close()


# ---------------------------------------------------------------------- output
def format_human(record: dict, top_k: int, backoff: float) -> str:
    """The record as a few aligned lines for a person."""
    width = max(len(step["name"]) for step in record["lineage"])
    lines = [record["path"]]
    lines += [f"  {s['rank']:<8} {s['name']:<{width}}  {s['confidence']:.3f}" for s in record["lineage"]]
    b = record["backoff"]
    lines.append(f"  confident down to {b['rank']}: {b['name']} ({b['confidence']:.2f})" if b else
                 f"  not confident at any rank (no confidence reaches {backoff:.2f})")
    lines.append(f"  top-{top_k} species:")
    names = [t["species"] if t["scientificName"] == t["species"] else f"{t['species']} (as {t['scientificName']})"
             for t in record["topk"]]
    name_width = max(len(n) for n in names)
    for n, (name, t) in enumerate(zip(names, record["topk"]), 1):
        mark = "  ☠ poisonous" if t["poisonous"] else ""
        lines.append(f"  {n:>3}. {name:<{name_width}}  {t['probability']:.3f}{mark}")
    poisonous = sorted({t["species"] for t in record["topk"] if t["poisonous"]})
    if poisonous:
        lines.append(f"  ⚠ POISONOUS: {', '.join(poisonous)} {'is' if len(poisonous) == 1 else 'are'} "
                     f"among the top-{top_k} — do not eat")
    return "\n".join(lines)


@cli_main
def main() -> int:
    args = parse_args()
    loaded = load_model(args)  # first, so a bad checkpoint is exit code 2 whatever the images
    info = loaded[3]
    kind = {"multitask": "multi-task", "single": "single-head"}.get(info["kind"], info["kind"])
    print(f"{info['path']}: {kind} model, epoch {info['epoch']}, update {info['step']}"
          f"{', EMA weights' if info['ema'] else ''}; decode {args.decode}, tta {args.tta}, "
          f"{'calibrated' if info.get('temperatures') and not args.no_temperatures else 'uncalibrated'} confidences",
          file=sys.stderr)
    paths, errors = expand_inputs(args.inputs)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    failed = len(errors)

    def on_result(record: dict) -> None:
        print(json.dumps(record, ensure_ascii=False) if args.json else
              format_human(record, args.top_k, args.backoff) + "\n", flush=True)

    def on_error(path: Path, reason: str, bar) -> None:
        nonlocal failed
        failed += 1
        bar.write(f"error: {printable(path)}: {reason}", file=sys.stderr)

    if paths:
        run_inference(args, loaded, paths, on_result, on_error)
    return 1 if failed else 0


if __name__ == "__main__":
    main()
