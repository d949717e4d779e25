"""What every script shares: argument groups (the scripts own parsing; this only declares) and
:func:`cli_main`, which turns user errors into one line and exit code 2."""
from __future__ import annotations

import argparse
import difflib
import functools
import sys
from typing import Callable

import json
import math

from amanita.config import (AMP_MODES, COMBINE, DECISION_HELP, DECISIONS, DECODE_HELP, DECODE_MODES,
                             DEFAULT_DECISION, DEFAULT_DECODE, DEFAULT_FOCUS, HEADS, LORA_TARGETS, METRIC_NAMES,
                             PRIOR_FIELDS, SCORES, STOCK_MODEL, TENSORBOARD_HINT, TTA_MODES, WANDB_HINT,
                             WEIGHT_METHODS, Config, EvalConfig, IdentifyConfig, MultitaskLossConfig,
                             MultitaskTrainConfig, TrainConfig, UserError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every flag's help and the script's docstring kept as written."""


# ---------------------------------------------------------------------- flag value types
# argparse ``type=`` checks: a bad value stops the script before any work, as one line and exit 2
def number(kind: type = float, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, what: str = ""):
    """A ``type=`` that parses ``kind`` and checks ``low <= value <= high`` (``<`` where open)."""
    lo = "" if low is None else f"{low:g} {'<' if low_open else '≤'} "
    hi = "" if high is None else f" {'<' if high_open else '≤'} {high:g}"
    rule = what or f"{'an integer' if kind is int else 'a number'} with {lo}value{hi}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


positive_int = number(int, 1, what="an integer ≥ 1")
nonneg_int = number(int, 0, what="an integer ≥ 0")
positive_float = number(float, 0, low_open=True, what="a number > 0")
nonneg_float = number(float, 0, what="a number ≥ 0")
probability = number(float, 0, 1, what="a probability between 0 and 1")
below_one = number(float, 0, 1, high_open=True, what="a number with 0 ≤ value < 1")


finite_float = number(float, what="a finite number")
LR_MAX = 100.0  # no optimizer trains at a larger learning rate: beyond it a value is a typo, not a choice
learning_rate = number(float, 0, LR_MAX, low_open=True, what=f"a learning rate with 0 < value ≤ {LR_MAX:g}")
nonneg_learning_rate = number(float, 0, LR_MAX, what=f"a learning rate with 0 ≤ value ≤ {LR_MAX:g}")
SEED_MAX = 2**32 - 1  # numpy's seed range; torch's is wider
seed_value = number(int, 0, SEED_MAX, what=f"an integer with 0 ≤ seed ≤ {SEED_MAX} (2**32 - 1)")
crop_fraction = number(float, 0.05, 2.0, what="a crop fraction with 0.05 ≤ value ≤ 2")
scale_fraction = number(float, 1e-3, 1, what="a fraction with 0.001 ≤ value ≤ 1")
jitter_strength = number(float, 0, 10, what="a strength with 0 ≤ value ≤ 10")


def interpolation_name(text: str) -> str:
    """A resize interpolation timm knows (``bicubic``, ``bilinear``, ...)."""
    from timm.data.transforms import _str_to_pil_interpolation
    if text not in _str_to_pil_interpolation:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(_str_to_pil_interpolation)}, got {text!r}")
    return text


def auto_augment_policy(text: str) -> str:
    """A policy timm's auto-augment parser accepts (``rand-m9-n2``, ``augmix-m5``, ``original``, ...), or ``none``."""
    if text.lower() in ("none", ""):
        return text
    from timm.data import auto_augment as aa
    build = (aa.rand_augment_transform if text.startswith("rand") else
             aa.augment_and_mix_transform if text.startswith("augmix") else aa.auto_augment_transform)
    try:
        build(text, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except (AssertionError, ValueError, KeyError, IndexError, TypeError) as e:
        raise argparse.ArgumentTypeError(f"timm cannot parse the auto-augment policy {text!r} ({e}); e.g. "
                                         "rand-m9-n2, augmix-m5-w4-d2, original, v0 or none") from None
    return text


def optimizer_name(text: str) -> str:
    """An optimizer in timm's registry (``adamw``, ``sgd``, ``lamb``, ..., ``lookahead_`` prefix allowed)."""
    from timm.optim import list_optimizers
    known = set(list_optimizers())
    if text.lower().split("_")[-1] not in known:
        raise argparse.ArgumentTypeError(f"{text!r} is not an optimizer timm knows (timm.optim.list_optimizers(): "
                                         f"{', '.join(sorted(known)[:12])}, ...)")
    return text


def onnx_opset(text: str) -> int:
    """An ONNX opset version torch.onnx can export to."""
    from torch.onnx import _constants as c
    return number(int, c.ONNX_MIN_OPSET, c.ONNX_MAX_OPSET,
                  what=f"an opset torch.onnx exports ({c.ONNX_MIN_OPSET}..{c.ONNX_MAX_OPSET})")(text)


def optional_float(text: str) -> float | None:
    """A number > 0, or ``none``/``off``/``0`` for "off" (``--layer-decay none``)."""
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number > 0 or 'none', got {text!r}")
    return value


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, refused at once when that device is not here."""
    import torch
    if text in ("auto", "cpu"):
        return text
    if text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine (use auto or cpu)")
    if text.startswith("cuda:") and int(text[5:]) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def json_object(text: str) -> str:
    """A JSON object (``--model-args``), checked here and kept as the text the user gave."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"depth\": 4}}', got {text}")
    return text



def add_inference_args(g: argparse._ArgumentGroup) -> None:
    """``--decode``, ``--amp`` and ``--device``: declared once, with the same defaults in every script."""
    g.add_argument("--decode", choices=DECODE_MODES, default=DEFAULT_DECODE, help=DECODE_HELP)
    g.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="autocast: auto = bf16 on CUDA, none on CPU (fp16 training adds a GradScaler)")
    g.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def add_readout_args(g: argparse._ArgumentGroup) -> None:
    """``--tta`` and ``--no-temperatures``: how validation and test.py turn outputs into probabilities."""
    g.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: flip = mean logits of each image and its mirror image (2× the time)")
    g.add_argument("--no-temperatures", action="store_true",
                   help="ignore the temperatures stored by validate.py --calibrate (uncalibrated confidences)")


