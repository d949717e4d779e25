"""Report section "Per image and per observation": every headline number at both levels, side by side."""
from __future__ import annotations

from amanita.report.html import delta, e, num, num_cell, pct, section, table
from amanita.taxonomy import DISPLAY_ORDER, KEY_LABEL

LEVEL_METRICS = (("top-1", "top1"), ("top-5", "top5"), ("macro-F1 (present)", "macro_f1_present"),
                 ("ECE", "ece"))
OVERALL = (("all six ranks right", "hierarchy", "hierarchical_accuracy", True, False),
           ("consistent lineage", "hierarchy", "consistency_rate", True, False),
           ("mistake severity (LCA height)", "hierarchy", "mistake_severity", False, True),
           ("PSC: poisonous → edible", "poison", "psc", False, True),
           ("ESC: edible → poisonous", "poison", "esc", False, True),
           ("poison cost (100·PSC + ESC) / N", "poison", "cost", False, True),
           ("N (poison cost)", "poison", "n", False, False))


def _pair(label: str, a, b, as_pct: bool, lower: bool) -> str:
    fmt = pct if as_pct else (lambda x: "–" if x is None else f"{x:,}" if isinstance(x, int) else num(x, 3))
    return f"<tr><td>{e(label)}</td>{num_cell(fmt(a))}{num_cell(fmt(b))}{delta(b, a, as_pct, lower)}</tr>"


def rank_rows(img: dict, obs: dict) -> list[str]:
    rows = []
    for k in DISPLAY_ORDER:
        i, o = img["keys"][k], obs["keys"][k]
        cells = "".join(num_cell(pct(i[f])) + num_cell(pct(o[f])) + delta(o[f], i[f], True, f == "ece")
                        for _, f in LEVEL_METRICS)
        counts = num_cell(f"{i['n']:,} / {o['n']:,}")
        rows.append(f"<tr><th>{e(KEY_LABEL[k])}</th>{counts}{cells}</tr>")
    return rows


def focus_rows(img: dict, obs: dict) -> list[str]:
    """Death Cap and the other focus species: support, species and genus accuracy at both levels."""
    rows = []
    for fi, fo in zip(img["focus"], obs["focus"]):
        if not fi.get("found") or not fi.get("support"):
            continue
        for k in ("species", "genus"):
            rows.append(_pair(f"{fi['name']}: {k} accuracy", fi["accuracy"][k], fo["accuracy"][k], True, False))
        rows.append(_pair(f"{fi['name']}: predicted as a non-poisonous species", fi["predicted_edible"],
                          fo["predicted_edible"], False, True))
    return rows


def levels_section(img: dict, obs: dict | None, combine: str | None = None,
                   baseline: tuple[dict, dict] | None = None) -> str:
    """Per image | per observation | Δ for every rank, the hierarchy, the poison cost and the focus species."""
    if obs is None:
        return section("levels", "Per image and per observation",
                       '<p class="note">No observation-level predictions (<code>--aggregate observation</code> '
                       "needs an <code>observationID</code> column).</p>")
    groups = "".join(f'<th colspan="3" class="group">{e(label)}</th>' for label, _ in LEVEL_METRICS)
    sub = '<th class="num">image</th><th class="num">observation</th><th class="num">Δ</th>' * len(LEVEL_METRICS)
    wide = (f'<div class="tablewrap"><table class="compact ranks"><thead><tr><th rowspan="2">rank</th>'
            f'<th rowspan="2">images / observations</th>{groups}</tr><tr>{sub}</tr></thead>'
            f'<tbody>{"".join(rank_rows(img, obs))}</tbody></table></div>')
    overall = [_pair(label, img[p][f], obs[p][f], as_pct, lower) for label, p, f, as_pct, lower in OVERALL]
    overall += focus_rows(img, obs)
    if baseline is not None:
        bi, bo = baseline
        overall += [_pair(f"baseline: {KEY_LABEL[k]} top-1", bi["keys"][k]["top1"], bo["keys"][k]["top1"], True,
                          False) for k in ("genus", "species")]
    how = {"mean-prob": "the mean of its images' probabilities", "mean-logp":
           "the mean of its images' log-probabilities (renormalised)"}.get(combine or "", "its images' outputs combined")
    lead = (f"An observation is one find photographed several times (<code>observationID</code>). Its answer is "
            f"{how} at every rank, decoded like an image; its truth and poison status are its first image's, "
            "as in FungiCLEF's evaluate.py, so the poison cost per observation counts one row per observation. "
            "Green Δ = the observation-level number is better.")
    body = wide + "<h3>Hierarchy, safety and the Death Cap</h3>" + table(
        ["metric", "per image", "per observation", "Δ"], overall, "compact narrow")
    return section("levels", "Per image and per observation", body, lead=lead)
