"""The validation report: metrics.json, per-class CSVs, figures and ``validation_report.html``.

:func:`build_report` is what ``validate.py`` calls once it has a predictions table (from the
model or from a file); the stages are public so the scale benchmark can time each one.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Sequence

import pandas as pd

from amanita.io import atomic_to_csv, atomic_write_text
from amanita.metrics import DEFAULT_FOCUS, Metrics, compute_metrics, jsonable
from amanita.report.figures import FigureInfo, make_figures
from amanita.report.html import render_report
from amanita.taxonomy import Taxonomy

REPORT_NAME = "validation_report.html"
__all__ = ["REPORT_NAME", "build_report", "write_metrics", "write_html", "file_sha256", "git_sha",
           "base_provenance", "FigureInfo", "make_figures", "render_report"]


def write_metrics(out_dir: str | os.PathLike, metrics: Metrics, baseline: Metrics | None = None,
                  provenance: dict | None = None) -> Path:
    """``metrics.json`` (model, baseline, provenance; plain JSON) and ``per_class_{key}.csv``."""
    out = Path(out_dir)
    doc = {"model": metrics.summary, "baseline": baseline.summary if baseline else None,
           "provenance": jsonable(provenance or {})}
    atomic_write_text(out / "metrics.json", json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False))
    for key, table in metrics.per_class.items():
        atomic_to_csv(table, out / f"per_class_{key}.csv")
    return out / "metrics.json"


def write_html(out_dir: str | os.PathLike, metrics: Metrics, figures: list[FigureInfo], notes: list[str],
               baseline: Metrics | None = None, baseline_name: str | None = None,
               provenance: dict | None = None) -> Path:
    """Render and atomically write ``validation_report.html``; returns its path."""
    path = Path(out_dir) / REPORT_NAME
    atomic_write_text(path, render_report(metrics, figures, notes, baseline, baseline_name, provenance))
    return path


def build_report(preds: pd.DataFrame, tax: Taxonomy, out_dir: str | os.PathLike, *,
                 baseline_preds: pd.DataFrame | None = None, baseline_name: str | None = None,
                 focus: Sequence[str] = DEFAULT_FOCUS, provenance: dict | None = None,
                 image_paths: Sequence[str | None] | None = None,
                 training_log: str | os.PathLike | None = None) -> Path:
    """Metrics, figures and the HTML page for ``preds`` (and a baseline) into ``out_dir``.

    ``image_paths`` (aligned with the rows of ``preds``) feeds the specimen grids,
    ``training_log`` (a ``metrics.jsonl``) the training curves; both optional.
    Returns the path of ``validation_report.html``.
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(preds, tax, focus)
    baseline = compute_metrics(baseline_preds, tax, focus) if baseline_preds is not None else None
    write_metrics(out_dir, metrics, baseline, provenance)
    figures, notes = make_figures(preds, tax, metrics, out_dir, baseline, image_paths, training_log)
    return write_html(out_dir, metrics, figures, notes, baseline, baseline_name, provenance)


# ---------------------------------------------------------------------- provenance
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_sha(repo: str | os.PathLike | None = None) -> str | None:
    """The checked-out commit (with ``-dirty`` for local changes), or None outside git."""
    cwd = repo or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def base_provenance(tax: Taxonomy, args: dict | None = None) -> dict:
    """Date, git SHA, taxonomy digest and the validation arguments, for any report."""
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "git_sha": git_sha(), "taxonomy_sha256": tax.sha256(), "taxonomy": tax.summary(),
            "validate_args": jsonable(args or {})}
