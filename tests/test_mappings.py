"""--mappings beside a checkpoint: checked against the checkpoint's tree, then used (its poisonous
flags), and recorded in the provenance — in validate.py as in test.py."""
import json

import pytest

from amanita.io import file_sha256
from amanita.taxonomy import Taxonomy, build_taxonomy
from tests.helpers import TRAIN_IDS, make_image_dataset, rows, tiny_checkpoint
from tests.test_report import run_validate


@pytest.mark.slow
def test_validate_uses_the_mappings_given_and_records_them(tmp_path, monkeypatch):
    monkeypatch.setattr("amanita.evaluate.make_figures", lambda *a, **k: ([], []))
    data = make_image_dataset(tmp_path, n_train=6, n_val=24)
    tax = build_taxonomy([rows(TRAIN_IDS)])
    tiny_checkpoint(tmp_path / "m.pth", tax)
    harmless = Taxonomy.from_dict(tax.to_dict())
    harmless.poisonous = [False] * harmless.n_leaves
    harmless.save(tmp_path / "harmless.json")
    common = ["--checkpoint", tmp_path / "m.pth", "--val-path", data["val"], "--workers", 0, "--aggregate", "image"]
    code, _, err = run_validate(*common, "--output-dir", tmp_path / "a")
    assert code == 0, err
    stored = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert stored["provenance"]["mappings"] is None
    poison = stored["model"]["poison"]
    assert poison["n_poisonous_samples"] == 8  # categories 0 and 1 (Amanita) of 24 images, every third
    code, _, err = run_validate(*common, "--mappings", tmp_path / "harmless.json", "--output-dir", tmp_path / "b")
    assert code == 0, err
    given = json.loads((tmp_path / "b" / "metrics.json").read_text())
    p = given["model"]["poison"]
    assert p["n_poisonous_samples"] == p["psc"] == p["esc"] == 0  # nothing is poisonous now
    assert given["model"]["keys"]["leaf"]["top1"] == stored["model"]["keys"]["leaf"]["top1"]
    assert given["provenance"]["mappings"] == str(tmp_path / "harmless.json")
    assert given["provenance"]["mappings_sha256"] == file_sha256(tmp_path / "harmless.json")
    harmless.classes["genus"][0] = "Verpa"  # another tree: refused, as test.py refuses it
    harmless.save(tmp_path / "other.json")
    code, _, err = run_validate(*common, "--mappings", tmp_path / "other.json", "--output-dir", tmp_path / "c")
    assert code == 2 and "is not the taxonomy" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c" / "metrics.json").exists()
