"""FungiTastic metadata and images: the dataset class, image paths, transforms, loaders."""
from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from amanita.io import UserError, read_metadata_csv
from amanita.taxonomy import REQUIRED_COLUMNS, Taxonomy, encode_labels

log = logging.getLogger(__name__)

BAD_IMAGE = -2  # leaf label of a sample whose image could not be read (other labels -1)
SPLIT_WORDS = {"train": "train", "val": "val", "test": "test"}


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    """Read a FungiTastic CSV, checking the required columns (``filename``, ``category_id``, ranks)."""
    return read_metadata_csv(path, REQUIRED_COLUMNS)


def default_image_root(csv_path: str | os.PathLike, size: str = "300p") -> Path:
    """FungiTastic layout: ``<root>/metadata/<Set>/<Set>-Train.csv`` → ``<root>/<Set>/train/<size>``.

    ``FungiTastic-ClosedSet-Val.csv`` → ``val``; ``FungiTastic-Mini-Test.csv`` → ``test``.
    Outside that layout, images are looked for beside the CSV.
    """
    p = Path(csv_path).resolve()
    words = re.split(r"[-_.]", p.stem.lower())
    split = next((SPLIT_WORDS[w] for w in reversed(words) if w in SPLIT_WORDS), None)
    if p.parent.parent.name == "metadata" and split is not None:
        return p.parent.parent.parent / p.parent.name / split / size
    return p.parent


def image_paths(df: pd.DataFrame, csv_path: str | os.PathLike | None,
                image_root: str | os.PathLike | None = None, size: str = "300p") -> list[str]:
    """Each row's image path: an ``image_path`` column wins, then ``image_root/filename``."""
    if "image_path" in df.columns and image_root is None:
        return df["image_path"].astype(str).tolist()
    root = Path(image_root) if image_root is not None else default_image_root(csv_path, size)
    return [str(root / f) for f in df["filename"].astype(str)]


def load_rgb(path: str) -> Image.Image:
    """Open an image of any mode (L, P, RGBA, CMYK, I;16, EXIF-rotated) as upright RGB."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        elif im.mode.startswith("I") or im.mode == "F":
            arr = np.asarray(im, dtype=np.float32)
            span = max(float(arr.max() - arr.min()), 1e-6)
            im = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
        return im.convert("RGB")


class FungiTasticDataset(Dataset):
    """FungiTastic images with their labels at the leaf and the six ranks.

    ``__getitem__`` returns ``(image, labels, index)``: ``labels`` is a LongTensor of 7 (leaf
    = ``category_id`` index, then phylum … species), -1 for unknown. An image that cannot be
    read is logged with its path and returned as zeros with leaf label :data:`BAD_IMAGE`
    and other labels -1, so losses and metrics skip it and the engine can count it.
    """

    def __init__(self, csv_path: str | os.PathLike | pd.DataFrame, taxonomy: Taxonomy,
                 transform=None, image_root: str | os.PathLike | None = None,
                 image_size_folder: str = "300p", input_size: tuple[int, int, int] = (3, 224, 224)):
        if isinstance(csv_path, pd.DataFrame):
            self.df, self.csv_path = csv_path.reset_index(drop=True), None
            missing = [c for c in REQUIRED_COLUMNS if c not in self.df.columns]
            if missing:
                raise UserError(f"metadata is missing columns {missing}")
        else:
            self.csv_path = Path(csv_path)
            self.df = read_split(csv_path)
        self.taxonomy = taxonomy
        self.transform = transform
        self.input_size = tuple(input_size)
        self.paths = image_paths(self.df, self.csv_path, image_root, image_size_folder)
        self.labels = torch.from_numpy(encode_labels(taxonomy, self.df))  # (n, 7)
        self.seed: int | None = None  # set for training: augmentations follow (seed, epoch, index)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations ``__getitem__`` draws (workers copy it per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = load_rgb(self.paths[i])
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            log.warning("bad image %s (%s)", self.paths[i], type(e).__name__ + ": " + str(e)[:120])
            labels = torch.full_like(self.labels[i], -1)
            labels[0] = BAD_IMAGE
            return torch.zeros(self.input_size), labels, i
        if self.transform is not None:
            with self._seeded(i):
                img = self.transform(img)
        return img, self.labels[i], i

    def _seeded(self, i: int):
        """Random augmentations drawn from (seed, epoch, index), whichever worker or resume serves them.

        This is what makes a run resumed mid-epoch see the same crops as an uninterrupted one;
        the caller's RNG states are restored afterwards.
        """
        if self.seed is None:
            return contextlib.nullcontext()
        return _fork_rngs(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)


@contextlib.contextmanager
def _fork_rngs(seed: int):
    """Seed python, numpy and torch (CPU) for one sample, restoring the caller's states after.

    timm's RandAugment draws its ops from numpy and their magnitudes from ``random``;
    torchvision's flips draw from torch.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# ---------------------------------------------------------------------- transforms
