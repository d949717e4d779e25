#!/usr/bin/env python3
"""Export an amanita checkpoint to ONNX for phones and other runtimes without PyTorch, or to a
PyTorch model file for inference (--format pth).

--format onnx (the default) writes into --output-dir:
  model.onnx               input 'image' (batch, 3, H, W) float32, resized and normalised as model.json
                           says; one logits output per head (phylum, class, order, family, genus, leaf)
  model.json               the data config (input size, interpolation, crop, mean, std), output
                           names and sizes, and the checkpoint it came from
  taxonomic_mappings.json  class names of every head (leaf i = the taxonomy's leaf i)

The export is written into a staging folder inside --output-dir and checked there: onnxruntime
runs the file on --check-images images of --check-csv (or random tensors) and every output must
equal PyTorch's within --atol. Only a checked export replaces the files of a previous one.

Needs the optional packages onnx, onnxscript and onnxruntime (see requirements-test.txt).

--format pth writes --output-dir/model.pth: the weights (EMA when kept; --dtype bfloat16 or float16
halves the file), data config, taxonomy, temperatures, unknown-species threshold and anything
else validation stored, without optimizer, scheduler or RNG state. test.py, validate.py and
--submission take it wherever they take a checkpoint, and load it in a fraction of the time.
The check compares its outputs with the checkpoint's (tolerance by --dtype).

Examples:
  python export.py --checkpoint checkpoints/demo_student/best_model.pth --output-dir exported/student
  python export.py --format pth --dtype bfloat16 --checkpoint checkpoints/multitask/best_model.pth --output-dir exported/model
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from amanita.checkpoint import load_for_eval
from amanita.cli import HelpFormatter, cli_main, nonneg_int, onnx_opset, positive_float
from amanita.config import ExportConfig
from amanita.io import UserError, check_not_inputs, staged_output


def parse_args(argv=None) -> ExportConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an amanita checkpoint (multi-task, distilled or single-head)")
    p.add_argument("--format", choices=("onnx", "pth"), default="onnx",
                   help="onnx: model.onnx + model.json + taxonomic_mappings.json; pth: model.pth, an inference "
                        "model file for test.py/validate.py (no training state)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="--format pth: precision of the stored weights (loaded as float32)")
    p.add_argument("--output-dir", default="exported", help="folder for the exported files")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even when the checkpoint has EMA weights")
    p.add_argument("--opset", type=onnx_opset, default=18, help="ONNX opset version (one torch.onnx exports to)")
    g = p.add_argument_group("Check parameters")
    g.add_argument("--check-csv", default=None,
                   help="FungiTastic CSV whose first images check the export (default: random tensors)")
    g.add_argument("--image-root", default=None, help="image folder of --check-csv (default: the FungiTastic layout)")
    g.add_argument("--check-images", type=nonneg_int, default=8, help="images compared between PyTorch and onnxruntime (0: skip)")
    g.add_argument("--atol", type=positive_float, default=None,
                   help="largest allowed absolute difference of any logit; %(default)s: 1e-3 for onnx, by --dtype for pth "
                        "(float32 1e-4, float16 2e-2, bfloat16 0.15)")
    return ExportConfig.from_flags(vars(p.parse_args(argv)))


def check_batch(cfg: ExportConfig, taxonomy, data_config) -> torch.Tensor:
    """The images the check runs on: the first rows of --check-csv, or seeded random tensors."""
    if cfg.check_csv is None:
        return torch.randn(cfg.check_images, *data_config["input_size"], generator=torch.Generator().manual_seed(0))
    from amanita.data import FungiTasticDataset, create_transforms, to_model_input
    ds = FungiTasticDataset(cfg.check_csv, taxonomy, create_transforms(data_config, train=False),
                            image_root=cfg.image_root, input_size=data_config["input_size"])
    n = min(cfg.check_images, len(ds))
    if n == 0:
        raise UserError(f"--check-csv {cfg.check_csv} has no rows")
    images = torch.stack([ds[i][0] for i in range(n)])  # uint8
    return to_model_input(images, torch.device("cpu"), data_config["mean"], data_config["std"])


def staged_and_checked(cfg: ExportConfig, write, check, what: str):
    """``write(stage)`` into a staging folder, ``check(stage)`` there, and only then replace the folder's files.

    So a file that fails its check never replaces a good previous export (the folder is shared by
    the ONNX bundle and model.pth: nothing else in it is touched). Returns ``(written, diffs)``."""
    inputs = {"--checkpoint": cfg.checkpoint, "--check-csv": cfg.check_csv}
    with staged_output(cfg.output_dir, inputs=inputs, owns=False) as stage:
        written, diffs = write(stage), None
        if check is not None:
            try:
                diffs = check(stage)
            except UserError as e:
                raise UserError(f"the new {what} failed its check, so {cfg.output_dir} keeps its previous files: "
                                f"{str(e).split(': ', 1)[-1]}") from None
    return written, diffs


def load_checked_inputs(cfg: ExportConfig, output: Path):
    """The model to export and the check's images, read before anything is written (a bad CSV: nothing written)."""
    check_not_inputs({"--output-dir": output}, {"--checkpoint": cfg.checkpoint, "--check-csv": cfg.check_csv})
    model, taxonomy, data_config, info = load_for_eval(cfg.checkpoint, "cpu", use_ema=not cfg.no_ema)
    images = check_batch(cfg, taxonomy, data_config) if cfg.check_images > 0 else None
    return model, taxonomy, data_config, info, images


def print_diffs(label: str, images, diffs) -> None:
    if images is not None:
        print(f"{label} on {len(images)} images, largest difference per output: "
              + json.dumps({k: float(f"{v:.2e}") for k, v in diffs.items()}))


def export_pth(cfg: ExportConfig) -> int:
    """--format pth: write model.pth, check that it answers as the checkpoint does, then put it in place."""
    from amanita.modelfile import check_model_file, write_model_file
    path = Path(cfg.output_dir) / "model.pth"
    model, _, _, _, images = load_checked_inputs(cfg, path)
    _, diffs = staged_and_checked(
        cfg, lambda stage: write_model_file(cfg.checkpoint, stage / "model.pth", use_ema=not cfg.no_ema,
                                             dtype=cfg.dtype),
        None if images is None else lambda stage: check_model_file(model, stage / "model.pth", images, cfg.atol),
        "model file")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {cfg.dtype} weights)")
    print_diffs("model.pth = checkpoint", images, diffs)
    return 0


@cli_main
def main() -> int:
    cfg = parse_args()
    if cfg.format == "pth":
        return export_pth(cfg)
    from amanita.export import check_export, write_bundle
    model, taxonomy, data_config, info, images = load_checked_inputs(cfg, Path(cfg.output_dir))
    record, diffs = staged_and_checked(
        cfg, lambda stage: write_bundle(stage, model, taxonomy, data_config, info, cfg.opset),
        None if images is None else lambda stage: check_export(model, stage / "model.onnx", images, cfg.atol or 1e-3),
        "export")
    print(f"wrote {cfg.output_dir}/model.onnx with outputs {record['output_sizes']}")
    print_diffs("onnxruntime = PyTorch", images, diffs)
    return 0


if __name__ == "__main__":
    main()
