"""The mappings file's structure is checked once, on load, with one line naming the file (issue 17,
items 11 and 13): binary or UTF-16 text, out-of-range ancestors, a rank empty in every row."""
import json

import pytest

import compute_class_weights
import create_taxonomic_mappings
from amanita.taxonomy import Taxonomy, TaxonomyError, build_taxonomy
from tests.helpers import TRAIN_IDS, call_main, one_line, rows


@pytest.fixture
def mappings(tmp_path):
    tax = build_taxonomy([rows(TRAIN_IDS)])
    tax.save(tmp_path / "m.json")
    rows(TRAIN_IDS).to_csv(tmp_path / "train.csv", index=False)
    return tmp_path / "m.json", json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))


def _write(path, doc):
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_binary_and_utf16_files_are_one_line_naming_the_file(mappings, tmp_path):
    path, doc = mappings
    (tmp_path / "utf16.json").write_text(json.dumps(doc), encoding="utf-16")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(TaxonomyError, match=r"utf16.json is UTF-16 text; save it as UTF-8"):
        Taxonomy.load(tmp_path / "utf16.json")
    with pytest.raises(TaxonomyError, match=r"binary.json is not a taxonomic_mappings.json file \(not UTF-8"):
        Taxonomy.load(tmp_path / "binary.json")


@pytest.mark.parametrize("edit,said", [
    (lambda d: d["leaves"][0]["ancestors"].update(genus=99), "genus ancestor 99, outside -1..3"),
    (lambda d: d["leaves"][2]["ancestors"].update(family=-2), "family ancestor -2, outside -1..3"),
    (lambda d: d["leaves"][1]["ancestors"].update(order="2"), "order ancestor '2'"),
    (lambda d: d["leaves"][1].update(category_id=0), "category_id 0 appears twice"),
    (lambda d: d["classes"].update(genus=[]), "rank genus has no classes"),
    (lambda d: d.pop("leaves"), "expected a JSON object with 'classes'"),
])
def test_structure_problems_are_one_line_naming_the_file(mappings, tmp_path, edit, said):
    _, doc = mappings
    edit(doc)
    bad = _write(tmp_path / "bad.json", doc)
    with pytest.raises(TaxonomyError) as e:
        Taxonomy.load(bad)
    assert said in str(e.value) and str(bad) in str(e.value) and len(str(e.value).splitlines()) == 1


def test_compute_class_weights_refuses_an_out_of_range_ancestor(mappings, tmp_path):
    _, doc = mappings
    doc["leaves"][0]["ancestors"]["species"] = 50
    bad = _write(tmp_path / "bad.json", doc)
    code, _, err = call_main(compute_class_weights.main, ["--train-path", tmp_path / "train.csv", "--mappings", bad,
                                                          "--output", tmp_path / "w.pt"])
    assert code == 2 and "species ancestor 50" in one_line(err) and not (tmp_path / "w.pt").exists()


def test_a_rank_empty_in_every_row_is_refused_by_create_taxonomic_mappings(tmp_path):
    df = rows(TRAIN_IDS)
    df["genus"] = ""
    df.to_csv(tmp_path / "train.csv", index=False)
    code, _, err = call_main(create_taxonomic_mappings.main, ["--train-path", tmp_path / "train.csv",
                                                              "--output", tmp_path / "m.json"])
    assert code == 2 and "genus is empty in every row of train.csv" in one_line(err)
    assert not (tmp_path / "m.json").exists()
