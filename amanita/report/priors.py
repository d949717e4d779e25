"""Report section "Priors and poison": metrics without and with metadata priors (each field, then all),
per image and per observation, and the curve of top-1 against poison cost under min-cost decisions."""
from __future__ import annotations

from pathlib import Path

from amanita.report.figures import BAD, GOOD, STYLE, FigureInfo, _save, plt
from amanita.report.html import delta, e, gallery, num, num_cell, pct, section, table

COLUMNS = (("leaf top-1", "leaf_top1", True, False), ("leaf macro-F1", "leaf_macro_f1", True, False),
           ("species top-1", "species_top1", True, False), ("poison cost", "poison_cost", False, True),
           ("mistake severity", "mistake_severity", False, True), ("distance@1", "hdist@1", False, True),
           ("leaf NLL", "leaf_nll", False, True))
LEVEL_LABEL = {"image": "per image", "observation": "per observation"}


def sweep_figure(doc: dict, out_dir: Path, name: str = "poison_cost_sweep.png") -> str | None:
    """Species top-1 against FungiCLEF poison cost as the cost of naming a poisonous species edible
    grows, one panel per level; argmax and the chosen cost marked."""
    levels = [lv for lv in ("image", "observation") if lv in doc["sweep"]]
    if not levels:
        return None
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(levels), figsize=(3.8 * len(levels), 3.0), squeeze=False)
        for ax, lv in zip(axes[0], levels):
            curve = doc["sweep"][lv]
            pts = [p for p in curve["points"] if p["poison_cost"] is not None]
            ax.plot([p["poison_cost"] for p in pts], [100 * p["species_top1"] for p in pts], "o-", color=GOOD,
                    ms=3, label="min-cost, cost swept")
            a = curve["argmax"]
            if a["poison_cost"] is not None:
                ax.plot(a["poison_cost"], 100 * a["species_top1"], "s", color="grey", label="argmax")
            chosen = [p for p in pts if p["poisonous_as_edible_cost"] == doc["chosen_cost"]]
            if chosen:
                ax.plot(chosen[0]["poison_cost"], 100 * chosen[0]["species_top1"], "*", color=BAD, ms=12,
                        label=f"chosen cost {doc['chosen_cost']:g}")
            ax.set_xlabel("poison cost (100·PSC + ESC) / N")
            ax.set_ylabel("species top-1 (%)")
            ax.set_title(LEVEL_LABEL[lv])
            ax.legend(fontsize=7)
        fig.tight_layout()
        return _save(fig, out_dir / name)


def variant_rows(doc: dict, level: str) -> list[str]:
    """One row per variant; Δ against the row without priors."""
    rows = doc["rows"]
    base = rows[0][level]
    out = []
    for r in rows:
        m = r[level]
        if m is None:
            continue
        cells = ""
        for _, f, as_pct, lower in COLUMNS:
            fmt = pct if as_pct else (lambda x: num(x, 3))
            cells += num_cell(fmt(m[f])) + (delta(m[f], base[f], as_pct, lower) if r is not rows[0] else num_cell(""))
        out.append(f"<tr><td>{e(r['variant'])}</td>{num_cell(format(m['n'], ','))}{cells}</tr>")
    return out


def priors_section(doc: dict, out_dir: Path) -> str:
    """The section's HTML (the figure is written into ``out_dir``)."""
    headers = ["variant", "N"] + [h for name, *_ in COLUMNS for h in (name, "Δ")]
    tables = "".join(f"<h3>{e(LEVEL_LABEL[lv])}</h3>" + table(headers, variant_rows(doc, lv), "compact")
                     for lv in ("image", "observation") if doc["rows"][0].get(lv))
    figure = sweep_figure(doc, out_dir)
    fig = gallery([FigureInfo(figure, "Top-1 against poison cost",
                              "Min-cost decisions as the cost of naming a poisonous species edible grows from 0; "
                              "grey square: argmax; star: the chosen cost.")]) if figure else ""
    if doc.get("fields"):
        how = (f"Metadata priors ({', '.join(doc['fields'])}; weight w = {num(doc['weight'], 3)}) from "
               f"<code>{e(doc['priors'])}</code>, built from the training split only (the published DF20 and "
               "FungiTastic gains use tables that saw the test labels). Each field alone, then all; Δ against "
               "the same model without priors.")
    else:
        how = "No metadata priors (<code>--priors</code>): the rows show the decision alone."
    lead = (f"{how} Decision: <b>{e(doc['decision'])}</b>"
            f" (costs: poisonous named edible {num(doc['costs']['poisonous_as_edible'], 0)}, edible named poisonous "
            f"{num(doc['costs']['edible_as_poisonous'], 0)}, any wrong species {num(doc['costs']['mistake'], 0)}).")
    return section("priors", "Metadata priors and poison-weighted decisions", tables + fig, lead=lead)
