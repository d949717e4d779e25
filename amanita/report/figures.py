"""The report's figures (matplotlib, Agg): each function writes one PNG and returns its path.

:func:`make_figures` draws them all and returns :class:`FigureInfo` entries (file, title,
caption) that :mod:`amanita.report.html` places in the page, plus notes for figures that
could not be drawn (no images found, no training log).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from amanita.metrics import Metrics, class_names  # noqa: E402
from amanita.taxonomy import DISPLAY_ORDER, KEY_LABEL, KEYS, LEAF, RANKS, Taxonomy  # noqa: E402

GOOD, BAD, POISON, MUTED = "#1b7f5f", "#c0392b", "#8e1b1b", "#7f8c8d"
MODEL_COLOR, BASELINE_COLOR = "#2c5f8a", "#b0bec5"
STYLE = {"figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.titlesize": 10,
         "axes.titleweight": "bold", "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.color": "#e5e5e5", "grid.linewidth": 0.6, "axes.axisbelow": True,
         "legend.frameon": False, "savefig.facecolor": "white"}
GUIDE_MAX_CLASSES = 30  # block boundaries are drawn for the finest rank above with at most this many
LABEL_MAX_CLASSES = 40  # above this, axes carry block names instead of class names


@dataclass
class FigureInfo:
    """One figure of the report: file name inside the report folder, title and caption."""

    file: str
    title: str
    caption: str
    group: str = "overview"


def text(s: object) -> str:
    """A name made safe for matplotlib (``$`` would start mathtext)."""
    return str(s).replace("$", r"\$")


def _save(fig, path: Path) -> str:
    fig.savefig(path)
    plt.close(fig)
    return path.name


# ---------------------------------------------------------------------- confusion matrices
def confusion_counts(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Dense ``(n, n)`` int64 confusion counts (rows true, columns predicted) by one bincount."""
    return np.bincount(true * n + pred, minlength=n * n).reshape(n, n)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """float32 rows summing to 1; rows of absent classes are NaN (drawn grey)."""
    rows = counts.sum(axis=1, keepdims=True).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, counts.astype(np.float32) / rows, np.nan).astype(np.float32)


def guide_blocks(tax: Taxonomy, rank: str) -> tuple[str | None, np.ndarray, list[tuple[float, str]]]:
    """Guide rank for ``rank``'s matrix, boundaries between its blocks and (centre, name) labels."""
    i = RANKS.index(rank)
    above = [r for r in RANKS[:i] if tax.num_classes(r) <= GUIDE_MAX_CLASSES]
    if not above:
        return None, np.zeros(0), []
    guide = above[-1]
    anc = tax.class_ancestors(rank)[:, RANKS.index(guide)]
    cuts = np.flatnonzero(np.diff(anc) != 0) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(anc)]
    names = class_names(tax, guide)
    big = (ends - starts) >= len(anc) / 60
    labels = [((s + e - 1) / 2, names[anc[s]]) for s, e in zip(starts[big], ends[big])]
    return guide, cuts - 0.5, labels


def confusion_matrix_figure(preds: pd.DataFrame, tax: Taxonomy, rank: str, out_dir: Path) -> str:
    """``confusion_matrix_{rank}_normalized_viridis.png``: row-normalised, classes in taxonomic order.

    Large matrices are drawn with a whole number of pixels per class (one at 2,786 species)
    and a square-root colour scale, so single cells and genus blocks stay visible.
    """
    true, pred = preds[f"{rank}_true"].to_numpy(np.int64), preds[f"{rank}_pred"].to_numpy(np.int64)
    known = true >= 0
    n = tax.num_classes(rank)
    norm = row_normalised(confusion_counts(true[known], pred[known], n))
    few = n <= LABEL_MAX_CLASSES
    dpi = 200
    side = max(4.5, 0.28 * n) if few else max(1, round(1800 / n)) * n / dpi  # axes side, inches
    margin_l, margin_b, margin_r, margin_t = (2.3, 2.3, 1.5, 0.6) if few else (1.5, 1.6, 1.5, 0.6)
    W, H = side + margin_l + margin_r, side + margin_b + margin_t
    scale = colors.Normalize(0, 1) if few else colors.PowerNorm(0.5, 0, 1)
    with plt.rc_context(STYLE | {"axes.grid": False}):
        fig = plt.figure(figsize=(W, H), dpi=dpi)
        ax = fig.add_axes([margin_l / W, margin_b / H, side / W, side / H])
        cmap = plt.get_cmap("viridis").with_extremes(bad="#8c8c8c")
        im = ax.imshow(norm, cmap=cmap, norm=scale, interpolation="nearest", aspect="auto")
        _confusion_axes(ax, tax, rank, n, few)
        present = int(np.isfinite(norm[:, 0]).sum())
        ax.set_title(f"{rank}: confusion matrix, rows normalised ({present} of {n} classes in the split)")
        cax = fig.add_axes([(margin_l + side + 0.25) / W, margin_b / H, 0.18 / W, side / H])
        fig.colorbar(im, cax=cax, label="share of the true class's images"
                     + ("" if few else " (square-root scale)"))
        name = f"confusion_matrix_{rank}_normalized_viridis.png"
        fig.savefig(out_dir / name, dpi=dpi, bbox_inches=None)
        plt.close(fig)
    return name