def add_priors_args(g: argparse._ArgumentGroup) -> None:
    """``--priors``, ``--prior-fields`` and ``--prior-weight``: metadata priors (see amanita/priors.py)."""
    g.add_argument("--priors", default=None, metavar="FILE",
                   help="metadata priors from compute_metadata_priors.py, applied to every key; None: no priors")
    g.add_argument("--prior-fields", nargs="+", choices=PRIOR_FIELDS, default=None,
                   help="fields of --priors to use; None: every field in the file")
    g.add_argument("--prior-weight", type=nonneg_float, default=None,
                   help="exponent w of the prior ratios; None: the weight validate.py --fit-prior-weight stored "
                        "in the checkpoint for this file and these fields, else 1")


def add_decision_args(g: argparse._ArgumentGroup) -> None:
    """``--decision`` and the FungiCLEF cost flags (see amanita/decisions.py), the same in every script."""
    g.add_argument("--decision", choices=DECISIONS, default=DEFAULT_DECISION, help=DECISION_HELP)
    g.add_argument("--poisonous-as-edible-cost", type=nonneg_float, default=100.0,
                   help="min-cost: cost of naming a poisonous species as an edible one (FungiCLEF: 100)")
    g.add_argument("--edible-as-poisonous-cost", type=nonneg_float, default=1.0,
                   help="min-cost: cost of naming an edible species as a poisonous one (FungiCLEF: 1)")
    g.add_argument("--mistake-cost", type=nonneg_float, default=1.0,
                   help="min-cost: cost of naming a wrong species at all (the top-1 error)")


def script_parser(description: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring as written, every flag's default in its help."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def add_split_args(g: argparse._ArgumentGroup, val_required: bool = True, test_help: str = "FungiTastic test CSV"
                   ) -> None:
    """``--train-path``, ``--val-path``, ``--test-path`` and ``--image-root``, the same in every script."""
    g.add_argument("--train-path", required=True, help="FungiTastic train CSV")
    g.add_argument("--val-path", required=val_required, default=None, help="FungiTastic validation CSV (ClosedSet-Val)")
    g.add_argument("--test-path", default=None, help=test_help)
    g.add_argument("--image-root", default=None,
                   help="one folder holding every split's images; None: the FungiTastic layout beside each CSV")


