#!/usr/bin/env python3
"""Generate the built-in demo dataset: FungiTastic-format CSVs and drawn fungi, no download.

    python create_synthetic_dataset.py --output-dir data/demo --seed 0

writes ``metadata/FungiTastic/FungiTastic-{Train,ClosedSet-Val,ClosedSet-Test}.csv`` and
``FungiTastic/{train,val,test}/300p/*.JPG`` under the output folder, which every other script
reads like the real dataset. The same seed gives byte-identical files.
"""
import argparse
import os
import textwrap
import time

from amanita.cli import cli_main, nonneg_int, number, positive_int
from amanita.demo.dataset import generate_dataset
from amanita.demo.drawing import DEFAULT_IMAGE_SIZE
from amanita.demo.metadata import DEFAULT_N_OBSERVATIONS, MIN_OBSERVATIONS
from amanita.taxonomy import RANKS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("Output")
    g.add_argument("--output-dir", default="data/demo",
                   help="dataset root; a previous demo set there is replaced, any other "
                        "non-empty folder is refused")
    g = p.add_argument_group("Dataset parameters")
    g.add_argument("--seed", type=nonneg_int, default=0, help="random seed (same seed, same bytes)")
    g.add_argument("--n-observations", type=positive_int, default=DEFAULT_N_OBSERVATIONS,
                   help="observations to share among the species by abundance (1-4 images "
                        f"each; at least {MIN_OBSERVATIONS} per species)")
    g.add_argument("--image-size", type=number(int, 32, what="an integer ≥ 32"), default=DEFAULT_IMAGE_SIZE,
                   help="shorter image side in pixels (images are 4:3; the folder is <size>p)")
    g = p.add_argument_group("Performance")
    g.add_argument("--workers", type=nonneg_int, default=min(8, os.cpu_count() or 1),
                   help="processes drawing images (the output does not depend on it)")
    return p.parse_args(argv)


def print_summary(s: dict, seconds: float) -> None:
    """A few lines: where the data went, images per split, classes per rank, poisonous species."""
    images = " · ".join(f"{k} {v}" for k, v in s["images"].items())
    obs = sum(s["observations"].values())
    ranks = ", ".join(f"{r} {s['classes'][r]}" for r in RANKS)
    poisonous = textwrap.fill(", ".join(s["poisonous_species"]), width=96,
                              initial_indent=" " * 4, subsequent_indent=" " * 4)
    print(f"Demo dataset written to {s['output_dir']} (seed {s['seed']}) in {seconds:.1f} s")
    print(f"  images:    {images} ({obs} observations, {s['image_size']}p)")
    print(f"  taxonomy:  {s['leaves']} leaves (category_id); {ranks}")
    print(f"  poisonous: {len(s['poisonous_species'])} species:\n{poisonous}")


def main() -> int:
    args = parse_args()
    start = time.time()
    summary = generate_dataset(args.output_dir, seed=args.seed, n_observations=args.n_observations,
                               image_size=args.image_size, workers=args.workers)
    print_summary(summary, time.time() - start)
    return 0


if __name__ == "__main__":
    cli_main(main)()
