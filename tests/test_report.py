"""The validation report: files, plain JSON, escaping, validate.py's CLI, and a real browser."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from amanita.cli import cli_main, parse_validate_config
from amanita.evaluate import summary_lines, validate
from amanita.metrics import compute_metrics
from amanita.demo.synthetic_predictions import synthetic_predictions
from amanita.predictions import write_predictions
from amanita.report import render_report
from amanita.report.figures import (FigureInfo, optional_figures, confusion_matrix_figure, focus_figure,
                                    select_specimens)
from amanita.report.html import SECTIONS
from amanita.taxonomy import RANKS, build_taxonomy
from tests.helpers import run_script

GENERA = {  # genus: (phylum, class, order, family)
    "Amanita": ("Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae"),
    "Agaricus": ("Basidiomycota", "Agaricomycetes", "Agaricales", "Agaricaceae"),
    "Macrolepiota": ("Basidiomycota", "Agaricomycetes", "Agaricales", "Agaricaceae"),
    "Lepiota": ("Basidiomycota", "Agaricomycetes", "Agaricales", "Agaricaceae"),
    "Galerina": ("Basidiomycota", "Agaricomycetes", "Agaricales", "Hymenogastraceae"),
    "Hypholoma": ("Basidiomycota", "Agaricomycetes", "Agaricales", "Strophariaceae"),
    "Boletus": ("Basidiomycota", "Agaricomycetes", "Boletales", "Boletaceae"),
    "Rubroboletus": ("Basidiomycota", "Agaricomycetes", "Boletales", "Boletaceae"),
    "Cantharellus": ("Basidiomycota", "Agaricomycetes", "Cantharellales", "Hydnaceae"),
    "Russula": ("Basidiomycota", "Agaricomycetes", "Russulales", "Russulaceae"),
    "Lactarius": ("Basidiomycota", "Agaricomycetes", "Russulales", "Russulaceae"),
    "Phlebia": ("Basidiomycota", "Agaricomycetes", "Polyporales", "Meruliaceae"),
    "Morchella": ("Ascomycota", "Pezizomycetes", "Pezizales", "Morchellaceae"),
    "Gyromitra": ("Ascomycota", "Pezizomycetes", "Pezizales", "Discinaceae"),
    "Cordyceps": ("Ascomycota", "Sordariomycetes", "Hypocreales", "Cordycipitaceae"),
}
SPECIES = [  # (scientificName, accepted species, poisonous, training images); one synonym pair
    ("Amanita phalloides", "Amanita phalloides", 1, 120), ("Amanita virosa", "Amanita virosa", 1, 25),
    ("Amanita muscaria", "Amanita muscaria", 1, 300), ("Amanita pantherina", "Amanita pantherina", 1, 40),
    ("Amanita rubescens", "Amanita rubescens", 0, 200), ("Amanita citrina", "Amanita citrina", 0, 90),
    ("Agaricus campestris", "Agaricus campestris", 0, 150), ("Agaricus xanthodermus", "Agaricus xanthodermus", 1, 30),
    ("Macrolepiota procera", "Macrolepiota procera", 0, 110), ("Lepiota cristata", "Lepiota cristata", 1, 15),
    ("Galerina marginata", "Galerina marginata", 1, 20), ("Hypholoma fasciculare", "Hypholoma fasciculare", 1, 250),
    ("Boletus edulis", "Boletus edulis", 0, 280), ("Rubroboletus satanas", "Rubroboletus satanas", 1, 12),
    ("Cantharellus cibarius", "Cantharellus cibarius", 0, 260), ("Russula emetica", "Russula emetica", 1, 60),
    ("Lactarius deliciosus", "Lactarius deliciosus", 0, 45), ("Merulius tremellosus", "Phlebia tremellosa", 0, 8),
    ("Phlebia tremellosa", "Phlebia tremellosa", 0, 35), ("Morchella esculenta", "Morchella esculenta", 0, 70),
    ("Gyromitra esculenta", "Gyromitra esculenta", 1, 25), ("Cordyceps militaris", "Cordyceps militaris", 0, 5),
]
COLUMNS = ["scientificName", *RANKS, "poisonous"]
PALETTE = [(196, 164, 120), (120, 70, 40), (220, 200, 150), (170, 40, 30), (230, 150, 40), (90, 110, 60)]


def real_taxonomy(species=SPECIES, genera=GENERA):
    """A small taxonomy of real names, with a synonym pair and long-tailed training counts."""
    rows = [dict(zip(COLUMNS, (name, *genera[accepted.split()[0]], accepted.split()[0], accepted, pois)),
                 category_id=i) for i, (name, accepted, pois, _) in enumerate(species)]
    meta = pd.DataFrame(rows)
    train = meta.loc[meta.index.repeat([s[3] for s in species])]
    return build_taxonomy([meta], count_frame=train)


def draw_specimen(path: Path, leaf: int, rng) -> None:
    """A tiny picture of a cap on a stem, coloured by leaf, on a noisy background."""
    img = Image.fromarray(rng.integers(60, 120, (96, 128, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    cap = PALETTE[leaf % len(PALETTE)]
    d.rectangle([58, 45, 70, 85], fill=(235, 230, 215))
    d.pieslice([30, 20, 98, 70], 180, 360, fill=cap)
    img.save(path, quality=85)


def training_log(path: Path, epochs: int = 6) -> None:
    lines = []
    for ep in range(epochs):
        rec = {"epoch": ep, "step": 10 * (ep + 1), "lr": 1e-4 * (1 - ep / epochs), "train/loss": 3.0 / (ep + 1)}
        for k in ("leaf",) + RANKS:
            rec[f"val/{k}/acc1"] = 0.3 + 0.1 * ep * (1 - RANKS.index(k) / 10 if k in RANKS else 0.8)
            rec[f"val/{k}/f1"] = rec[f"val/{k}/acc1"] * 0.8
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\nnot json\n")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """validate.py --from-predictions over a real-name taxonomy, with baseline, images and a training log."""
    root = tmp_path_factory.mktemp("report")
    tax = real_taxonomy()
    tax.save(root / "taxonomic_mappings.json")
    preds = synthetic_predictions(tax, 700, seed=0, unknown_fraction=0.02)
    baseline = synthetic_predictions(tax, 700, seed=1, unknown_fraction=0.02)
    write_predictions(preds, root / "predictions.csv")
    write_predictions(baseline, root / "baseline_predictions.csv")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for f, leaf in zip(preds["filename"], preds["leaf_true"]):
        draw_specimen(images / f, int(leaf), rng)
    training_log(root / "metrics.jsonl")
    out = root / "validation_results"
    code, stdout, stderr = run_validate(
        "--from-predictions", root / "predictions.csv", "--mappings", root / "taxonomic_mappings.json",
        "--baseline-predictions", root / "baseline_predictions.csv", "--image-root", images,
        "--training-log", root / "metrics.jsonl", "--output-dir", out,
        "--focus-species", "Amanita phalloides", "Galerina marginata", "Amanita phaloides")
    assert code == 0, stderr
    return out, stdout


def run_validate(*args) -> tuple[int, str, str]:
    """validate.py's parsing, work and error handling in this process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    main = lambda: print("\n".join(summary_lines(validate(parse_validate_config("", list(map(str, args)))))))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli_main(main)()
        except SystemExit as e:
            return int(e.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def test_report_writes_every_file(report):
    out, stdout = report
    assert f"report: {(out / 'validation_report.html').resolve()}" in stdout
    expected = ["validation_report.html", "metrics.json", "predictions.csv", "per_class_leaf.csv",
                "reliability_diagrams.png", "confidence_distributions.png", "rank_summary.png",
                "focus_amanita_phalloides.png", "focus_galerina_marginata.png", "training_curves.png",
                "accuracy_vs_training_images.png", "specimens_well_recognised.png",
                "specimens_poorly_recognised.png"]
    expected += [f"confusion_matrix_{r}_normalized_viridis.png" for r in RANKS]
    missing = [f for f in expected if not (out / f).is_file()]
    assert not missing


def test_metrics_json_is_plain_json_with_baseline_and_provenance(report):
    out, _ = report
    doc = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert doc["model"]["keys"]["leaf"]["n"] == 700 and doc["baseline"]["keys"]["leaf"]["n"] == 700
    prov = doc["provenance"]
    assert len(prov["predictions_sha256"]) == 64 and len(prov["taxonomy_sha256"]) == 64
    assert prov["validate_args"]["focus_species"][0] == "Amanita phalloides" and "date" in prov
    focus = doc["model"]["focus"]
    assert [f["found"] for f in focus] == [True, True, False]
    assert focus[2]["suggestions"][0] == "Amanita phalloides"


def test_html_is_self_contained_and_complete(report):
    out, _ = report
    page = (out / "validation_report.html").read_text()
    for sid, _ in SECTIONS:
        assert f'id="{sid}"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "external resource in the report"
    assert "<link" not in page and "@import" not in page
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(srcs) >= 15 and all((out / s).is_file() for s in srcs)
    assert "Amanita phalloides" in page and "Not in the taxonomy" in page
    assert "Δ" in page  # baseline comparison table


def test_names_are_html_escaped_and_figures_survive_odd_names(tmp_path):
    name = '<script>alert("x")</script> & $\\alpha$'
    genera = GENERA | {"<script>alert(\"x\")</script>": GENERA["Amanita"]}
    tax = real_taxonomy([SPECIES[0], (name, name, 1, 200), SPECIES[4], SPECIES[6]], genera)
    preds = synthetic_predictions(tax, 80, seed=3)
    m = compute_metrics(preds, tax, focus=(name, "<b>nope</b>"))
    figs = [FigureInfo(confusion_matrix_figure(preds, tax, "species", tmp_path), "<em>odd</em>", "a & b"),
            FigureInfo(focus_figure(m.summary["focus"][0], tmp_path), name, name)]
    page = render_report(m, figs, ["<u>note</u>"], provenance={"checkpoint": "<i>ckpt</i>", "args": {"x": "<y>"}})
    for raw in ("<script>alert", "<b>nope", "<i>ckpt", "<em>odd", "<u>note", "<y>"):
        assert raw not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;" in page
    assert all((tmp_path / f.file).is_file() for f in figs)


def test_missing_images_and_log_give_notes_not_errors(tmp_path):
    tax = real_taxonomy()
    preds = synthetic_predictions(tax, 120, seed=4)
    assert len(select_specimens(preds, True, exists=lambda i: False)) == 0
    rows = select_specimens(preds, False, exists=lambda i: True)
    assert len(rows) == len(set(preds["species_true"].iloc[rows]))  # one per species
    assert (preds["leaf_pred"].iloc[rows] != preds["leaf_true"].iloc[rows]).all()
    m = compute_metrics(preds, tax)
    notes: list[str] = []
    figs = optional_figures(preds, tax, m, tmp_path, [None] * len(preds), tmp_path / "metrics.jsonl", notes)
    assert [f.file for f in figs] == ["accuracy_vs_training_images.png"]
    assert any("no image files found" in n for n in notes) and any("metrics.jsonl" in n for n in notes)
    assert "No baseline given" in render_report(m, figs, notes)


def test_cli_errors_are_one_line(tmp_path, report):
    out, _ = report
    code, _, err = run_validate("--from-predictions", out / "predictions.csv")
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0 and "--mappings" in err
    bad = pd.read_csv(out / "predictions.csv").drop(columns=["genus_pred"])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    code, _, err = run_validate("--from-predictions", tmp_path / "bad.csv", "--mappings",
                                out.parent / "taxonomic_mappings.json", "--output-dir", tmp_path / "o")
    assert code == 2 and "genus_pred" in err and err.strip().count("\n") == 0
    code, _, err = run_validate("--checkpoint", tmp_path / "x.pth")
    assert code == 2 and "--val-path" in err


@pytest.mark.slow
def test_validate_script_runs_as_a_program():
    proc = run_script("validate.py", "--help")
    assert "--from-predictions" in proc.stdout and "--baseline-model" in proc.stdout


# ---------------------------------------------------------------------- a real browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


def _selenium_available() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return True


def chrome(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def full_page_png(driver, width: int = 1400) -> bytes:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    return base64.b64decode(shot["data"])


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_BROWSER and _selenium_available()),
                    reason=f"chromium not installed: need {CHROMIUM}, {CHROMEDRIVER} and selenium "
                           "(apt-get install chromium chromium-driver)")
