#!/usr/bin/env python3
"""Distil a trained amanita model into a small timm backbone with the same six heads.

The student (default MobileNetV3-Small 0.5, about 0.7 M parameters with the heads) learns
the hard labels and the teacher's soft targets at every head: loss = (1 - alpha) * hard +
alpha * T^2 * KL(teacher_T || student_T), averaged over the heads with --rank-weights. The
teacher runs frozen on the same augmented batch; the student takes the teacher's data config
(input size, resize, mean/std), so one batch feeds both. Everything else is train_multitask.py:
the same flags, resume at the same sample, torchrun/DDP, last.pth/best_model.pth,
metrics.jsonl and the per-rank tables; validate.py, test.py and export.py take the student's
checkpoint like any other.

Examples:
  python distill.py --teacher checkpoints/multitask/best_model.pth --train-path .../FungiTastic-Train.csv \\
      --val-path .../FungiTastic-ClosedSet-Val.csv --model mobilenetv3_large_100 --save-dir checkpoints/student
  torchrun --nproc-per-node 8 distill.py --teacher ... --train-path ... --val-path ... --batch-size 128
"""
from amanita.cli import add_distill_args, build_train_parser, check_train_config, cli_main, parse_config
from amanita.config import DistillConfig
from amanita.training import train

# a student trained from scratch: one lr for all layers, no layer decay, no head boost
STUDENT_DEFAULTS = dict(model="mobilenetv3_small_050", pretrained="no", lr=2e-3, layer_decay=None,
                        head_lr_scale=1.0, drop_path=0.0, head_mode="residual", save_dir="checkpoints/student")


def parse_args(argv=None) -> DistillConfig:
    """train_multitask.py's flags with the student's defaults, and the teacher's (``--config FILE`` replayed first)."""
    p = build_train_parser(__doc__, multitask=True)
    add_distill_args(p)
    p.set_defaults(**STUDENT_DEFAULTS)
    cfg = parse_config(p, DistillConfig, argv)
    check_train_config(cfg)
    return cfg


if __name__ == "__main__":
    cli_main(lambda: train(parse_args()))()
