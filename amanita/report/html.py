"""``validation_report.html``: one self-contained page (inline CSS and JS, figures by relative path).

Every name that reaches the page goes through :func:`e` (``html.escape``). The page opens from
disk without a server or the internet. Section ids (used by the browser test):
``summary``, ``baseline``, ``hierarchy``, ``focus``, ``safety``, ``calibration``, ``figures``,
``confused``, ``worst``, ``provenance``.
"""
from __future__ import annotations

import html
import json
from typing import Iterable

from amanita.metrics import RELATIONS, Metrics
from amanita.report.assets import CSS, JS
from amanita.report.figures import FigureInfo
from amanita.taxonomy import DISPLAY_ORDER, KEY_LABEL, LEAF, RANKS

SECTIONS = (("summary", "Per rank"), ("baseline", "Baseline"), ("hierarchy", "Hierarchy"),
            ("focus", "Death Cap & focus"), ("safety", "Poisonous species"), ("calibration", "Confidence"),
            ("figures", "Figures"), ("confused", "Confusions"), ("worst", "Worst classes"),
            ("provenance", "Provenance"))
PUBLISHED = ("The stock FungiTastic BEiT-B/224 reports 70.2% top-1 and 39.8% macro-F1 at the leaf level "
             "on val.")
DASH = '<td class="num">–</td>'


def e(value: object) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------------- small pieces
def pct(x: float | None, digits: int = 1) -> str:
    """``0.702`` → ``70.2%``; None → a dash."""
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 2) -> str:
    """A plain number with thousands separators; None → a dash."""
    return "–" if x is None else f"{x:,.{digits}f}"


def delta(model: float | None, base: float | None, as_pct: bool = True, lower_better: bool = False) -> str:
    """A coloured difference cell: percentage points for rates, plain for others."""
    if model is None or base is None:
        return DASH
    d = model - base
    good = (d < 0) if lower_better else (d > 0)
    cls = "same" if abs(d) < 1e-12 else ("up" if good else "down")
    txt = f"{100 * d:+.1f} pp" if as_pct else f"{d:+,}" if isinstance(d, int) else f"{d:+.3f}"
    return f'<td class="num delta {cls}">{txt}</td>'


def bar_cell(x: float | None) -> str:
    """A percentage cell with a proportional bar behind the number."""
    if x is None:
        return DASH
    return f'<td class="num bar" style="--w:{100 * x:.1f}%">{pct(x)}</td>'


def num_cell(text: str, cls: str = "num") -> str:
    return f'<td class="{cls}">{text}</td>'