def add_dataset_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    g = p.add_argument_group("Dataset parameters")
    add_split_args(g, test_help="test CSV, evaluated with the best checkpoint at the end")
    g.add_argument("--image-size-folder", default="300p", help="FungiTastic image-size folder (300p, 500p, 720p, fullsize)")
    g.add_argument("--mappings", default="taxonomic_mappings.json",
                   help="taxonomic_mappings.json; built from the given CSVs when the file does not exist")
    g.add_argument("--workers", type=nonneg_int, default=4, help="data-loading processes per GPU/process")
    g.add_argument("--prefetch-factor", type=positive_int, default=4,
                   help="batches each worker loads ahead (DataLoader prefetch_factor; ignored with --workers 0)")
    g.add_argument("--max-bad-image-fraction", type=probability, default=0.001,
                   help="stop when more than this share of a split's images cannot be read, or have a "
                        "category_id outside the mappings")
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
    g.add_argument("--model-args", type=json_object, default=None,
                   help='JSON kwargs for timm.create_model, e.g. \'{"depth": 4, "embed_dim": 192, "num_heads": 3, "img_size": 96}\'')
    g.add_argument("--pretrained", default="auto", choices=("auto", "yes", "no"),
                   help="load pretrained weights (auto: yes for hf-hub: ids and weight files)")
    g.add_argument("--pretrained-file", default=None, help="local weights for --model (timm pretrained_cfg_overlay file=)")
    g.add_argument("--init-from", default=None,
                   help="start from an amanita checkpoint (a train_minimal.py model plays the stock model)")
    g.add_argument("--crop-pct", type=crop_fraction, default=None, help="override the data config's eval crop fraction")
    g.add_argument("--crop-mode", choices=("center", "squash", "border"), default=None,
                   help="override the data config's eval crop mode (squash = resize to the input size, no crop)")
    g.add_argument("--interpolation", type=interpolation_name, default=None,
                   help="override the data config's resize interpolation")
    g.add_argument("--mean", type=finite_float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="override the normalisation mean")
    g.add_argument("--std", type=positive_float, nargs=3, default=None, metavar=("R", "G", "B"), help="override the normalisation std")
    g.add_argument("--drop-path", type=below_one, default=0.1, help="stochastic depth rate")
    g.add_argument("--drop", type=below_one, default=0.0, help="dropout before the heads")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training model (over DDP, so gradient all-reduces still overlap; "
                        "the batch dimension is dynamic, so the epoch's short last batch does not recompile)")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")


def add_optimizer_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    g = p.add_argument_group("Optimizer parameters")
    g.add_argument("--opt", type=optimizer_name, default="adamw" if multitask else "sgd",
                   help="timm optimizer name (adamw, sgd, lamb, ...)")
    g.add_argument("--lr", type=learning_rate, default=None,
                   help="peak learning rate; default: --lr-base scaled to the global batch "
                        "(--batch-size x --accum-steps x processes)")
    g.add_argument("--lr-base", type=learning_rate, default=1e-4 if multitask else 0.01,
                   help="peak learning rate at a global batch of --lr-base-size images (timm's convention)")
    g.add_argument("--lr-base-size", type=positive_int, default=256, help="global batch at which the lr is --lr-base")
    g.add_argument("--lr-base-scale", choices=("auto", "linear", "sqrt"), default="auto",
                   help="how the lr follows the global batch; auto: sqrt for Adam-type optimizers and LAMB, "
                        "linear otherwise (as timm)")
    g.add_argument("--momentum", type=below_one, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=nonneg_float, default=0.05 if multitask else 1e-4, help="weight decay")
    g.add_argument("--layer-decay", type=optional_float, default=0.75 if multitask else None,
                   help="layer-wise lr decay (timm param_groups_layer_decay); none to disable")
    g.add_argument("--head-lr-scale", type=positive_float, default=10.0 if multitask else 1.0,
                   help="lr multiplier of the heads over the last backbone layer")
    g.add_argument("--clip-grad", type=nonneg_float, default=1.0, help="gradient-norm clipping (0: off)")
    g.add_argument("--accum-steps", type=positive_int, default=1 if multitask else 8, help="gradient accumulation steps")
    g = p.add_argument_group("Schedule parameters")
    g.add_argument("--epochs", type=positive_int, default=20 if multitask else 50, help="epochs")
    g.add_argument("--warmup-epochs", type=nonneg_float, default=1.0, help="linear warm-up epochs (per update)")
    g.add_argument("--warmup-lr", type=nonneg_learning_rate, default=1e-6, help="lr at the start of warm-up")
    g.add_argument("--min-lr", type=nonneg_learning_rate, default=1e-6, help="lr at the end of the cosine")


