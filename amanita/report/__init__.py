"""The validation report's files: metrics.json, per-class CSVs, figures and ``validation_report.html``.

:func:`amanita.evaluate.evaluate` calls the stages in order: metrics, :func:`extra_sections`
(per observation, open set), :func:`write_metrics`, :func:`make_figures`, :func:`write_html`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from amanita.io import atomic_to_csv, atomic_write_text, git_sha
from amanita.metrics import DEFAULT_FOCUS, Metrics, compute_metrics, jsonable
from amanita.report.figures import FigureInfo, make_figures
from amanita.report.html import render_report
from amanita.taxonomy import Taxonomy

REPORT_NAME = "validation_report.html"
__all__ = ["REPORT_NAME", "ReportInputs", "write_metrics", "extra_sections", "write_html",
           "base_provenance", "FigureInfo", "make_figures", "render_report"]


def write_metrics(out_dir: str | os.PathLike, metrics: Metrics, baseline: Metrics | None = None,
                  provenance: dict | None = None, sections: dict | None = None) -> dict:
    """``metrics.json`` (model, baseline, provenance and any further ``sections``; plain JSON) and
    ``per_class_{key}.csv``. Returns the document written to metrics.json."""
    out = Path(out_dir)
    doc = {"model": metrics.summary, "baseline": baseline.summary if baseline else None,
           "provenance": jsonable(provenance or {})} | jsonable(sections or {})
    atomic_write_text(out / "metrics.json", json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False))
    for key, table in metrics.per_class.items():
        atomic_to_csv(table, out / f"per_class_{key}.csv")
    return doc


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
    priors: dict | None = None  # metadata priors and decisions (amanita.prior_eval.evaluate_variants)


def extra_sections(preds: pd.DataFrame, tax: Taxonomy, out: Path, x: ReportInputs, metrics: Metrics,
                   baseline: Metrics | None) -> tuple[dict, dict]:
    """``(metrics.json sections, {id: (nav label, html)})`` for the observation and open-set parts."""
    from amanita.openset import open_set_metrics
    from amanita.report.levels import levels_section
    from amanita.report.unknown_species import open_set_section, score_histograms_figure
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
    if x.priors is not None:
        from amanita.report.priors import priors_section
        sections["metadata_priors"] = x.priors
        extra["priors"] = ("Priors and poison", priors_section(jsonable(x.priors), out))
    return sections, extra


# ---------------------------------------------------------------------- provenance
def base_provenance(tax: Taxonomy, flags: dict | None = None) -> dict:
    """Date, git SHA, taxonomy digest and the validation arguments, for any report."""
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "git_sha": git_sha(), "taxonomy_sha256": tax.sha256(), "taxonomy": tax.summary(),
            "validate_args": jsonable(flags or {})}
