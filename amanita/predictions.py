"""The per-sample predictions file: one row per evaluated image, true/predicted class per rank.

``validate.py`` runs the model once and saves this table; ``validate.py --from-predictions``
rebuilds the whole report from it without the model. Columns, for each key in :data:`KEYS`
(``leaf`` = ``category_id`` index, then the six ranks):

``{key}_true`` (-1 = unknown label), ``{key}_pred``, ``{key}_conf`` (probability of the
predicted class), ``{key}_top1`` … ``{key}_top5`` (classes with the five highest
probabilities, -1 padding when a head has fewer classes) and ``{key}_ptrue`` (probability of
the true class, NaN when unknown; optional) and ``{key}_lconf`` (the lineage confidence: the
probability that the prediction is right from the phylum down to this key, never rising towards
the leaf, see :mod:`amanita.calibration`; optional). Plus ``index`` (row in the validation CSV),
``filename`` and ``observationID``, the unknown-species scores ``unknown_{msp,entropy,energy}`` and the
flag ``unknown_species`` (``category_id`` -1; see :mod:`amanita.openset`).

The schema is defined here, once: :data:`COLUMNS` (what the pipeline computes, in this order:
:data:`INT_COLUMNS`, :data:`FLOAT_COLUMNS`, :data:`SCORE_COLUMNS`), :func:`with_metadata` (the CSV's
``filename``, ``observationID`` and the unknown flag) and the file's required and top-k columns. The
engine computes a batch's columns in this order (``amanita.engine.prediction_columns``: computing them
needs :mod:`amanita.calibration`'s lineage confidence, and calibration imports metrics, which imports
this module), and :func:`amanita.inference.predict` fills the table.

Synthetic tables of any size (tests, the scale benchmark) come from :mod:`amanita.demo.synthetic_predictions`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from amanita.config import SCORES
from amanita.io import UserError, atomic_write_text
from amanita.openset import FLAG_COLUMN, score_column
from amanita.taxonomy import KEYS, Taxonomy

TOPK = 5


# ---------------------------------------------------------------------- the table's columns
INT_COLUMNS = [f"{k}_{c}" for k in KEYS for c in ("true", "pred", "top1", "top2", "top3", "top4", "top5")]
SCORE_COLUMNS = [score_column(s) for s in SCORES]
FLOAT_COLUMNS = [f"{k}_{c}" for k in KEYS for c in ("conf", "lconf", "ptrue")] + SCORE_COLUMNS
COLUMNS = ["index"] + [f"{k}_{c}" for k in KEYS for c in ("true", "pred", "conf", "lconf", "ptrue", "top1", "top2",
                                                           "top3", "top4", "top5")] + SCORE_COLUMNS


def with_metadata(preds: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """``preds`` with the ``filename``, ``observationID`` and unknown-species flag (``category_id`` -1)
    of each row's ``index`` in ``metadata`` (the CSV)."""
    meta = metadata.iloc[preds["index"].to_numpy()]
    preds.insert(1, "filename", meta["filename"].astype(str).to_numpy())
    preds.insert(2, "observationID", meta["observationID"].to_numpy() if "observationID" in meta else np.nan)
    preds[FLAG_COLUMN] = (pd.to_numeric(meta["category_id"], errors="coerce") == -1).to_numpy()
    return preds


def topk_columns(key: str, k: int = TOPK) -> list[str]:
    """``[f"{key}_top1", …, f"{key}_top{k}"]``."""
    return [f"{key}_top{j}" for j in range(1, k + 1)]


def int_columns(key: str) -> list[str]:
    return [f"{key}_true", f"{key}_pred", *topk_columns(key)]


def required_columns() -> list[str]:
    """Columns every predictions file must have (``{key}_ptrue`` is optional)."""
    cols = ["index", "filename"]
    for key in KEYS:
        cols += int_columns(key) + [f"{key}_conf"]
    return cols


# ---------------------------------------------------------------------- the file
def write_predictions(df: pd.DataFrame, path: str | os.PathLike, taxonomy: Taxonomy | None = None) -> None:
    """Write the predictions table as CSV, atomically (floats to 6 significant digits).

    With ``taxonomy``, its digest goes beside the file (``<name>.taxonomy_sha256``), so
    :func:`read_predictions` can refuse the file with another taxonomy's mappings.
    """
    if taxonomy is not None:
        atomic_write_text(sha_path(path), taxonomy.sha256() + "\n")
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))


