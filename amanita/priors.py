"""Metadata priors: where and when a find grew, as smoothed tables P(leaf | value), and their use.

**Tables** (``compute_metadata_priors.py``), from the **training CSV only** (DF20's and
FungiTastic's published metadata gains build them from train + test, i.e. from test labels):
per field ``f`` and value ``v``, with ``n(v, leaf)`` training images and ``n(v)`` their sum,

    P(leaf) = n(leaf) / N,        P(leaf | v) = (n(v, leaf) + alpha · P(leaf)) / (n(v) + alpha)

(additive smoothing toward P(leaf); ``alpha`` = ``--smoothing``: a value seen on ``alpha``
images moves half-way from P(leaf) to its own frequencies). The month is **circular**: before
smoothing each month's counts keep ``1 - 2a`` of themselves and take ``a`` (``--month-neighbour``)
from each neighbouring month, December next to January, because a season does not stop at a
month's edge and the splits are different years (FungiTastic's are chronological), so a species
seen in late October in training is found in early November in validation. ``a = 0`` treats the
month as a plain category.

**Application** (naive Bayes, once per field, not the published notebooks' repeated product
with the image probability): for every key (the leaf and the six ranks)

    p(c | x, v) ∝ p(c | x) · Π_f [P(c | v_f) / P(c)]^w

renormalised, where a rank's table is the leaf table summed up the tree
(``Taxonomy.rollup_matrix``), so at the leaf this is exactly the formula above and the decoding
and every rank see the same evidence. A missing value, or a value never seen in training,
contributes nothing. ``w`` is fitted on validation by NLL (:func:`fit_prior_weight`,
``validate.py --fit-prior-weight``) and stored in the checkpoint (key ``metadata_priors``) like
the temperatures.

The file is one dict readable with ``torch.load(..., weights_only=True)``, keyed by the
taxonomy digest: a model of another taxonomy refuses it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from amanita.io import UserError, file_sha256, load_tensor_file
from amanita.taxonomy import KEYS, LEAF, Taxonomy, map_distinct

FORMAT = "amanita-metadata-priors"
VERSION = 1
from amanita.config import PRIOR_FIELDS, PriorsConfig  # noqa: F401
DEFAULT_FIELDS = ("habitat", "substrate", "month")
MONTHS = tuple(str(m) for m in range(1, 13))
DEFAULT_SMOOTHING = 10.0
DEFAULT_MONTH_NEIGHBOUR = 0.25


# ---------------------------------------------------------------------- values
def field_values(values, field: str) -> np.ndarray:
    """Each value as the table's key (object array; None = missing), computed once per distinct value.

    Months are the strings "1".."12" (floats such as 10.0 read from a CSV with gaps included;
    anything else is missing); other fields are stripped strings, a whole float without its ".0".
    """
    return map_distinct(pd.Series(np.asarray(values, dtype=object)), partial(_key, month=field == "month")).to_numpy()


def _key(v, month: bool = False) -> str | None:
    """One value as a table key (see :func:`field_values`)."""
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        return None
    if month:
        m = pd.to_numeric(v, errors="coerce")
        return str(int(m)) if pd.notna(m) and float(m).is_integer() and 1 <= m <= 12 else None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    text = str(v).strip()
    return text if text and text.lower() != "nan" else None


def circular_spread(counts: np.ndarray, neighbour: float) -> np.ndarray:
    """``(12, L)`` month counts with ``neighbour`` of each month's mass moved to each neighbouring month."""
    return (1 - 2 * neighbour) * counts + neighbour * (np.roll(counts, 1, axis=0) + np.roll(counts, -1, axis=0))


# ---------------------------------------------------------------------- tables
def build_priors(train: pd.DataFrame, tax: Taxonomy, fields=DEFAULT_FIELDS, smoothing: float = DEFAULT_SMOOTHING,
                 month_neighbour: float = DEFAULT_MONTH_NEIGHBOUR) -> dict:
    """The priors file's dict from a training frame (``category_id`` and the ``fields`` columns).

    ``leaf_prior`` (L,), and per field ``values`` (K,), ``counts`` (K, L) images per value and
    leaf (after the circular spread for the month) and ``table`` (K, L) smoothed P(leaf | value).
    """
    missing = [f for f in fields if f not in train.columns]
    if missing:
        raise UserError(f"training CSV has no column(s) {', '.join(missing)} (known fields: {', '.join(PRIOR_FIELDS)})")
    cid = pd.to_numeric(train["category_id"], errors="coerce")
    leaf = cid.map(tax.leaf_index()).fillna(-1).to_numpy(np.int64)
    known = leaf >= 0
    if not known.any():
        raise UserError("training CSV has no row whose category_id is a leaf of the mappings")
    n_leaf = np.bincount(leaf[known], minlength=tax.n_leaves).astype(np.float64)
    prior = n_leaf / n_leaf.sum()
    out = {"format": FORMAT, "version": VERSION, "taxonomy_sha256": tax.sha256(), "n_leaves": tax.n_leaves,
           "n_train_images": int(known.sum()), "smoothing": float(smoothing),
           "month_neighbour": float(month_neighbour), "leaf_prior": torch.tensor(prior, dtype=torch.float64),
           "fields": {}}
    for f in fields:
        out["fields"][f] = field_table(field_values(train[f].to_numpy(), f)[known], leaf[known], prior, f,
                                       smoothing, month_neighbour)
    return out


