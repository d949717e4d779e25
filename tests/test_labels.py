"""Labels read from the metadata CSVs: category_ids, ranks checked against the mappings, repeated rows."""
import logging

import pandas as pd
import pytest

from amanita.data import FungiTasticDataset, read_split
from amanita.io import UserError
from amanita.taxonomy import LABEL_COLUMN, build_taxonomy
from tests.helpers import TRAIN_IDS, rows


@pytest.fixture
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def test_a_rank_that_contradicts_the_lineage_of_the_category_id_is_refused_with_file_and_line(tax, tmp_path):
    df = rows([0, 1, 5, 5])
    df.loc[2, "genus"] = "Amanita"  # category_id 5 is Morchella esculenta, in genus Morchella
    df.loc[3, "family"] = "Boletaceae"  # a name the mappings do not know contradicts too
    df.to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(UserError) as e:
        FungiTasticDataset(tmp_path / "val.csv", tax)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'val.csv'} line 4: genus is 'Amanita', but category_id 5 "
                          "(Morchella esculenta) is in genus 'Morchella' in the mappings")
    assert "(1 more such rows)" in msg and len(msg.splitlines()) == 1
    # a frame read for some rows only names the line of the file, not of the frame
    part = read_split(tmp_path / "val.csv", rows=[0, 3])
    with pytest.raises(UserError, match="line 5: family is 'Boletaceae'"):
        FungiTasticDataset(tmp_path / "val.csv", tax, metadata=part)


def test_missing_ranks_unknown_leaves_and_consistent_rows_pass(tax, tmp_path):
    df = rows([0, 3, 5, 2])
    df.loc[0, "genus"] = None  # unknown at one rank: no label there, no conflict
    df.loc[3, ["category_id", "genus"]] = [-1, "Boletus"]  # an unseen species: its ranks are its own
    ds = FungiTasticDataset(tmp_path / "v.csv", tax, metadata=df)
    assert ds.labels[0, LABEL_COLUMN["genus"]] == -1 and ds.labels[1, LABEL_COLUMN["species"]] >= 0


@pytest.mark.parametrize("value", ["99999999999999999999", "9007199254740993"])
def test_a_category_id_too_large_to_hold_exactly_is_refused_not_wrapped(tmp_path, value):
    df = rows([0, 1])
    df["category_id"] = df["category_id"].astype(str)
    df.loc[1, "category_id"] = value
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match=f"line 3: category_id is '{value}', expected a whole number from 0 to 2"):
        read_split(tmp_path / "t.csv")


def test_repeated_images_are_warned_about_with_their_lines(tmp_path, caplog):
    df = rows([0, 1, 2])
    pd.concat([df, df.iloc[[1]]]).to_csv(tmp_path / "t.csv", index=False)
    with caplog.at_level(logging.WARNING):
        out = read_split(tmp_path / "t.csv")
    assert len(out) == 4  # kept: repeating an image may be meant, but it is said
    assert f"{tmp_path / 't.csv'}: 1 row(s) repeat an image listed earlier (first: 1-101.JPG on lines 3 and 5)" \
        in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_split(tmp_path / "t.csv", rows=[0, 1, 2])
    assert "repeat" not in caplog.text
