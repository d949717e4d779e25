"""``validation_report.html``: one self-contained page (inline CSS and JS, figures by relative path).

Every name that reaches the page goes through :func:`e` (``html.escape``). The page opens from
disk without a server or the internet. Section ids (used by the browser test):
``summary``, ``baseline``, ``hierarchy``, ``focus``, ``safety``, ``calibration``, ``figures``,
``confused``, ``worst``, ``provenance``.
"""
from __future__ import annotations

import html
import json
from typing import Callable, Iterable

from amanita.metrics import RELATIONS, Metrics
from amanita.report.figures import FigureInfo
from amanita.taxonomy import LEAF, RANKS

SECTIONS = (("summary", "Per rank"), ("baseline", "Baseline"), ("hierarchy", "Hierarchy"),
            ("focus", "Death Cap & focus"), ("safety", "Poisonous species"), ("calibration", "Confidence"),
            ("figures", "Figures"), ("confused", "Confusions"), ("worst", "Worst classes"),
            ("provenance", "Provenance"))
ROW_KEYS = RANKS + (LEAF,)
KEY_LABEL = {LEAF: "leaf (category_id)"} | {r: r for r in RANKS}
PUBLISHED = "The stock FungiTastic BEiT-B/224 reports 70.2% top-1 and 39.8% macro-F1 at the leaf level on val."


def e(value: object) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------------- number formatting
def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def delta(model: float | None, base: float | None, as_pct: bool = True, lower_better: bool = False) -> str:
    """A coloured difference cell: percentage points for rates, plain for others."""
    if model is None or base is None:
        return '<td class="num">–</td>'
    d = model - base
    good = (d < 0) if lower_better else (d > 0)
    cls = "same" if abs(d) < 1e-12 else ("up" if good else "down")
    txt = f"{100 * d:+.1f} pp" if as_pct else f"{d:+.3f}"
    return f'<td class="num delta {cls}">{txt}</td>'


def bar_cell(x: float | None) -> str:
    """A percentage cell with a proportional bar behind the number."""
    if x is None:
        return '<td class="num">–</td>'
    return f'<td class="num bar" style="--w:{100 * x:.1f}%">{pct(x)}</td>'