def field_table(values: np.ndarray, leaf: np.ndarray, prior: np.ndarray, field: str, smoothing: float,
                month_neighbour: float) -> dict:
    """One field's ``values``, ``counts`` and smoothed ``table`` (see :func:`build_priors`)."""
    names = list(MONTHS) if field == "month" else sorted({v for v in values if v is not None})
    code = {v: i for i, v in enumerate(names)}
    codes = pd.Series(values, dtype=object).map(code).fillna(-1).to_numpy(np.int64)
    ok = codes >= 0
    counts = np.zeros((len(names), len(prior)))
    np.add.at(counts, (codes[ok], leaf[ok]), 1.0)
    if field == "month" and month_neighbour:
        counts = circular_spread(counts, month_neighbour)
    denominator = counts.sum(1, keepdims=True) + smoothing
    with np.errstate(invalid="ignore", divide="ignore"):  # a value on no image with no smoothing: P(leaf)
        table = np.where(denominator > 0, (counts + smoothing * prior[None, :]) / denominator, prior[None, :])
    return {"values": names, "counts": torch.tensor(counts, dtype=torch.float64),
            "table": torch.tensor(table, dtype=torch.float64)}


def load_priors(path: str | os.PathLike, tax: Taxonomy) -> dict:
    """The priors file, refused (one line) when it is not one or was built for another taxonomy."""
    doc = load_tensor_file(path, "metadata priors")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{path} is not a metadata priors file (make one with compute_metadata_priors.py)")
    if doc["taxonomy_sha256"] != tax.sha256():
        raise UserError(f"{path} was computed for another taxonomy (sha256 {doc['taxonomy_sha256'][:12]}…) than "
                        f"the model's ({tax.sha256()[:12]}…); rerun compute_metadata_priors.py with its mappings")
    return doc


# ---------------------------------------------------------------------- application
@dataclass
class Priors:
    """Log-ratio tables ``log P(c | v) - log P(c)`` per field and key, ready to add to log-probabilities."""
    fields: tuple[str, ...]
    values: dict[str, dict[str, int]]                # field → value → row
    log_ratio: dict[str, dict[str, torch.Tensor]]    # field → key → (K, n_classes(key))
    weight: float = 1.0

    @classmethod
    def from_doc(cls, doc: dict, tax: Taxonomy, fields=None, weight: float = 1.0) -> "Priors":
        """The tables of ``fields`` (default: every field in the file) rolled up to every key."""
        fields = tuple(fields or doc["fields"])
        absent = [f for f in fields if f not in doc["fields"]]
        if absent:
            raise UserError(f"the priors file has no table for {', '.join(absent)} "
                            f"(it holds {', '.join(doc['fields'])})")
        prior = doc["leaf_prior"].double()
        ratios = {}
        for f in fields:
            table = doc["fields"][f]["table"].double()
            ratios[f] = {k: log_ratio(table, prior, tax, k) for k in KEYS}
        values = {f: {v: i for i, v in enumerate(doc["fields"][f]["values"])} for f in fields}
        return cls(fields, values, ratios, float(weight))

    def codes(self, frame: pd.DataFrame | dict) -> torch.Tensor:
        """``(N, n_fields)`` rows of each sample's values (-1: missing, not a column, or never seen in training)."""
        n = len(frame) if isinstance(frame, pd.DataFrame) else 1
        out = np.full((n, len(self.fields)), -1, dtype=np.int64)
        for j, f in enumerate(self.fields):
            if f in frame:
                col = frame[f].to_numpy() if isinstance(frame, pd.DataFrame) else [frame[f]]
                keys = pd.Series(field_values(col, f), dtype=object)
                out[:, j] = keys.map(self.values[f]).fillna(-1).to_numpy(np.int64)
        return torch.as_tensor(out)

    def bonus(self, key: str, codes: torch.Tensor, fields=None) -> torch.Tensor:
        """``(B, n_classes(key))``: the summed log-ratios of the samples' known values (0 where none)."""
        out = None
        for j, f in enumerate(self.fields):
            if fields is not None and f not in fields:
                continue
            table = self.log_ratio[f][key].to(codes.device)
            c = codes[:, j]
            term = torch.where((c >= 0)[:, None], table.index_select(0, c.clamp_min(0)), torch.zeros((), device=c.device))
            out = term if out is None else out + term
        return out

    def apply(self, log_probs: dict[str, torch.Tensor], codes: torch.Tensor, fields=None,
              weight: float | None = None) -> dict[str, torch.Tensor]:
        """``{key: log_softmax(log p + w · bonus)}``: the priors applied to every key and renormalised."""
        w = self.weight if weight is None else weight
        codes = codes.to(next(iter(log_probs.values())).device)
        out = {}
        for k, lp in log_probs.items():
            b = self.bonus(k, codes, fields)
            out[k] = lp if b is None or w == 0 else F.log_softmax(lp.float() + w * b.float(), dim=1)
        return out

    def batches(self, batches, codes: torch.Tensor, fields=None):
        """:func:`amanita.engine.iter_log_probs`'s batches with the priors applied (``codes`` per dataset row)."""
        for logp, labels, idx, energy in batches:
            rows = torch.as_tensor(idx, dtype=torch.long).cpu()
            yield self.apply(logp, codes[rows], fields), labels, idx, energy