def sha_path(path: str | os.PathLike) -> Path:
    """Where the taxonomy digest of a predictions file is kept: beside it."""
    return Path(f"{path}.taxonomy_sha256")


def predictions_taxonomy(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """``(sha256, where it was read)`` of the taxonomy a predictions file was made with, if known.

    Read from the digest file beside it, else from the provenance of the metrics.json beside it.
    """
    side = sha_path(path)
    if side.is_file():
        return side.read_text(encoding="utf-8").strip() or None, str(side)
    metrics = Path(path).parent / "metrics.json"
    try:
        prov = json.loads(metrics.read_text(encoding="utf-8")).get("provenance") or {}
    except (OSError, ValueError, AttributeError):
        return None, None
    sha = prov.get("taxonomy_sha256") if isinstance(prov, dict) else None
    return (sha, str(metrics)) if isinstance(sha, str) else (None, None)


def check_taxonomy(path: str | os.PathLike, taxonomy: Taxonomy) -> None:
    """A predictions file made with another taxonomy is refused: every class would be renamed."""
    sha, where = predictions_taxonomy(path)
    if sha is not None and sha != taxonomy.sha256():
        raise UserError(f"{path} was made with another taxonomy (sha256 {sha[:12]}… in {where}, the mappings "
                        f"given {taxonomy.sha256()[:12]}…); give the --mappings the predictions were made with")


def read_predictions(path: str | os.PathLike, taxonomy: Taxonomy | None = None) -> pd.DataFrame:
    """Read a predictions CSV written by :func:`write_predictions`.

    Missing columns, non-integer class columns and (with ``taxonomy``) class indices outside
    the taxonomy's heads are :class:`~amanita.io.UserError`s naming the file.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: predictions file not found")
    if taxonomy is not None:
        check_taxonomy(path, taxonomy)
    try:
        df = pd.read_csv(path, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read as CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in required_columns() if c not in df.columns]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise UserError(f"{path} is not a predictions file: missing column(s) {shown}")
    for key in KEYS:
        for c in int_columns(key):
            df[c] = _checked_column(df[c], path, c, integer=True, low=0 if c == f"{key}_pred" else -1)
        for c in (f"{key}_conf", f"{key}_ptrue", f"{key}_lconf"):
            if c in df.columns:
                df[c] = _checked_column(df[c], path, c, integer=False, low=0, missing_ok=c != f"{key}_conf")
    if taxonomy is not None:
        check_predictions(df, taxonomy, str(path))
    return df


def _checked_column(values: pd.Series, path, column: str, integer: bool, low: int,
                    missing_ok: bool = False) -> pd.Series:
    """A class column as int64 (whole numbers ≥ ``low``) or a probability column as float64 (in [0, 1]).

    The first bad cell is a :class:`UserError` naming the file, line and column.
    """
    number = pd.to_numeric(values, errors="coerce")
    if integer:
        bad = number.isna() | ~np.isfinite(number) | (number != number.round()) | (number < low)
        rule = f"a whole class index ≥ {low}" + (" (-1: unknown or padding)" if low < 0 else "")
    else:
        bad = (number.isna() & (values.notna() | (not missing_ok))) | (number < 0) | (number > 1) | np.isinf(number)
        rule = "a probability between 0 and 1" + (" (or empty)" if missing_ok else "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        shown = "empty or NaN" if pd.isna(values.iloc[i]) else repr(str(values.iloc[i]))
        more = f" ({int(bad.sum()) - 1} more such rows)" if bad.sum() > 1 else ""
        raise UserError(f"{path} line {i + 2}, column {column}: {shown}, expected {rule}{more}")
    return number.astype(np.int64) if integer else number.astype(np.float64)


def check_predictions(df: pd.DataFrame, taxonomy: Taxonomy, what: str = "predictions") -> None:
    """Raise a :class:`UserError` when a class index does not fit the taxonomy's heads."""
    for key in KEYS:
        n = taxonomy.num_classes(key)
        for c in int_columns(key):
            col = df[c].to_numpy()
            if len(col) and (col.max() >= n or col.min() < -1):
                raise UserError(f"{what}: column {c} has class indices outside 0..{n - 1}; "
                                "were these predictions made with another taxonomy (--mappings)?")
