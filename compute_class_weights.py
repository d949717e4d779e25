#!/usr/bin/env python3
"""Compute per-rank class weights (class_weights.pt) from the training counts.

The file holds one float tensor per rank (species = accepted names) plus one per leaf
(category_id, the species head's outputs), mean 1 over the classes present in train.
Load it with torch.load(path, weights_only=True).

Example:
  python compute_class_weights.py --train-path data/demo/metadata/FungiTastic/FungiTastic-Train.csv \\
      --mappings taxonomic_mappings.json --method sqrt_inverse --output class_weights.pt
"""

import torch

from amanita.cli import cli_main, number, script_parser
from amanita.data import read_split
from amanita.io import atomic_torch_save, check_output_file
from amanita.losses import WEIGHT_METHODS, compute_class_weights
from amanita.taxonomy import LEAF, RANKS, Taxonomy, class_counts


def parse_args(argv=None):
    p = script_parser(__doc__)
    g = p.add_argument_group("Dataset parameters")
    g.add_argument("--train-path", required=True, help="FungiTastic train CSV to count images in")
    g.add_argument("--mappings", default="taxonomic_mappings.json", help="taxonomy JSON")
    g = p.add_argument_group("Weighting")
    g.add_argument("--method", choices=WEIGHT_METHODS, default="sqrt_inverse",
                   help="inverse (1/n), sqrt_inverse (1/sqrt n) or effective_number (Cui et al. 2019)")
    g.add_argument("--beta", type=number(float, 0, 1, low_open=True, high_open=True, what="a number with 0 < beta < 1"),
                   default=0.999, help="beta of effective_number")
    g.add_argument("--output", default="class_weights.pt", help="output file")
    return p.parse_args(argv)


@cli_main
def main():
    args = parse_args()
    check_output_file(args.output, "--output", {"--train-path": args.train_path, "--mappings": args.mappings})
    tax = Taxonomy.load(args.mappings)
    tax.counts = class_counts(tax, read_split(args.train_path))
    weights = compute_class_weights(tax, args.method, args.beta)
    atomic_torch_save(weights, args.output)
    print(f"wrote {args.output} ({args.method}" + (f", beta={args.beta}" if args.method == "effective_number" else "") + ")")
    print(f"  {'rank':<8} {'classes':>7} {'in train':>8} {'min':>7} {'median':>7} {'max':>7} {'imbalance':>9}")
    for r in (*RANKS, LEAF):
        w, n = weights[r], torch.tensor(tax.counts[r])
        present = n > 0
        ratio = (n[present].max() / n[present].min()).item() if present.any() else float("nan")
        print(f"  {r:<8} {len(w):>7} {int(present.sum()):>8} {w.min():>7.3f} {w.median():>7.3f} "
              f"{w.max():>7.3f} {ratio:>8.1f}x")


if __name__ == "__main__":
    main()
