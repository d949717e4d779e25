"""Argument groups shared by the training scripts (the scripts own parsing; this only declares)."""
from __future__ import annotations

import argparse

from amanita.losses import WEIGHT_METHODS
from amanita.model import STOCK_MODEL
from amanita.taxonomy import RANKS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every flag's help and the script's docstring kept as written."""


def optional_float(text: str) -> float | None:
    """A float, or ``none``/``0`` for "off" (``--layer-decay none``)."""
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def add_dataset_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    g = p.add_argument_group("Dataset parameters")
    g.add_argument("--train-path", required=True, help="FungiTastic train CSV")
    g.add_argument("--val-path", required=True, help="FungiTastic validation CSV (ClosedSet-Val)")
    g.add_argument("--test-path", default=None, help="test CSV, evaluated with the best checkpoint at the end")
    g.add_argument("--image-root", default=None,
                   help="one folder holding every split's images (default: the FungiTastic layout beside each CSV)")
    g.add_argument("--image-size-folder", default="300p", help="FungiTastic image-size folder (300p, 500p, 720p, fullsize)")
    g.add_argument("--mappings", default="taxonomic_mappings.json",
                   help="taxonomic_mappings.json; built from the given CSVs when the file does not exist")
    g.add_argument("--workers", type=int, default=4, help="data-loading processes per GPU/process")
    g.add_argument("--prefetch-factor", type=int, default=4,
                   help="batches each worker loads ahead (DataLoader prefetch_factor; ignored with --workers 0)")
    g.add_argument("--max-bad-image-fraction", type=float, default=0.001,
                   help="stop when more than this share of a split's images cannot be read")
    if multitask:
        g.add_argument("--use-class-weights", action="store_true", help="weight each rank's loss by class weights")
        g.add_argument("--class-weights", default=None,
                       help="class_weights.pt from compute_class_weights.py (default: computed from train counts)")
        g.add_argument("--class-weight-method", choices=WEIGHT_METHODS, default="sqrt_inverse",
                       help="method when the class weights are computed here")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Model parameters")
    g.add_argument("--model", default=STOCK_MODEL,
                   help="hf-hub: id, timm model name, or a local weights file (.safetensors/.pth)")
    g.add_argument("--model-args", default=None,
                   help='JSON kwargs for timm.create_model, e.g. \'{"depth": 4, "embed_dim": 192, "num_heads": 3, "img_size": 96}\'')
    g.add_argument("--pretrained", default="auto", choices=("auto", "yes", "no"),
                   help="load pretrained weights (auto: yes for hf-hub: ids and weight files)")
    g.add_argument("--pretrained-file", default=None, help="local weights for --model (timm pretrained_cfg_overlay file=)")
    g.add_argument("--init-from", default=None,
                   help="start from an amanita checkpoint (a train_minimal.py model plays the stock model)")
    g.add_argument("--crop-pct", type=float, default=None, help="override the data config's eval crop fraction")
    g.add_argument("--crop-mode", choices=("center", "squash", "border"), default=None,
                   help="override the data config's eval crop mode (squash = resize to the input size, no crop)")
    g.add_argument("--interpolation", default=None, help="override the data config's resize interpolation")
    g.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"), help="override the normalisation mean")
    g.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"), help="override the normalisation std")
    g.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate")
    g.add_argument("--drop", type=float, default=0.0, help="dropout before the heads")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")


def add_optimizer_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    g = p.add_argument_group("Optimizer parameters")
    g.add_argument("--opt", default="adamw" if multitask else "sgd", help="timm optimizer name (adamw, sgd, lamb, ...)")
    g.add_argument("--lr", type=float, default=5e-5 if multitask else 0.01, help="peak learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=0.05 if multitask else 1e-4, help="weight decay")
    g.add_argument("--layer-decay", type=optional_float, default=0.75 if multitask else None,
                   help="layer-wise lr decay (timm param_groups_layer_decay); none to disable")
    g.add_argument("--head-lr-scale", type=float, default=10.0 if multitask else 1.0,
                   help="lr multiplier of the heads over the last backbone layer")
    g.add_argument("--clip-grad", type=float, default=1.0, help="gradient-norm clipping (0: off)")
    g.add_argument("--accum-steps", type=int, default=1 if multitask else 8, help="gradient accumulation steps")
    g = p.add_argument_group("Schedule parameters")
    g.add_argument("--epochs", type=int, default=20 if multitask else 50, help="epochs")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up epochs (per update)")
    g.add_argument("--warmup-lr", type=float, default=1e-6, help="lr at the start of warm-up")
    g.add_argument("--min-lr", type=float, default=1e-6, help="lr at the end of the cosine")


def add_loss_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    g = p.add_argument_group("Loss and augmentation")
    if multitask:
        g.add_argument("--rank-weights", type=float, nargs=6, default=[0.1, 0.1, 0.1, 0.2, 0.3, 1.0],
                       metavar=tuple(r.upper() for r in RANKS),
                       help="loss weight of each head (phylum class order family genus species)")
        g.add_argument("--head-mode", choices=("residual", "independent"), default="residual",
                       help="residual: a coarse rank = the species probabilities summed up the tree + its own "
                            "head (exactly the stock model's at step 0); independent: six separate heads")
        g.add_argument("--consistency-weight", type=float, default=0.0,
                       help="weight of KL(species summed up to a rank ‖ that rank's head)")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--auto-augment", default="rand-m20-n2",
                   help="timm auto-augment policy (stock: RandAugment 2 ops, magnitude 20); 'none' to disable")
    g.add_argument("--scale", type=float, nargs=2, default=[0.8, 1.0], help="RandomResizedCrop scale range")
    g.add_argument("--color-jitter", type=float, default=0.0,
                   help="colour jitter strength (brightness, contrast, saturation), with or without --auto-augment; "
                        "0: none (the stock recipe has none; timm would add 0.4 silently without auto-augment)")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--vflip", type=float, default=0.5, help="vertical flip probability")


def add_run_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    g = p.add_argument_group("Run parameters")
    g.add_argument("--batch-size", type=int, default=64 if multitask else 32, help="batch per process")
    g.add_argument("--save-dir", default="checkpoints/multitask" if multitask else "checkpoints/minimal",
                   help="checkpoints, metrics.jsonl and args.json ($CHECKPOINT_ARTIFACT_PATH wins on ISC)")
    g.add_argument("--resume", default="auto",
                   help="checkpoint to resume; auto: last.pth in --save-dir when present; none: start fresh")
    g.add_argument("--save-every-steps", type=int, default=500, help="also save last.pth every N updates (0: epoch ends only)")
    g.add_argument("--seed", type=int, default=42, help="random seed (each process uses seed + rank)")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="autocast: auto = bf16 on CUDA, none on CPU; fp16 adds a GradScaler")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (timm ModelEmaV3) and validate it")
    g.add_argument("--model-ema-decay", type=float, default=0.9998, help="EMA decay")
    g.add_argument("--early-stopping-patience", type=int, default=0, help="stop after N epochs without improvement (0: off)")
    g.add_argument("--early-stopping-metric", default="species/f1",
                   help="validation metric for best_model.pth and early stopping: <leaf|rank>/<acc1|f1>")
    g.add_argument("--decode", choices=("consistent", "independent"), default="consistent",
                   help="validation decoding: consistent = best real root-to-leaf path over all heads; "
                        "independent = argmax per head")
    g.add_argument("--log-interval", type=int, default=20, help="batches between progress-bar updates")


def build_train_parser(description: str, multitask: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_dataset_args(p, multitask)
    add_model_args(p)
    add_optimizer_args(p, multitask)
    add_loss_args(p, multitask)
    add_run_args(p, multitask)
    return p