def table(headers: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    """A table from escaped header labels and pre-built ``<tr>`` rows."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    return f'<div class="tablewrap"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def poison_badge(flag: bool) -> str:
    return ' <span class="badge poison" title="poisonous">☠ poisonous</span>' if flag else ""


# ---------------------------------------------------------------------- header
def header(m: dict, b: dict | None, prov: dict) -> str:
    """Title, run line and the key-number cards."""
    leaf, genus, h, p = m["keys"][LEAF], m["keys"]["genus"], m["hierarchy"], m["poison"]
    bl = b["keys"][LEAF] if b else None
    focus = next((f for f in m["focus"] if f.get("found") and f.get("support")), None)
    cards = [
        card("Species top-1", pct(leaf["top1"]), "leaf level, " + (f"baseline {pct(bl['top1'])}" if bl else "no baseline")),
        card("Macro-F1", pct(leaf["macro_f1_all"]), f"all {leaf['n_classes_head']:,} classes · present: {pct(leaf['macro_f1_present'])}"),
        card("Genus top-1", pct(genus["top1"]), f"family {pct(m['keys']['family']['top1'])}"),
        card("All six ranks right", pct(h["hierarchical_accuracy"]), f"consistent lineage {pct(h['consistency_rate'])}"),
        card("Mistake severity", num(h["mistake_severity"]), "mean LCA height of mistakes (1 = same genus)"),
        card("Calibration error", pct(leaf["ece"]), f"ECE, mean confidence {pct(leaf['avg_confidence'])}"),
        card("Poison cost", num(p["cost"], 3), f"PSC {p['psc']:,} · ESC {p['esc']:,}", "danger"),
    ]
    if focus:
        cards.append(card(f"{e(focus['name'])} recall", pct(focus["accuracy"]["species"]),
                          f"{focus['support']} images, {focus['predicted_edible']} called edible", "danger"))
    ckpt = prov.get("checkpoint") or prov.get("predictions") or "predictions"
    run = f"{e(ckpt)} · {m['n_samples']:,} validation images · {e(prov.get('date', ''))}"
    return (f'<header><div class="wrap"><div class="kicker">amanita · multi-rank fungi classification</div>'
            f'<h1>Validation report</h1><div class="run">{run}</div>'
            f'<div class="cards">{"".join(cards)}</div><p class="verdict">{verdict(m, focus)}</p></div></header>')


def verdict(m: dict, focus: dict | None) -> str:
    """Four sentences that answer the report's questions: how good, how bad, trust, deadly species."""
    leaf, genus, h, p = m["keys"][LEAF], m["keys"]["genus"], m["hierarchy"], m["poison"]
    rel, n_mis = h["mistake_relations"], max(1, h["n_mistakes"])
    close = (rel["same species"] + rel["same genus"]) / n_mis
    gap = (leaf["avg_confidence"] or 0) - (leaf["top1"] or 0)
    trust = (f"over-confident by {100 * gap:.1f} points" if gap > 0.01 else
             f"under-confident by {-100 * gap:.1f} points" if gap < -0.01 else "well calibrated")
    pois = p["n_poisonous_samples"]
    out = [f"The model names the species (leaf) of <b>{pct(leaf['top1'])}</b> of the images "
           f"(top-5 {pct(leaf['top5'])}) and the genus of <b>{pct(genus['top1'])}</b>.",
           f"When it is wrong, <b>{pct(close)}</b> of its mistakes stay within the true genus.",
           f"Its species confidence is {trust} (ECE {pct(leaf['ece'])}).",
           f"Of {pois:,} images of poisonous species, <b>{p['psc']:,} ({pct(p['psc'] / pois if pois else None)})</b> "
           "were named as a non-poisonous species."]
    if focus:
        out.append(f"<i>{e(focus['name'])}</i>: {pct(focus['accuracy']['species'])} recognised, "
                   f"{focus['predicted_edible']} of {focus['support']} images called non-poisonous.")
    return " ".join(out)


def card(label: str, value: str, sub: str, cls: str = "") -> str:
    """One key-number card; ``label`` and ``sub`` must already be escaped or literal."""
    return (f'<div class="card {cls}"><div class="label">{label}</div><div class="value">{value}</div>'
            f'<div class="sub">{sub}</div></div>')


def nav() -> str:
    links = "".join(f'<a href="#{i}">{e(t)}</a>' for i, t in SECTIONS)
    return f'<nav><div class="wrap">{links}</div></nav>'


def section(sid: str, title: str, body: str, cls: str = "", lead: str = "") -> str:
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{sid}" class="{cls}"><h2>{e(title)}</h2>{lead_html}{body}</section>'


# ---------------------------------------------------------------------- per-rank summary
def summary_section(m: dict) -> str:
    rows = []
    for k in ROW_KEYS:
        r = m["keys"][k]
        rows.append(f'<tr class="{"leafrow" if k == LEAF else ""}"><th>{e(KEY_LABEL[k])}</th>'
                    f'<td class="num">{r["n_classes_present"]:,} / {r["n_classes_head"]:,}</td>'
                    f'<td class="num">{r["n"]:,}' + (f' <span class="muted">({r["n_unknown"]:,} unknown)</span>' if r["n_unknown"] else "")
                    + f'</td>{bar_cell(r["top1"])}{bar_cell(r["top5"])}<td class="num">{pct(r["macro_f1_present"])}</td>'
                    f'<td class="num">{pct(r["macro_f1_all"])}</td><td class="num">{pct(r["avg_confidence"])}</td>'
                    f'<td class="num">{pct(r["ece"])}</td><td class="num">{num(r["nll"], 3)}</td></tr>')
    heads = ["rank", "classes present / head", "images evaluated", "top-1", "top-5",
             "macro-F1 (classes present)", "macro-F1 (all head classes)", "mean confidence", "ECE (15 bins)", "NLL"]
    lead = ("Each rank is scored on the images whose label at that rank is known. The leaf row is the "
            "<code>category_id</code> head, the number comparable with FungiTastic's; the species row merges "
            f"synonymous ids. {e(PUBLISHED)} Macro-F1 is given over the classes present in this split and over "
            "every class of the head (FungiTastic's convention: absent classes count 0).")
    return section("summary", "How good is it at each rank?", table(heads, rows, "ranks"), lead=lead)


# ---------------------------------------------------------------------- baseline
BASELINE_ROWS = (("top-1", "top1", True, False), ("top-5", "top5", True, False),
                 ("macro-F1 (all)", "macro_f1_all", True, False), ("macro-F1 (present)", "macro_f1_present", True, False),
                 ("ECE", "ece", True, True))


def baseline_section(m: dict, b: dict | None, name: str | None) -> str:
    if b is None:
        return section("baseline", "Comparison with the baseline",
                       '<p class="note">No baseline given (<code>--baseline-checkpoint</code>, '
                       '<code>--baseline-model</code> or <code>--baseline-predictions</code>).</p>')
    rows = []
    for k in ROW_KEYS:
        for label, f, as_pct, lower in BASELINE_ROWS:
            mv, bv = m["keys"][k][f], b["keys"][k][f]
            rows.append(f'<tr><th>{e(KEY_LABEL[k])}</th><td>{e(label)}</td><td class="num">{pct(mv)}</td>'
                        f'<td class="num">{pct(bv)}</td>{delta(mv, bv, as_pct, lower)}</tr>')
    for label, sect, f, as_pct, lower in (("all six ranks right", "hierarchy", "hierarchical_accuracy", True, False),
                                          ("consistency rate", "hierarchy", "consistency_rate", True, False),
                                          ("mistake severity", "hierarchy", "mistake_severity", False, True),
                                          ("hierarchical distance@1", "hierarchy", "hdist@1", False, True),
                                          ("poison cost", "poison", "cost", False, True)):
        mv, bv = m[sect][f], b[sect][f]
        fmt = pct if as_pct else (lambda x: num(x, 3))
        rows.append(f'<tr><th>hierarchy</th><td>{e(label)}</td><td class="num">{fmt(mv)}</td>'
                    f'<td class="num">{fmt(bv)}</td>{delta(mv, bv, as_pct, lower)}</tr>')
    lead = f"Baseline: <b>{e(name or 'baseline')}</b>. Green Δ = this model is better (lower is better for ECE, severity, cost)."
    return section("baseline", "Comparison with the baseline",
                   table(["rank", "metric", "this model", "baseline", "Δ"], rows, "compact"), lead=lead)


# ---------------------------------------------------------------------- hierarchy
def hierarchy_section(m: dict, figs: list[FigureInfo]) -> str:
    h = m["hierarchy"]
    stats = [
        ("All six ranks right", pct(h["hierarchical_accuracy"]), f"of {h['n_all_ranks_known']:,} images with all six ranks known"),
        ("Consistent lineage", pct(h["consistency_rate"]), "the six predicted ranks are the ancestors of the predicted leaf"),
        ("Mistake severity", num(h["mistake_severity"]), f"mean LCA height over {h['n_mistakes']:,} leaf mistakes"),
        ("Hierarchical distance@1", num(h["hdist@1"]), "mean LCA height of the prediction, all images"),
        ("Hierarchical distance@5", num(h["hdist@5"]), "mean LCA height of the five most likely leaves"),
    ]
    stat_html = "".join(f'<div class="stat"><div class="value">{v}</div><div class="label">{e(l)}</div>'
                        f'<div class="sub">{e(s)}</div></div>' for l, v, s in stats)
    total = max(1, sum(h["mistake_relations"].values()))
    rel_rows = [f'<tr><td>{e(r)}</td><td class="num">{i}</td><td class="num">{h["mistake_relations"][r]:,}</td>'
                f'{bar_cell(h["mistake_relations"][r] / total)}</tr>' for i, r in enumerate(RELATIONS)]
    cons = "".join(f'<tr><td>{e(r)}</td>{bar_cell(h["consistency_by_rank"][r])}</tr>' for r in RANKS)
    body = (f'<div class="stats">{stat_html}</div><div class="two">'
            f'<div><h3>Where the leaf mistakes land</h3>{table(["lowest common ancestor", "height", "mistakes", "share"], rel_rows, "compact")}</div>'
            f'<div><h3>Agreement of each rank with the predicted leaf</h3>{table(["rank", "consistent"], [cons], "compact")}</div>'
            f'</div>{gallery([f for f in figs if f.group == "overview"])}')
    lead = ("How bad are the mistakes? Heights of the lowest common ancestor (LCA) of the true and predicted "
            "leaf: 0 same species (a synonym), 1 same genus, 2 same family, … 6 different phylum "
            "(Bertinetto et al., <i>Making Better Mistakes</i>, CVPR 2020). Lower is better.")
    return section("hierarchy", "How bad are the mistakes?", body, lead=lead)


# ---------------------------------------------------------------------- focus species
def focus_section(m: dict, figs: list[FigureInfo]) -> str:
    blocks = [focus_block(f, [g for g in figs if g.group == "focus" and g.title == f["name"]]) for f in m["focus"]]
    lead = "The species the user asked to watch (<code>--focus-species</code>), first of all the Death Cap."
    return section("focus", "The Death Cap and the focus species", "".join(blocks) or '<p class="note">No focus species.</p>', lead=lead)


def focus_block(f: dict, figs: list[FigureInfo]) -> str:
    if not f.get("found"):
        sugg = ", ".join(e(s) for s in f.get("suggestions", [])) or "none"
        return f'<div class="focus"><h3>{e(f["name"])}</h3><p class="note">Not in the taxonomy. Close names: {sugg}.</p></div>'
    lineage = " › ".join(e(v) for v in f["lineage"].values() if v)
    title = f'<h3><i>{e(f["name"])}</i>{poison_badge(f["poisonous"])}</h3><div class="muted">{lineage}</div>'
    if not f["support"]:
        return f'<div class="focus">{title}<p class="note">No validation images of this species.</p></div>'
    acc = "".join(f'<tr><td>{e(KEY_LABEL[k])}</td>{bar_cell(f["accuracy"][k])}</tr>' for k in RANKS + (LEAF,))
    facts = (f'<p>{f["support"]:,} validation images · {f["train_images"] if f["train_images"] is not None else "?"} '
             f'training images · mean confidence {pct(f["mean_confidence"])} · precision {pct(f["precision"])} '
             f'({f["n_predicted"]:,} predictions) · <b class="{"bad" if f["predicted_edible"] else ""}">'
             f'{f["predicted_edible"]:,} predicted as a non-poisonous leaf</b></p>')
    body = (f'<div class="three"><div><h4>Accuracy at each rank</h4>{table(["rank", "accuracy"], [acc], "compact")}</div>'
            f'<div><h4>Mistaken for</h4>{named_counts(f["mistaken_for"])}</div>'
            f'<div><h4>Other species predicted as it</h4>{named_counts(f["predicted_from"])}</div></div>')
    return f'<div class="focus">{title}{facts}{body}{gallery(figs)}</div>'


def named_counts(items: list[dict]) -> str:
    if not items:
        return '<p class="note">None.</p>'
    rows = [f'<tr class="{"poisonrow" if it["poisonous"] else ""}"><td><i>{e(it["species"])}</i>{poison_badge(it["poisonous"])}</td>'
            f'<td class="num">{it["count"]:,}</td><td class="muted">{e(it["relation"])}</td></tr>' for it in items]
    return table(["species", "images", "relation"], rows, "compact")


# ---------------------------------------------------------------------- safety
def safety_section(m: dict) -> str:
    p, s = m["poison"], m["safety"]
    stats = (f'<div class="stats"><div class="stat danger"><div class="value">{num(p["cost"], 3)}</div>'
             f'<div class="label">poison cost (100·PSC + ESC) / N</div></div>'
             f'<div class="stat danger"><div class="value">{p["psc"]:,}</div><div class="label">PSC: poisonous → edible</div>'
             f'<div class="sub">of {p["n_poisonous_samples"]:,} poisonous images</div></div>'
             f'<div class="stat"><div class="value">{p["esc"]:,}</div><div class="label">ESC: edible → poisonous</div>'
             f'<div class="sub">of {p["n_edible_samples"]:,} edible images</div></div>'
             f'<div class="stat"><div class="value">{pct(p["poisonous_flagged_rate"])}</div>'
             f'<div class="label">poisonous images predicted as some poisonous leaf</div></div></div>')
    rows = []
    for r in s["rows"]:
        which = ", ".join(f"<i>{e(n)}</i> ({c:,})" for n, c in r["as_edible_species"]) or "–"
        bad = ' class="num bad"' if r["predicted_edible"] else ' class="num"'
        rows.append(f'<tr><td><i>{e(r["species"])}</i></td>'
                    f'<td class="num">{r["support"]:,}</td>{bar_cell(r["recall"])}<td class="num">{pct(r["genus_recall"])}</td>'
                    f'<td{bad}>{r["predicted_edible"]:,}</td><td{bad}>{pct(r["predicted_edible_rate"])}</td>'
                    f'<td>{which}</td></tr>')
    tbl = (table(["poisonous species", "images", "recall (species)", "genus right", "predicted edible",
                  "share edible", "predicted as (edible species)"], rows, "compact sortable scroll")
           if rows else '<p class="note">No poisonous species in this split.</p>')
    lead = (f"Leaf-level predictions of images whose true leaf is poisonous, grouped by species; "
            f"“predicted edible” sums to PSC. {s['n_poisonous_species']:,} species are poisonous in the "
            f"taxonomy, {s['n_poisonous_species_absent']:,} of them without validation images. "
            "A mistake here can kill: read this table before trusting the model in the field.")
    return section("safety", "Poisonous species: safety", stats + tbl, cls="danger", lead=lead)


# ---------------------------------------------------------------------- figures
def gallery(figs: list[FigureInfo], cls: str = "") -> str:
    """Figures as clickable thumbnails; ``cls="wide"`` gives each the full width."""
    items = "".join(
        f'<figure class="fig"><img class="zoom" src="{e(f.file)}" alt="{e(f.title)}" title="Click to enlarge">'
        f'<figcaption><b>{e(f.title)}.</b> {e(f.caption)}</figcaption></figure>' for f in figs)
    return f'<div class="gallery {cls}">{items}</div>' if items else ""


def calibration_section(m: dict, figs: list[FigureInfo]) -> str:
    worst = max(ROW_KEYS, key=lambda k: m["keys"][k]["ece"] or 0)
    lead = (f"Can the confidence be trusted? Expected calibration error (15 bins) per rank is in the summary "
            f"table; the largest is {pct(m['keys'][worst]['ece'])} at {e(KEY_LABEL[worst])}. A calibrated "
            "model that says 80% is right 80% of the time.")
    return section("calibration", "Can the confidence be trusted?",
                   gallery([f for f in figs if f.group == "calibration"], "wide"), lead=lead)


def figures_section(figs: list[FigureInfo], notes: list[str]) -> str:
    note_html = "".join(f'<p class="note">{e(n)}</p>' for n in notes)
    body = (gallery([f for f in figs if f.group == "specimens"], "wide")
            + gallery([f for f in figs if f.group == "training"], "wide")
            + "<h3>Confusion matrices</h3>" + gallery([f for f in figs if f.group == "confusion"]) + note_html)
    return section("figures", "Figures", body,
                   lead="Click any figure to enlarge it; click again for full size (the species matrix has one pixel per class).")


# ---------------------------------------------------------------------- tables
def confused_section(m: dict) -> str:
    blocks = []
    for k in (LEAF, "genus", "family", "order"):
        rows = [f'<tr><td><i>{e(p["true"])}</i>{poison_badge(p["true_poisonous"])}</td>'
                f'<td><i>{e(p["pred"])}</i>{poison_badge(p["pred_poisonous"])}</td><td class="num">{p["count"]:,}</td>'
                f'<td class="num">{pct(p["share_of_true"])}</td><td>{e(p["relation"])}</td></tr>'
                for p in m["confused_pairs"][k]]
        tbl = table(["true", "predicted as", "images", "share of true", "relation"], rows, "compact") if rows else '<p class="note">No mistakes.</p>'
        blocks.append(details(f"{KEY_LABEL[k]}: {len(rows)} most frequent confusions", tbl, open_=k == LEAF))
    return section("confused", "Most-confused pairs", "".join(blocks),
                   lead="The most frequent (true, predicted) pairs of mistakes; a poisonous species mistaken for an edible one is the costly direction.")


def worst_section(m: dict) -> str:
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
    lineage = (f'<td>{e(r.get("family", ""))}</td><td>{e(r.get("genus", ""))}</td>' if key in (LEAF, "species") else "")
    conf = f'<i>{e(r["confused_with"])}</i> ({r["confused_count"]:,})' if r["confused_count"] else "–"
    train = "–" if r["train_images"] is None or r["train_images"] < 0 else f'{r["train_images"]:,}'
    return (f'<tr><td><i>{e(r["name"])}</i>{poison_badge(r["poisonous"])}</td>{lineage}<td class="num">{r["support"]:,}</td>'
            f'{bar_cell(r["recall"])}<td class="num">{pct(r["precision"])}</td><td class="num">{pct(r["f1"])}</td>'
            f'<td class="num">{train}</td><td>{conf}</td></tr>')


def details(summary: str, body: str, open_: bool = False) -> str:
    return f'<details{" open" if open_ else ""}><summary>{e(summary)}</summary>{body}</details>'


# ---------------------------------------------------------------------- provenance
def provenance_section(prov: dict) -> str:
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
                  provenance: dict | None = None) -> str:
    """The whole HTML page as a string."""
    m, b, prov = metrics.summary, baseline.summary if baseline else None, provenance or {}
    parts: list[Callable[[], str]] = [
        lambda: summary_section(m), lambda: baseline_section(m, b, baseline_name),
        lambda: hierarchy_section(m, figures), lambda: focus_section(m, figures), lambda: safety_section(m),
        lambda: calibration_section(m, figures), lambda: figures_section(figures, notes or []),
        lambda: confused_section(m), lambda: worst_section(m), lambda: provenance_section(prov)]
    body = "".join(p() for p in parts)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>Validation report · amanita</title><style>{CSS}</style></head><body>'
            f'{header(m, b, prov)}{nav()}<main class="wrap">{body}</main>'
            f'<footer class="wrap">Generated by amanita <code>validate.py</code>. Numbers in '
            f'<code>metrics.json</code>, per-sample predictions in <code>predictions.csv</code>, per-class tables in '
            f'<code>per_class_*.csv</code>.</footer><script>{JS}</script></body></html>')