def log_ratio(table: torch.Tensor, prior: torch.Tensor, tax: Taxonomy, key: str) -> torch.Tensor:
    """``(K, n_classes(key))`` float32 ``log P(c | v) - log P(c)``, 0 where P(c) is 0 (no training image)."""
    if key != LEAF:
        m = tax.rollup_matrix(key, torch.float64)
        table, prior = table @ m, prior @ m
    seen = prior > 0
    out = torch.where(seen[None, :], torch.log(table.clamp_min(1e-300)) - torch.log(prior.clamp_min(1e-300))[None, :],
                      torch.zeros((), dtype=torch.float64))
    return out.float()


# ---------------------------------------------------------------------- the weight
MAX_WEIGHT = 3.0


def fit_prior_weight(leaf_log_probs: torch.Tensor, bonus: torch.Tensor, labels: torch.Tensor) -> dict:
    """The ``w`` in [0, 3] minimising the leaf NLL of ``log_softmax(log p + w · bonus)`` over known labels.

    ``leaf_log_probs`` and ``bonus`` (N, L), ``labels`` (N,) leaf indices (-1 ignored). Returns
    ``{"weight", "nll_without", "nll_with", "n"}``; weight 1 and NLLs None when no label is known.
    """
    from scipy.optimize import minimize_scalar
    known = labels >= 0
    if not bool(known.any()):
        return {"weight": 1.0, "nll_without": None, "nll_with": None, "n": 0}
    z, b, y = leaf_log_probs[known].double(), bonus[known].double(), labels[known].long()

    def nll(w: float) -> float:
        return float(F.cross_entropy(z + w * b, y))

    best = minimize_scalar(nll, bounds=(0.0, MAX_WEIGHT), method="bounded", options={"xatol": 1e-4})
    w = float(best.x) if nll(float(best.x)) <= nll(0.0) else 0.0
    return {"weight": w, "nll_without": nll(0.0), "nll_with": nll(w), "n": int(known.sum())}


def stored_weight(info: dict, priors_path: str | os.PathLike, fields) -> float | None:
    """The weight ``validate.py --fit-prior-weight`` stored in a checkpoint for this file and these fields."""
    stored = (info or {}).get("metadata_priors") or {}
    if stored.get("priors_sha256") == file_sha256(priors_path) and list(stored.get("fields", [])) == list(fields):
        return float(stored["weight"])
    return None


def resolve_priors(cfg: PriorsConfig, tax: Taxonomy, info: dict | None) -> Priors | None:
    """``--priors`` / ``--prior-fields`` / ``--prior-weight`` as :class:`Priors` (None without ``--priors``).

    The weight: the flag's, else the one stored in the checkpoint for this file and fields, else 1.
    """
    path = cfg.priors
    if not path:
        return None
    doc = load_priors(path, tax)
    fields = tuple(cfg.prior_fields or doc["fields"])
    weight = cfg.prior_weight if cfg.prior_weight is not None else stored_weight(info, path, fields)
    return Priors.from_doc(doc, tax, fields, 1.0 if weight is None else weight)


def parse_metadata(items: list[str] | None) -> dict[str, str]:
    """test.py's ``--metadata habitat=… month=…`` as a dict; a bad item is one line naming it."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--metadata {item!r}: expected FIELD=VALUE, e.g. habitat='Deciduous woodland'")
        if name not in PRIOR_FIELDS:
            raise UserError(f"--metadata {item!r}: unknown field {name!r} (one of {', '.join(PRIOR_FIELDS)})")
        out[name] = value
    return out


def summary(doc: dict) -> list[str]:
    """Lines describing a priors file: fields, values, images behind them."""
    lines = [f"{doc['n_train_images']} training images, {doc['n_leaves']} leaves, smoothing {doc['smoothing']:g}, "
             f"month neighbour {doc['month_neighbour']:g}"]
    for f, t in doc["fields"].items():
        per_value = t["counts"].sum(1)
        lines.append(f"  {f:<22} {len(t['values']):>4} values, {float(per_value.sum()):>8.0f} images with a value")
    return lines

