"""A malformed predictions.csv for validate.py --from-predictions is one line naming the file, row and
column (issue 17, item 14): non-numeric or NaN confidences, a -1 prediction, a fractional class index."""
import pandas as pd
import pytest

from amanita.demo.synthetic_predictions import synthetic_predictions, synthetic_taxonomy
from amanita.io import UserError
from amanita.predictions import read_predictions, write_predictions


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("predfile")
    tax = synthetic_taxonomy({"phylum": 2, "class": 3, "order": 4, "family": 5, "genus": 6, "species": 8, "leaf": 9})
    write_predictions(synthetic_predictions(tax, 12, seed=0), root / "predictions.csv")
    return root, tax, pd.read_csv(root / "predictions.csv", dtype=str, keep_default_na=False)


@pytest.mark.parametrize("column,row,value,said", [
    ("leaf_conf", 3, "abc", "line 5, column leaf_conf: 'abc', expected a probability"),
    ("genus_conf", 0, "nan", "line 2, column genus_conf: empty or NaN, expected a probability"),
    ("species_conf", 7, "", "line 9, column species_conf: empty or NaN, expected a probability"),
    ("family_conf", 2, "1.5", "line 4, column family_conf: '1.5'"),
    ("leaf_pred", 4, "-1", "line 6, column leaf_pred: '-1', expected a whole class index ≥ 0"),
    ("genus_pred", 1, "2.5", "line 3, column genus_pred: '2.5', expected a whole class index"),
    ("species_top2", 5, "1.7", "line 7, column species_top2: '1.7'"),
    ("order_true", 6, "-3", "line 8, column order_true: '-3', expected a whole class index ≥ -1"),
])
def test_a_bad_cell_is_named_by_file_line_and_column(table, tmp_path, column, row, value, said):
    _, tax, df = table
    bad = df.copy()
    bad.loc[row, column] = value
    bad.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(UserError) as e:
        read_predictions(tmp_path / "p.csv", tax)
    assert str(e.value).startswith(f"{tmp_path / 'p.csv'} {said}") and len(str(e.value).splitlines()) == 1


def test_a_well_formed_file_reads_with_its_padding_and_unknown_labels(table, tmp_path):
    root, tax, df = table
    ok = df.copy()
    ok.loc[0, "leaf_true"] = "-1"  # an unknown label
    ok.loc[0, "leaf_ptrue"] = ""  # its probability is unknown too
    ok.loc[1, "phylum_top5"] = "-1"  # padding: the phylum head has 2 classes
    ok.to_csv(tmp_path / "p.csv", index=False)
    got = read_predictions(tmp_path / "p.csv", tax)
    assert got["leaf_true"].iloc[0] == -1 and got["phylum_top5"].iloc[1] == -1 and pd.isna(got["leaf_ptrue"].iloc[0])
    assert got["leaf_conf"].dtype == float and got["leaf_pred"].dtype == "int64"
