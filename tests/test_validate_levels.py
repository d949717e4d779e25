"""validate.py: per-observation column and open-set section from saved predictions (in process)."""
import json

import numpy as np
import pytest

from amanita.demo.synthetic_predictions import synthetic_predictions, synthetic_taxonomy
from amanita.predictions import write_predictions
from tests.test_report import run_validate

SIZES = {"phylum": 2, "class": 3, "order": 4, "family": 6, "genus": 8, "species": 12, "leaf": 14}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    tax = synthetic_taxonomy(SIZES, seed=0)
    tax.save(root / "m.json")
    rng = np.random.default_rng(0)
    preds = synthetic_predictions(tax, 300, seed=0)
    unknown = rng.random(len(preds)) < 0.2
    preds["unknown_species"] = unknown
    preds.loc[unknown, ["leaf_true", "species_true"]] = -1
    preds["unknown_msp"] = np.clip(rng.normal(0.3 + 0.4 * unknown, 0.15), 0, 1)
    preds["unknown_entropy"] = preds["unknown_msp"] * 2
    preds["unknown_energy"] = -5 + preds["unknown_msp"]
    write_predictions(preds, root / "predictions.csv")
    obs = preds.drop_duplicates("observationID").assign(n_images=2)
    write_predictions(obs, root / "observation_predictions.csv")
    return root, preds, obs


@pytest.mark.slow  # a whole report with figures: seconds
def test_report_has_both_levels_and_the_open_set_section(saved, tmp_path):
    root, preds, obs = saved
    code, out, err = run_validate("--from-predictions", root / "predictions.csv", "--mappings", root / "m.json",
                                  "--open-set", "--unknown-score", "entropy", "--output-dir", tmp_path)
    assert code == 0, err
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["model"]["n_samples"] == len(preds) and m["observation"]["n_samples"] == len(obs)
    assert m["observation"]["combine"] == "mean-prob"
    d = m["open_set"]["detection"]
    assert list(d) == ["entropy", "msp", "energy"] and m["open_set"]["score"] == "entropy"
    assert d["msp"]["auroc"] == pytest.approx(d["entropy"]["auroc"])  # a monotone transform
    assert m["open_set"]["observation"]["n_images"] == len(obs)
    html = (tmp_path / "validation_report.html").read_text()
    assert 'id="levels"' in html and 'id="openset"' in html and "open_set_scores.png" in html
    assert (tmp_path / "open_set_scores.png").stat().st_size > 1000
    assert (tmp_path / "observation_predictions.csv").is_file()
    assert "per observation (150 observations" in out and "open set (" in out


@pytest.mark.slow  # a whole report with figures: seconds
def test_observation_only_report_and_missing_observation_file(saved, tmp_path):
    root, preds, obs = saved
    code, _, err = run_validate("--from-predictions", root / "predictions.csv", "--mappings", root / "m.json",
                                "--aggregate", "observation", "--output-dir", tmp_path / "o")
    assert code == 0, err
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["model"]["n_samples"] == len(obs) and "observation" not in m
    lone = tmp_path / "lone"
    lone.mkdir()
    write_predictions(preds, lone / "predictions.csv")
    code, _, err = run_validate("--from-predictions", lone / "predictions.csv", "--mappings", root / "m.json",
                                "--aggregate", "observation", "--output-dir", tmp_path / "x")
    assert code == 2 and "gives no observation-level predictions" in err


def test_store_threshold_needs_a_checkpoint(saved, tmp_path):
    root, *_ = saved
    code, _, err = run_validate("--from-predictions", root / "predictions.csv", "--mappings", root / "m.json",
                                "--open-set", "--store-threshold", "--output-dir", tmp_path)
    assert code == 2 and "--store-threshold needs --open-set and --checkpoint" in err