def _confusion_axes(ax, tax: Taxonomy, rank: str, n: int, few: bool) -> None:
    """Class names (few classes) or guide-rank block names, and block boundary lines."""
    guide, cuts, labels = guide_blocks(tax, rank)
    for c in cuts:
        ax.axhline(c, color="white", lw=0.5 if few else 0.35, alpha=0.55 if few else 0.3)
        ax.axvline(c, color="white", lw=0.5 if few else 0.35, alpha=0.55 if few else 0.3)
    if few:
        names = [text(s) for s in class_names(tax, rank)[:n]]
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    else:
        pos, names = [p for p, _ in labels], [text(s) for _, s in labels]
        ax.set_xticks(pos, names, rotation=90, fontsize=6)
        ax.set_yticks(pos, names, fontsize=6)
    ax.set_xlabel(f"predicted {rank}" + ("" if few or guide is None else f" (blocks: {guide})"))
    ax.set_ylabel(f"true {rank}" + ("" if few or guide is None else f" (blocks: {guide})"))


# ---------------------------------------------------------------------- confidence
def _panels(n: int, width: float = 3.2, height: float = 2.6):
    cols = 4
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * width, rows * height), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def confidence_figure(preds: pd.DataFrame, out_dir: Path) -> str:
    """Histograms of the confidence of correct and wrong predictions, one panel per key."""
    bins = np.linspace(0, 1, 31)
    with plt.rc_context(STYLE):
        fig, axes = _panels(len(KEYS))
        for ax, key in zip(axes, KEYS):
            true = preds[f"{key}_true"].to_numpy()
            known = true >= 0
            ok = (preds[f"{key}_pred"].to_numpy() == true)[known]
            conf = preds[f"{key}_conf"].to_numpy(float)[known]
            ax.hist(conf[ok], bins=bins, color=GOOD, alpha=0.75, label=f"correct ({ok.sum():,})")
            ax.hist(conf[~ok], bins=bins, color=BAD, alpha=0.65, label=f"wrong ({(~ok).sum():,})")
            ax.set_title(KEY_LABEL[key])
            ax.set_xlabel("confidence of the prediction")
            ax.legend(fontsize=7, loc="upper left")
        fig.suptitle("Confidence of correct and wrong predictions", fontweight="bold")
        fig.tight_layout()
        return _save(fig, out_dir / "confidence_distributions.png")


