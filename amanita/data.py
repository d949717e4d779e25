"""FungiTastic metadata and images: the dataset class, image paths, transforms, loaders."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, get_worker_info

from amanita.io import UserError, open_regular, read_metadata_csv
from amanita.taxonomy import (LABEL_COLUMN, LEAF, REQUIRED_COLUMNS, Taxonomy, encode_labels, label_column,
                              lineage_conflicts)

log = logging.getLogger(__name__)

MAX_CATEGORY_ID = 2 ** 53  # the largest whole number a float64 column holds exactly
BAD_IMAGE = -2  # leaf label of a sample whose image could not be read (other labels -1)
SPLITS = ("train", "val", "test")  # the split folder named by a word of the CSV file name
JPEG_MAGIC = b"\xff\xd8\xff"
# what PIL raises for a file that is not a readable image (a decompression bomb is not an OSError)
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


# what amanita reads from a split (the other columns, ``captions`` above all, cost time and memory)
LABEL_COLUMNS = REQUIRED_COLUMNS + ("scientificName", "poisonous", "observationID", "image_path")


def read_split(path: str | os.PathLike, open_set: bool = False, columns: tuple[str, ...] | None = LABEL_COLUMNS,
               rows=None) -> pd.DataFrame:
    """Read a FungiTastic CSV, checking the required columns (``filename``, ``category_id``, ranks).

    An empty file and a ``category_id`` that is missing, not a whole number or negative are
    :class:`UserError`s naming the line; ``open_set=True`` also accepts -1 (an unknown species).
    The path is kept in ``df.attrs["source"]`` so later errors can name the file.
    ``columns``: those of :data:`LABEL_COLUMNS` that are present by default, ``None`` for all;
    ``rows``: only those data rows (see :func:`amanita.io.read_metadata_csv`).
    """
    df = read_metadata_csv(path, REQUIRED_COLUMNS, columns, rows)
    if df.empty and rows is None:
        raise UserError(f"{path} has a header but no rows: nothing to train or evaluate on")
    df["category_id"] = check_category_ids(df["category_id"], path, open_set)
    df.attrs["source"] = str(path)
    warn_duplicates(df, path)
    return df


def warn_duplicates(df: pd.DataFrame, path) -> None:
    """Say aloud when an image (``filename``) is listed more than once: it is trained and scored once per row."""
    dup = df["filename"].duplicated(keep=False).to_numpy()
    if dup.any():
        first = df["filename"].iloc[int(np.flatnonzero(dup)[0])]
        lines = [int(i) + 2 for i in df.index[(df["filename"] == first).to_numpy()][:2]]
        n = int(df["filename"].duplicated().sum())
        log.warning("%s: %d row(s) repeat an image listed earlier (first: %s on lines %d and %d); each row counts "
                    "in training and in the metrics", path, n, first, *lines)


def check_category_ids(values: pd.Series, path, open_set: bool = False) -> pd.Series:
    """``values`` as int64, or a :class:`UserError` naming the first bad line of ``path`` and the count."""
    number = pd.to_numeric(values, errors="coerce")
    whole = number.notna() & np.isfinite(number) & (number == number.round())
    low = -1 if open_set else 0
    bad = ~whole | (number < low) | (number > MAX_CATEGORY_ID)  # beyond: not exact in float64, wraps in int64
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.iloc[i]
        shown = "empty" if pd.isna(value) else repr(str(value))
        rule = f"a whole number from 0 to 2^53 = {MAX_CATEGORY_ID}" + (" (or -1: unknown species)" if open_set else
                                       " (-1, an unknown species, only with validate.py --open-set)"
                                       if str(value).strip() in ("-1", "-1.0") else "")
        more = f" ({int(bad.sum()) - 1} more such rows)" if bad.sum() > 1 else ""
        raise UserError(f"{path} line {values.index[i] + 2}: category_id is {shown}, expected {rule}{more}")
    return number.astype(np.int64)


def check_lineages(tax: Taxonomy, df: pd.DataFrame, labels: np.ndarray, path, index: pd.Index) -> None:
    """A row whose ranks contradict the mappings' lineage of its ``category_id`` is a :class:`UserError`
    naming the file and line (``index``: each row's position in the file): its rank labels would
    train and score classes the leaf is not under."""
    bad, what = lineage_conflicts(tax, df, labels)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        line = (int(index[first]) if pd.api.types.is_integer_dtype(index) else first) + 2  # 1-based, after the header
        more = f" ({int(bad.sum()) - 1} more such rows)" if bad.sum() > 1 else ""
        raise UserError(f"{path or 'metadata'} line {line}: {what}{more}; fix the row or rebuild "
                        "the mappings from this CSV (create_taxonomic_mappings.py reports every conflict)")


def default_image_root(csv_path: str | os.PathLike, size: str = "300p") -> Path:
    """FungiTastic layout: ``<root>/metadata/<Set>/<Set>-Train.csv`` → ``<root>/<Set>/train/<size>``.

    ``FungiTastic-ClosedSet-Val.csv`` → ``val``; ``FungiTastic-Mini-Test.csv`` → ``test``.
    Outside that layout, images are looked for beside the CSV.
    """
    p = Path(csv_path).resolve()
    words = re.split(r"[-_.]", p.stem.lower())
    split = next((w for w in reversed(words) if w in SPLITS), None)
    if p.parent.parent.name == "metadata" and split is not None:
        return p.parent.parent.parent / p.parent.name / split / size
    return p.parent


def image_paths(df: pd.DataFrame, csv_path: str | os.PathLike | None,
                image_root: str | os.PathLike | None = None, size: str = "300p") -> list[str]:
    """Each row's image path: an ``image_path`` column wins, then ``image_root/filename``."""
    if "image_path" in df.columns and image_root is None:
        return df["image_path"].astype(str).tolist()
    root = Path(image_root) if image_root is not None else default_image_root(csv_path, size)
    return (os.path.join(str(root), "") + df["filename"].astype(str)).tolist()  # not Path / per row: 20× faster


def load_rgb(path: str | os.PathLike | io.BytesIO) -> Image.Image:
    """Open an image of any mode (L, P, RGBA, CMYK, I;16, EXIF-rotated) as upright RGB.

    A path is opened only when it is a regular file (a named pipe would block: an ``OSError``).
    """
    if not isinstance(path, io.BytesIO):
        with open_regular(path) as f:
            return load_rgb(io.BytesIO(f.read()))
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


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as an upright RGB uint8 tensor ``(3, H, W)``.

    JPEGs decode with ``torchvision.io.decode_jpeg`` (libjpeg-turbo, EXIF orientation applied),
    about twice as fast as PIL with its conversions; other formats, and JPEGs it refuses
    (truncated, corrupt), take the safe PIL path of :func:`load_rgb`, which raises one of
    :data:`IMAGE_ERRORS` for a file that cannot be read.
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.functional import pil_to_tensor
    with open_regular(path) as f:  # a named pipe listed as an image must not block
        data = bytearray(f.read())
    if data[:3] == JPEG_MAGIC:
        with Image.open(io.BytesIO(data)):  # header only: PIL's decompression-bomb check, which libjpeg lacks
            pass
        try:
            return decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB,
                               apply_exif_orientation=True)
        except RuntimeError:
            pass  # PIL decides: it reads some files libjpeg refuses, and names the problem of the rest
    return pil_to_tensor(load_rgb(io.BytesIO(data)))


