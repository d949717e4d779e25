#!/usr/bin/env python3
"""Make small stratified FungiTastic splits for quick experiments.

Whole observations are kept together, species are covered round-robin, and val/test take
species that the small train split has first. The outputs keep every source column and add
an ``image_path`` column (absolute), so the small CSVs find their images from anywhere.

Example:
  python create_minimal_subset.py --train-path data/demo/metadata/FungiTastic/FungiTastic-Train.csv \\
      --val-path data/demo/metadata/FungiTastic/FungiTastic-ClosedSet-Val.csv \\
      --test-path data/demo/metadata/FungiTastic/FungiTastic-ClosedSet-Test.csv --output-dir minimal_subsets
"""
from pathlib import Path

import numpy as np

from amanita.cli import add_split_args, cli_main, nonneg_int, positive_int, script_parser
from amanita.data import image_paths, read_split, stratified_subset
from amanita.io import atomic_to_csv, check_not_inputs


def parse_args(argv=None):
    p = script_parser(__doc__)
    add_split_args(p.add_argument_group("Dataset parameters"))
    g = p.add_argument_group("Subset parameters")
    g.add_argument("--n-train", type=positive_int, default=500, help="at most this many train images")
    g.add_argument("--n-val", type=positive_int, default=100, help="at most this many val images")
    g.add_argument("--n-test", type=positive_int, default=100, help="at most this many test images")
    g.add_argument("--seed", type=nonneg_int, default=42, help="random seed")
    g.add_argument("--output-dir", default="minimal_subsets", help="output folder")
    return p.parse_args(argv)


@cli_main
def main():
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    out = Path(args.output_dir)
    for name in ("Train", "Val", "Test"):  # never onto an input (re-subsetting a minimal CSV in its own folder)
        check_not_inputs({"--output-dir": out / f"FungiTastic-{name}-Minimal.csv"},
                         {"--train-path": args.train_path, "--val-path": args.val_path, "--test-path": args.test_path})
    train = read_split(args.train_path)
    small_train = stratified_subset(train, args.n_train, rng)
    train_species = set(small_train["category_id"].dropna().astype(int))
    train_obs = set(small_train.get("observationID", []))
    jobs = [("Train", args.train_path, train, small_train)]
    for name, path, n in (("Val", args.val_path, args.n_val), ("Test", args.test_path, args.n_test)):
        if path:
            df = read_split(path)
            if "observationID" in df.columns:  # an observation never spans two subsets
                df = df[~df["observationID"].isin(train_obs)]
            jobs.append((name, path, df, stratified_subset(df, n, rng, prefer_species=train_species)))
    for name, path, full, small in jobs:
        small = read_split(path, columns=None, rows=small.index)  # every column, of the chosen rows only
        small["image_path"] = [str(Path(p).resolve()) for p in image_paths(small, path, args.image_root)]
        dest = out / f"FungiTastic-{name}-Minimal.csv"
        atomic_to_csv(small, dest)
        seen = small["category_id"].dropna().astype(int)
        covered = seen.isin(train_species).mean() if len(seen) else 1.0
        print(f"wrote {dest}: {len(small)} of {len(full)} images, {seen.nunique()} species"
              + ("" if name == "Train" else f", {covered:.0%} of images of species in the small train"))


if __name__ == "__main__":
    main()
