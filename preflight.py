#!/usr/bin/env python3
"""Check and measure a machine or cluster before a run, with the run's own flags.

Give it exactly the flags of the train_multitask.py run it checks (plus a few of its own) and
run it the same way, with python or under torchrun. Each check (environment, data, loader,
model, distributed, checkpoint folder, and a forecast of the run's time) prints PASS, WARN or
FAIL with one line of why and what to do; preflight.json holds every number. Any FAIL exits 1.

Examples:
  python preflight.py --train-path .../FungiTastic-Train.csv --val-path .../FungiTastic-ClosedSet-Val.csv \\
      --mappings taxonomic_mappings.json --batch-size 64
  torchrun --nproc-per-node 8 preflight.py --train-path ... --val-path ... --batch-size 128 --workers 8
"""
from amanita.cli import build_train_parser, check_train_config, cli_main, parse_config, positive_float, positive_int
from amanita.config import PreflightConfig
from amanita.preflight import run


def parse_args(argv=None) -> PreflightConfig:
    """The train_multitask.py run's flags and preflight's own (``--config FILE``: that run's args.yaml)."""
    p = build_train_parser(__doc__, multitask=True)
    g = p.add_argument_group("Preflight parameters")
    g.add_argument("--sample-images", type=positive_int, default=64,
                   help="images of each split that each process reads and decodes (different ones on each "
                        "process) to find missing ones and time the storage and the loader")
    g.add_argument("--output", default=None,
                   help="the JSON report; None: preflight.json in $LOSSY_ARTIFACT_PATH (ISC) or here")
    g.add_argument("--max-seconds", type=positive_float, default=100.0,
                   help="time budget: each measurement stops at its share of it")
    g.add_argument("--allow-download", action="store_true",
                   help="let the model come from the hub (default: offline, HF_HUB_OFFLINE=1, as a node without "
                        "internet would see it)")
    cfg = parse_config(p, PreflightConfig, argv)
    check_train_config(cfg)
    return cfg


@cli_main
def main():
    return run(parse_args())


if __name__ == "__main__":
    main()
