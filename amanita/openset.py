"""Open set: species never seen in training (``category_id = -1`` in FungiTastic's OpenSet CSVs).

An image's *unknown score* comes from the leaf head; higher means "more likely a species the
model does not know". Three scores, all oriented that way:

- ``msp``: 1 − the maximum softmax probability of the leaf head;
- ``entropy``: the entropy of the leaf distribution (nats);
- ``energy``: −logsumexp of the leaf logits (the free energy of Liu et al., 2020).

Detection is scored like FungiTastic's open-set baselines: known images are the positives,
a threshold accepts an image as known when its score is at most the threshold, TPR is the
share of known images accepted and TNR the share of unknown images rejected; AUROC is
threshold-free (scikit-learn's ``roc_auc_score`` and ``roc_curve``). Beyond detection, the
hierarchy names a new species at the ranks that were seen in training: the top-1 at each
rank over the unknown images whose true name at that rank is a class of the model.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from amanita.io import UserError
from amanita.taxonomy import LEAF, RANKS

from amanita.config import SCORES  # noqa: F401
FLAG_COLUMN = "unknown_species"  # True where the CSV's category_id is -1


def score_column(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r} (one of {', '.join(SCORES)})")
    return f"unknown_{score}"


def unknown_scores(leaf_logp: torch.Tensor, energy: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three scores ``{f"unknown_{name}": (B,)}`` from leaf log-probabilities (B, n_leaves)
    and the energy −logsumexp(leaf logits) (B,)."""
    p = leaf_logp.exp()
    return {"unknown_msp": 1 - p.max(1).values,
            "unknown_entropy": -(p * leaf_logp.clamp_min(-1e4)).sum(1),
            "unknown_energy": energy.float()}


def leaf_energy(leaf_logits: torch.Tensor) -> torch.Tensor:
    """−logsumexp of the leaf logits, (B,) float32."""
    return -torch.logsumexp(leaf_logits.float(), dim=1)


# ---------------------------------------------------------------------- the unknown-species rule
def readout_conditions(temperatures: dict | None, tta: str) -> dict:
    """What an unknown score depends on besides the weights, recorded beside a stored threshold:
    the temperatures applied (None: uncalibrated) and the test-time augmentation."""
    return {"temperatures": {k: float(v) for k, v in temperatures.items()} if temperatures else None, "tta": tta}


def _score_inputs(score: str, conditions: dict) -> tuple:
    """The part of ``conditions`` that ``score`` depends on: the leaf temperature (not for energy,
    which is taken before any temperature) and the TTA."""
    leaf_t = float((conditions.get("temperatures") or {}).get(LEAF, 1.0))
    return (conditions.get("tta", "none"),) + (() if score == "energy" else (leaf_t,))


def unknown_rule(stored: dict | None, score: str | None, threshold: float | None,
                 applied: dict) -> tuple[str, float | None]:
    """The one unknown-species rule of test.py and the submission: ``(score, threshold)``.

    ``score``/``threshold`` are the flags (None: not given), ``stored`` the checkpoint's
    ``open_set`` entry (``validate.py --store-threshold``), ``applied`` the
    :func:`readout_conditions` of this run. A threshold flag wins (score: the flag's, else the
    stored one's, else msp). A stored threshold is used only for the score it was fitted on and
    under the temperatures and TTA it was fitted under; otherwise a :class:`UserError` says so
    (a threshold of another score or scale would call every image unknown, or none). None: no
    threshold anywhere, no verdict. An image is unknown when its score is above the threshold
    (:func:`is_unknown`).
    """
    stored = stored or {}
    if threshold is not None:
        return score or stored.get("score", "msp"), float(threshold)
    if stored.get("threshold") is None:
        return score or "msp", None
    fitted = stored.get("score", "msp")
    if score is not None and score != fitted:
        raise UserError(f"the stored unknown-species threshold is for the {fitted} score, not {score}; pass "
                        f"--unknown-threshold for {score}, leave --unknown-score out, or store one with "
                        f"validate.py --open-set --store-threshold --unknown-score {score}")
    fitted_under = stored if "tta" in stored else readout_conditions(None, "none")  # older files: the defaults
    if _score_inputs(fitted, fitted_under) != _score_inputs(fitted, applied):
        raise UserError(f"the stored unknown-species threshold ({fitted}) was fitted under {_describe(fitted_under)}"
                        f"{'' if 'tta' in stored else ' (not recorded: an older file)'}, this run applies "
                        f"{_describe(applied)}; refit it with validate.py --open-set --store-threshold (validate.py "
                        "--calibrate refits it), or pass the matching --tta/--no-temperatures, or --unknown-threshold")
    return fitted, float(stored["threshold"])


def _describe(conditions: dict) -> str:
    """``leaf temperature 1.3, tta flip`` or ``no temperatures, tta none``."""
    t = (conditions.get("temperatures") or {}).get(LEAF)
    temperature = f"leaf temperature {float(t):.4g}" if t is not None else "no temperatures"
    return f"{temperature}, tta {conditions.get('tta', 'none')}"