CSS = """
:root{--ink:#1d2330;--muted:#6b7480;--line:#e3e6ea;--bg:#f6f7f5;--brand:#24453a;--accent:#2c5f8a;
--good:#1b7f5f;--bad:#c0392b;--danger:#a61b1b;--card:#fff}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif;
color:var(--ink);background:var(--bg)}
.wrap{max-width:1240px;margin:0 auto;padding:0 24px}
header{background:linear-gradient(135deg,#1d3a30,#2f5d4c);color:#fff;padding:28px 0 26px}
header .kicker{text-transform:uppercase;letter-spacing:.12em;font-size:11px;opacity:.75}
header h1{margin:4px 0 2px;font-size:30px;font-weight:650;letter-spacing:-.01em}
header .run{opacity:.85;font-size:13px;word-break:break-all}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(182px,1fr));gap:12px;margin-top:20px}
.card{background:rgba(255,255,255,.97);color:var(--ink);border-radius:10px;padding:12px 14px;
box-shadow:0 2px 8px rgba(0,0,0,.18);border-top:4px solid var(--accent)}
.card.danger{border-top-color:var(--bad)}
.card .label{font-size:11.5px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.card .value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums;line-height:1.25}
.card .sub{font-size:12px;color:var(--muted)}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);box-shadow:0 1px 4px rgba(0,0,0,.04)}
nav .wrap{display:flex;flex-wrap:wrap;gap:4px 18px;padding-top:9px;padding-bottom:9px}
nav a{color:var(--brand);text-decoration:none;font-weight:550;font-size:13px}
nav a:hover{text-decoration:underline}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:20px 24px;margin:22px 0;
scroll-margin-top:52px}
section.danger{border:2px solid var(--bad);box-shadow:0 0 0 4px rgba(192,57,43,.07)}
section.danger h2{color:var(--danger)}
h2{margin:0 0 6px;font-size:20px;font-weight:650}
h3{margin:18px 0 6px;font-size:16px}
h4{margin:10px 0 4px;font-size:13px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
p.lead{color:#3d4551;margin:0 0 14px;max-width:980px}
.muted{color:var(--muted)}
.note{color:var(--muted);font-style:italic}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f0f2f0;padding:1px 4px;border-radius:4px}
pre{font:12px ui-monospace,Menlo,Consolas,monospace;background:#f6f8f6;padding:12px;border-radius:8px;overflow:auto;max-height:420px}
.tablewrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{font-size:11.5px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600;
border-bottom:2px solid var(--line);background:#fafbfa;position:sticky;top:0}
table.ranks tbody th{font-weight:600}
table.compact td,table.compact th{padding:4px 9px}
table.scroll{display:block;max-height:520px;overflow:auto}
td.num{text-align:right;white-space:nowrap}
td.bar{background:linear-gradient(90deg,rgba(44,95,138,.16) var(--w),transparent var(--w))}
tr.leafrow{background:#f3f7fb}
tr.leafrow th::after{content:" ★";color:var(--accent)}
tr.poisonrow{background:#fdf1f0}
td.delta.up{color:var(--good);font-weight:600}
td.delta.down{color:var(--bad);font-weight:600}
td.delta.same{color:var(--muted)}
b.bad,td.bad{color:var(--bad);font-weight:600}
header .verdict{margin:16px 0 0;max-width:1020px;font-size:14.5px;line-height:1.6;opacity:.95}
header .verdict b{color:#fff}
.badge{display:inline-block;font-size:10.5px;font-style:normal;padding:0 6px;border-radius:8px;margin-left:6px;vertical-align:1px}
.badge.poison{background:#fbe3e0;color:var(--danger);border:1px solid #f1b5ad}
.stats{display:flex;flex-wrap:wrap;gap:12px;margin:6px 0 14px}
.stat{flex:1 1 170px;border:1px solid var(--line);border-radius:10px;padding:10px 14px;background:#fbfcfb}
.stat.danger{border-color:#f1b5ad;background:#fdf4f3}
.stat .value{font-size:22px;font-weight:650}
.stat .label{font-size:12.5px;font-weight:600}
.stat .sub{font-size:12px;color:var(--muted)}
.two{display:grid;grid-template-columns:1fr 1fr;gap:24px}
.three{display:grid;grid-template-columns:0.8fr 1.1fr 1.1fr;gap:20px}
@media (max-width:900px){.two,.three{grid-template-columns:1fr}}
.focus{border-top:1px solid var(--line);margin-top:8px;padding-top:4px}
.focus:first-child{border-top:0}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:18px;margin-top:14px}
.gallery.wide,.focus .gallery,#hierarchy .gallery{grid-template-columns:1fr}
figure.fig{margin:0;border:1px solid var(--line);border-radius:10px;padding:10px;background:#fff}
figure.fig img{width:100%;height:auto;display:block;cursor:zoom-in;border-radius:4px}
figure.fig figcaption{font-size:12.5px;color:#3d4551;margin-top:6px}
details{margin:8px 0;border:1px solid var(--line);border-radius:8px;padding:6px 12px;background:#fcfdfc}
details summary{cursor:pointer;font-weight:600;padding:4px 0}
footer{color:var(--muted);font-size:12px;padding:10px 24px 40px}
#lightbox{position:fixed;inset:0;background:rgba(15,20,18,.88);display:none;z-index:50;overflow:auto;cursor:zoom-out}
#lightbox.open{display:block}
#lightbox img{display:block;margin:3vh auto 0;max-width:96vw;max-height:88vh;background:#fff;cursor:zoom-in}
#lightbox img.full{max-width:none;max-height:none;cursor:zoom-out}
#lightbox .cap{color:#eee;text-align:center;padding:8px;font-size:13px}
th.sortable{cursor:pointer}
"""