def add_loss_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    g = p.add_argument_group("Loss and augmentation")
    if multitask:
        g.add_argument("--rank-weights", type=nonneg_float, nargs=6, default=[0.1, 0.1, 0.1, 0.2, 0.3, 1.0],
                       metavar=tuple(k.upper() for k in HEADS),
                       help="loss weight of each head (phylum class order family genus leaf)")
        g.add_argument("--head-mode", choices=("residual", "independent"), default="residual",
                       help="residual: a coarse rank = the leaf probabilities summed up the tree + its own "
                            "head (exactly the stock model's at step 0); independent: six separate heads")
        g.add_argument("--consistency-weight", type=nonneg_float, default=0.0,
                       help="weight of KL(leaf probabilities summed up to a rank ‖ that rank's head)")
    g.add_argument("--label-smoothing", type=below_one, default=0.1, help="label smoothing")
    g.add_argument("--auto-augment", type=auto_augment_policy, default="rand-m20-n2",
                   help="timm auto-augment policy (stock: RandAugment 2 ops, magnitude 20); 'none' to disable")
    g.add_argument("--scale", type=scale_fraction, nargs=2,
                   default=[0.8, 1.0], help="RandomResizedCrop scale range")
    g.add_argument("--color-jitter", type=jitter_strength, default=0.0,
                   help="colour jitter strength (brightness, contrast, saturation), with or without --auto-augment; "
                        "0: none (the stock recipe has none; timm would add 0.4 silently without auto-augment)")
    g.add_argument("--hflip", type=probability, default=0.5, help="horizontal flip probability")
    g.add_argument("--vflip", type=probability, default=0.5, help="vertical flip probability")


def add_run_args(p: argparse.ArgumentParser, multitask: bool) -> None:
    g = p.add_argument_group("Run parameters")
    g.add_argument("--batch-size", type=positive_int, default=64 if multitask else 32, help="batch per process")
    g.add_argument("--save-dir", default="checkpoints/multitask" if multitask else "checkpoints/minimal",
                   help="checkpoints, metrics.jsonl and args.yaml ($CHECKPOINT_ARTIFACT_PATH wins on ISC)")
    g.add_argument("--resume", default="auto",
                   help="checkpoint to resume; auto: last.pth in --save-dir when present; none: start fresh")
    g.add_argument("--save-every-steps", type=nonneg_int, default=500, help="also save last.pth every N updates (0: off)")
    g.add_argument("--save-every-minutes", type=nonneg_float, default=0.0,
                   help="also save last.pth every M minutes of training (0: off); saves are written in the "
                        "background from a CPU copy, the loop waits only for the copy")
    g.add_argument("--eval-batch-size", type=positive_int, default=None,
                   help="batch per process for validation and test (default: 2 x --batch-size; "
                        "inference keeps no activations)")
    g.add_argument("--seed", type=seed_value, default=42, help="random seed (each process uses seed + rank)")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (timm ModelEmaV3) and validate it")
    g.add_argument("--model-ema-decay", type=probability, default=0.9998, help="EMA decay")
    g.add_argument("--early-stopping-patience", type=nonneg_int, default=0, help="stop after N epochs without improvement (0: off)")
    g.add_argument("--early-stopping-metric", default="species/f1", choices=list(METRIC_NAMES),
                   help="validation metric for best_model.pth and early stopping: <leaf|rank>/<acc1|f1>")
    add_inference_args(g)
    g.add_argument("--log-interval", type=positive_int, default=20, help="batches between progress-bar updates")


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    """What trains: everything (the default), LoRA adapters on a frozen backbone, or the heads only."""
    g = p.add_argument_group("Parameter-efficient fine-tuning")
    g.add_argument("--lora-rank", type=nonneg_int, default=0,
                   help="LoRA rank of the adapters on the backbone's linear layers (0: off, full fine-tuning); "
                        "the backbone is frozen except the adapters, the heads train fully")
    g.add_argument("--lora-alpha", type=positive_float, default=16.0, help="LoRA alpha: the update is scaled by alpha / rank")
    g.add_argument("--lora-dropout", type=probability, default=0.0,
                   help="dropout on the adapted layers' input (PEFT adapters; BEiT's qkv adapter has none)")
    g.add_argument("--lora-targets", nargs="+", default=list(LORA_TARGETS), metavar="NAME",
                   help="names of the linear layers that get adapters (attention qkv and proj, MLP fc1 and fc2)")
    g.add_argument("--lora-save", choices=("full", "adapters"), default="full",
                   help="what a LoRA run's checkpoints hold: full (every weight) or adapters (adapters and heads "
                        "only, megabytes; the frozen weights are read back from --init-from, checked by digest)")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="train the heads only (a linear probe of the backbone's features); not with --lora-rank")