def create_transforms(data_config: dict, train: bool, hflip: float = 0.5, vflip: float = 0.5,
                      scale: tuple[float, float] = (0.8, 1.0), auto_augment: str | None = "rand-m20-n2"):
    """The train or eval transform for a model's data config, through timm.

    Eval follows the config (``crop_mode='squash'`` + ``crop_pct=1`` is the FungiTastic
    squash-resize). Train is the stock FungiTastic recipe: RandomResizedCrop(scale 0.8–1),
    flips and RandAugment(2 ops, magnitude 20).
    """
    from timm.data import create_transform
    common = dict(input_size=data_config["input_size"], interpolation=data_config["interpolation"],
                  mean=data_config["mean"], std=data_config["std"])
    if not train:
        return create_transform(**common, is_training=False, crop_pct=data_config["crop_pct"],
                                crop_mode=data_config.get("crop_mode", "center"))
    return create_transform(**common, is_training=True, scale=scale, hflip=hflip, vflip=vflip,
                            auto_augment=auto_augment, re_prob=0.0)


class BadImageCounter:
    """Counts unreadable images seen by the engine; stops the run past a share of the dataset.

    The share is taken over the whole dataset so the decision never depends on how early in
    the epoch a bad image comes.
    """

    def __init__(self, dataset_size: int, max_fraction: float, what: str = "images"):
        self.dataset_size, self.max_fraction, self.what = dataset_size, max_fraction, what
        self.count = 0

    def update(self, n_bad: int) -> None:
        self.count += int(n_bad)
        if self.count > self.max_fraction * self.dataset_size:
            raise UserError(
                f"{self.count} of {self.dataset_size} {self.what} could not be read, more than "
                f"--max-bad-image-fraction {self.max_fraction:g}; their paths are in the log above")


# ---------------------------------------------------------------------- small subsets
def _observation_groups(df: pd.DataFrame) -> pd.Series:
    """Group key of each row: its ``observationID``, or the row itself where there is none."""
    if "observationID" in df.columns:
        obs = df["observationID"].astype("string")
        return obs.fillna(pd.Series("row" + df.index.astype(str), index=df.index, dtype="string"))
    return pd.Series("row" + df.index.astype(str), index=df.index, dtype="string")


def stratified_subset(df: pd.DataFrame, n: int, rng: np.random.Generator,
                      prefer_species: set | None = None) -> pd.DataFrame:
    """At most ``n`` rows, whole observations, spread over species round-robin.

    Every species gets one observation before any gets a second, in a seeded order.
    With ``prefer_species`` (the ``category_id``s of a train subset), observations of those
    species are taken first, so val/test species have training examples where possible.
    """
    if n >= len(df):
        return df.copy()
    groups = _observation_groups(df)
    obs = pd.DataFrame({"group": groups, "cid": df["category_id"].astype("string").fillna("?")})
    per_obs = obs.groupby("group", sort=True).agg(cid=("cid", "first"), size=("cid", "size"))
    per_obs = per_obs.iloc[rng.permutation(len(per_obs))]
    per_obs["turn"] = per_obs.groupby("cid").cumcount()  # this observation's round for its species
    per_obs["preferred"] = (per_obs["cid"].isin({str(int(c)) for c in prefer_species})
                            if prefer_species else True)
    species_order = {c: k for k, c in enumerate(rng.permutation(per_obs["cid"].unique()))}
    per_obs["species_rank"] = per_obs["cid"].map(species_order)
    per_obs = per_obs.sort_values(["preferred", "turn", "species_rank"], ascending=[False, True, True],
                                  kind="stable")
    take = per_obs.index[(per_obs["size"].cumsum() <= n).to_numpy()]  # whole observations only
    return df[groups.isin(set(take)).to_numpy()].copy()


def _try_open(path: str) -> str | None:
    try:
        load_rgb(path)
        return None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        return f"{type(e).__name__}: {str(e)[:120]}"


def scan_images(paths: list[str], workers: int = 2, desc: str = "checking images") -> dict[str, str]:
    """Decode every image once; returns ``{path: problem}`` for those that cannot be read."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm
    chunk = max(1, len(paths) // (workers * 16) or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(tqdm(pool.map(_try_open, paths, chunksize=chunk), total=len(paths),
                                desc=desc, leave=False))
    else:
        results = [_try_open(p) for p in tqdm(paths, desc=desc, leave=False)]
    return {p: r for p, r in zip(paths, results) if r is not None}