def reliability_figure(metrics: Metrics, out_dir: Path) -> str:
    """Reliability diagrams (accuracy against confidence in 15 bins) with the ECE, one per key."""
    with plt.rc_context(STYLE):
        fig, axes = _panels(len(KEYS))
        for ax, key in zip(axes, KEYS):
            m = metrics.summary["keys"][key]
            rel = m["reliability"]
            edges = np.asarray(rel["edges"])
            centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
            acc = np.array([np.nan if a is None else a for a in rel["accuracy"]])
            conf = np.array([np.nan if c is None else c for c in rel["confidence"]])
            ax.bar(centres, np.nan_to_num(acc), width=width * 0.92, color=MODEL_COLOR, alpha=0.85, label="accuracy")
            gap = np.nan_to_num(conf - acc)
            ax.bar(centres, np.abs(gap), bottom=np.nan_to_num(np.minimum(acc, conf)), width=width * 0.92,
                   facecolor="none", edgecolor=np.where(gap > 0, BAD, "#d68910"), hatch="////", lw=0.6,
                   label="gap to confidence")
            ax.plot([0, 1], [0, 1], ls="--", color="#555", lw=0.8)
            ece = m["ece"]
            ax.set_title(f"{KEY_LABEL[key]}   ECE {ece * 100:.1f}%" if ece is not None else KEY_LABEL[key])
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence")
            ax.set_ylabel("accuracy")
        fig.suptitle("Reliability diagrams (15 bins): bars on the diagonal = calibrated", fontweight="bold")
        fig.tight_layout()
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, ["accuracy", "gap to confidence:\nred over-, orange under-confident"],
                   loc="center", bbox_to_anchor=(0.87, 0.25), fontsize=8)
        return _save(fig, out_dir / "reliability_diagrams.png")


# ---------------------------------------------------------------------- overview
def rank_summary_figure(metrics: Metrics, out_dir: Path, baseline: Metrics | None = None) -> str:
    """Top-1 and macro-F1 (all classes) per rank, against the baseline; and how bad the mistakes are."""
    ranks = list(DISPLAY_ORDER)
    x = np.arange(len(ranks))
    with plt.rc_context(STYLE):
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 7.6), gridspec_kw={"height_ratios": [1.25, 1]})
        for j, (name, field) in enumerate([("top-1", "top1"), ("macro-F1 (all classes)", "macro_f1_all")]):
            vals = [_get(metrics, k, field) for k in ranks]
            ax.bar(x + (j - 0.5) * 0.38, vals, 0.36, color=MODEL_COLOR, alpha=1 - 0.4 * j, label=f"model {name}")
            if baseline is not None:
                b = [_get(baseline, k, field) for k in ranks]
                ax.scatter(x + (j - 0.5) * 0.38, b, marker="_", s=260, color="black", zorder=3,
                           label=f"baseline {name}")
        ax.set_xticks(x, ranks)
        ax.set_ylim(0, 1.05)
        ax.set_title("Accuracy and macro-F1 at each rank")
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.09))
        _relations_panel(ax2, metrics)
        fig.tight_layout()
        return _save(fig, out_dir / "rank_summary.png")


def _get(metrics: Metrics, key: str, field: str) -> float:
    v = metrics.summary["keys"][key][field]
    return np.nan if v is None else v


def _relations_panel(ax, metrics: Metrics) -> None:
    rel = metrics.summary["hierarchy"]["mistake_relations"]
    total = max(sum(rel.values()), 1)
    names = list(rel)
    shares = np.array([rel[k] / total for k in names])
    colors = plt.get_cmap("RdYlGn_r")(np.linspace(0.1, 0.95, len(names)))
    ax.barh(range(len(names)), shares, color=colors)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    for i, s in enumerate(shares):
        ax.text(s + 0.01, i, f"{s * 100:.1f}%", va="center", fontsize=8)
    ax.set_xlim(0, min(1, shares.max() + 0.15) if total else 1)
    ax.set_title(f"How bad are the leaf mistakes? (lowest common ancestor, n={total:,})")


# ---------------------------------------------------------------------- focus species
def focus_figure(focus: dict, out_dir: Path) -> str | None:
    """Accuracy at each rank for one focus species, what it is mistaken for, what is mistaken for it."""
    if not focus.get("found") or not focus.get("support"):
        return None
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), gridspec_kw={"width_ratios": [1, 1.25, 1.25]})
        ranks = list(RANKS)
        acc = [np.nan if focus["accuracy"][r] is None else focus["accuracy"][r] for r in ranks]
        axes[0].barh(range(len(ranks)), acc, color=MODEL_COLOR)
        axes[0].set_yticks(range(len(ranks)), ranks)
        axes[0].invert_yaxis()
        axes[0].set_xlim(0, 1.15)
        for i, a in enumerate(acc):
            axes[0].text(np.nan_to_num(a) + 0.02, i, "–" if np.isnan(a) else f"{a * 100:.0f}%", va="center")
        axes[0].set_title("accuracy at each rank")
        _counts_panel(axes[1], focus["mistaken_for"], f"mistaken for (of {focus['support']} images)")
        _counts_panel(axes[2], focus["predicted_from"], "other species predicted as it")
        flag = "  ☠ poisonous" if focus["poisonous"] else ""
        fig.suptitle(f"{text(focus['name'])}{flag}: {focus['support']} validation images", fontweight="bold",
                     color=POISON if focus["poisonous"] else "black")
        fig.tight_layout()
        return _save(fig, out_dir / f"focus_{slug(focus['name'])}.png")