def check_train_config(cfg: TrainConfig) -> None:
    """Combinations of training flags that no single ``type=`` can check, as one-line errors."""
    if cfg.scale[0] > cfg.scale[1]:
        raise UserError(f"--scale {cfg.scale[0]:g} {cfg.scale[1]:g}: give the smaller crop fraction first")
    if isinstance(cfg, MultitaskLossConfig) and not any(cfg.rank_weights):
        raise UserError("--rank-weights are all 0: nothing would be trained")
    if cfg.lora_rank and cfg.freeze_backbone:
        raise UserError("--freeze-backbone trains the heads only; with --lora-rank the adapters train too: give one")
    if cfg.lora_save == "adapters" and not (cfg.lora_rank and cfg.init_from):
        raise UserError("--lora-save adapters needs --lora-rank and --init-from (the checkpoint the frozen weights "
                        "are read back from)")


def build_train_parser(description: str, multitask: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_arg(p)
    add_dataset_args(p, multitask)
    add_model_args(p)
    add_optimizer_args(p, multitask)
    add_loss_args(p, multitask)
    add_run_args(p, multitask)
    add_finetune_args(p)
    add_tracking_args(p)
    return p


def parse_train_config(description: str, multitask: bool, argv: list[str] | None = None) -> TrainConfig:
    """A training script's flags (``--config FILE`` replayed first), checked, as its frozen config."""
    cfg = parse_config(build_train_parser(description, multitask),
                       MultitaskTrainConfig if multitask else TrainConfig, argv)
    check_train_config(cfg)
    return cfg


# ---------------------------------------------------------------------- --config FILE: a run replayed
def add_config_arg(p: argparse.ArgumentParser) -> None:
    """``--config FILE``: a run's ``args.yaml`` gives the flags' values; the command line overrides them."""
    p.add_argument("--config", default=None, metavar="FILE",
                   help="replay a run: the args.yaml it wrote beside its checkpoints gives every flag's value, "
                        "and flags given here override it")


def parse_config(parser: argparse.ArgumentParser, cls: type[Config], argv: list[str] | None = None):
    """``parser``'s flags (with ``--config FILE`` replayed, see :func:`parse_flags`) as a ``cls`` config."""
    return cls.from_flags(parse_flags(parser, argv))


def parse_flags(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> dict:
    """The parsed flags as a dict (without ``config``). With ``--config FILE``, the file's values are
    the parser's defaults and the command line overrides them (timm's train.py ``_parse_args``)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    path = pre.parse_known_args(argv)[0].config
    if path:
        parser.set_defaults(**config_defaults(parser, path))
    flags = vars(parser.parse_args(argv))
    flags.pop("config", None)
    return flags


def config_defaults(parser: argparse.ArgumentParser, path: str) -> dict:
    """The flag values of a YAML config file, each checked as the command line checks it.

    A key that names no flag of ``parser`` is an error naming the file and the key (argparse's
    ``set_defaults`` would take a typo silently); a flag given in the file is no longer required."""
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"--config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected flag names and values (a YAML mapping), got {type(data).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in data.items():
        if key not in actions:
            near = difflib.get_close_matches(str(key).replace("-", "_"), actions, n=1)
            raise UserError(f"{path}: {key!r} is not a flag of this script"
                            + (f" (did you mean {near[0]!r}?)" if near else ""))
        try:
            values[key] = config_value(actions[key], value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            raise UserError(f"{path}: {key}: {e}") from None
        actions[key].required = False
    return values


def config_value(action: argparse.Action, value):
    """A config file's ``value`` for ``action``, checked by the flag's own type, nargs and choices."""
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
        return value
    if value is None:
        if action.default is None or _none_of(action):
            return None
        raise argparse.ArgumentTypeError("expected a value, got null")
    if action.nargs in (None, "?"):
        return _config_item(action, value)
    if not isinstance(value, list) or not value:
        raise argparse.ArgumentTypeError(f"expected a list of values, got {value!r}")
    if isinstance(action.nargs, int) and len(value) != action.nargs:
        raise argparse.ArgumentTypeError(f"expected {action.nargs} values, got {len(value)}")
    return [_config_item(action, v) for v in value]


def _none_of(action: argparse.Action) -> bool:
    """Whether the flag's type reads ``none`` as None (``--layer-decay none``)."""
    try:
        return action.type is not None and action.type("none") is None
    except (argparse.ArgumentTypeError, TypeError, ValueError):
        return False


def _config_item(action: argparse.Action, value):
    if isinstance(value, (list, dict)):
        raise argparse.ArgumentTypeError(f"expected one value, got {value!r}")
    if action.type is None:
        if not isinstance(value, str):
            raise argparse.ArgumentTypeError(f"expected text, got {value!r}")
        parsed = value
    else:
        if isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected a value, got {value!r}")
        parsed = action.type(value if isinstance(value, str) else repr(value))
    if action.choices is not None and parsed not in action.choices:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, action.choices))}, got {parsed!r}")
    return parsed


