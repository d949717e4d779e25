"""Validation metrics from a predictions table (see :mod:`amanita.predictions`).

Every metric is computed per key: the leaf (``category_id``, what FungiTastic's published
top-1 / macro-F1 measure) and the six ranks, each over the samples whose label at that key is
known. Everything is vectorised (``np.bincount``, ``np.unique`` on ``true * n + pred`` codes),
so 89,659 samples × 2,829 classes take about a second.

Definitions
-----------
* **macro-F1 (present)**: mean F1 over the classes that occur in the evaluated labels.
* **macro-F1 (all)**: mean F1 over every class of the head, classes absent from the split
  counting 0 (the FungiTastic convention).
* **ECE**: 15 equal-width confidence bins ``(lo, hi]`` (0 in the first),
  ``sum_b n_b / N * |acc_b - conf_b|``. Per key it scores the head's own confidence against
  that key being right; the *lineage* ECE scores the lineage confidence (see
  :mod:`amanita.calibration`) against every rank from the phylum down being right.
* **LCA height** (Bertinetto et al., *Making Better Mistakes*, CVPR 2020): 0 same species,
  1 same genus, …, 5 same phylum, 6 only the root shared. *Mistake severity* is its mean over
  leaf-level mistakes; *hierarchical distance@k* its mean between the true leaf and the
  predicted leaf (@1) or each of the top-k leaves (@5), over all samples.
* **Poisonous-confusion cost** (FungiCLEF): ``(100 * PSC + ESC) / N`` at the species rank, PSC =
  images of a poisonous species predicted as a non-poisonous species, ESC = edible predicted as
  poisonous (a species is poisonous when any of its leaves is).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from amanita.predictions import topk_columns
from amanita.taxonomy import DISPLAY_ORDER, KEYS, LEAF, RANKS, Taxonomy

ECE_BINS = 15
RELATIONS = ("same species", "same genus", "same family", "same order", "same class",
             "same phylum", "different phylum")
from amanita.config import DEFAULT_FOCUS  # noqa: F401


@dataclass
class Metrics:
    """``summary``: every number as plain JSON (metrics.json); ``per_class``: one table per key."""

    summary: dict
    per_class: dict[str, pd.DataFrame] = field(default_factory=dict)


# ---------------------------------------------------------------------- small helpers
def class_names(tax: Taxonomy, key: str) -> np.ndarray:
    """Names of the classes of ``key`` as an object array with ``""`` appended, so -1 → ``""``."""
    names = tax.scientific_names if key == LEAF else tax.classes[key]
    return np.array(list(names) + [""], dtype=object)


def _ancestors(tax: Taxonomy, key: str) -> np.ndarray:
    """``(n_classes(key), 6)`` ancestor indices of each class of ``key``."""
    return tax.ancestors if key == LEAF else tax.class_ancestors(key)


def _mean(x) -> float | None:
    """Mean as a float, None for an empty array (JSON null, shown as '–')."""
    x = np.asarray(x)
    return float(x.mean()) if x.size else None


def key_arrays(preds: pd.DataFrame, key: str, known_only: bool = True) -> dict[str, np.ndarray]:
    """``true, pred, conf, topk (n, 5), ptrue`` of one key, by default only where the label is known."""
    true = preds[f"{key}_true"].to_numpy(np.int64)
    mask = true >= 0 if known_only else np.ones(len(true), dtype=bool)
    ptrue = preds[f"{key}_ptrue"].to_numpy(float) if f"{key}_ptrue" in preds else np.full(len(true), np.nan)
    return {"true": true[mask], "pred": preds[f"{key}_pred"].to_numpy(np.int64)[mask],
            "conf": preds[f"{key}_conf"].to_numpy(float)[mask],
            "topk": preds[topk_columns(key)].to_numpy(np.int64)[mask], "ptrue": ptrue[mask]}


# ---------------------------------------------------------------------- per-key metrics
def topk_accuracy(true: np.ndarray, topk: np.ndarray) -> float | None:
    """Share of samples whose true class is among the ``topk`` columns."""
    return _mean((topk == true[:, None]).any(axis=1))


def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Per confidence bin ``(lo, hi]``: sample count, accuracy and mean confidence (None if empty)."""
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    acc = np.bincount(b, weights=correct.astype(float), minlength=n_bins)
    cs = np.bincount(b, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc, cs = acc / count, cs / count
    return {"edges": np.linspace(0, 1, n_bins + 1).tolist(), "count": count.tolist(),
            "accuracy": [None if c == 0 else float(a) for a, c in zip(acc, count)],
            "confidence": [None if c == 0 else float(v) for v, c in zip(cs, count)]}


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float | None:
    """ECE: count-weighted mean gap between accuracy and confidence over ``n_bins`` bins."""
    if len(conf) == 0:
        return None
    t = reliability_bins(conf, correct, n_bins)
    gaps = [n * abs(a - c) for n, a, c in zip(t["count"], t["accuracy"], t["confidence"]) if n]
    return float(sum(gaps) / len(conf))


def per_class_scores(true: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Per class of the head: precision, recall, F1 (scikit-learn, 0 when undefined), support, predicted."""
    labels = np.arange(n_classes)
    if len(true) == 0:  # every label of this rank unknown
        zeros = np.zeros(n_classes)
        return {"precision": zeros, "recall": zeros, "f1": zeros, "support": zeros.astype(np.int64),
                "predicted": zeros.astype(np.int64)}
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=labels, average=None, zero_division=0)
    return {"precision": p, "recall": r, "f1": f, "support": s,
            "predicted": np.bincount(pred, minlength=n_classes)[:n_classes]}


def key_metrics(preds: pd.DataFrame, key: str, n_classes: int) -> dict:
    """Top-1/5, both macro-F1s, confidence, ECE, NLL and the reliability bins of one key."""
    a = key_arrays(preds, key)
    correct = a["pred"] == a["true"]
    s = per_class_scores(a["true"], a["pred"], n_classes)
    present = s["support"] > 0
    ptrue = a["ptrue"][~np.isnan(a["ptrue"])]
    return {
        "n": int(len(a["true"])), "n_unknown": int(len(preds) - len(a["true"])),
        "n_classes_head": int(n_classes), "n_classes_present": int(present.sum()),
        "top1": _mean(correct), "top5": topk_accuracy(a["true"], a["topk"]),
        "macro_f1_present": _mean(s["f1"][present]), "macro_f1_all": _mean(s["f1"]) if len(a["true"]) else None,
        "avg_confidence": _mean(a["conf"]),
        "ece": expected_calibration_error(a["conf"], correct),
        "nll": _mean(-np.log(np.clip(ptrue, 1e-12, 1))) if len(ptrue) else None,
        "reliability": reliability_bins(a["conf"], correct),
    }


def lineage_calibration(preds: pd.DataFrame) -> dict | None:
    """Per rank (phylum first) and leaf: mean lineage confidence (``{key}_lconf``), the share of
    samples right from the phylum down to that key, and the ECE between the two.

    Samples with an unknown label at or above a key are left out of it. None when the
    predictions have no ``_lconf`` columns (files written before they existed).
    """
    if any(f"{k}_lconf" not in preds for k in KEYS):
        return None
    right = np.ones(len(preds), dtype=bool)
    known = np.ones(len(preds), dtype=bool)
    out = {}
    for k in DISPLAY_ORDER:  # phylum down to the leaf
        true = preds[f"{k}_true"].to_numpy(np.int64)
        right &= preds[f"{k}_pred"].to_numpy(np.int64) == true
        known &= true >= 0
        conf = preds[f"{k}_lconf"].to_numpy(float)[known]
        out[k] = {"n": int(known.sum()), "avg_confidence": _mean(conf), "accuracy": _mean(right[known]),
                  "ece": expected_calibration_error(conf, right[known])}
    return out


# ---------------------------------------------------------------------- hierarchy
def lca_heights(tax: Taxonomy, true: np.ndarray, cand: np.ndarray, key: str = LEAF) -> np.ndarray:
    """:meth:`Taxonomy.lca_height` that tolerates -1 in ``cand`` (returned as -1)."""
    valid = cand >= 0
    h = tax.lca_height(np.broadcast_to(true, cand.shape), np.where(valid, cand, 0), key)
    return np.where(valid, h, -1)


def consistency(preds: pd.DataFrame, tax: Taxonomy) -> np.ndarray:
    """``(n, 6)`` bool: rank prediction equals the predicted leaf's ancestor (unknown ancestor: ok)."""
    anc = tax.ancestors[preds[f"{LEAF}_pred"].to_numpy(np.int64)]
    ranks = preds[[f"{r}_pred" for r in RANKS]].to_numpy(np.int64)
    return (anc == ranks) | (anc < 0)


def hierarchy_metrics(preds: pd.DataFrame, tax: Taxonomy) -> dict:
    """Hierarchical accuracy, consistency, mistake severity, hierarchical distance@1/@5."""
    true6 = preds[[f"{r}_true" for r in RANKS]].to_numpy(np.int64)
    pred6 = preds[[f"{r}_pred" for r in RANKS]].to_numpy(np.int64)
    all_known = (true6 >= 0).all(axis=1)
    cons = consistency(preds, tax)
    a = key_arrays(preds, LEAF)
    h1 = lca_heights(tax, a["true"], a["pred"])
    mistakes = h1[a["pred"] != a["true"]]
    h5 = lca_heights(tax, a["true"][:, None], a["topk"])
    valid5 = h5 >= 0
    per_sample5 = np.where(valid5, h5, 0).sum(1) / np.maximum(valid5.sum(1), 1)
    return {
        "hierarchical_accuracy": _mean((pred6 == true6).all(axis=1)[all_known]),
        "n_all_ranks_known": int(all_known.sum()),
        "consistency_rate": _mean(cons.all(axis=1)),
        "consistency_by_rank": {r: _mean(cons[:, i]) for i, r in enumerate(RANKS)},
        "n_mistakes": int(len(mistakes)),
        "mistake_severity": _mean(mistakes),
        "mistake_relations": dict(zip(RELATIONS, np.bincount(mistakes, minlength=7).tolist())),
        "hdist@1": _mean(h1), "hdist@5": _mean(per_sample5[valid5.any(1)]),
    }


# ---------------------------------------------------------------------- poisonous species
def poison_metrics(preds: pd.DataFrame, tax: Taxonomy) -> dict:
    """FungiCLEF poisonous-confusion cost ``(100·PSC + ESC) / N`` at the species rank, with counts.

    A species is poisonous when any of its leaves is; N counts the images with a known species.
    """
    a = key_arrays(preds, "species")
    pois = tax.class_poisonous("species")
    tp, pp = pois[a["true"]], pois[a["pred"]]
    psc, esc, n = int((tp & ~pp).sum()), int((~tp & pp).sum()), len(a["true"])
    return {"psc": psc, "esc": esc, "n": n, "cost": (100 * psc + esc) / n if n else None,
            "n_poisonous_samples": int(tp.sum()), "n_edible_samples": int((~tp).sum()),
            "poisonous_flagged_rate": _mean(pp[tp])}


def _top_counts(codes: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` most frequent values of ``codes`` and their counts (ties: smaller code first)."""
    values, counts = np.unique(codes, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return values[order], counts[order]


def safety_table(preds: pd.DataFrame, tax: Taxonomy, top_edible: int = 3) -> dict:
    """Per poisonous species in the split: support, recall, predicted edible and as which species.

    Species-rank columns throughout, like :func:`poison_metrics`, so the column
    "predicted edible" sums to PSC. Rows sorted by predicted-edible count, then support.
    """
    a = key_arrays(preds, "species")
    pois = tax.class_poisonous("species")
    sel = pois[a["true"]]
    st, sp = a["true"][sel], a["pred"][sel]
    edible = ~pois[sp]
    n_sp = tax.num_classes("species")
    support = np.bincount(st, minlength=n_sp)
    correct = np.bincount(st, weights=st == sp, minlength=n_sp)
    genus = tax.class_ancestors("species")[:, 4]
    genus_correct = np.bincount(st, weights=(genus[st] == genus[sp]) & (genus[st] >= 0), minlength=n_sp)
    as_edible = np.bincount(st, weights=edible, minlength=n_sp)
    names = class_names(tax, "species")
    which = _edible_lists(st[edible], sp[edible], names, top_edible)
    rows = [{"species": names[s], "support": int(support[s]), "recall": correct[s] / support[s],
             "genus_recall": genus_correct[s] / support[s], "predicted_edible": int(as_edible[s]),
             "predicted_edible_rate": as_edible[s] / support[s], "as_edible_species": which.get(s, [])}
            for s in np.flatnonzero(support)]
    rows.sort(key=lambda r: (-r["predicted_edible"], -r["support"], r["species"]))
    n_pois_species = int(pois.sum())
    return {"rows": rows, "n_poisonous_species": n_pois_species,
            "n_poisonous_species_absent": n_pois_species - len(rows)}


def _edible_lists(true_sp, pred_sp, names, top: int) -> dict[int, list]:
    """For each true species, its ``top`` most frequent predicted species as ``[name, count]``."""
    if len(true_sp) == 0:
        return {}
    pairs = pd.DataFrame({"t": true_sp, "p": pred_sp}).value_counts().reset_index(name="n")
    pairs = pairs.sort_values(["t", "n", "p"], ascending=[True, False, True]).groupby("t").head(top)
    pairs["item"] = [[names[p], int(n)] for p, n in zip(pairs["p"], pairs["n"])]
    return pairs.groupby("t")["item"].agg(list).to_dict()


# ---------------------------------------------------------------------- tables
def confused_pairs(preds: pd.DataFrame, tax: Taxonomy, key: str, top: int = 20) -> list[dict]:
    """The ``top`` most frequent (true, predicted) mistakes of ``key`` with their LCA relation."""
    a = key_arrays(preds, key)
    n = tax.num_classes(key)
    wrong = a["pred"] != a["true"]
    codes, counts = _top_counts(a["true"][wrong] * n + a["pred"][wrong], top)
    t, p = codes // n, codes % n
    support = np.bincount(a["true"], minlength=n)
    h = tax.lca_height(t, p, key) if len(t) else np.zeros(0, dtype=np.int64)
    names, pois = class_names(tax, key), tax.class_poisonous(key)
    return [{"true": names[i], "pred": names[j], "count": int(c), "share_of_true": c / support[i],
             "relation": RELATIONS[k], "true_poisonous": bool(pois[i]), "pred_poisonous": bool(pois[j])}
            for i, j, c, k in zip(t, p, counts, h)]


def per_class_table(preds: pd.DataFrame, tax: Taxonomy, key: str) -> pd.DataFrame:
    """One row per class of ``key``: lineage, support, recall, precision, F1, train images, top confusion."""
    a = key_arrays(preds, key)
    n = tax.num_classes(key)
    s = per_class_scores(a["true"], a["pred"], n)
    df = pd.DataFrame({"class": np.arange(n), "name": class_names(tax, key)[:n]})
    if key == LEAF:
        df["category_id"] = tax.category_ids
    depth = len(RANKS) if key == LEAF else RANKS.index(key)
    anc = _ancestors(tax, key)
    for i, r in enumerate(RANKS[:depth]):
        df[r] = class_names(tax, r)[anc[:, i]]
    df["support"] = s["support"]
    df["correct"] = np.bincount(a["true"], weights=a["pred"] == a["true"], minlength=n).astype(np.int64)
    df["recall"] = np.where(s["support"] > 0, s["recall"], np.nan)
    df["precision"] = np.where(s["predicted"] > 0, s["precision"], np.nan)
    df["f1"], df["predicted"] = s["f1"], s["predicted"]
    counts = tax.counts.get(key)
    df["train_images"] = counts if counts is not None and len(counts) == n else -1
    df["poisonous"] = tax.class_poisonous(key)
    df["confused_with"], df["confused_count"] = _top_confusion(a["true"], a["pred"], n, class_names(tax, key))
    return df


def _top_confusion(true, pred, n, names) -> tuple[np.ndarray, np.ndarray]:
    """For each class, the class it is most often mistaken for and how often (``""``, 0 if none)."""
    wrong = pred != true
    values, counts = np.unique(true[wrong] * n + pred[wrong], return_counts=True)
    order = np.lexsort((-counts, values // n))
    t, first = np.unique((values // n)[order], return_index=True)
    name, count = np.full(n, "", dtype=object), np.zeros(n, dtype=np.int64)
    name[t], count[t] = names[(values % n)[order][first]], counts[order][first]
    return name, count


def worst_classes(table: pd.DataFrame, top: int = 20, min_support: int = 3) -> list[dict]:
    """The ``top`` classes with at least ``min_support`` samples and the lowest recall."""
    t = table[table["support"] >= min_support].sort_values(["recall", "support"], ascending=[True, False])
    cols = [c for c in ("name", "category_id", "family", "genus", "support", "recall", "precision", "f1",
                        "train_images", "poisonous", "confused_with", "confused_count") if c in t]
    return t[cols].head(top).to_dict("records")


# ---------------------------------------------------------------------- focus species
def resolve_species(tax: Taxonomy, name: str) -> int | None:
    """Species index of ``name``: a species name, or a leaf's scientificName (authors allowed)."""
    low = name.strip().lower()
    for i, s in enumerate(tax.classes["species"]):
        if s.lower() == low:
            return i
    for leaf, s in enumerate(tax.scientific_names):
        if s.lower() == low or s.lower().startswith(low + " "):
            sp = int(tax.ancestors[leaf, -1])
            return sp if sp >= 0 else None
    return None


def focus_species(preds: pd.DataFrame, tax: Taxonomy, name: str, top: int = 10) -> dict:
    """Accuracy at each rank for one species, what it is mistaken for and what is mistaken for it."""
    s = resolve_species(tax, name)
    if s is None:
        close = difflib.get_close_matches(name, tax.classes["species"], n=3, cutoff=0.6)
        return {"name": name, "found": False, "suggestions": close}
    st, sp = preds["species_true"].to_numpy(np.int64), preds["species_pred"].to_numpy(np.int64)
    sel = st == s
    names, spois = class_names(tax, "species"), tax.class_poisonous("species")
    out = {"name": tax.classes["species"][s], "found": True, "species_index": s,
           "poisonous": bool(spois[s]), "lineage": _species_lineage(tax, s),
           "support": int(sel.sum()), "train_images": _count(tax, "species", s)}
    out["accuracy"] = {k: _mean((preds[f"{k}_pred"].to_numpy() == preds[f"{k}_true"].to_numpy())[
        sel & (preds[f"{k}_true"].to_numpy() >= 0)]) for k in KEYS}
    out["mean_confidence"] = _mean(preds["species_conf"].to_numpy()[sel])
    out["predicted_edible"] = int((~spois[sp[sel]]).sum())
    out["mistaken_for"] = _named_counts(sp[sel & (sp != s)], names, spois, tax, s, top)
    fp = (sp == s) & (st != s) & (st >= 0)
    out["predicted_from"] = _named_counts(st[fp], names, spois, tax, s, top)
    out["n_predicted"] = int((sp == s).sum())
    out["precision"] = _mean((st == s)[sp == s])
    return out


def _species_lineage(tax: Taxonomy, s: int) -> dict:
    anc = tax.class_ancestors("species")[s]
    return {r: (tax.classes[r][a] if a >= 0 else None) for r, a in zip(RANKS, anc)}


def _count(tax: Taxonomy, key: str, i: int) -> int | None:
    c = tax.counts.get(key)
    return int(c[i]) if c is not None and i < len(c) else None


def _named_counts(codes, names, pois, tax, s, top) -> list[dict]:
    values, counts = _top_counts(codes, top)
    rel = tax.lca_height(np.full(len(values), s), values, "species") if len(values) else []
    return [{"species": names[v], "count": int(c), "poisonous": bool(pois[v]), "relation": RELATIONS[h]}
            for v, c, h in zip(values, counts, rel)]


# ---------------------------------------------------------------------- everything
def compute_metrics(preds: pd.DataFrame, tax: Taxonomy, focus=DEFAULT_FOCUS, top: int = 20,
                    min_support: int = 3) -> Metrics:
    """All metrics of a predictions table: the report's numbers and the per-class tables."""
    per_class = {k: per_class_table(preds, tax, k) for k in KEYS}
    summary = {
        "n_samples": int(len(preds)),
        "keys": {k: key_metrics(preds, k, tax.num_classes(k)) for k in KEYS},
        "hierarchy": hierarchy_metrics(preds, tax),
        "lineage_calibration": lineage_calibration(preds),
        "poison": poison_metrics(preds, tax),
        "safety": safety_table(preds, tax),
        "focus": [focus_species(preds, tax, name) for name in focus],
        "confused_pairs": {k: confused_pairs(preds, tax, k, top) for k in KEYS},
        "worst_classes": {k: worst_classes(per_class[k], top, min_support) for k in KEYS},
    }
    return Metrics(jsonable(summary), per_class)


def jsonable(obj):
    """Plain-JSON copy: numpy scalars → Python, NaN/inf → None, tuples → lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(obj) else float(obj)
    return obj