def test_report_in_headless_chromium(report, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    out, _ = report
    driver = chrome(tmp_path)
    try:
        driver.set_window_size(1400, 1000)
        driver.get((out / "validation_report.html").resolve().as_uri())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert len(images) >= 15 and all(w > 0 for _, w in images), images
        for sid, _ in SECTIONS:
            assert driver.find_element(By.ID, sid).is_displayed()
        assert "Amanita phalloides" in driver.find_element(By.ID, "focus").text
        assert "PSC" in driver.find_element(By.ID, "safety").text
        driver.find_element(By.CSS_SELECTOR, "img.zoom").click()  # the lightbox opens and closes
        assert driver.find_element(By.ID, "lightbox").is_displayed()
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        assert not driver.find_element(By.ID, "lightbox").is_displayed()
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        png = full_page_png(driver)
    finally:
        driver.quit()
    (tmp_path / "validation_report.png").write_bytes(png)
    if os.environ.get("AMANITA_SCREENSHOT_DIR"):
        shot_dir = Path(os.environ["AMANITA_SCREENSHOT_DIR"])
        shot_dir.mkdir(parents=True, exist_ok=True)
        (shot_dir / "validation_report.png").write_bytes(png)
        for f in out.glob("*.png"):  # the figures too, so the screenshot can be read at full size
            shutil.copy(f, shot_dir / f.name)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