def build_validate_parser(description: str) -> argparse.ArgumentParser:
    """validate.py's flags."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("Model parameters")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default=None,
                     help="multi-task checkpoint to validate (its taxonomy and data config are stored inside)")
    src.add_argument("--from-predictions", default=None, metavar="PATH",
                     help="make the report from a saved predictions.csv instead of running a model")
    c = p.add_argument_group("Calibration parameters")
    c.add_argument("--calibrate", action="store_true",
                   help="fit one temperature per rank on --val-path by NLL, store them in --checkpoint "
                        "('temperatures', 'calibration'; rewritten atomically) and use them; one more pass over the images")
    add_readout_args(c)
    m = p.add_argument_group("Metadata priors and decisions")
    add_priors_args(m)
    m.add_argument("--fit-prior-weight", action="store_true",
                   help="fit the prior weight w on --val-path by NLL, store it in --checkpoint ('metadata_priors') "
                        "and use it")
    add_decision_args(m)
    b = p.add_argument_group("Baseline parameters").add_mutually_exclusive_group()
    b.add_argument("--baseline-checkpoint", default=None, help="a second checkpoint to compare against")
    b.add_argument("--baseline-model", default=None,
                   help="a single-head timm classifier such as the stock model (name, hf-hub: id or weights file) "
                        "to compare against; its leaf probabilities are summed up the tree")
    b.add_argument("--baseline-predictions", default=None, metavar="PATH",
                   help="a saved baseline_predictions.csv to compare against")
    d = p.add_argument_group("Dataset parameters")
    d.add_argument("--val-path", default=None, help="validation CSV (FungiTastic schema); needed to run a model, "
                   "and for the specimen grids")
    d.add_argument("--image-root", default=None,
                   help="folder of the images; None: the FungiTastic layout beside the CSV")
    d.add_argument("--mappings", default=None,
                   help="taxonomic_mappings.json; None: the taxonomy stored in the checkpoint "
                        "(required with --from-predictions)")
    add_level_args(p)
    r = p.add_argument_group("Report parameters")
    r.add_argument("--focus-species", nargs="+", default=list(DEFAULT_FOCUS), metavar="NAME",
                   help="species analysed one by one in the report")
    r.add_argument("--output-dir", default="validation_results", help="where the report and its files go")
    r.add_argument("--training-log", default=None,
                   help="metrics.jsonl for the training curves; None: the one beside --checkpoint")
    x = p.add_argument_group("Runtime parameters")
    x.add_argument("--batch-size", type=positive_int, default=64, help="images per inference batch")
    x.add_argument("--workers", type=nonneg_int, default=4, help="data-loading worker processes")
    x.add_argument("--max-bad-image-fraction", type=probability, default=0.001,
                   help="stop when more than this share of the validation images cannot be read, or have "
                        "a category_id outside the mappings")
    add_inference_args(x)
    add_tracking_args(p)  # attach the headline numbers and figures to the checkpoint's W&B/TensorBoard run
    return p


def add_level_args(p: argparse.ArgumentParser) -> None:
    """validate.py's observation and open-set flag groups."""
    o = p.add_argument_group("Observation parameters")
    o.add_argument("--aggregate", nargs="+", choices=("image", "observation"), default=["image", "observation"],
                   help="levels to report: per image, per observation (observationID: its images' outputs "
                        "combined), or both side by side")
    o.add_argument("--combine", choices=COMBINE, default="mean-prob",
                   help="how an observation's images are combined at every rank before decoding: mean of "
                        "probabilities or mean of log-probabilities (renormalised)")
    u = p.add_argument_group("Open-set parameters")
    u.add_argument("--open-set", action="store_true",
                   help="score known vs unknown species (category_id -1 rows, e.g. FungiTastic-OpenSet-Val.csv): "
                        "AUROC, TNR at --target-tpr, and top-1 of the unknown species at the ranks seen")
    u.add_argument("--unknown-score", choices=SCORES, default="msp",
                   help="unknown-species score of the leaf head used for the threshold: msp (1 - max "
                        "probability), entropy, or energy (-logsumexp of the logits)")
    u.add_argument("--target-tpr", default=0.95,
                   type=number(float, 0, 1, low_open=True, high_open=True, what="a share between 0 and 1"),
                   help="share of known-species images the stored threshold must accept")
    u.add_argument("--store-threshold", action="store_true",
                   help="write the threshold for --target-tpr into --checkpoint (key 'open_set') for test.py")


