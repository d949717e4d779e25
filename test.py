#!/usr/bin/env python3
"""Name the fungus in a photo: lineage phylum → species, top-k species, and a poison warning.

For each image: the predicted class and its confidence at each of the six ranks (the lineage
confidence: the probability that the lineage is right from the phylum down to that rank, so it
never rises towards the species; see amanita/calibration.py), the top-k
species (accepted names; a synonym's own scientificName is shown beside it), the finest rank
whose confidence reaches --backoff, and a loud warning when any top-k species is poisonous.
Works with a multi-task checkpoint (train_multitask.py) and with a single-head one
(train_minimal.py, the stock recipe): the coarse ranks of the latter are its species
probabilities summed up the tree.

A model is no basis for eating a wild mushroom: the warning flags danger, its absence proves nothing.

Examples:
  python test.py --checkpoint checkpoints/multitask/best_model.pth photo.jpg
  python test.py --checkpoint checkpoints/multitask/best_model.pth --decode consistent \\
      --top-k 10 --backoff 0.8 my_photos/
  python test.py --checkpoint checkpoints/minimal/best_model.pth --json my_photos/ > predictions.jsonl

Folders are searched recursively for .jpg .jpeg .png .webp .bmp .tif .tiff files (any case).
A file that cannot be read as an image gets one line on stderr and the others are still
processed. Exit code: 0 all images done, 1 some failed, 2 bad arguments or checkpoint.
"""
from amanita.cli import cli_main, parse_identify_config
from amanita.identify import identify


@cli_main
def main() -> int:
    return identify(parse_identify_config(__doc__))


if __name__ == "__main__":
    main()
