#!/usr/bin/env python3
"""Single-head fine-tuning (one output per category_id): the stock FungiTastic recipe (SGD, lr 0.01, batch 32 x 8 accumulation).

Its best_model.pth plays the stock model for train_multitask.py --init-from and for
validate.py --baseline-checkpoint. Runs on one device or under torchrun.

Example:
  python train_minimal.py --train-path .../FungiTastic-Train.csv --val-path .../FungiTastic-ClosedSet-Val.csv \\
      --epochs 50 --batch-size 32 --lr 0.01 --workers 4 --save-dir checkpoints/minimal
"""
from amanita.cli import cli_main, parse_train_config
from amanita.training import train

if __name__ == "__main__":
    cli_main(lambda: train(parse_train_config(__doc__, multitask=False)))()
