"""Writing a training run's checkpoints: when (:class:`SaveSchedule`), in the background
(:class:`CheckpointWriter`: a CPU snapshot, then a thread writes it atomically and links
``best_model.pth`` to it), and cleaning up what a killed write left (:func:`remove_stale_temporaries`).

:class:`Checkpointer` is the one place a training run is saved (:meth:`Checkpointer.save`) and
restored (:meth:`Checkpointer.restore`); what a checkpoint holds is :mod:`amanita.checkpoint`'s
(the format: :func:`~amanita.checkpoint.checkpoint_state` assembles, :func:`~amanita.checkpoint.restore_state`
reads back, from plain objects). :func:`run_parts` is the one place that takes them out of a run.
"""
from __future__ import annotations

import copy
import os
import re
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from amanita.checkpoint import (RunFacts, Trainables, checkpoint_state, load_on_every_rank, load_resumable,
                                plain_flags, restore_state)
from amanita.distributed import broadcast_from_main
from amanita.faults import fault_point
from amanita.io import UserError, atomic_write_stream

WRITE_DELAY_ENV = "AMANITA_TEST_CHECKPOINT_WRITE_DELAY_S"  # tests: hold each write before its rename
_TEMPORARY = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")  # what io's atomic writes leave when killed


class Checkpointer:
    """Where and when a run is saved: ``last.pth`` / ``best_model.pth`` in ``save_dir``, on rank 0.

    :meth:`save` is the one place a checkpoint is written: a CPU snapshot that a background
    thread writes (:class:`CheckpointWriter`; ``background=False`` writes in the loop).
    :meth:`after_update` is called by the loop after every optimizer update and saves
    ``last.pth`` when the :class:`SaveSchedule` (every N updates and/or M minutes) says so.
    :meth:`close` waits for the last write; call it before the process ends.
    """

    def __init__(self, save_dir: str | os.PathLike, resume: str | None = "auto", every_steps: int = 0,
                 every_minutes: float = 0.0, background: bool = True):
        self.dir, self.resume = Path(save_dir), resume
        self.schedule = SaveSchedule(every_steps, every_minutes)
        self.writer = CheckpointWriter(background)
        self.reserved = False

    def start(self, run) -> None:
        """Before the loop: start the clock. Rank 0's snapshot buffers are reserved after the first update,
        once the optimizer's state (AdamW's moments: twice the weights) exists, not by the first save."""
        self.schedule.saved()

    def save(self, run, name: str = "last.pth", also: tuple[str, ...] = ()) -> None:
        """Snapshot ``run`` as ``save_dir/name`` (and link ``also`` to it); rank 0 only, written in the background."""
        if run.dist.is_main:
            self.writer.save(checkpoint_state(*run_parts(run)), self.dir / name, [self.dir / a for a in also])
        self.schedule.saved()

    def after_update(self, run) -> None:
        """``last.pth`` when the schedule says it is due (neither set: only at the ends of epochs)."""
        if self.schedule.due(run.state.step):
            self.save(run, "last.pth")
        elif not self.reserved and run.dist.is_main:
            self.writer.reserve(checkpoint_state(*run_parts(run)))  # a one-off, at the first update
        self.reserved = True

    def wait(self) -> None:
        """Block until the last write is on disk (before reading a checkpoint back); raise if it failed."""
        self.writer.wait()

    def close(self, raise_error: bool = True) -> None:
        """Wait for the last write; with ``raise_error=False`` (the run is failing anyway) a write error was printed."""
        try:
            self.writer.close()
        except CheckpointWriteError:
            if raise_error:
                raise

    def resume_path(self) -> Path | None:
        """The checkpoint to resume: ``--resume`` as given, ``auto`` = ``last.pth`` when it exists.

        Rank 0 decides whether it exists and every rank follows (see :func:`load_on_every_rank`)."""
        if self.resume in (None, "", "none"):
            return None
        if self.resume == "auto":
            p = self.dir / "last.pth"
            return p if broadcast_from_main(p.is_file()) else None
        return Path(self.resume)

    def restore(self, run, path: str | os.PathLike) -> None:
        """Load ``path`` (on every rank) and put every state back into ``run``."""
        ckpt = load_on_every_rank(load_resumable, path, run.dist.rank)
        restore_state(ckpt, path, *run_parts(run))
        run.tracking = dict(ckpt.get("tracking") or {})  # the W&B run and TensorBoard folder to continue


def run_parts(run) -> tuple[Trainables, object, RunFacts]:
    """What the checkpoint format reads and restores, taken out of a :class:`~amanita.run.Run`: its objects,
    its :class:`~amanita.run.TrainState` and plain facts. The one place that reads the run's config."""
    cfg = run.cfg
    facts = RunFacts(spec=run.spec, taxonomy=run.taxonomy, flags=plain_flags(cfg.to_dict()), seed=cfg.seed,
                     layout=(cfg.batch_size, run.dist.world_size, run.step_config.accum_steps), rank=run.dist.rank,
                     updates_per_epoch=run.updates_per_epoch, lr_scaling=cfg.lr_scaling,
                     tracking=run.tracker.state() if run.tracker else dict(run.tracking))
    return Trainables(run.model, run.optimizer, run.scheduler, run.scaler, run.ema), run.state, facts


class CheckpointWriteError(UserError):
    """A checkpoint could not be written: the run stops, the previous file is still whole."""


