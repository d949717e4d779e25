"""The one inference pipeline: a loaded model and a source (a split CSV, or image files and folders) →
the predictions table, one row per image and, where observations exist, one per observation.

validate.py (:func:`amanita.evaluate.run_inference`), test.py (:mod:`amanita.identify`: photos and
finds) and test.py --submission (:mod:`amanita.submission`) all call :func:`predict`, which builds
dataset → loader → :class:`~amanita.engine.BatchPredictor` → (priors) → pooler → table. The
checkpoint is read once (:func:`load_model`) and the :class:`LoadedModel` is passed on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from amanita.config import ReadoutConfig
from amanita.data import BAD_IMAGE, IMAGE_ERRORS, DeviceLoader, FungiTasticDataset, create_transforms, make_loader, \
    read_image
from amanita.decode import Decoder
from amanita.engine import Readout, iter_log_probs, predict_batches, predict_observations
from amanita.observations import ObservationPooler
from amanita.predictions import with_metadata
from amanita.taxonomy import KEYS, Taxonomy

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


# ---------------------------------------------------------------------- the model, loaded once
@dataclass
class LoadedModel:
    """What a checkpoint holds for inference, read once and passed on."""
    model: torch.nn.Module
    taxonomy: Taxonomy
    data_config: dict
    info: dict              # what the checkpoint says about itself (checkpoint.load_for_eval)
    device: torch.device


def load_model(checkpoint: str | os.PathLike, device: str = "auto", mappings: str | os.PathLike | None = None,
               use_ema: bool = True) -> LoadedModel:
    """The model of ``checkpoint`` on ``device`` (``--device``); ``mappings`` replaces its taxonomy after
    checking it is the same tree (e.g. updated poisonous flags)."""
    from amanita.checkpoint import load_for_eval
    from amanita.distributed import resolve_device
    from amanita.taxonomy import use_mappings
    resolved = resolve_device(device)
    model, tax, data_config, info = load_for_eval(checkpoint, resolved, use_ema=use_ema)
    if mappings:
        tax = use_mappings(tax, mappings, checkpoint)
    return LoadedModel(model, tax, data_config, info, resolved)


def load_single_head_model(spec: str, device: str, taxonomy: Taxonomy) -> LoadedModel:
    """``--baseline-model``: a timm classifier (one output per ``category_id``, like the stock model) made a
    single-head model over ``taxonomy`` (:func:`amanita.model.single_head`)."""
    from amanita.backbone import create_timm_model, resolve_data_config
    from amanita.distributed import resolve_device
    from amanita.model import single_head
    resolved = resolve_device(device)
    model = single_head(create_timm_model(spec), taxonomy).to(resolved).eval()
    return LoadedModel(model, taxonomy, resolve_data_config(model, spec), {"model": spec, "kind": "single-head (stock)"},
                       resolved)


# ---------------------------------------------------------------------- sources
@dataclass
class Source:
    """What to predict: ``dataset`` yields ``(image, labels (7,), row)`` (leaf label ``BAD_IMAGE``: unreadable),
    ``labels`` all its rows' labels ``(n, 7)``, ``metadata`` its rows (``filename``, ``observationID``,
    ``category_id``), and ``observations`` the observation of each row (None: images only)."""
    dataset: Dataset
    labels: torch.Tensor
    metadata: pd.DataFrame
    observations: np.ndarray | None = None


def split_source(loaded: LoadedModel, csv: str | os.PathLike | pd.DataFrame, image_root=None,
                 image_size_folder: str = "300p", observations: bool = False, open_set: bool = False) -> Source:
    """A FungiTastic split (a CSV path, or its rows as a frame) at ``image_root`` (None: the FungiTastic
    layout beside the CSV); pooled per ``observationID`` when ``observations`` and the column is there."""
    from amanita.data import read_split
    metadata = csv if isinstance(csv, pd.DataFrame) else read_split(csv, open_set=open_set)
    dataset = FungiTasticDataset(None if isinstance(csv, pd.DataFrame) else csv, loaded.taxonomy,
                                 transform=create_transforms(loaded.data_config, train=False), image_root=image_root,
                                 image_size_folder=image_size_folder, input_size=loaded.data_config["input_size"],
                                 metadata=metadata)
    ids = metadata["observationID"].to_numpy() if observations and "observationID" in metadata else None
    return Source(dataset, dataset.labels, metadata.reset_index(drop=True), ids)


def expand_inputs(inputs) -> tuple[list[Path], list[str]]:
    """Image paths (folders expanded, sorted, recursive) and error lines for missing inputs.

    Each file once, at its first appearance (a folder inside another folder given, a file named
    twice), so no image is predicted or pooled twice."""
    paths, errors, seen = [], [], set()
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{path}: no image files ({' '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        elif path.is_file():
            found = [path]  # named explicitly: tried whatever its extension
        else:
            found = []
            errors.append(f"{path}: no such file or folder")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                paths.append(f)
    return paths, errors


class ImageFiles(Dataset):
    """Image files as a source: ``(uint8 tensor, labels, row)`` with unknown labels; an unreadable file
    gives zeros and leaf label ``BAD_IMAGE``, and :meth:`reason` says why."""

    def __init__(self, paths: list[Path], transform, shape: tuple[int, int, int]):
        self.paths, self.transform, self.shape = paths, transform, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        labels = torch.full((len(KEYS),), -1, dtype=torch.long)
        try:
            return self.transform(read_image(self.paths[i])), labels, i
        except IMAGE_ERRORS:
            labels[0] = BAD_IMAGE  # KEYS[0] is the leaf
            return torch.zeros(self.shape, dtype=torch.uint8), labels, i

    def reason(self, i: int) -> str:
        """Why file ``i`` cannot be read (read again here, in the main process)."""
        try:
            read_image(self.paths[i])
        except Image.UnidentifiedImageError:
            return "not an image (unrecognised file format)"
        except IMAGE_ERRORS as e:
            return f"not an image ({type(e).__name__}: {str(e).splitlines()[0]})"
        return "not an image"


def files_source(loaded: LoadedModel, paths: list[Path], finds: list[str] | None = None) -> Source:
    """Image files as a source; ``finds`` (one name per file) pools them into observations."""
    cfg = loaded.data_config
    dataset = ImageFiles(paths, create_transforms(cfg, train=False), tuple(cfg["input_size"]))
    metadata = pd.DataFrame({"filename": [str(p) for p in paths], "category_id": np.nan,
                             "observationID": finds if finds is not None else np.nan})
    labels = torch.full((len(paths), len(KEYS)), -1, dtype=torch.long)  # nothing known about a photo
    return Source(dataset, labels, metadata, None if finds is None else np.asarray(finds, dtype=object))


# ---------------------------------------------------------------------- the pass
@dataclass(frozen=True)
class Settings:
    """How a pass reads the model: the decoder (a mode, or a decision rule's :class:`Decoder`), autocast,
    TTA and temperatures, how an observation's images are combined, and the loader."""
    decode: str | Decoder
    amp: str
    readout: Readout
    combine: str = "mean-prob"
    batch_size: int = 32
    workers: int = 0
    progress: bool = True  # the "predict" bar on stderr


@dataclass
class Predictions:
    """The predictions table per image (readable ones) and per observation (None without observations);
    ``pooler`` holds the pooled log-probabilities behind the observation rows."""
    images: pd.DataFrame
    observations: pd.DataFrame | None
    pooler: ObservationPooler | None


Batches = Iterator[tuple]  # (log_probs {key: (B, C)}, labels (B, 7), rows (B,), energy (B,)), on the device


def readout(cfg: ReadoutConfig, info: dict) -> Readout:
    """``--tta`` and the checkpoint's temperatures (none with ``--no-temperatures``)."""
    return Readout(cfg.tta, cfg.temperatures(info))


def device_loader(loaded: LoadedModel, dataset: Dataset, batch_size: int, workers: int) -> DeviceLoader:
    """The loader of ``dataset``, normalised on the device."""
    return DeviceLoader(make_loader(dataset, batch_size, workers, loaded.device, persistent=False), loaded.device,
                        loaded.data_config)


def predict(loaded: LoadedModel, source: Source, how: Settings, transform: Callable[[Batches], Batches] | None = None,
            on_batch: Callable[[tuple], None] | None = None) -> Predictions:
    """Predict ``source``: the predictions table (see :mod:`amanita.predictions`) per image and, when the
    source has observations, per observation. ``transform`` rewrites the batches of log-probabilities
    (metadata priors; validate.py's kept variants); ``on_batch`` sees each batch as it comes (test.py
    streams its answers)."""
    loader = device_loader(loaded, source.dataset, how.batch_size, how.workers)
    batches = iter_log_probs(loaded.model, loader, loaded.taxonomy, loaded.device, how.amp, how.readout,
                             progress=how.progress)
    if transform is not None:
        batches = transform(batches)
    if on_batch is not None:
        batches = _watched(batches, on_batch)
    pooler = None if source.observations is None else ObservationPooler(source.observations, how.combine)
    images = predict_batches(batches, loaded.taxonomy, how.decode, pooler)
    observations = None
    if pooler is not None:
        observations = with_metadata(predict_observations(pooler, source.labels, loaded.taxonomy, how.decode),
                                     source.metadata)
    return Predictions(with_metadata(images, source.metadata), observations, pooler)


def _watched(batches: Batches, on_batch) -> Batches:
    for batch in batches:
        on_batch(batch)
        yield batch
