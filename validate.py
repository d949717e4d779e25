#!/usr/bin/env python3
"""Validate a multi-rank model: per-sample predictions, metrics, figures, validation_report.html.

    python validate.py --checkpoint checkpoints/multitask/best_model.pth \
        --val-path metadata/FungiTastic/FungiTastic-ClosedSet-Val.csv
    python validate.py --from-predictions validation_results/predictions.csv --mappings taxonomic_mappings.json

Inference runs once and its predictions are saved (``predictions.csv``); ``--from-predictions``
turns such a file into the same report without the model.
"""
from amanita.cli import cli_main, parse_validate_config
from amanita.evaluate import summary_lines, validate


@cli_main
def main() -> int:
    print("\n".join(summary_lines(validate(parse_validate_config(__doc__.split("\n\n")[0])))))
    return 0


if __name__ == "__main__":
    main()