def _counts_panel(ax, items: list[dict], title: str) -> None:
    ax.set_title(title)
    if not items:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color=MUTED)
        ax.set_axis_off()
        return
    counts = [it["count"] for it in items]
    colors = [POISON if it["poisonous"] else GOOD for it in items]
    ax.barh(range(len(items)), counts, color=colors)
    ax.set_yticks(range(len(items)), [text(it["species"]) + (" ☠" if it["poisonous"] else "") for it in items],
                  fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("images (red: poisonous, green: not poisonous)")


SLUG_MAX = 80  # characters: with a prefix and suffix, far below the usual 255-byte file-name limit


def slug(name: str) -> str:
    """File-name-safe lower-case version of a name, at most :data:`SLUG_MAX` ASCII characters.

    A longer (or non-ASCII) name is cut and given 8 hex digits of its digest, so two names stay two files.
    """
    import hashlib
    s = "".join(c if c.isascii() and c.isalnum() else "_" for c in name.lower()).strip("_") or "species"
    if len(s) <= SLUG_MAX and s == "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_"):
        return s
    return f"{s[:SLUG_MAX - 9]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------- specimens
def select_specimens(preds: pd.DataFrame, good: bool, exists, n: int = 12, scan: int = 400) -> np.ndarray:
    """Row positions of up to ``n`` specimens, one per true species, whose image ``exists``.

    ``good``: right at all six ranks, most confident first. Otherwise: wrong leaf, most
    confident mistakes first. At most ``scan`` candidates are checked on disk.
    """
    ok = np.ones(len(preds), dtype=bool)
    for r in RANKS:
        ok &= preds[f"{r}_pred"].to_numpy() == preds[f"{r}_true"].to_numpy()
    leaf_ok = preds[f"{LEAF}_pred"].to_numpy() == preds[f"{LEAF}_true"].to_numpy()
    cand = np.flatnonzero(ok & leaf_ok if good else ~leaf_ok & (preds[f"{LEAF}_true"].to_numpy() >= 0))
    cand = cand[np.argsort(-preds[f"{LEAF}_conf"].to_numpy()[cand], kind="stable")]
    species = preds["species_true"].to_numpy()[cand]
    _, first = np.unique(species, return_index=True)
    cand = cand[np.sort(first)][:scan]
    return np.array([i for i in cand if exists(i)][:n], dtype=np.int64)


def _thumbnail(path: str, size: int = 320):
    from amanita.data import load_rgb
    im = load_rgb(path)
    im.thumbnail((size, size))
    return np.asarray(im)