def parse_validate_config(description: str, argv: list[str] | None = None) -> EvalConfig:
    """validate.py's flags as its frozen config; a combination argparse cannot check is a one-line
    :class:`UserError` (see :meth:`EvalConfig.problems`)."""
    return EvalConfig.from_flags(vars(build_validate_parser(description).parse_args(argv)))


def parse_identify_config(description: str, argv: list[str] | None = None) -> IdentifyConfig:
    """test.py's flags, parsed and checked, as its frozen config (a bad value exits with argparse's usage line)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    g = p.add_argument_group("Model parameters")
    g.add_argument("--checkpoint", required=True, help="an amanita checkpoint (multi-task or single-head)")
    g.add_argument("--mappings", default=None,
                   help="taxonomic_mappings.json to use instead of the taxonomy stored in the checkpoint "
                        "(must be the same tree; e.g. to update poisonous flags)")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights even when the checkpoint has EMA weights")
    add_readout_args(g)
    m = p.add_argument_group("Metadata priors and decisions")
    add_priors_args(m)
    m.add_argument("--metadata", nargs="+", default=None, metavar="FIELD=VALUE",
                   help="where and when the find grew, for --priors, e.g. habitat='Deciduous woodland' "
                        "substrate=soil month=10 (a submission reads them from --test-path)")
    add_decision_args(m)
    m.add_argument("--poison-warning", type=probability, default=0.05, metavar="P",
                   help="warn when the total probability that the find is poisonous exceeds P, whatever the top species")
    o = p.add_argument_group("Output parameters")
    o.add_argument("--top-k", type=positive_int, default=5, help="species listed per image")
    o.add_argument("--backoff", type=probability, default=0.9, metavar="THRESHOLD",
                   help="report the finest rank whose confidence reaches this value")
    o.add_argument("--json", action="store_true", help="one JSON object per image on stdout, one per line")
    f = p.add_argument_group("Finds and unknown species")
    f.add_argument("--observation", action="store_true",
                   help="answer per find, not per image: each folder given is one find, and all files "
                        "given by name are together one find (their images' outputs combined as --combine)")
    f.add_argument("--combine", choices=("mean-prob", "mean-logp"), default="mean-prob",
                   help="how a find's (or, with --submission, an observation's) images are combined at every "
                        "rank: mean of probabilities or of log-probabilities (renormalised)")
    f.add_argument("--unknown-threshold", type=finite_float, default=None,
                   help="unknown-species score above which the answer is 'an unknown species of <finest "
                        "confident rank>'; None: the threshold validate.py --store-threshold put in the "
                        "checkpoint, if any")
    f.add_argument("--unknown-score", choices=("msp", "entropy", "energy"), default=None,
                   help="score compared with --unknown-threshold; None: the checkpoint's, else msp")
    r = p.add_argument_group("Runtime parameters")
    r.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    r.add_argument("--workers", type=nonneg_int, default=2, help="image-decoding worker processes (0: in this process)")
    add_inference_args(r)
    add_submission_args(p)
    flags = vars(p.parse_args(argv))
    metadata, inputs = flags["metadata"], flags["inputs"]
    if metadata:  # images given after --metadata's items (FIELD=VALUE) were swallowed by its nargs
        inputs = inputs + [m for m in metadata if "=" not in m]
        metadata = [m for m in metadata if "=" in m]
    if not inputs and not flags["submission"]:
        p.error("give images or folders, or --submission OUT.csv --test-path TEST.csv")
    if flags["submission"] and not flags["test_path"]:
        p.error("--submission needs --test-path (the FungiTastic/FungiCLEF test metadata CSV)")
    return IdentifyConfig.from_flags(flags, inputs=tuple(inputs), metadata=None if metadata is None else tuple(metadata))


def add_distill_args(parser: argparse.ArgumentParser) -> None:
    """distill.py's own flags (the rest are train_multitask.py's)."""
    g = parser.add_argument_group("Distillation parameters")
    g.add_argument("--teacher", required=True, help="a trained amanita checkpoint (multi-task or single-head)")
    g.add_argument("--distill-alpha", type=probability, default=0.7,
                   help="weight of the distillation term; 1 - alpha goes to the hard labels")
    g.add_argument("--distill-temperature", type=number(float, 0, 100, low_open=True, what="a temperature with "
                   "0 < value ≤ 100"), default=2.0, help="softmax temperature of the soft targets")

def add_submission_args(p) -> None:
    """test.py's ``Submission parameters`` group."""
    s = p.add_argument_group("Submission parameters (FungiCLEF: one line per observation)")
    s.add_argument("--submission", default=None, metavar="OUT.csv",
                   help="write observationID,class_id for every observation of --test-path (class_id -1: unknown "
                        "species, when --unknown-threshold is given or a threshold is stored in the checkpoint; "
                        "--combine and --unknown-score apply)")
    s.add_argument("--test-path", default=None, help="the test metadata CSV (filename, observationID; labels not needed)")
    s.add_argument("--image-root", default=None, help="folder of the test images (default: the FungiTastic layout beside the CSV)")
    s.add_argument("--image-size-folder", default="300p", help="FungiTastic image-size folder (300p, 500p, 720p, fullsize)")


