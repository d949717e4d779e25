"""Writing the demo dataset (``create_synthetic_dataset.py``): CSVs and images in FungiTastic's layout::

    <root>/metadata/FungiTastic/FungiTastic-{Train,ClosedSet-Val,ClosedSet-Test}.csv
    <root>/FungiTastic/{train,val,test}/<size>p/<imgIdx>-<observationID>.JPG
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from amanita.demo.drawing import DEFAULT_IMAGE_SIZE, draw_image, encode_jpeg
from amanita.demo.metadata import DEFAULT_N_OBSERVATIONS, TEST_MISSING, plan_dataset, plan_open_set
from amanita.io import UserError, atomic_to_csv, atomic_write_text
from amanita.taxonomy import RANKS

CSV_NAMES = {"train": "FungiTastic-Train.csv", "val": "FungiTastic-ClosedSet-Val.csv",
             "test": "FungiTastic-ClosedSet-Test.csv"}
MARKER = "amanita_synthetic.json"  # marks a folder as ours, so regenerating may clear it


OPEN_SET_CSV_NAMES = {"val": "FungiTastic-OpenSet-Val.csv", "test": "FungiTastic-OpenSet-Test.csv"}


def open_set_csv_path(root: str | Path, split: str) -> Path:
    """OpenSet metadata CSV of ``split`` (val or test) under a dataset ``root``."""
    return Path(root) / "metadata" / "FungiTastic" / OPEN_SET_CSV_NAMES[split]


def csv_path(root: str | Path, split: str) -> Path:
    """Metadata CSV of ``split`` under a dataset ``root``."""
    return Path(root) / "metadata" / "FungiTastic" / CSV_NAMES[split]


def image_dir(root: str | Path, split: str, image_size: int = DEFAULT_IMAGE_SIZE) -> Path:
    """Image folder of ``split``: ``<root>/FungiTastic/<split>/<size>p``."""
    return Path(root) / "FungiTastic" / split / f"{image_size}p"


def _render(task: tuple[str, str, int, int, int]) -> None:
    """Worker: draw one image and write it (plain write: the CSVs, written last, mark completion)."""
    path, species, seed, index, size = task
    Path(path).write_bytes(encode_jpeg(draw_image(species, seed, index, size)))

def _prepare_output(root: Path, params: dict) -> None:
    """Make ``root`` ready: refuse a foreign non-empty folder, clear our previous demo set."""
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise UserError(f"{root} is not empty and holds no {MARKER}: refusing to write the "
                        "demo dataset over it (choose an empty or new --output-dir)")
    for old in (root / "FungiTastic", root / "metadata" / "FungiTastic"):
        if old.is_dir():
            shutil.rmtree(old)
    atomic_write_text(root / MARKER, json.dumps(params, indent=1) + "\n")


def _write_images(root: Path, plan: dict[str, pd.DataFrame], seed: int, image_size: int,
                  workers: int) -> None:
    """Draw every image of the plan, in ``workers`` processes (the bytes never depend on it)."""
    tasks = []
    for split, df in plan.items():
        folder = image_dir(root, split, image_size)
        folder.mkdir(parents=True, exist_ok=True)
        tasks += [(str(folder / f), sp, seed, int(f.split("-")[0]), image_size)
                  for f, sp in zip(df["filename"], df["species"])]
    bar = tqdm(total=len(tasks), desc="drawing demo images", unit="img", leave=False)
    if workers <= 1:
        for task in tasks:
            _render(task)
            bar.update()
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            for _ in pool.imap_unordered(_render, tasks, chunksize=32):
                bar.update()
    bar.close()


def _sample(plan: dict[str, pd.DataFrame], n: int, seed: int) -> dict[str, pd.DataFrame]:
    """``n`` random rows of each split (all of a smaller one), in the plan's order."""
    return {s: df.sample(min(n, len(df)), random_state=seed).sort_index().reset_index(drop=True)
            for s, df in plan.items()}


def generate_dataset(output_dir: str | Path, seed: int = 0,
                     n_observations: int = DEFAULT_N_OBSERVATIONS,
                     image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 1, max_images: int = 0) -> dict:
    """Write the demo dataset under ``output_dir`` and return a summary dict.

    A previous demo set there (marked by :data:`MARKER`) is replaced; any other non-empty folder
    is refused. ``workers`` processes draw the images (0 or 1: this process); the same arguments
    give byte-identical files whatever ``workers``. The CSVs are written last, atomically.
    ``max_images`` > 0 keeps a random sample of that many images per split (a benchmark's smoke size).
    """
    if seed < 0 or n_observations < 1 or image_size < 32 or workers < 0:
        raise UserError(f"need seed >= 0, n_observations >= 1, image_size >= 32 and workers >= 0 "
                        f"(got {seed}, {n_observations}, {image_size}, {workers})")
    root = Path(output_dir)
    params = {"generator": "amanita.demo", "seed": seed, "n_observations": n_observations,
              "image_size": image_size} | ({"max_images": max_images} if max_images > 0 else {})
    _prepare_output(root, params)
    plan = plan_dataset(seed, n_observations)
    unknown = plan_open_set(plan, seed)
    if max_images > 0:
        plan, unknown = _sample(plan, max_images, seed), _sample(unknown, max_images, seed)
    _write_images(root, plan, seed, image_size, workers)
    _write_images(root, unknown, seed, image_size, workers)
    for split, df in plan.items():  # last: a complete CSV set means a complete dataset
        atomic_to_csv(df.drop(columns=list(TEST_MISSING)) if split == "test" else df,
                      csv_path(root, split))
    for split, df in unknown.items():  # known species of the closed split, then the unknown ones
        both = pd.concat([plan[split], df], ignore_index=True)
        atomic_to_csv(both.drop(columns=list(TEST_MISSING)) if split == "test" else both,
                      open_set_csv_path(root, split))
    return summarize(plan) | {"output_dir": str(root), "image_size": image_size, "seed": seed,
                              "open_set": {s: len(df) for s, df in unknown.items()}}


def summarize(plan: dict[str, pd.DataFrame]) -> dict:
    """Images and observations per split, classes per rank, leaves and poisonous species."""
    allrows = pd.concat(plan.values(), ignore_index=True)
    return {
        "images": {s: len(df) for s, df in plan.items()},
        "observations": {s: int(df["observationID"].nunique()) for s, df in plan.items()},
        "leaves": int(allrows["category_id"].nunique()),
        "classes": {r: int(allrows[r].nunique()) for r in RANKS},
        "poisonous_species": sorted(allrows.loc[allrows["poisonous"] == 1, "species"].unique()),
    }