class FungiTasticDataset(Dataset):
    """FungiTastic images with their labels at the leaf and the six ranks.

    ``__getitem__`` returns ``(image, labels, index)``: ``image`` is the transform's uint8
    ``(3, h, w)`` tensor (normalised later, on the device: :class:`DeviceLoader`), ``labels``
    a LongTensor of 7 (leaf = ``category_id`` index, then phylum … species), -1 for unknown.
    An image that cannot be read is logged with its path and returned as zeros with leaf
    label :data:`BAD_IMAGE` and other labels -1, so losses and metrics skip it and the engine
    can count it.

    Loader workers only touch compact arrays: the paths as one numpy byte array and the
    labels as one tensor. The metadata frame is not kept (a DataFrame or a list of str is
    copied page by page into every worker as reference counts are touched); a caller that
    needs its columns reads the CSV itself and passes the frame as ``metadata``.
    """

    def __init__(self, csv_path: str | os.PathLike | pd.DataFrame | None, taxonomy: Taxonomy,
                 transform=None, image_root: str | os.PathLike | None = None, image_size_folder: str = "300p",
                 input_size: tuple[int, int, int] = (3, 224, 224), metadata: pd.DataFrame | None = None,
                 seed: int | None = None):
        if isinstance(csv_path, pd.DataFrame):
            metadata, csv_path = csv_path, None
        if metadata is not None:
            df = metadata.reset_index(drop=True)
            missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
            if missing:
                raise UserError(f"{csv_path or 'metadata'} is missing columns {missing}")
        else:
            df = read_split(csv_path)
        self.transform = transform
        self.input_size = tuple(input_size)
        self.paths = np.array([os.fsencode(p) for p in image_paths(df, csv_path, image_root, image_size_folder)],
                              dtype=np.bytes_)  # (n,) fixed-width bytes: one buffer, no Python objects
        labels = encode_labels(taxonomy, df)  # (n, 7)
        check_lineages(taxonomy, df, labels, csv_path, metadata.index if metadata is not None else df.index)
        self.labels = torch.from_numpy(labels)
        cid = pd.to_numeric(df["category_id"], errors="coerce").to_numpy()
        # category_ids of the rows outside the mappings (-1: an open-set unknown, not counted); see check_labels
        self.foreign_ids = cid[(label_column(self.labels, LEAF) == -1).numpy() & (cid != -1)]
        self.source = str(csv_path) if csv_path is not None else None
        self.seed = seed  # training: augmentations follow (seed, epoch, index); None: the caller's RNG
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # persistent workers read it

    def path(self, i: int) -> str:
        """Row ``i``'s image path."""
        return os.fsdecode(self.paths[i])

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations ``__getitem__`` draws; call it before iterating the loader.

        It lives in shared memory, so persistent loader workers see it too.
        """
        self._epoch[0] = epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = read_image(self.path(i))
        except IMAGE_ERRORS as e:
            log.warning("bad image %s (%s)", self.path(i), type(e).__name__ + ": " + str(e)[:120])
            labels = torch.full_like(self.labels[i], -1)
            labels[LABEL_COLUMN[LEAF]] = BAD_IMAGE
            return torch.zeros(self.input_size, dtype=torch.uint8), labels, i
        if self.transform is not None:
            with self._seeded(i):
                img = self.transform(img)
        return img, self.labels[i], i

    def _seeded(self, i: int):
        """Random augmentations drawn from (seed, epoch, index), whichever worker or resume serves them.

        This is what makes a run resumed mid-epoch see the same crops as an uninterrupted one.
        """
        if self.seed is None:
            return contextlib.nullcontext()
        seed = hash((self.seed, self.epoch, i)) & 0x7FFFFFFF
        if get_worker_info() is not None:  # a worker's streams serve only this dataset: no restore
            _seed_rngs(seed)
            return contextlib.nullcontext()
        return _fork_rngs(seed)


def _seed_rngs(seed: int) -> None:
    """Seed python, numpy and torch's CPU generator (~15 µs; ``torch.manual_seed`` costs 0.3 ms).

    timm's RandomResizedCrop and RandAugment draw from ``random`` and numpy; torchvision's
    flips and colour jitter from torch.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def _fork_rngs(seed: int):
    """:func:`_seed_rngs` for one sample in the main process, restoring the caller's states after."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    _seed_rngs(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


# ---------------------------------------------------------------------- transforms
def create_transforms(data_config: dict, train: bool, hflip: float = 0.5, vflip: float = 0.5,
                      scale: tuple[float, float] = (0.8, 1.0), auto_augment: str | None = "rand-m20-n2",
                      color_jitter: float = 0.0) -> "ImageTransform":
    """The train or eval transform for a model's data config, through timm, giving uint8 tensors.

    Eval follows the config (``crop_mode='squash'`` + ``crop_pct=1`` is the FungiTastic
    squash-resize). Train is the stock FungiTastic recipe: RandomResizedCrop(scale 0.8–1),
    flips and RandAugment(2 ops, magnitude 20). Colour jitter is applied only when
    ``color_jitter > 0``, with or without auto-augment (timm would silently add
    ColorJitter(0.4) when there is no auto-augment). Normalisation is left to the device
    (timm's ``use_prefetcher`` convention): see :class:`DeviceLoader`.
    """
    from timm.data import create_transform
    from timm.data.transforms import MaybePILToTensor
    from timm.data.transforms_factory import transforms_imagenet_train
    common = dict(interpolation=data_config["interpolation"], mean=data_config["mean"], std=data_config["std"],
                  use_prefetcher=True)  # ends with PIL→uint8 tensor, no normalisation
    if not train:
        steps = create_transform(**common, input_size=data_config["input_size"], is_training=False,
                                 crop_pct=data_config["crop_pct"], crop_mode=data_config.get("crop_mode", "center"))
        return ImageTransform([t for t in steps.transforms if not isinstance(t, MaybePILToTensor)], [])
    primary, secondary, _ = transforms_imagenet_train(
        tuple(data_config["input_size"][-2:]), **common, scale=scale, hflip=hflip, vflip=vflip,
        auto_augment=auto_augment or None, color_jitter=color_jitter or None,
        force_color_jitter=bool(color_jitter), re_prob=0.0, separate=True)
    return ImageTransform(primary.transforms, secondary.transforms)


class ImageTransform:
    """An image (uint8 tensor ``(3, H, W)`` or PIL) → uint8 tensor ``(3, h, w)``, not normalised.

    ``tensor_steps`` (resize, crop, flips: torchvision ops that take tensors) run on the
    decoded tensor; ``pil_steps`` (timm's RandAugment and ColorJitter, which work on PIL
    images) on a PIL image made after the crop, at the model's input size, where it is cheap.
    """

    def __init__(self, tensor_steps: list, pil_steps: list):
        self.tensor_steps, self.pil_steps = [_uint8_fast(t) for t in tensor_steps], list(pil_steps)

    def __call__(self, img) -> torch.Tensor:
        for step in self.tensor_steps:
            img = step(img)
        if self.pil_steps:
            img = _to_pil(img) if isinstance(img, torch.Tensor) else img
            for step in self.pil_steps:
                img = step(img)
        # a PIL image's (H, W, 3) memory, seen as (3, H, W): no strided copy here, the collate copies once
        return img if isinstance(img, torch.Tensor) else torch.from_numpy(np.array(img)).permute(2, 0, 1)

    def __repr__(self) -> str:
        steps = [" ".join(repr(t).split()) for t in self.tensor_steps]  # one line per step
        steps += [" ".join(repr(t).split()) + " (on PIL)" for t in self.pil_steps]
        return "ImageTransform(uint8 out, normalised on the device)\n" + "\n".join(f"  {s}" for s in steps)


def _to_pil(img: torch.Tensor) -> Image.Image:
    """A uint8 ``(3, H, W)`` tensor as a PIL image; free of a strided copy when its memory is (H, W, 3)."""
    hwc = img.permute(1, 2, 0)
    return Image.fromarray((hwc if hwc.is_contiguous() else hwc.contiguous()).numpy())


def _uint8_fast(step):
    """``step`` with its resize done by torchvision's v2 kernels, which resize uint8 directly.

    timm builds torchvision v1 ``Resize`` and a RandomResizedCrop over v1 ``resized_crop``; on a
    tensor those resize bicubic in float, about 5× slower than v2's uint8 path (same maths,
    antialiased). Other steps are returned as they are.
    """
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision.transforms import Resize, v2
    if type(step) is Resize:
        return v2.Resize(step.size, step.interpolation, step.max_size, antialias=True)
    if type(step) is RandomResizedCropAndInterpolation:
        return RandomResizedCropUint8(step)
    return step


class RandomResizedCropUint8:
    """timm's RandomResizedCropAndInterpolation (the same draws from ``random``), resized by v2's uint8 kernel."""

    def __init__(self, timm_step):
        self.step = timm_step

    def __call__(self, img):
        from torchvision.transforms.v2 import functional as F
        s = self.step
        i, j, h, w = s.get_params(img, s.scale, s.ratio)
        interpolation = random.choice(s.interpolation) if isinstance(s.interpolation, (tuple, list)) else s.interpolation
        img = F.crop(img, i, j, h, w)
        if isinstance(img, torch.Tensor):  # decode_jpeg gives (H, W, 3) memory: keep it, the uint8
            img = img.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # kernel is faster and PIL takes it as is
        return F.resize(img, list(s.size), interpolation, antialias=True)

    def __repr__(self) -> str:
        return repr(self.step)


# ---------------------------------------------------------------------- loaders and the device end
def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, sampler=None,
                prefetch_factor: int = 2, seed: int = 0, persistent: bool = True) -> DataLoader:
    """A DataLoader built once for the whole run: persistent workers, pinned memory on CUDA.

    The sampler stays in this process, so its epoch and start position (resume) apply to
    every new iterator; an explicit generator keeps iterator creation off the global RNG.
    """
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda", drop_last=False,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=persistent and workers > 0,
                      prefetch_factor=prefetch_factor if workers > 0 else None)


@functools.lru_cache(maxsize=16)
def _norm_constants(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """255·mean and 1/(255·std) as (1, 3, 1, 1) tensors on ``device``, made once."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255
    inv = 1 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255)
    return m, inv