JS = """
(function(){
  var box=document.createElement('div');box.id='lightbox';
  var cap=document.createElement('div');cap.className='cap';box.appendChild(cap);
  document.body.appendChild(box);
  function close(){box.classList.remove('open');var i=box.querySelector('img');if(i)box.removeChild(i);}
  document.querySelectorAll('img.zoom').forEach(function(img){
    img.addEventListener('click',function(){
      close();var big=document.createElement('img');big.src=img.src;big.alt=img.alt;
      big.addEventListener('click',function(ev){ev.stopPropagation();big.classList.toggle('full');});
      box.insertBefore(big,cap);cap.textContent=img.alt+' (click image for full size, Esc to close)';
      box.classList.add('open');});
  });
  box.addEventListener('click',close);
  document.addEventListener('keydown',function(ev){if(ev.key==='Escape')close();});
  document.querySelectorAll('table.sortable').forEach(function(t){
    t.querySelectorAll('thead th').forEach(function(th,col){
      th.classList.add('sortable');th.title='Click to sort';
      th.addEventListener('click',function(){
        var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=th.dataset.asc!=='1';
        function key(r){var s=r.cells[col].textContent.replace(/[,%]/g,'');var v=parseFloat(s);return isNaN(v)?s:v;}
        rows.sort(function(a,b){var x=key(a),y=key(b);return (x>y?1:x<y?-1:0)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});th.dataset.asc=asc?'1':'0';});
    });
  });
})();
"""