def table(headers: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    """A table from escaped header labels and pre-built ``<tr>`` rows."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    return (f'<div class="tablewrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def species_cell(name: str, poisonous: bool = False) -> str:
    """An italic name with a skull badge for poisonous taxa."""
    badge = ' <span class="badge poison" title="poisonous">☠ poisonous</span>' if poisonous else ""
    return f"<td><i>{e(name)}</i>{badge}</td>"


def details(summary: str, body: str, open_: bool = False) -> str:
    return f'<details{" open" if open_ else ""}><summary>{e(summary)}</summary>{body}</details>'


def section(sid: str, title: str, body: str, cls: str = "", lead: str = "") -> str:
    """One ``<section id=sid>``; ``lead`` (already escaped) is the paragraph under the title."""
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{sid}" class="{cls}"><h2>{e(title)}</h2>{lead_html}{body}</section>'


def gallery(figs: list[FigureInfo], cls: str = "") -> str:
    """Figures as clickable images; ``cls``: ``wide`` (one per row) or ``half`` (two per row)."""
    items = "".join(
        f'<figure class="fig"><img class="zoom" src="{e(f.file)}" alt="{e(f.title)}" title="Click to enlarge">'
        f'<figcaption><b>{e(f.title)}.</b> {e(f.caption)}</figcaption></figure>' for f in figs)
    return f'<div class="gallery {cls}">{items}</div>' if items else ""


def stat(value: str, label: str, sub: str = "", cls: str = "") -> str:
    """A boxed number with its label (both already escaped or literal)."""
    sub_html = f'<div class="sub">{sub}</div>' if sub else ""
    return f'<div class="stat {cls}"><div class="value">{value}</div><div class="label">{label}</div>{sub_html}</div>'


# ---------------------------------------------------------------------- header
def header(m: dict, b: dict | None, prov: dict) -> str:
    """Title, run line, the key-number cards and a verdict in four sentences."""
    leaf, h, p = m["keys"][LEAF], m["hierarchy"], m["poison"]
    base = f"baseline {pct(b['keys'][LEAF]['top1'])}" if b else "no baseline"
    focus = next((f for f in m["focus"] if f.get("found") and f.get("support")), None)
    cards = [card("Species top-1", pct(leaf["top1"]), f"leaf level, {base}"),
             card("Macro-F1", pct(leaf["macro_f1_all"]),
                  f"all {leaf['n_classes_head']:,} classes · present: {pct(leaf['macro_f1_present'])}"),
             card("Genus top-1", pct(m["keys"]["genus"]["top1"]), f"family {pct(m['keys']['family']['top1'])}"),
             card("All six ranks right", pct(h["hierarchical_accuracy"]),
                  f"consistent lineage {pct(h['consistency_rate'])}"),
             card("Mistake severity", num(h["mistake_severity"]), "mean LCA height of mistakes (1 = same genus)"),
             card("Calibration error", pct(leaf["ece"]), f"ECE, mean confidence {pct(leaf['avg_confidence'])}"),
             card("Poison cost", num(p["cost"], 3), f"PSC {p['psc']:,} · ESC {p['esc']:,}", "danger")]
    if focus:
        label = "Death Cap recall" if focus["name"] == "Amanita phalloides" else "Focus species recall"
        cards.append(card(label, pct(focus["accuracy"]["species"]),
                          f"<i>{e(focus['name'])}</i>: {focus['support']:,} images, "
                          f"{focus['predicted_edible']:,} called non-poisonous", "danger"))
    source = prov.get("checkpoint") or prov.get("predictions") or "predictions"
    run = f"{e(source)} · {m['n_samples']:,} validation images · {e(prov.get('date', ''))}"
    return (f'<header><div class="wrap"><div class="kicker">amanita · multi-rank fungi classification</div>'
            f'<h1>Validation report</h1><div class="run">{run}</div><div class="cards">{"".join(cards)}</div>'
            f'<p class="verdict">{verdict(m, focus)}</p></div></header>')


def card(label: str, value: str, sub: str, cls: str = "") -> str:
    """One key-number card; ``label`` and ``sub`` must already be escaped or literal."""
    return (f'<div class="card {cls}"><div class="label">{label}</div><div class="value">{value}</div>'
            f'<div class="sub">{sub}</div></div>')


def verdict(m: dict, focus: dict | None) -> str:
    """Sentences that answer the report's questions: how good, how bad, trust, deadly species."""
    leaf, h, p = m["keys"][LEAF], m["hierarchy"], m["poison"]
    rel = h["mistake_relations"]
    close = (rel["same species"] + rel["same genus"]) / max(1, h["n_mistakes"])
    gap = (leaf["avg_confidence"] or 0) - (leaf["top1"] or 0)
    trust = (f"over-confident by {100 * gap:.1f} points" if gap > 0.01 else
             f"under-confident by {-100 * gap:.1f} points" if gap < -0.01 else "well calibrated")
    pois = p["n_poisonous_samples"]
    out = [f"The model names the species (leaf) of <b>{pct(leaf['top1'])}</b> of the images "
           f"(top-5 {pct(leaf['top5'])}) and the genus of <b>{pct(m['keys']['genus']['top1'])}</b>.",
           f"When it is wrong, <b>{pct(close)}</b> of its mistakes stay within the true genus.",
           f"Its species confidence is {trust} (ECE {pct(leaf['ece'])}).",
           f"Of {pois:,} images of poisonous species, <b>{p['psc']:,} ({pct(p['psc'] / pois if pois else None)})"
           "</b> were named as a non-poisonous species."]
    if focus:
        out.append(f"<i>{e(focus['name'])}</i>: {pct(focus['accuracy']['species'])} recognised, "
                   f"{focus['predicted_edible']} of {focus['support']} images called non-poisonous.")
    return " ".join(out)


def nav(extra: Iterable[tuple[str, str]] = ()) -> str:
    links = "".join(f'<a href="#{i}">{e(t)}</a>' for i, t in (*SECTIONS[:2], *extra, *SECTIONS[2:]))
    return f'<nav><div class="wrap">{links}</div></nav>'


# ---------------------------------------------------------------------- per-rank summary
def summary_row(k: str, r: dict) -> str:
    """One rank of the summary table."""
    unknown = f' <span class="muted">({r["n_unknown"]:,} unknown)</span>' if r["n_unknown"] else ""
    cells = [num_cell(f'{r["n_classes_present"]:,} / {r["n_classes_head"]:,}'), num_cell(f'{r["n"]:,}{unknown}'),
             bar_cell(r["top1"]), bar_cell(r["top5"]), num_cell(pct(r["macro_f1_present"])),
             num_cell(pct(r["macro_f1_all"])), num_cell(pct(r["avg_confidence"])), num_cell(pct(r["ece"])),
             num_cell(num(r["nll"], 3))]
    return f'<tr class="{"leafrow" if k == LEAF else ""}"><th>{e(KEY_LABEL[k])}</th>{"".join(cells)}</tr>'


def summary_section(m: dict, figs: list[FigureInfo]) -> str:
    """How good is it at each rank: the table and the overview figures."""
    rows = [summary_row(k, m["keys"][k]) for k in DISPLAY_ORDER]
    heads = ["rank", "classes present / head", "images evaluated", "top-1", "top-5", "macro-F1 (classes present)",
             "macro-F1 (all head classes)", "mean confidence", "ECE (15 bins)", "NLL"]
    lead = ("Each rank is scored on the images whose label at that rank is known. The leaf row is the "
            "<code>category_id</code> head, the number comparable with FungiTastic's; the species row merges "
            f"synonymous ids. {e(PUBLISHED)} Macro-F1 is given over the classes present in this split and over "
            "every class of the head (FungiTastic's convention: absent classes count 0).")
    body = table(heads, rows, "ranks") + gallery([f for f in figs if f.group == "overview"], "half")
    return section("summary", "How good is it at each rank?", body, lead=lead)


# ---------------------------------------------------------------------- baseline
BASELINE_METRICS = (("top-1", "top1", False), ("top-5", "top5", False),
                    ("macro-F1 (all classes)", "macro_f1_all", False), ("ECE", "ece", True))
BASELINE_OVERALL = (("all six ranks right", "hierarchy", "hierarchical_accuracy", True, False),
                    ("consistent lineage", "hierarchy", "consistency_rate", True, False),
                    ("mistake severity (LCA height)", "hierarchy", "mistake_severity", False, True),
                    ("hierarchical distance@1", "hierarchy", "hdist@1", False, True),
                    ("PSC: poisonous → edible", "poison", "psc", False, True),
                    ("poison cost", "poison", "cost", False, True))


def baseline_section(m: dict, b: dict | None, name: str | None) -> str:
    """Model, baseline and Δ for the main metrics of each rank, then hierarchy and safety."""
    if b is None:
        return section("baseline", "Comparison with the baseline",
                       '<p class="note">No baseline given (<code>--baseline-checkpoint</code>, '
                       '<code>--baseline-model</code> or <code>--baseline-predictions</code>).</p>')
    groups = "".join(f'<th colspan="3" class="group">{e(label)}</th>' for label, _, _ in BASELINE_METRICS)
    sub = '<th class="num">model</th><th class="num">baseline</th><th class="num">Δ</th>' * len(BASELINE_METRICS)
    rows = []
    for k in DISPLAY_ORDER:
        mk, bk = m["keys"][k], b["keys"][k]
        cells = "".join(num_cell(pct(mk[f])) + num_cell(pct(bk[f]), "num muted") + delta(mk[f], bk[f], True, lower)
                        for _, f, lower in BASELINE_METRICS)
        rows.append(f'<tr class="{"leafrow" if k == LEAF else ""}"><th>{e(KEY_LABEL[k])}</th>{cells}</tr>')
    wide = (f'<div class="tablewrap"><table class="compact ranks"><thead><tr><th rowspan="2">rank</th>{groups}'
            f'</tr><tr>{sub}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')
    overall = []
    for label, part, f, as_pct, lower in BASELINE_OVERALL:
        mv, bv = m[part][f], b[part][f]
        fmt = pct if as_pct else (lambda x: f"{x:,}" if isinstance(x, int) else num(x, 3))
        overall.append(f'<tr><td>{e(label)}</td>{num_cell(fmt(mv))}{num_cell(fmt(bv), "num muted")}'
                       f'{delta(mv, bv, as_pct, lower)}</tr>')
    lead = (f"Baseline: <b>{e(name or 'baseline')}</b>. Green Δ = this model is better "
            "(lower is better for ECE, severity, distance, PSC and cost).")
    body = wide + "<h3>Hierarchy and safety</h3>" + table(["metric", "model", "baseline", "Δ"], overall,
                                                          "compact narrow")
    return section("baseline", "Comparison with the baseline", body, lead=lead)


# ---------------------------------------------------------------------- hierarchy
def hierarchy_section(m: dict) -> str:
    """How bad are the mistakes: hierarchical numbers, LCA heights of mistakes, rank agreement."""
    h = m["hierarchy"]
    stats = "".join([
        stat(pct(h["hierarchical_accuracy"]), "All six ranks right",
             f"of {h['n_all_ranks_known']:,} images with all six ranks known"),
        stat(pct(h["consistency_rate"]), "Consistent lineage",
             "the six predicted ranks are the ancestors of the predicted leaf"),
        stat(num(h["mistake_severity"]), "Mistake severity", f"mean LCA height over {h['n_mistakes']:,} leaf mistakes"),
        stat(num(h["hdist@1"]), "Hierarchical distance@1", "mean LCA height of the prediction, all images"),
        stat(num(h["hdist@5"]), "Hierarchical distance@5", "mean LCA height of the five most likely leaves")])
    rel = h["mistake_relations"]
    total = max(1, sum(rel.values()))
    rel_rows = [f'<tr><td>{e(r)}</td>{num_cell(str(i))}{num_cell(f"{rel[r]:,}")}{bar_cell(rel[r] / total)}</tr>'
                for i, r in enumerate(RELATIONS)]
    cons = [f'<tr><td>{e(r)}</td>{bar_cell(h["consistency_by_rank"][r])}</tr>' for r in RANKS]
    body = (f'<div class="stats">{stats}</div><div class="two"><div><h3>Where the leaf mistakes land</h3>'
            f'{table(["lowest common ancestor", "height", "mistakes", "share"], rel_rows, "compact")}</div>'
            f'<div><h3>Agreement of each rank with the predicted leaf</h3>'
            f'{table(["rank", "consistent"], cons, "compact")}</div></div>')
    lead = ("Heights of the lowest common ancestor (LCA) of the true and predicted leaf: 0 same species "
            "(a synonym), 1 same genus, 2 same family, … 6 different phylum (Bertinetto et al., "
            "<i>Making Better Mistakes</i>, CVPR 2020). Lower is better.")
    return section("hierarchy", "How bad are the mistakes?", body, lead=lead)


# ---------------------------------------------------------------------- focus species
def focus_section(m: dict, figs: list[FigureInfo]) -> str:
    """One block per ``--focus-species``, the Death Cap first by default."""
    blocks = [focus_block(f, [g for g in figs if g.group == "focus" and g.title == f["name"]]) for f in m["focus"]]
    lead = "The species asked for with <code>--focus-species</code>, first of all the Death Cap."
    body = "".join(blocks) or '<p class="note">No focus species.</p>'
    return section("focus", "The Death Cap and the focus species", body, lead=lead)


def focus_block(f: dict, figs: list[FigureInfo]) -> str:
    """Lineage, key facts, accuracy per rank, confusions both ways and the figure of one species."""
    if not f.get("found"):
        close = ", ".join(e(s) for s in f.get("suggestions", [])) or "none"
        return (f'<div class="focus"><h3>{e(f["name"])}</h3>'
                f'<p class="note">Not in the taxonomy. Close names: {close}.</p></div>')
    badge = ' <span class="badge poison">☠ poisonous</span>' if f["poisonous"] else ""
    lineage = " › ".join(e(v) for v in f["lineage"].values() if v)
    title = f'<h3><i>{e(f["name"])}</i>{badge}</h3><div class="muted">{lineage}</div>'
    if not f["support"]:
        return f'<div class="focus">{title}<p class="note">No validation images of this species.</p></div>'
    train = "?" if f["train_images"] is None else f'{f["train_images"]:,}'
    facts = (f'<p>{f["support"]:,} validation images · {train} training images · mean confidence '
             f'{pct(f["mean_confidence"])} · precision {pct(f["precision"])} ({f["n_predicted"]:,} predictions) · '
             f'<b class="{"bad" if f["predicted_edible"] else ""}">{f["predicted_edible"]:,} predicted as a '
             f'non-poisonous species</b></p>')
    acc = [f'<tr><td>{e(KEY_LABEL[k])}</td>{bar_cell(f["accuracy"][k])}</tr>' for k in DISPLAY_ORDER]
    body = (f'<div class="three"><div><h4>Accuracy at each rank</h4>{table(["rank", "accuracy"], acc, "compact")}'
            f'</div><div><h4>Mistaken for</h4>{named_counts(f["mistaken_for"])}</div>'
            f'<div><h4>Other species predicted as it</h4>{named_counts(f["predicted_from"])}</div></div>')
    return f'<div class="focus">{title}{facts}{body}{gallery(figs)}</div>'


def named_counts(items: list[dict]) -> str:
    """Species with image counts and their relation to the focus species."""
    if not items:
        return '<p class="note">None.</p>'
    rows = [f'<tr class="{"poisonrow" if it["poisonous"] else ""}">{species_cell(it["species"], it["poisonous"])}'
            f'{num_cell(format(it["count"], ","))}<td class="muted">{e(it["relation"])}</td></tr>' for it in items]
    return table(["species", "images", "relation"], rows, "compact")


# ---------------------------------------------------------------------- safety
def safety_section(m: dict) -> str:
    """The red-bordered section: poison cost, PSC, ESC and one row per poisonous species."""
    p, s = m["poison"], m["safety"]
    stats = "".join([
        stat(num(p["cost"], 3), "poison cost (100·PSC + ESC) / N", cls="danger"),
        stat(f'{p["psc"]:,}', "PSC: poisonous → edible", f'of {p["n_poisonous_samples"]:,} poisonous images',
             "danger"),
        stat(f'{p["esc"]:,}', "ESC: edible → poisonous", f'of {p["n_edible_samples"]:,} edible images'),
        stat(pct(p["poisonous_flagged_rate"]), "poisonous images predicted as some poisonous species")])
    rows = [safety_row(r) for r in s["rows"]]
    heads = ["poisonous species", "images", "recall (species)", "right genus", "predicted edible", "share edible",
             "predicted as (edible species)"]
    tbl = (table(heads, rows, "compact sortable scroll") if rows
           else '<p class="note">No poisonous species in this split.</p>')
    lead = (f"Species-rank predictions of the images of poisonous species; “predicted edible” (as a "
            f"non-poisonous species) sums to PSC. {s['n_poisonous_species']:,} species are poisonous in the "
            f"taxonomy, {s['n_poisonous_species_absent']:,} of them without validation images. "
            "A mistake here can kill: read this table before trusting the model in the field.")
    return section("safety", "Poisonous species: safety", f'<div class="stats">{stats}</div>{tbl}',
                   cls="danger", lead=lead)


def safety_row(r: dict) -> str:
    """One poisonous species: support, recall, genus, how often and as what it is called edible."""
    which = ", ".join(f"<i>{e(n)}</i> ({c:,})" for n, c in r["as_edible_species"]) or "–"
    bad = "num bad" if r["predicted_edible"] else "num"
    return (f'<tr>{species_cell(r["species"])}{num_cell(format(r["support"], ","))}{bar_cell(r["recall"])}'
            f'{num_cell(pct(r["genus_recall"]))}{num_cell(format(r["predicted_edible"], ","), bad)}'
            f'{num_cell(pct(r["predicted_edible_rate"]), bad)}<td>{which}</td></tr>')


# ---------------------------------------------------------------------- figures
def calibration_section(m: dict, figs: list[FigureInfo], prov: dict) -> str:
    """Can the confidence be trusted: temperatures, ECE before/after, lineage ECE, reliability diagrams."""
    worst = max(DISPLAY_ORDER, key=lambda k: m["keys"][k]["ece"] or 0)
    cal = prov.get("calibration") or (prov.get("original_run") or {}).get("calibration")
    lead = (f"Expected calibration error (15 bins) per rank is in the summary table; the largest is "
            f"{pct(m['keys'][worst]['ece'])} at {e(KEY_LABEL[worst])}. A calibrated model that says 80% is "
            "right 80% of the time. "
            + (f"The confidences are temperature-scaled (one temperature per rank, fitted by NLL on "
               f"{e(cal.get('fitted_on'))}, {cal.get('n_samples')} images)." if cal else
               "The confidences are not temperature-scaled (run <code>validate.py --calibrate</code>)."))
    return section("calibration", "Can the confidence be trusted?",
                   temperature_table(cal) + lineage_table(m.get("lineage_calibration"))
                   + gallery([f for f in figs if f.group == "calibration"], "wide"), lead=lead)


def temperature_table(cal: dict | None) -> str:
    """Per rank: the fitted temperature and the ECE before and after it, on the split it was fitted on."""
    if not cal:
        return ""
    rows = [f"<tr><td>{e(KEY_LABEL.get(k, k))}</td>{num_cell(num(r.get('temperature'), 3))}"
            f"{num_cell(pct(r.get('ece_before')))}{num_cell(pct(r.get('ece_after')))}"
            f"{num_cell(pct(r.get('ece_after_cross_fitted')))}</tr>" for k, r in cal.get("keys", {}).items()]
    return table(["rank", "temperature", "ECE before", "ECE after", "ECE after (2-fold cross-fitted)"], rows)


def lineage_table(lin: dict | None) -> str:
    """Per rank: the lineage confidence (never rising towards the leaf) against the lineage being right."""
    if not lin:
        return ""
    rows = [f"<tr><td>{e(KEY_LABEL.get(k, k))}</td>{num_cell(pct(r['avg_confidence']))}"
            f"{num_cell(pct(r['accuracy']))}{num_cell(pct(r['ece']))}</tr>" for k, r in lin.items()]
    return ("<p>Lineage confidence: the probability that the prediction is right from the phylum down to "
            "the rank (the mass of the predicted node under the leaf distribution), as printed by "
            "<code>test.py</code>.</p>"
            + table(["down to", "mean lineage confidence", "lineage right", "ECE"], rows))


def figures_section(figs: list[FigureInfo], notes: list[str]) -> str:
    """Specimen grids, training curves, confusion matrices, and why any figure is missing."""
    note_html = "".join(f'<p class="note">{e(n)}</p>' for n in notes)
    body = (gallery([f for f in figs if f.group == "specimens"], "wide")
            + gallery([f for f in figs if f.group == "training"], "wide")
            + "<h3>Confusion matrices</h3>" + gallery([f for f in figs if f.group == "confusion"]) + note_html)
    lead = "Click any figure to enlarge it; click again for full size (the species matrix has one pixel per class)."
    return section("figures", "Figures", body, lead=lead)


# ---------------------------------------------------------------------- tables
def confused_section(m: dict) -> str:
    """The most frequent (true, predicted) mistakes at the leaf, genus, family and order."""
    blocks = []
    for k in (LEAF, "genus", "family", "order"):
        rows = [f'<tr>{species_cell(p["true"], p["true_poisonous"])}{species_cell(p["pred"], p["pred_poisonous"])}'
                f'{num_cell(format(p["count"], ","))}{num_cell(pct(p["share_of_true"]))}<td>{e(p["relation"])}</td>'
                f'</tr>' for p in m["confused_pairs"][k]]
        tbl = (table(["true", "predicted as", "images", "share of true", "relation"], rows, "compact") if rows
               else '<p class="note">No mistakes.</p>')
        blocks.append(details(f"{KEY_LABEL[k]}: {len(rows)} most frequent confusions", tbl, open_=k == LEAF))
    lead = ("The most frequent (true, predicted) pairs of mistakes; a poisonous species mistaken for an edible "
            "one is the costly direction.")
    return section("confused", "Most-confused pairs", "".join(blocks), lead=lead)


def worst_section(m: dict) -> str:
    """The lowest-recall classes at the leaf, species, genus and family."""
    blocks = []
    for k in (LEAF, "species", "genus", "family"):
        rows = [worst_row(r, k) for r in m["worst_classes"][k]]
        heads = ["class"] + (["family", "genus"] if k in (LEAF, "species") else []) + [
            "images", "recall", "precision", "F1", "train images", "most often predicted as"]
        tbl = table(heads, rows, "compact") if rows else '<p class="note">No class with enough images.</p>'
        blocks.append(details(f"{KEY_LABEL[k]}: {len(rows)} lowest recall", tbl, open_=k == LEAF))
    return section("worst", "Worst-recognised classes", "".join(blocks),
                   lead="Classes with at least 3 validation images, lowest recall first.")


def worst_row(r: dict, key: str) -> str:
    lineage = f'<td>{e(r.get("family", ""))}</td><td>{e(r.get("genus", ""))}</td>' if key in (LEAF, "species") else ""
    conf = f'<i>{e(r["confused_with"])}</i> ({r["confused_count"]:,})' if r["confused_count"] else "–"
    train = "–" if r["train_images"] is None or r["train_images"] < 0 else f'{r["train_images"]:,}'
    return (f'<tr>{species_cell(r["name"], r["poisonous"])}{lineage}{num_cell(format(r["support"], ","))}'
            f'{bar_cell(r["recall"])}{num_cell(pct(r["precision"]))}{num_cell(pct(r["f1"]))}{num_cell(train)}'
            f'<td>{conf}</td></tr>')


# ---------------------------------------------------------------------- provenance
def provenance_section(prov: dict) -> str:
    """Plain values as a table, nested ones (arguments, checkpoint info) as collapsible JSON."""
    simple = {k: v for k, v in prov.items() if not isinstance(v, (dict, list))}
    nested = {k: v for k, v in prov.items() if isinstance(v, (dict, list))}
    rows = [f'<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>' for k, v in simple.items()]
    blocks = "".join(details(k, f'<pre>{e(json.dumps(v, indent=2, default=str, ensure_ascii=False))}</pre>')
                     for k, v in nested.items())
    return section("provenance", "Run configuration and provenance", table(["", "value"], rows, "compact kv") + blocks,
                   lead="Everything needed to trace these numbers to the exact checkpoint, data and code.")


# ---------------------------------------------------------------------- page
def render_report(metrics: Metrics, figures: list[FigureInfo], notes: list[str] | None = None,
                  baseline: Metrics | None = None, baseline_name: str | None = None,
                  provenance: dict | None = None, extra: dict[str, tuple[str, str]] | None = None) -> str:
    """The whole HTML page as a string; ``extra`` ``{id: (nav label, section html)}`` follows the baseline."""
    m, b, prov = metrics.summary, baseline.summary if baseline else None, provenance or {}
    extra = extra or {}
    body = "".join([summary_section(m, figures), baseline_section(m, b, baseline_name),
                    *(html_ for _, html_ in extra.values()), hierarchy_section(m),
                    focus_section(m, figures), safety_section(m), calibration_section(m, figures, prov),
                    figures_section(figures, notes or []), confused_section(m), worst_section(m),
                    provenance_section(prov)])
    footer = ("Generated by amanita <code>validate.py</code>. Numbers in <code>metrics.json</code>, per-sample "
              "predictions in <code>predictions.csv</code>, per-class tables in <code>per_class_*.csv</code>.")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>Validation report · amanita</title><style>{CSS}</style></head><body>'
            f'{header(m, b, prov)}{nav((i, t) for i, (t, _) in extra.items())}<main class="wrap">{body}</main>'
            f'<footer class="wrap">{footer}</footer><script>{JS}</script></body></html>')
