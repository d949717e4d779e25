#!/usr/bin/env python3
"""Compute metadata priors (priors.pt): smoothed P(leaf | habitat, substrate, month, ...) from the training CSV.

Built from the training split alone: the published DF20 and FungiTastic metadata gains build
their tables from train + test, i.e. from test labels. Per field, P(leaf | value) is smoothed
toward P(leaf) (--smoothing); the month is circular (--month-neighbour: each month lends a share
of its finds to the months either side, December next to January), since seasons do not stop at
a month's edge and the splits are different years; 0 makes it a plain category. The file is keyed
by the taxonomy's digest: validate.py and test.py refuse it for a model of another taxonomy.
Load it with torch.load(path, weights_only=True); see amanita/priors.py.

Example:
  python compute_metadata_priors.py --train-path data/demo/metadata/FungiTastic/FungiTastic-Train.csv \\
      --mappings data/demo/taxonomic_mappings.json --fields habitat substrate month --output priors.pt
"""
from amanita.cli import cli_main, nonneg_float, number, script_parser
from amanita.io import atomic_torch_save, read_metadata_csv
from amanita.priors import (DEFAULT_FIELDS, DEFAULT_MONTH_NEIGHBOUR, DEFAULT_SMOOTHING, PRIOR_FIELDS, build_priors,
                            summary)
from amanita.taxonomy import Taxonomy


def parse_args(argv=None):
    p = script_parser(__doc__)
    g = p.add_argument_group("Dataset parameters")
    g.add_argument("--train-path", required=True, help="FungiTastic train CSV (the only split the tables see)")
    g.add_argument("--mappings", default="taxonomic_mappings.json", help="taxonomy JSON of the model")
    g = p.add_argument_group("Prior parameters")
    g.add_argument("--fields", nargs="+", choices=PRIOR_FIELDS, default=list(DEFAULT_FIELDS),
                   help="metadata columns to tabulate")
    g.add_argument("--smoothing", type=nonneg_float, default=DEFAULT_SMOOTHING,
                   help="additive smoothing toward P(leaf): a value seen on this many images is half its own "
                        "frequencies, half P(leaf)")
    g.add_argument("--month-neighbour", default=DEFAULT_MONTH_NEIGHBOUR,
                   type=number(float, 0, 1 / 3, what="a share between 0 and 1/3"),
                   help="share of each month's finds lent to each neighbouring month (circular); 0: month as a category")
    g.add_argument("--output", default="priors.pt", help="output file")
    return p.parse_args(argv)


@cli_main
def main():
    args = parse_args()
    tax = Taxonomy.load(args.mappings)
    train = read_metadata_csv(args.train_path, required=("category_id", *args.fields), columns=())
    doc = build_priors(train, tax, args.fields, args.smoothing, args.month_neighbour)
    doc["train_path"] = str(args.train_path)
    atomic_torch_save(doc, args.output)
    print(f"wrote {args.output} (taxonomy {doc['taxonomy_sha256'][:12]}…)")
    print("\n".join(summary(doc)))


if __name__ == "__main__":
    main()