def to_model_input(images: torch.Tensor, device: torch.device, mean, std,
                   channels_last: bool = False) -> torch.Tensor:
    """A batch of uint8 images ``(B, 3, H, W)`` → float32 ``(x/255 - mean) / std`` on ``device``.

    The uint8 batch crosses to the device (a quarter of float32's bytes) and is normalised
    there. A float batch is taken as already normalised and only moved.
    """
    x = images.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        m, inv = _norm_constants(tuple(mean), tuple(std), x.device)
        x = x.float().sub_(m).mul_(inv)  # one new tensor, not three
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def check_normalised(images: torch.Tensor) -> None:
    """A clear error for a uint8 batch reaching the model (a loader not wrapped in :class:`DeviceLoader`)."""
    if images.dtype == torch.uint8:
        raise TypeError("the model got uint8 images: wrap the DataLoader in amanita.data.DeviceLoader, "
                        "which normalises them on the device")


class DeviceLoader:
    """Batches of ``loader`` with the images on ``device``, normalised there (timm's PrefetchLoader idea).

    Yields ``(images, *rest)`` with ``rest`` (labels, indices, …) as the loader gave them.
    """

    def __init__(self, loader, device: torch.device, data_config: dict, channels_last: bool = False):
        self.loader, self.device, self.channels_last = loader, torch.device(device), channels_last
        self.mean, self.std = tuple(data_config["mean"]), tuple(data_config["std"])
        self.dataset = getattr(loader, "dataset", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, *rest in self.loader:
            yield (to_model_input(images, self.device, self.mean, self.std, self.channels_last), *rest)


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


def check_labels(ds: "FungiTasticDataset", max_fraction: float, split: str) -> None:
    """Rows whose ``category_id`` is not in the mappings: said aloud, and an error past ``max_fraction``.

    Such rows have no leaf label, so the loss and the metrics skip them; -1 (an open-set
    unknown) is not counted.
    """
    n = len(ds.foreign_ids)
    if not n:
        return
    ids = sorted({int(c) if c == c else -1 for c in ds.foreign_ids.tolist()})
    shown = ", ".join(map(str, ids[:5])) + (", …" if len(ids) > 5 else "")
    msg = (f"{ds.source or f'the {split} split'}: {n} of {len(ds)} rows have a category_id not in the mappings "
           f"({shown}) and are left out")
    if n > max_fraction * len(ds):
        raise UserError(f"{msg}, more than --max-bad-image-fraction {max_fraction:g}; rebuild the mappings "
                        "with this CSV (create_taxonomic_mappings.py) or use the CSVs they were built from")
    log.warning("%s", msg)


def check_unreadable(n_total: int, n_read: int, max_fraction: float, split: str) -> None:
    """After evaluation: images that could not be read are said aloud, an error past ``max_fraction``."""
    n_bad = n_total - n_read
    if n_bad:
        log.warning("%d of %d %s images could not be read and are left out of the metrics", n_bad, n_total, split)
    BadImageCounter(n_total, max_fraction, f"{split} images").update(n_bad)


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
    except IMAGE_ERRORS as e:
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
