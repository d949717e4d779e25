"""Fault injection for the fault matrix (tests/test_fault_matrix.py): a process kills itself at a named point.

``AMANITA_FAULT="point:n:signal[:rank]"`` makes the process of that rank (default 0) send itself
``signal`` (``SIGKILL`` or ``SIGTERM``) the n-th time it reaches ``point``, so a kill lands at the
same instant on every run instead of after a sleep. The points:

- ``update``: right after optimizer update n (``n`` is the run's update count), once the
  ``last.pth`` that update may have scheduled is on disk: mid-epoch, or on an epoch's final update;
- ``validation``: as validation of epoch n starts (the epoch's training and its saves done);
- ``write``: during the n-th background checkpoint write of this process, the temporary file
  written and not yet renamed;
- ``linked``: in a write with extra names (``best_model.pth``), the n-th time one name is in place
  and the next not yet linked;
- ``best``: right after ``best_model.pth`` and ``last.pth`` are in place, the n-th time in this process.

``AMANITA_DUMP_RANK_STATE=folder``: at the end of a run every rank saves its model's parameters
and buffers as ``folder/rank<r>.pth``, so a test can check that the ranks agree.
Unset (always, outside tests), every hook returns at once.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable

FAULT_ENV = "AMANITA_FAULT"
DUMP_ENV = "AMANITA_DUMP_RANK_STATE"
POINTS = ("update", "validation", "write", "linked", "best")
_reached: dict[str, int] = {}


def parse_fault(text: str) -> tuple[str, int, signal.Signals, int]:
    """``(point, n, signal, rank)`` from ``point:n:signal[:rank]``; ValueError names what is wrong."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[0] not in POINTS or parts[2] not in ("SIGKILL", "SIGTERM"):
        raise ValueError(f"{FAULT_ENV}={text!r}: expected point:n:SIGKILL|SIGTERM[:rank], point one of {POINTS}")
    return parts[0], int(parts[1]), signal.Signals[parts[2]], int(parts[3]) if len(parts) == 4 else 0


def fault_point(point: str, n: int | None = None, settle: Callable[[], None] | None = None) -> None:
    """Kill this process here when ``AMANITA_FAULT`` names this point and count (``n``: given, or the
    number of times this process reached ``point``); ``settle`` runs first (e.g. wait for a write)."""
    text = os.environ.get(FAULT_ENV)
    if not text:
        return
    name, at, sig, rank = parse_fault(text)
    if name != point or rank != int(os.environ.get("RANK", 0)):
        return
    if n is None:
        n = _reached[point] = _reached.get(point, 0) + 1
    if n != at:
        return
    if settle is not None:
        settle()
    print(f"fault injected: {sig.name} at {point} {n}", flush=True)
    os.kill(os.getpid(), sig)
    time.sleep(30)  # the signal is delivered before this returns; never go on past a fault


def dump_rank_state(model, rank: int) -> None:
    """``AMANITA_DUMP_RANK_STATE``: save this rank's parameters and buffers for a cross-rank comparison."""
    folder = os.environ.get(DUMP_ENV)
    if folder:
        import torch
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(folder) / f"rank{rank}.pth")