def specimen_grid(preds: pd.DataFrame, tax: Taxonomy, rows: np.ndarray, paths: Sequence[str | None],
                  out_path: Path, title: str, cols: int = 4) -> str:
    """Thumbnails with, at each rank, the true name (green) or ``true → predicted`` (red)."""
    tile_w, img_h, text_h, head, line = 3.3, 2.35, 1.3, 0.5, 0.165  # inches
    tile_h = img_h + text_h + 0.2
    n_rows = -(-len(rows) // cols)
    W, H = cols * tile_w, head + n_rows * tile_h
    with plt.rc_context(STYLE | {"axes.grid": False}):
        fig = plt.figure(figsize=(W, H))
        for k, i in enumerate(rows):
            r, c = divmod(k, cols)
            x0 = c * tile_w + 0.08
            bottom = H - head - r * tile_h - img_h
            ax = fig.add_axes([x0 / W, bottom / H, (tile_w - 0.16) / W, img_h / H])
            ax.imshow(_thumbnail(paths[i]))
            ax.set_axis_off()
            for j, (s, color) in enumerate(_specimen_lines(preds.iloc[i], tax)):
                fig.text(x0 / W, (bottom - 0.06 - j * line) / H, _clip(text(s), 52), fontsize=7.5,
                         color=color, va="top")
        fig.text(0.5, 1 - 0.12 / H, title, ha="center", va="top", fontsize=11, fontweight="bold")
        fig.savefig(out_path, bbox_inches=None)
        plt.close(fig)
    return out_path.name


def _specimen_lines(row: pd.Series, tax: Taxonomy) -> list[tuple[str, str]]:
    """One ``(text, colour)`` line per rank, then the confidence and file name."""
    lines = []
    for r in RANKS:
        t, p = int(row[f"{r}_true"]), int(row[f"{r}_pred"])
        names = class_names(tax, r)
        if t < 0:
            lines.append((f"{r}: ? → {names[p]}", MUTED))
        elif t == p:
            lines.append((f"{r}: {names[t]}", GOOD))
        else:
            lines.append((f"{r}: {names[t]} → {names[p]}", BAD))
    lines.append((f"confidence {row[f'{LEAF}_conf']:.2f} · {row['filename']}", MUTED))
    return lines


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# ---------------------------------------------------------------------- training and data
def read_training_log(path: str | os.PathLike) -> pd.DataFrame:
    """``metrics.jsonl`` as a frame (one row per line); unreadable lines are skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return pd.DataFrame.from_records(records)


def training_curves_figure(log: pd.DataFrame, out_dir: Path) -> str | None:
    """Losses, validation top-1 and F1 per rank, and the learning rate over training."""
    if log.empty:
        return None
    x = log["epoch"] if "epoch" in log else pd.Series(np.arange(len(log)))
    panels = [("loss", [c for c in log if c.endswith("/loss") or c in ("train/loss", "val/loss")]),
              ("validation top-1", [c for c in log if c.startswith("val/") and c.endswith("/acc1")]),
              ("validation macro-F1", [c for c in log if c.startswith("val/") and c.endswith("/f1")]),
              ("learning rate", [c for c in log if c == "lr" or c.startswith("lr")])]
    panels = [(t, cols) for t, cols in panels if cols]
    if not panels:
        return None
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for ax, (title, cols) in zip(axes[0], panels):
            for c in sorted(cols):
                y = pd.to_numeric(log[c], errors="coerce")
                keep = y.notna()
                ax.plot(x[keep], y[keep], marker="o" if keep.sum() < 30 else None, ms=3, lw=1.3, label=c)
            ax.set_title(title)
            ax.set_xlabel("epoch" if "epoch" in log else "log line")
            ax.legend(fontsize=6)
        fig.tight_layout()
        return _save(fig, out_dir / "training_curves.png")


def accuracy_vs_train_figure(table: pd.DataFrame, out_dir: Path, key: str = LEAF) -> str | None:
    """Per-class recall against the number of training images (log scale), with binned means."""
    t = table[(table["support"] > 0) & (table["train_images"] >= 0)]
    if t.empty:
        return None
    x = np.maximum(t["train_images"].to_numpy(float), 0.5)  # 0 training images drawn at 0.5
    y = t["recall"].to_numpy(float)
    edges = np.array([0, 1, 3, 10, 30, 100, 300, 1000, 3000, np.inf])
    b = np.digitize(t["train_images"].to_numpy(), edges) - 1
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6, 5))
        jitter = np.random.default_rng(0).uniform(-0.015, 0.015, len(y))
        ax.scatter(x, np.clip(y + jitter, 0, 1), s=6, alpha=0.25, color=MODEL_COLOR, lw=0, label="one class")
        counts = np.bincount(b, minlength=len(edges) - 1)
        mean_y = np.bincount(b, weights=y, minlength=len(edges) - 1) / np.maximum(counts, 1)
        mean_x = np.bincount(b, weights=x, minlength=len(edges) - 1) / np.maximum(counts, 1)
        has = counts > 0
        ax.plot(mean_x[has], mean_y[has], "o-", color=BAD, lw=2, label="mean recall per bin")
        for mx, my, c in zip(mean_x[has], mean_y[has], counts[has]):
            ax.annotate(f"{c}", (mx, my), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel(f"training images of the class ({KEY_LABEL[key]}; 0 drawn at 0.5)")
        ax.set_ylabel("recall on validation")
        ax.set_title("Recall against training images\n(numbers: classes per bin)")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        return _save(fig, out_dir / "accuracy_vs_training_images.png")


# ---------------------------------------------------------------------- all of them
def make_figures(preds: pd.DataFrame, tax: Taxonomy, metrics: Metrics, out_dir: str | os.PathLike,
                 baseline: Metrics | None = None, image_paths: Sequence[str | None] | None = None,
                 training_log: str | os.PathLike | None = None) -> tuple[list[FigureInfo], list[str]]:
    """Draw every figure into ``out_dir``; returns the figures and notes on those skipped.

    ``image_paths`` is aligned with the rows of ``preds`` (None: no specimen grids);
    ``training_log`` is a ``metrics.jsonl`` (None or missing: no training curves).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = [FigureInfo(rank_summary_figure(metrics, out, baseline), "Accuracy per rank and mistake severity",
                       "Top-1 and macro-F1 over all classes of each head (bars; baseline as black ticks) "
                       "and where the leaf mistakes fall in the tree.")]
    figs += _focus_figures(metrics, out)
    figs += [FigureInfo(reliability_figure(metrics, out), "Reliability diagrams",
                        "Accuracy in 15 confidence bins; hatched: the gap to the mean confidence of the bin "
                        "(red: over-confident, orange: under-confident). Bars on the diagonal mean the "
                        "confidence can be read as a probability.", "calibration"),
             FigureInfo(confidence_figure(preds, out), "Confidence of correct and wrong predictions",
                        "A useful model is confident when right and unsure when wrong.", "calibration")]
    for rank in RANKS:
        figs.append(FigureInfo(confusion_matrix_figure(preds, tax, rank, out), f"Confusion matrix: {rank}",
                               "Rows are true classes normalised to 1, classes in taxonomic order so that "
                               "related taxa sit together; grey rows have no validation images.", "confusion"))
    notes: list[str] = []
    figs += optional_figures(preds, tax, metrics, out, image_paths, training_log, notes)
    return figs, notes


def _focus_figures(metrics: Metrics, out: Path) -> list[FigureInfo]:
    figs = []
    for f in metrics.summary["focus"]:
        name = focus_figure(f, out)
        if name:
            figs.append(FigureInfo(name, f"{f['name']}", "Accuracy at each rank, what it is mistaken for "
                                   "and what is mistaken for it (red: poisonous species).", "focus"))
    return figs


def optional_figures(preds, tax, metrics, out, image_paths, training_log, notes) -> list[FigureInfo]:
    """Training curves, accuracy vs training images and specimen grids, where their inputs exist."""
    figs = []
    if training_log is not None and Path(training_log).is_file():
        name = training_curves_figure(read_training_log(training_log), out)
        if name:
            figs.append(FigureInfo(name, "Training curves", f"From {Path(training_log).name} beside the "
                                   "checkpoint.", "training"))
    else:
        notes.append("Training curves: no metrics.jsonl (looked beside the checkpoint, or give --training-log).")
    name = accuracy_vs_train_figure(metrics.per_class[LEAF], out)
    if name:
        figs.append(FigureInfo(name, "Accuracy against training images", "Each dot is a leaf class; "
                               "the red line is the mean recall of the classes in each bin.", "overview"))
    else:
        notes.append("Accuracy against training images: the taxonomy has no training counts.")
    figs += _specimen_figures(preds, tax, out, image_paths, notes)
    return figs


def _specimen_figures(preds, tax, out, image_paths, notes) -> list[FigureInfo]:
    if image_paths is None:
        notes.append("Specimen grids: no image folder given (--val-path / --image-root).")
        return []

    def exists(i: int) -> bool:
        return image_paths[i] is not None and os.path.isfile(image_paths[i])
    figs = []
    for good, file, title in [(True, "specimens_well_recognised.png", "Well recognised: right at every rank"),
                              (False, "specimens_poorly_recognised.png", "Poorly recognised: confident mistakes")]:
        rows = select_specimens(preds, good, exists)
        if len(rows) == 0:
            first = image_paths[0] if len(image_paths) else "-"
            notes.append(f"{title}: no image files found (first looked for: {first}).")
            continue
        figs.append(FigureInfo(specimen_grid(preds, tax, rows, image_paths, out / file, title), title,
                               "One specimen per species; green = right, red = true → predicted.", "specimens"))
    return figs
