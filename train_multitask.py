#!/usr/bin/env python3
"""Fine-tune the FungiTastic BEiT with six heads: phylum, class, order, family, genus, species.

Runs on one CPU/GPU or under torchrun (gloo on CPU, NCCL on CUDA). Resumes by itself from
last.pth in --save-dir (or $CHECKPOINT_ARTIFACT_PATH on ISC), at the same sample of the same epoch.

Examples:
  python train_multitask.py --train-path .../FungiTastic-Train.csv --val-path .../FungiTastic-ClosedSet-Val.csv \\
      --mappings taxonomic_mappings.json --save-dir checkpoints/multitask
  torchrun --nproc-per-node 8 train_multitask.py --train-path ... --val-path ... --batch-size 64
"""
from amanita.cli import cli_main, parse_train_config
from amanita.training import train

if __name__ == "__main__":
    cli_main(lambda: train(parse_train_config(__doc__, multitask=True)))()
