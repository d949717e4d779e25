#!/usr/bin/env python3
"""Build taxonomic_mappings.json (the six-rank tree over the FungiTastic category_ids).

Example:
  python create_taxonomic_mappings.py \\
      --train-path data/demo/metadata/FungiTastic/FungiTastic-Train.csv \\
      --val-path data/demo/metadata/FungiTastic/FungiTastic-ClosedSet-Val.csv \\
      --test-path data/demo/metadata/FungiTastic/FungiTastic-ClosedSet-Test.csv \\
      --output taxonomic_mappings.json
"""
from pathlib import Path

from amanita.cli import add_split_args, cli_main, positive_int, script_parser
from amanita.data import image_paths, read_split, scan_images
from amanita.io import check_output_file
from amanita.taxonomy import RANKS, build_taxonomy


def parse_args(argv=None):
    p = script_parser(__doc__)
    g = p.add_argument_group("Dataset parameters")
    add_split_args(g, val_required=False)
    g.add_argument("--output", default="taxonomic_mappings.json", help="output JSON")
    g.add_argument("--check-images", action="store_true", help="also decode every image and report unreadable ones")
    g.add_argument("--workers", type=positive_int, default=2, help="processes for --check-images")
    return p.parse_args(argv)


@cli_main
def main():
    args = parse_args()
    check_output_file(args.output, "--output", {"--train-path": args.train_path, "--val-path": args.val_path,
                                                "--test-path": args.test_path})
    paths = [p for p in (args.train_path, args.val_path, args.test_path) if p]
    frames = [read_split(p) for p in paths]
    train = frames[0]
    tax = build_taxonomy(frames, count_frame=train)
    tax.save(args.output)
    print(f"wrote {args.output}: {tax.summary()}")
    n_syn = tax.n_leaves - len(tax.classes["species"])
    print(f"  {n_syn} leaves are synonyms of another leaf's species; "
          f"{sum(tax.poisonous)} poisonous leaves")
    for r in RANKS:
        absent = sum(1 for c in tax.counts[r] if c == 0)
        print(f"  {r:<8} {len(tax.classes[r]):>6} classes, {absent} without training images")
    if args.check_images:
        check_images(paths, frames, args)


def check_images(paths, frames, args):
    """Decode every image of every split and print a line per split (and per bad image)."""
    for path, df in zip(paths, frames):
        files = image_paths(df, path, args.image_root)
        bad = scan_images(files, args.workers, desc=f"checking {Path(path).name}")
        print(f"  {Path(path).name}: {len(df)} images, {df['category_id'].nunique()} category_ids, "
              f"{len(bad)} bad images")
        for f, why in list(bad.items())[:20]:
            print(f"    bad image {f}: {why}")


if __name__ == "__main__":
    main()
