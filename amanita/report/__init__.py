"""The validation report: metrics.json, per-class CSVs, figures and ``validation_report.html``.

:func:`build_report` is what ``validate.py`` calls once it has a predictions table (from the
model or from a file); the stages are public so the scale benchmark can time each one.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
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
                  provenance: dict | None = None, sections: dict | None = None) -> Path:
    """``metrics.json`` (model, baseline, provenance and any further ``sections``; plain JSON) and
    ``per_class_{key}.csv``."""
    out = Path(out_dir)
    doc = {"model": metrics.summary, "baseline": baseline.summary if baseline else None,
           "provenance": jsonable(provenance or {})} | jsonable(sections or {})
    atomic_write_text(out / "metrics.json", json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False))
    for key, table in metrics.per_class.items():
        atomic_to_csv(table, out / f"per_class_{key}.csv")
    return out / "metrics.json"


def write_html(out_dir: str | os.PathLike, metrics: Metrics, figures: list[FigureInfo], notes: list[str],
               baseline: Metrics | None = None, baseline_name: str | None = None,
               provenance: dict | None = None, extra: dict | None = None) -> Path:
    """Render and atomically write ``validation_report.html``; returns its path."""
    path = Path(out_dir) / REPORT_NAME
    atomic_write_text(path, render_report(metrics, figures, notes, baseline, baseline_name, provenance, extra))
    return path


@dataclass
class ReportInputs:
    """Everything a report uses besides the model's per-image predictions (all optional).

    ``image_paths`` (aligned with the rows of the predictions) feeds the specimen grids,
    ``training_log`` (a ``metrics.jsonl``) the training curves; ``observation_preds`` (and the
    baseline's) the per-observation column, ``combine`` says how they were pooled;
    ``open_set`` (``{"score": ..., "target_tpr": ...}``) asks for the unknown-species section.
    """
    baseline_preds: pd.DataFrame | None = None
    baseline_name: str | None = None
    focus: Sequence[str] = tuple(DEFAULT_FOCUS)
    provenance: dict | None = None
    image_paths: Sequence[str | None] | None = None
    training_log: str | os.PathLike | None = None
    observation_preds: pd.DataFrame | None = None
    baseline_observation_preds: pd.DataFrame | None = None
    combine: str | None = None
    open_set: dict | None = None


def build_report(preds: pd.DataFrame, tax: Taxonomy, out_dir: str | os.PathLike,
                 inputs: ReportInputs | None = None) -> Path:
    """Metrics, figures and the HTML page for ``preds`` (and a baseline) into ``out_dir``.

    Returns the path of ``validation_report.html``.
    """
    x = inputs or ReportInputs()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(preds, tax, x.focus)
    baseline = compute_metrics(x.baseline_preds, tax, x.focus) if x.baseline_preds is not None else None
    sections, extra = extra_sections(preds, tax, out, x, metrics, baseline)
    write_metrics(out, metrics, baseline, x.provenance, sections)
    figures, notes = make_figures(preds, tax, metrics, out, baseline, x.image_paths, x.training_log)
    return write_html(out, metrics, figures, notes, baseline, x.baseline_name, x.provenance, extra)


def extra_sections(preds: pd.DataFrame, tax: Taxonomy, out: Path, x: ReportInputs, metrics: Metrics,
                   baseline: Metrics | None) -> tuple[dict, dict]:
    """``(metrics.json sections, {id: (nav label, html)})`` for the observation and open-set parts."""
    from amanita.openset import open_set_metrics
    from amanita.report.levels import levels_section
    from amanita.report.openset import open_set_section, score_histograms_figure
    sections, extra = {}, {}
    if x.observation_preds is not None:
        obs = compute_metrics(x.observation_preds, tax, x.focus)
        sections["observation"] = obs.summary | {"combine": x.combine}
        base_pair = None
        if baseline is not None and x.baseline_observation_preds is not None:
            bobs = compute_metrics(x.baseline_observation_preds, tax, x.focus)
            sections["baseline_observation"] = bobs.summary
            base_pair = (baseline.summary, bobs.summary)
        extra["levels"] = ("Per observation", levels_section(metrics.summary, obs.summary, x.combine, base_pair))
    if x.open_set is not None:
        m = open_set_metrics(preds, **x.open_set)
        if x.observation_preds is not None:
            m["observation"] = open_set_metrics(x.observation_preds, **x.open_set)
        sections["open_set"] = m
        extra["openset"] = ("Unknown species", open_set_section(jsonable(m), score_histograms_figure(preds, out)))
    return sections, extra


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