def is_unknown(scores, threshold: float) -> np.ndarray:
    """The verdict of :func:`unknown_rule`'s threshold: True where the score is above it."""
    return np.asarray(scores, dtype=np.float64) > threshold


# ---------------------------------------------------------------------- detection
def detection_metrics(scores: np.ndarray, unknown: np.ndarray, target_tpr: float = 0.95) -> dict:
    """AUROC, and TNR and the threshold at ``target_tpr`` (known = positive), for one score.

    The threshold is the smallest score that accepts at least ``target_tpr`` of the known
    images (accept: score <= threshold). Without both known and unknown images the numbers are
    None (a threshold still comes from the known images alone).
    """
    from sklearn.metrics import roc_auc_score, roc_curve
    scores, unknown = np.asarray(scores, dtype=np.float64), np.asarray(unknown, dtype=bool)
    n_known, n_unknown = int((~unknown).sum()), int(unknown.sum())
    out = {"n_known": n_known, "n_unknown": n_unknown, "target_tpr": target_tpr,
           "auroc": None, "tnr_at_tpr": None, "tpr": None, "threshold": None}
    if n_known:
        known = np.sort(scores[~unknown])
        k = min(int(np.ceil(target_tpr * n_known)) - 1, n_known - 1)
        out["threshold"] = float(known[max(k, 0)])
        out["tpr"] = float((scores[~unknown] <= out["threshold"]).mean())
    if n_known and n_unknown:
        out["auroc"] = float(roc_auc_score(~unknown, -scores))
        fpr, tpr, _ = roc_curve(~unknown, -scores, drop_intermediate=False)
        out["tnr_at_tpr"] = float(1 - fpr[np.searchsorted(tpr, target_tpr, side="left")])
    return out


def named_at_rank(preds: pd.DataFrame, unknown: np.ndarray) -> dict[str, dict]:
    """For the unknown images: per rank, how many have a true name the model knows, and top-1."""
    out = {}
    for key in RANKS[:-1]:
        t = preds[f"{key}_true"].to_numpy()[unknown]
        p = preds[f"{key}_pred"].to_numpy()[unknown]
        seen = t >= 0
        out[key] = {"n_seen": int(seen.sum()), "n_unseen": int((~seen).sum()),
                    "top1": float((p[seen] == t[seen]).mean()) if seen.any() else None}
    return out


def open_set_metrics(preds: pd.DataFrame, score: str = "msp", target_tpr: float = 0.95) -> dict:
    """Detection for every score (``score`` first: the one used for the threshold), the naming of
    unknown species at each rank, and the FungiCLEF-style numbers with that threshold."""
    if FLAG_COLUMN not in preds:
        return {"available": False}
    unknown = preds[FLAG_COLUMN].to_numpy(dtype=bool)
    order = [score] + [s for s in SCORES if s != score]
    detection = {s: detection_metrics(preds[score_column(s)].to_numpy(), unknown, target_tpr)
                 for s in order if score_column(s) in preds}
    out = {"available": True, "score": score, "n_images": int(len(preds)), "n_unknown": int(unknown.sum()),
           "detection": detection, "named_at_rank": named_at_rank(preds, unknown)}
    thr = detection.get(score, {}).get("threshold")
    if thr is not None:
        out["fungiclef"] = fungiclef_scores(preds, preds[score_column(score)].to_numpy() > thr)
    return out


def histogram(scores: np.ndarray, unknown: np.ndarray, bins: int = 30) -> dict:
    """Shared bin edges and counts of the known and of the unknown images' scores."""
    scores = np.asarray(scores, dtype=np.float64)
    edges = np.histogram_bin_edges(scores, bins=bins) if len(scores) else np.linspace(0, 1, bins + 1)
    return {"edges": edges, "known": np.histogram(scores[~unknown], edges)[0],
            "unknown": np.histogram(scores[unknown], edges)[0]}


# ---------------------------------------------------------------------- FungiCLEF convention
def fungiclef_scores(preds: pd.DataFrame, rejected: np.ndarray) -> dict:
    """FungiCLEF's track-1 error and macro-F1 with -1 as a class (a rejected image answers -1).

    The truth is the leaf (``category_id``) with -1 for unknown species; a prediction is the
    predicted leaf, or -1 when ``rejected``. Rows whose leaf is neither known nor flagged
    unknown are left out.
    """
    from sklearn.metrics import f1_score
    unknown = preds[FLAG_COLUMN].to_numpy(dtype=bool)
    true = np.where(unknown, -1, preds[f"{LEAF}_true"].to_numpy())
    keep = unknown | (true >= 0)
    pred = np.where(rejected, -1, preds[f"{LEAF}_pred"].to_numpy())[keep]
    true = true[keep]
    if not len(true):
        return {"n": 0, "classification_error": None, "macro_f1": None}
    return {"n": int(len(true)), "classification_error": float((pred != true).mean()),
            "macro_f1": float(f1_score(true, pred, average="macro")),
            "unknown_recall": float((pred[true == -1] == -1).mean()) if (true == -1).any() else None,
            "known_rejected": float((pred[true >= 0] == -1).mean()) if (true >= 0).any() else None}
