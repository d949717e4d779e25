#!/usr/bin/env python3
"""Export an amanita checkpoint to ONNX for phones and other runtimes without PyTorch.

Writes into --output-dir:
  model.onnx               input 'image' (batch, 3, H, W) float32, resized and normalised as model.json
                           says; one logits output per head (phylum, class, order, family, genus, leaf)
  model.json               the data config (input size, interpolation, crop, mean, std), output
                           names and sizes, and the checkpoint it came from
  taxonomic_mappings.json  class names of every head (leaf i = the taxonomy's leaf i)

The export is then checked: onnxruntime runs the file on --check-images images of --check-csv
(or random tensors) and every output must equal PyTorch's within --atol.

Needs the optional packages onnx, onnxscript and onnxruntime (see requirements-test.txt).

Example:
  python export.py --checkpoint checkpoints/demo_student/best_model.pth --output-dir exported/student
"""
from __future__ import annotations

import argparse
import json

import torch

from amanita.checkpoint import load_for_eval
from amanita.cli import HelpFormatter, cli_main, nonneg_int, positive_float, positive_int
from amanita.io import UserError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an amanita checkpoint (multi-task, distilled or single-head)")
    p.add_argument("--output-dir", default="exported", help="folder for model.onnx, model.json and taxonomic_mappings.json")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even when the checkpoint has EMA weights")
    p.add_argument("--opset", type=positive_int, default=18, help="ONNX opset version")
    g = p.add_argument_group("Check parameters")
    g.add_argument("--check-csv", default=None,
                   help="FungiTastic CSV whose first images check the export (default: random tensors)")
    g.add_argument("--image-root", default=None, help="image folder of --check-csv (default: the FungiTastic layout)")
    g.add_argument("--check-images", type=nonneg_int, default=8, help="images compared between PyTorch and onnxruntime (0: skip)")
    g.add_argument("--atol", type=positive_float, default=1e-3, help="largest allowed absolute difference of any logit")
    return p.parse_args(argv)


def check_batch(args, taxonomy, data_config) -> torch.Tensor:
    """The images the check runs on: the first rows of --check-csv, or seeded random tensors."""
    if args.check_csv is None:
        return torch.randn(args.check_images, *data_config["input_size"], generator=torch.Generator().manual_seed(0))
    from amanita.data import FungiTasticDataset, create_transforms, to_model_input
    ds = FungiTasticDataset(args.check_csv, taxonomy, create_transforms(data_config, train=False),
                            image_root=args.image_root, input_size=data_config["input_size"])
    n = min(args.check_images, len(ds))
    if n == 0:
        raise UserError(f"--check-csv {args.check_csv} has no rows")
    images = torch.stack([ds[i][0] for i in range(n)])  # uint8
    return to_model_input(images, torch.device("cpu"), data_config["mean"], data_config["std"])


@cli_main
def main() -> int:
    args = parse_args()
    from amanita.export import check_export, write_bundle
    model, taxonomy, data_config, info = load_for_eval(args.checkpoint, "cpu", use_ema=not args.no_ema)
    record = write_bundle(args.output_dir, model, taxonomy, data_config, info, args.opset)
    print(f"wrote {args.output_dir}/model.onnx with outputs {record['output_sizes']}")
    if args.check_images > 0:
        images = check_batch(args, taxonomy, data_config)  # --check-images or fewer: the CSV's rows
        diffs = check_export(model, f"{args.output_dir}/model.onnx", images, args.atol)
        print(f"onnxruntime = PyTorch on {len(images)} images, largest difference per output: "
              + json.dumps({k: float(f"{v:.2e}") for k, v in diffs.items()}))
    return 0


if __name__ == "__main__":
    main()