class SaveSchedule:
    """When to save ``last.pth``: every ``every_steps`` updates and/or every ``every_minutes`` minutes.

    Checked at update boundaries; either condition makes a save due, and a save resets the clock.
    """

    def __init__(self, every_steps: int = 0, every_minutes: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.every_steps, self.every_s, self.clock = every_steps, 60.0 * every_minutes, clock
        self.last = clock()

    def due(self, step: int) -> bool:
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = bool(self.every_s) and self.clock() - self.last >= self.every_s
        return by_steps or by_time

    def saved(self) -> None:
        self.last = self.clock()


class CheckpointWriter:
    """Writes checkpoints from a CPU snapshot on a background thread, so training waits only for the copy.

    ``save`` waits for the previous write, copies every tensor of the state into CPU buffers
    (reused from save to save; pinned and asynchronous for CUDA tensors), and returns; a thread
    then writes the file atomically and links the extra names to it. ``close`` waits for the last
    write. A failed write is printed at once and raised as :class:`CheckpointWriteError` by the
    next ``save``/``wait``/``close``. ``background=False`` writes in the caller (the old behaviour).
    """

    def __init__(self, background: bool = True):
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._from_cuda = False

    def save(self, state: dict, path: str | os.PathLike, also: Iterable[str | os.PathLike] = ()) -> float:
        """Snapshot ``state`` and write it to ``path`` (and ``also``); returns the seconds the caller was held."""
        t0 = time.perf_counter()
        self.wait()
        snap, ready = self._snapshot(state)
        job = (snap, ready, Path(path), [Path(a) for a in also])
        if self.background:
            self._thread = threading.Thread(target=self._write, args=job, name="checkpoint-writer")
            self._thread.start()
        else:
            self._write(*job)
            self.wait()
        return time.perf_counter() - t0

    def reserve(self, state: dict) -> float:
        """Allocate (and touch) the snapshot buffers for ``state`` now, e.g. at start-up; returns seconds.

        The first snapshot otherwise pays for faulting in a fresh gigabyte inside the loop.
        """
        t0 = time.perf_counter()
        self.wait()
        snap, ready = self._snapshot(state)
        if ready is not None:
            ready.synchronize()
        return time.perf_counter() - t0

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise if a write failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointWriteError(error)

    close = wait

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _snapshot(self, obj, key: str = ""):
        """``(copy, ready)``: ``obj`` with every tensor copied to CPU; ``ready`` is a CUDA event or None."""
        self._from_cuda = False
        snap = self._copy(obj, key)
        ready = None
        if self._from_cuda:
            ready = torch.cuda.Event()
            ready.record()  # the copies are queued on the current stream, before any later update
        return snap, ready

    def _copy(self, obj, key: str):
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj.detach(), key)
        if isinstance(obj, dict):
            return {k: self._copy(v, f"{key}/{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            items = [self._copy(v, f"{key}/{i}") for i, v in enumerate(obj)]
            return items if isinstance(obj, list) else tuple(items)
        if obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            return obj
        return copy.deepcopy(obj)

    def _copy_tensor(self, t: torch.Tensor, key: str) -> torch.Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            self._buffers[key] = buf
        self._from_cuda |= t.is_cuda
        return buf.copy_(t, non_blocking=t.is_cuda)

    def _write(self, snap: dict, ready, path: Path, also: list[Path]) -> None:
        try:
            if ready is not None:
                ready.synchronize()
            # the extra names (best_model.pth) first, path (last.pth) last: a kill in between leaves an old
            # last.pth, whose resume redoes the epoch and links best again; the other way round, the
            # resumed run would count the epoch as saved and never write its best_model.pth
            names = [*also, path]
            atomic_write_stream(names[0], lambda f: _save_then_pause(snap, f))
            for other in names[1:]:
                fault_point("linked")
                link_or_copy(names[0], other)
            if also:
                fault_point("best")
        except BaseException as e:  # noqa: BLE001 - reported to the training loop, never lost
            reason = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"  # io names the cause
            self._error = (f"writing checkpoint {path} failed: {reason}; "
                           f"the previous {path.name} is intact, training stopped")
            print(f"error: {self._error}", file=sys.stderr, flush=True)


def _save_then_pause(obj, f) -> None:
    torch.save(obj, f)
    fault_point("write")  # the fault matrix: a kill while the temporary file is written, before its rename
    delay = float(os.environ.get(WRITE_DELAY_ENV, 0) or 0)
    if delay:  # tests: a write in flight that a SIGKILL can land in
        f.flush()
        time.sleep(delay)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` the file ``src`` atomically: a hard link (no second write), or a copy where links fail.

    Like timm's ``CheckpointSaver``; ``src`` being replaced later by a rename leaves ``dst`` as it was.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.link(src, tmp)
    except OSError:  # a file system without hard links
        with open(src, "rb") as f:
            atomic_write_stream(dst, lambda out: shutil.copyfileobj(f, out, 16 << 20))
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files a killed atomic write left in ``folder``; returns what was removed.

    With ``names``, only the temporaries of those files (``.<name>.<8 characters>.tmp``) are touched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keep = None if names is None else set(names)
    stale = [p for p in folder.iterdir() if p.is_file() and (m := _TEMPORARY.match(p.name))
             and (keep is None or m.group(1) in keep)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
