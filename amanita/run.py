"""The run object: everything one training run holds, built once and read by the loop and the checkpointer.

:func:`amanita.training.build_run` builds a :class:`Run` from the script's resolved config;
:func:`amanita.engine.train_one_epoch` trains with it; :mod:`amanita.checkpoint_writer` saves it and
restores it. Unit tests build a small one by hand (a model, an optimizer and a criterion are
enough for the loop).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from amanita.checkpoint_writer import Checkpointer
from amanita.data import BadImageCounter
from amanita.distributed import DistInfo, ResumableDistributedSampler
from amanita.backbone import ModelSpec
from amanita.config import TrainConfig
from amanita.taxonomy import Taxonomy
from amanita.tracking import Tracker


@dataclass
class TrainState:
    """What the loop advances and the checkpoint records."""
    epoch: int = 0
    step: int = 0                      # optimizer updates since the start
    batch_in_epoch: int = 0            # batches done in the current epoch (a multiple of accum)
    history: list = field(default_factory=list)  # one record per finished epoch (metrics.jsonl)
    best_metric: float | None = None   # best --early-stopping-metric so far
    bad_epochs: int = 0                # epochs since it last improved
    # the epoch so far, kept across a kill and resume so its record covers the whole epoch
    epoch_sums: dict = field(default_factory=dict)  # loss name → sum over the epoch's batches (this process)
    epoch_batches: int = 0
    epoch_images: int = 0
    epoch_seconds: float = 0.0         # training time of the epoch so far


@dataclass
class StepConfig:
    """How one optimizer update is made."""
    accum_steps: int = 1
    clip_grad: float | None = None
    amp: torch.dtype | None = None     # autocast dtype (None: full precision)
    log_interval: int = 20             # batches between loss read-backs (progress bar, bad images)


@dataclass
class Run:
    """One training run. ``model`` is the plain module (saved, evaluated, averaged by the EMA);
    ``train_model`` the same module under ``torch.compile``/DDP when used (None: ``model``).
    ``cfg`` is the script's config (flags and resolved values); ``step_config`` how one update is made."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable[[dict, torch.Tensor], dict]
    dist: DistInfo = field(default_factory=DistInfo)
    step_config: StepConfig = field(default_factory=StepConfig)
    state: TrainState = field(default_factory=TrainState)
    train_model: nn.Module | None = None
    scheduler: object | None = None    # a timm scheduler (``step_update`` per optimizer update)
    scaler: torch.amp.GradScaler | None = None
    ema: nn.Module | None = None       # timm ModelEmaV3
    bad_images: BadImageCounter | None = None
    checkpointer: Checkpointer | None = None
    # what the run is about; set by build_run, not needed by unit tests of the loop
    cfg: TrainConfig | None = None     # the flags and the values resolved from them (training.resolve_config)
    taxonomy: Taxonomy | None = None
    spec: ModelSpec | None = None
    train_loader: Iterable | None = None  # built once (amanita.data.DeviceLoader); .dataset is the split
    sampler: ResumableDistributedSampler | None = None
    evals: dict[str, DataLoader] = field(default_factory=dict)
    tracker: Tracker | None = None      # W&B / TensorBoard on rank 0 (amanita.tracking)
    tracking: dict = field(default_factory=dict)  # the tracker state a resumed checkpoint held
    updates_per_epoch: int | None = None  # in this run's layout (batch × processes × accumulation): sizes the schedule

    @property
    def trained(self) -> nn.Module:
        """The module the loop calls: ``train_model`` when wrapped, else ``model``."""
        return self.model if self.train_model is None else self.train_model

    @property
    def eval_model(self) -> nn.Module:
        """The weights validation reads: the EMA's when kept."""
        return self.model if self.ema is None else self.ema.module
