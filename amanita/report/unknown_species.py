"""Report section "Unknown species": detection numbers, naming a new species at each rank, histograms."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from amanita.openset import FLAG_COLUMN, SCORES, histogram, score_column
from amanita.report.figures import BAD, GOOD, STYLE, FigureInfo, _save, plt
from amanita.report.html import e, gallery, num, num_cell, pct, section, stat, table

SCORE_LABEL = {"msp": "1 − max softmax probability", "entropy": "entropy of the leaf distribution (nats)",
               "energy": "energy −logsumexp(leaf logits)"}


def score_histograms_figure(preds: pd.DataFrame, out_dir: Path, name: str = "open_set_scores.png") -> str | None:
    """One panel per unknown score: histograms of the known and of the unknown images."""
    scores = [s for s in SCORES if score_column(s) in preds]
    if FLAG_COLUMN not in preds or not scores:
        return None
    unknown = preds[FLAG_COLUMN].to_numpy(dtype=bool)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(scores), figsize=(3.4 * len(scores), 2.7), squeeze=False)
        for ax, s in zip(axes[0], scores):
            h = histogram(preds[score_column(s)].to_numpy(), unknown)
            width = np.diff(h["edges"])
            ax.bar(h["edges"][:-1], h["known"], width, align="edge", color=GOOD, alpha=0.7,
                   label=f"known species ({(~unknown).sum():,})")
            ax.bar(h["edges"][:-1], h["unknown"], width, align="edge", color=BAD, alpha=0.6,
                   label=f"unknown species ({unknown.sum():,})")
            ax.set_xlabel(SCORE_LABEL[s])
            ax.set_ylabel("images")
            ax.legend(fontsize=7)
        fig.suptitle("Unknown-species scores (higher = more likely unknown)", fontweight="bold")
        fig.tight_layout()
        return _save(fig, out_dir / name)


def detection_rows(m: dict) -> list[str]:
    rows = []
    for s, d in m["detection"].items():
        chosen = " (threshold)" if s == m["score"] else ""
        rows.append(f"<tr><td>{e(SCORE_LABEL[s])}{e(chosen)}</td>{num_cell(pct(d['auroc']))}"
                    f"{num_cell(pct(d['tnr_at_tpr']))}{num_cell(num(d['threshold'], 4))}</tr>")
    return rows


def open_set_section(m: dict | None, figure: str | None, note: str = "") -> str:
    """AUROC and TNR per score, top-1 per rank for the unknown species, FungiCLEF's numbers, histograms."""
    if not m or not m.get("available"):
        return section("openset", "Unknown species",
                       '<p class="note">Not evaluated: run <code>validate.py --open-set</code> on a CSV with '
                       "<code>category_id = -1</code> rows (FungiTastic-OpenSet-Val.csv).</p>")
    d = m["detection"][m["score"]]
    stats = "".join([stat(pct(d["auroc"]), "AUROC known vs unknown"),
                     stat(pct(d["tnr_at_tpr"]), f"TNR at {pct(d['target_tpr'], 0)} TPR",
                          "unknown images rejected while that share of known ones is accepted"),
                     stat(f"{m['n_unknown']:,}", "unknown-species images", f"of {m['n_images']:,}")])
    det = table(["score", "AUROC", "TNR@TPR", "threshold"], detection_rows(m), "compact narrow")
    named = [f"<tr><td>{e(r)}</td>{num_cell(format(v['n_seen'], ','))}{num_cell(format(v['n_unseen'], ','))}"
             f"{num_cell(pct(v['top1']))}</tr>" for r, v in m["named_at_rank"].items()]
    names = table(["rank", "unknown images, name seen in training", "name never seen", "top-1"], named,
                  "compact narrow")
    fc = m.get("fungiclef") or {}
    fungiclef = ("<h3>FungiCLEF's convention</h3><p>FungiCLEF keeps -1 as a class: an image rejected by the "
                 "threshold answers -1, and its track-1 error and macro-F1 count -1 like any species. With this "
                 f"threshold: classification error {pct(fc.get('classification_error'))}, macro-F1 "
                 f"{pct(fc.get('macro_f1'))} over {fc.get('n', 0):,} images, unknowns answered -1 "
                 f"{pct(fc.get('unknown_recall'))}, known species answered -1 {pct(fc.get('known_rejected'))}. "
                 "The per-rank tables of this report instead leave unknown species out of the leaf and species "
                 "numbers and score them at the ranks that were seen.</p>") if fc else ""
    fig = gallery([FigureInfo(figure, "Unknown-species scores", "Known and unknown images' scores.")]) if figure else ""
    lead = ("Species never seen in training (<code>category_id = -1</code>) are scored for “unknown” from the "
            "leaf head; known images are the positives (FungiTastic's open-set protocol). The hierarchy still "
            "names a new species at the ranks seen in training: the top-1 below counts the unknown images whose "
            "true name at that rank is a class of the model. " + e(note))
    body = (f'<div class="stats">{stats}</div>{det}<h3>Naming a new species at the ranks seen</h3>{names}'
            f"{fungiclef}{fig}")
    return section("openset", "Unknown species", body, lead=lead)
