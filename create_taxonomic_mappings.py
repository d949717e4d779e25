#!/usr/bin/env python3
"""Build taxonomic_mappings.json (the six-rank tree over the FungiTastic category_ids).

Example:
  python create_taxonomic_mappings.py \\
      --train-path data/demo/metadata/FungiTastic/FungiTastic-Train.csv \\
      --val-path data/demo/metadata/FungiTastic/FungiTastic-ClosedSet-Val.csv \\
      --test-path data/demo/metadata/FungiTastic/FungiTastic-ClosedSet-Test.csv \\
      --output taxonomic_mappings.json
"""
import argparse

from amanita.data import read_split
from amanita.io import cli_main
from amanita.taxonomy import RANKS, build_taxonomy


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Dataset parameters")
    g.add_argument("--train-path", required=True, help="FungiTastic train CSV (its counts go into the JSON)")
    g.add_argument("--val-path", default=None, help="validation CSV, so val species unseen in train get a leaf (default: none)")
    g.add_argument("--test-path", default=None, help="test CSV, likewise (default: none)")
    g.add_argument("--output", default="taxonomic_mappings.json", help="output JSON (default: %(default)s)")
    return p.parse_args(argv)


@cli_main
def main():
    args = parse_args()
    train = read_split(args.train_path)
    frames = [train] + [read_split(p) for p in (args.val_path, args.test_path) if p]
    tax = build_taxonomy(frames, count_frame=train)
    tax.save(args.output)
    print(f"wrote {args.output}: {tax.summary()}")
    n_syn = tax.n_leaves - len(tax.classes["species"])
    print(f"  {n_syn} leaves are synonyms of another leaf's species; "
          f"{sum(tax.poisonous)} poisonous leaves")
    for r in RANKS:
        absent = sum(1 for c in tax.counts[r] if c == 0)
        print(f"  {r:<8} {len(tax.classes[r]):>6} classes, {absent} without training images")


if __name__ == "__main__":
    main()
