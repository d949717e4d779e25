import json

import numpy as np
import pandas as pd
import pytest
import torch

from amanita.taxonomy import RANKS, Taxonomy, TaxonomyError, build_taxonomy, encode_labels
from tests.helpers import EXPECTED_ANCESTORS, EXPECTED_CLASSES, TRAIN_IDS, rows, run_in_process


@pytest.fixture
def tax():
    train = rows(TRAIN_IDS)
    return build_taxonomy([train], count_frame=train)


def test_classes_sorted_by_lineage_and_ancestors(tax):
    assert tax.classes == EXPECTED_CLASSES
    assert tax.category_ids == [0, 1, 2, 3, 4, 5]
    assert tax.scientific_names[3] == "Merulius tremellosus"
    np.testing.assert_array_equal(tax.ancestors, EXPECTED_ANCESTORS)
    assert tax.poisonous == [True, True, False, False, False, False]
    assert tax.head_sizes() == {"phylum": 2, "class": 2, "order": 3, "family": 4, "genus": 4, "leaf": 6}


def test_counts_per_rank(tax):
    assert tax.counts["leaf"] == [2, 1, 3, 1, 1, 2]
    assert tax.counts["species"] == [2, 3, 1, 2, 2]  # the two Phlebia synonyms add up
    assert tax.counts["phylum"] == [2, 8]


def test_rollup_matrix_sums_leaves(tax):
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.05, 0.2]])
    genus = probs @ tax.rollup_matrix("genus")
    torch.testing.assert_close(genus, torch.tensor([[0.2, 0.3, 0.3, 0.2]]))
    species = probs @ tax.rollup_matrix("species")
    torch.testing.assert_close(species, torch.tensor([[0.2, 0.3, 0.2, 0.1, 0.2]]))
    assert set(tax.rollup_matrices()) == set(RANKS)


def test_lca_height_worked_example(tax):
    # 0 same species (synonyms 3,4), 1 same genus, 3 same order, 4 same class, 6 root only
    pairs = [(0, 0, 0), (3, 4, 0), (0, 1, 1), (0, 2, 3), (0, 3, 4), (0, 5, 6)]
    a, b, want = map(np.array, zip(*pairs))
    np.testing.assert_array_equal(tax.lca_height(a, b), want)
    d = tax.distance_matrix()
    assert d.shape == (6, 6) and d[0, 5] == 6 and d[5, 0] == 6 and (np.diag(d) == 0).all()
    # at the genus rank: Amanita vs Agaricus share the order (height 3)
    assert tax.lca_height([2], [1], rank="genus")[0] == 3


def test_validation_species_unseen_in_train_get_a_leaf():
    train, val = rows([0, 1, 2]), rows([5], start_obs=900)
    tax = build_taxonomy([train, val], count_frame=train)
    assert tax.category_ids == [0, 1, 2, 5]
    assert tax.counts["leaf"] == [1, 1, 1, 0]


def test_parent_conflicts_are_all_listed():
    df = rows([0, 1, 2])
    df.loc[1, "family"] = "Pluteaceae"  # Amanita under two families
    df.loc[2, "order"] = "Boletales"    # Agaricaceae under Boletales here, Agaricales below
    df = pd.concat([df, rows([2])], ignore_index=True)
    with pytest.raises(TaxonomyError) as e:
        build_taxonomy([df])
    msg = str(e.value)
    assert "genus 'Amanita' has 2 different parents at rank family: ['Amanitaceae', 'Pluteaceae']" in msg
    assert "family 'Agaricaceae' has 2 different parents at rank order: ['Agaricales', 'Boletales']" in msg
    assert msg.startswith("2 taxonomy conflict(s)")


def test_category_id_with_two_species_is_a_conflict():
    df = rows([0, 0])
    df.loc[1, "species"] = "Amanita virosa"
    with pytest.raises(TaxonomyError, match="category_id 0 has 2 values of 'species'"):
        build_taxonomy([df])


def test_nan_rank_is_unknown_never_a_class():
    df = rows([0, 1, 5, 5])
    df.loc[0, "family"] = np.nan          # one row unknown: the leaf still knows its family
    df.loc[[2, 3], "class"] = np.nan      # every Morchella row lacks its class
    tax = build_taxonomy([df], count_frame=df)
    assert "nan" not in [c.lower() for r in RANKS for c in tax.classes[r]]
    assert tax.classes["class"] == ["Agaricomycetes"]
    leaf_morchella = tax.category_ids.index(5)
    assert tax.ancestors[leaf_morchella, RANKS.index("class")] == -1
    labels = encode_labels(tax, df)
    assert labels[0, 1 + RANKS.index("family")] == -1   # the row's own value is unknown
    assert labels[1, 1 + RANKS.index("family")] >= 0
    assert (labels[2:, 1 + RANKS.index("class")] == -1).all()
    assert tax.counts["class"] == [2]


def test_float_category_ids_and_save_load_roundtrip(tmp_path, tax):
    df = rows(TRAIN_IDS)
    df["category_id"] = df["category_id"].astype(float)
    assert build_taxonomy([df]).category_ids == tax.category_ids
    path = tmp_path / "m.json"
    tax.save(path)
    back = Taxonomy.load(path)
    np.testing.assert_array_equal(back.ancestors, tax.ancestors)
    assert back.classes == tax.classes and back.sha256() == tax.sha256()
    data = json.loads(path.read_text())
    assert data["leaves"][3] == {"category_id": 3, "scientificName": "Merulius tremellosus",
                                 "ancestors": dict(zip(RANKS, [1, 1, 2, 3, 3, 4])), "poisonous": False}


@pytest.mark.slow
def test_script_writes_mappings_and_rejects_missing_column(tmp_path):
    train, val = tmp_path / "train.csv", tmp_path / "val.csv"
    rows(TRAIN_IDS).to_csv(train, index=False)
    rows([5], start_obs=900).drop(columns=["genus"]).to_csv(val, index=False)
    out = tmp_path / "m.json"
    proc = run_in_process("create_taxonomic_mappings.py", "--train-path", train, "--output", out)
    assert "6 leaves" in proc.stdout and Taxonomy.load(out).n_leaves == 6
    bad = run_in_process("create_taxonomic_mappings.py", "--train-path", train, "--val-path", val,
                         "--output", tmp_path / "x.json", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"error: val.csv is missing column 'genus' ({val})"
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.json").exists()
