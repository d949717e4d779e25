"""Experiment tracking: Weights & Biases and TensorBoard, both optional, on rank 0 only.

One :class:`Tracker` fans a record out to every backend asked for. Records are flat
``{name: number}`` dicts named as in ``metrics.jsonl`` (``train/<head>/loss``, ``val/<rank>/f1``,
``lr``, ``images_per_s``) and logged against the optimizer update (``update``), which a resumed
run continues: the checkpoint keeps :meth:`Tracker.state` (the W&B run id and the TensorBoard
folder), and the resumed process reopens the same W&B run and drops TensorBoard events past
the resumed update (``purge_step``) so a killed run's tail is not drawn twice.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from amanita.io import import_optional

from amanita.config import TENSORBOARD_HINT, WANDB_HINT, TrackingConfig


def scalars(record: dict) -> dict[str, float]:
    """The finite numbers of ``record`` (bools, strings and NaN left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def epoch_scalars(record: dict) -> dict:
    """An epoch's ``metrics.jsonl`` record for the tracker: ``val/*`` as they are, the epoch's train
    means, lr and speed under ``epoch/`` (the per-update series own ``train/*``, ``lr``, ``images_per_s``)."""
    return {k if k.startswith("val/") or k in ("epoch", "step") else f"epoch/{k}": v for k, v in record.items()}


class WandbBackend:
    """One W&B run; ``run_id`` reopens an earlier run (``resume="allow"``)."""

    def __init__(self, project: str, name: str | None, config: dict, run_id: str | None = None,
                 directory: str | None = None, group: str | None = None):
        wandb = import_optional("wandb", "--log-wandb", WANDB_HINT)
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow",
                              config=config, dir=directory, group=group, reinit="finish_previous")
        self.run.define_metric("update")
        self.run.define_metric("*", step_metric="update")  # our own x axis: a resumed run continues it

    def state(self) -> dict:
        return {"wandb_run_id": self.run.id, "wandb_project": self.run.project}

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "update": step})

    def summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def images(self, paths: dict[str, str], step: int) -> None:
        self.run.log({k: self.wandb.Image(str(p)) for k, p in paths.items()} | {"update": step})

    def close(self) -> None:
        self.run.finish()


class TensorBoardBackend:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``; ``purge_step`` on resume."""

    def __init__(self, log_dir: str, config: dict, purge_step: int | None = None):
        import_optional("tensorboard", "--log-tensorboard", TENSORBOARD_HINT)
        from torch.utils.tensorboard import SummaryWriter
        self.log_dir = str(log_dir)
        self.writer = SummaryWriter(self.log_dir, purge_step=purge_step)
        if config:
            text = "\n".join(f"    {line}" for line in json.dumps(config, indent=1, sort_keys=True).splitlines())
            self.writer.add_text("config", text, global_step=purge_step or 0)

    def state(self) -> dict:
        return {"tensorboard_dir": self.log_dir}

    def log(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def summary(self, values: dict[str, float]) -> None:
        """TensorBoard has no run summary: the values are logged as scalars by :meth:`log`."""

    def images(self, paths: dict[str, str], step: int) -> None:
        import numpy as np
        from PIL import Image
        for k, p in paths.items():
            with Image.open(p) as im:
                self.writer.add_image(k, np.asarray(im.convert("RGB")), global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Tracker:
    """Every backend asked for, or none (then each call does nothing)."""

    def __init__(self, backends: list | None = None):
        self.backends = list(backends or [])

    def __bool__(self) -> bool:
        return bool(self.backends)

    def state(self) -> dict:
        """What a checkpoint keeps so a resumed run logs into the same runs."""
        out = {}
        for b in self.backends:
            out |= b.state()
        return out

    def log(self, record: dict, step: int) -> None:
        values = scalars(record)
        for b in self.backends:
            b.log(values, step)

    def summary(self, record: dict) -> None:
        values = scalars(record)
        for b in self.backends:
            b.summary(values)

    def images(self, paths: dict[str, str | os.PathLike], step: int) -> None:
        for b in self.backends:
            b.images({k: str(p) for k, p in paths.items()}, step)

    def close(self) -> None:
        for b in self.backends:
            b.close()


def create_tracker(cfg: TrackingConfig, is_main: bool, config: dict, previous: dict | None = None,
                   step: int = 0) -> Tracker:
    """The tracker ``--log-wandb``/``--log-tensorboard`` ask for (rank 0; an empty one elsewhere).

    ``previous`` is the :meth:`Tracker.state` stored in the checkpoint being resumed: its W&B
    run is reopened (unless ``--wandb-run-id`` names another) and its TensorBoard folder is
    reused when ``--log-tensorboard`` is not given a new one.
    """
    previous = previous or {}
    backends = []
    if not is_main:
        return Tracker()
    if cfg.log_wandb:
        run_id = cfg.wandb_run_id or previous.get("wandb_run_id")
        project = cfg.wandb_project or previous.get("wandb_project") or "amanita"
        backends.append(WandbBackend(project, cfg.wandb_name, config, run_id, cfg.wandb_dir, cfg.wandb_group))
    tb = cfg.log_tensorboard
    if tb:
        tb = previous.get("tensorboard_dir") if tb == "auto" else tb
        # events past the resumed checkpoint's update came from the killed run: drop them
        backends.append(TensorBoardBackend(tb or "runs", config, purge_step=step + 1 if step else None))
    return Tracker(backends)



def headline_numbers(metrics: dict, prefix: str = "validate/") -> dict[str, float]:
    """The report's headline numbers (metrics.json's ``model``) as flat tracker scalars."""
    model = metrics.get("model", metrics)
    out = {}
    for key, m in (model.get("keys") or {}).items():
        for name in ("top1", "top5", "macro_f1_present", "macro_f1_all", "ece"):
            if isinstance((m or {}).get(name), (int, float)):
                out[f"{prefix}{key}/{name}"] = m[name]
    for section in ("hierarchy", "poison"):
        for name, v in (model.get(section) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}{section}/{name}"] = v
    return out


def log_validation(cfg: TrackingConfig, flags: dict, metrics_json: str | os.PathLike, figures_dir: str | os.PathLike,
                   step: int = 0, previous: dict | None = None) -> Tracker:
    """validate.py: attach the report's headline numbers and figures to the checkpoint's run.

    ``step`` and ``previous`` (the W&B run id and TensorBoard folder) are what the validated checkpoint
    holds (its ``step`` and ``tracking``, read once with the model), so the numbers land beside the
    training curves, at the checkpoint's update; the flags override. ``flags`` (validate.py's config
    as a dict) is stored with the run.
    """
    step = int(step or 0)
    config = {"validate_args": {k: v for k, v in flags.items() if isinstance(v, (str, int, float, bool))}}
    tracker = create_tracker(cfg, True, config, previous=previous, step=0)
    metrics = json.loads(Path(metrics_json).read_text(encoding="utf-8"))
    numbers = headline_numbers(metrics)
    tracker.log(numbers, step)
    tracker.summary(numbers)
    tracker.images({f"validate/{p.stem}": p for p in sorted(Path(figures_dir).glob("*.png"))}, step)
    tracker.close()
    return tracker