def add_tracking_args(parser) -> None:
    """The ``Tracking parameters`` flag group (training scripts and validate.py)."""
    g = parser.add_argument_group("Tracking parameters")
    g.add_argument("--log-wandb", action="store_true",
                   help=f"log to Weights & Biases (rank 0; WANDB_MODE=offline works without a network; {WANDB_HINT})")
    g.add_argument("--wandb-project", default=None, help="W&B project (default: the resumed run's, else 'amanita')")
    g.add_argument("--wandb-name", default=None, help="W&B run name (default: W&B's)")
    g.add_argument("--wandb-group", default=None, help="W&B run group, e.g. one per experiment")
    g.add_argument("--wandb-run-id", default=None,
                   help="W&B run id to continue (default: the one stored in the resumed checkpoint)")
    g.add_argument("--wandb-dir", default=None, help="folder for W&B's local files (default: W&B's, ./wandb)")
    g.add_argument("--log-tensorboard", default=None, metavar="DIR",
                   help=f"write TensorBoard events to DIR ('auto': the resumed checkpoint's folder; {TENSORBOARD_HINT})")

def cli_main(fn: Callable[[], int | None]) -> Callable[[], None]:
    """Run a script's ``main``: user errors become one line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper() -> None:
        try:
            code = fn()
        except (UserError, FileNotFoundError) as e:  # a TaxonomyError is a UserError
            msg = str(e).strip()
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # output piped into `head`: stop quietly
            sys.stderr.close()
            sys.exit(0)
        except OSError as e:  # a path that is a folder, a file where a folder should be, no permission
            where = f"{e.filename}: " if e.filename else ""
            print(f"error: {where}{e.strerror or e}", file=sys.stderr)
            sys.exit(2)
        sys.exit(code or 0)
    return wrapper
