"""The demo dataset generator (amanita.demo): layout, schema, taxonomy, long tail, traits, determinism, CLI."""
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from amanita.demo import dataset, drawing, metadata, taxonomy
from amanita.io import UserError
from amanita.taxonomy import RANKS, build_taxonomy
from tests.helpers import run_script

TRAIN_VAL_COLUMNS = [
    "eventDate", "year", "month", "day", "habitat", "countryCode", "scientificName", "kingdom",
    "phylum", "class", "order", "family", "genus", "specificEpithet", "hasCoordinate", "species",
    "iucnRedListCategory", "substrate", "latitude", "longitude", "coorUncert", "observationID",
    "region", "district", "filename", "category_id", "metaSubstrate", "poisonous", "elevation",
    "landcover", "biogeographicalRegion", "captions"]
TEST_COLUMNS = [c for c in TRAIN_VAL_COLUMNS if c not in ("elevation", "landcover", "biogeographicalRegion")]
CSV_FILES = {"train": "FungiTastic-Train.csv", "val": "FungiTastic-ClosedSet-Val.csv",
             "test": "FungiTastic-ClosedSet-Test.csv"}
SMALL = dict(n_observations=1, image_size=48)  # every name at its minimum of 4 observations


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """A small demo set (about 700 tiny images) and its three CSVs, generated once."""
    root = tmp_path_factory.mktemp("demo")
    summary = dataset.generate_dataset(root, seed=0, workers=2, **SMALL)
    frames = {s: pd.read_csv(root / "metadata" / "FungiTastic" / f) for s, f in CSV_FILES.items()}
    return root, frames, summary


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- layout and schema
def test_layout_file_names_and_jpegs(small_set):
    root, frames, summary = small_set
    seen_idx = set()
    for split, df in frames.items():
        folder = root / "FungiTastic" / split / "48p"
        # the open-set unknowns' images sit beside their split's, as in FungiTastic
        extra = set(pd.read_csv(dataset.open_set_csv_path(root, split))["filename"]) if split != "train" else set()
        assert sorted(p.name for p in folder.iterdir()) == sorted(set(df["filename"]) | extra)
        for name, obs in zip(df["filename"], df["observationID"]):
            m = re.fullmatch(r"(\d+)-(\d+)\.JPG", name)
            assert m and int(m.group(2)) == obs
            seen_idx.add(int(m.group(1)))
        for name in df["filename"].iloc[:20]:
            with Image.open(folder / name) as im:
                assert (im.format, im.mode, min(im.size)) == ("JPEG", "RGB", 48)
        assert summary["images"][split] == len(df)
    assert len(seen_idx) == sum(len(df) for df in frames.values())  # imgIdx unique across splits


def test_exact_column_order(small_set):
    _, frames, _ = small_set
    assert list(frames["train"].columns) == TRAIN_VAL_COLUMNS
    assert list(frames["val"].columns) == TRAIN_VAL_COLUMNS
    assert list(frames["test"].columns) == TEST_COLUMNS


def test_values_are_plausible(small_set):
    _, frames, _ = small_set
    df = pd.concat(frames.values(), ignore_index=True)
    for col in ("poisonous", "category_id", "observationID", "year", "month", "day"):
        assert pd.api.types.is_integer_dtype(df[col]), col
    assert set(df["poisonous"]) == {0, 1}
    assert (df["kingdom"] == "Fungi").all() and (df["countryCode"] == "DK").all()
    assert df["latitude"].between(54.4, 57.9).all() and df["longitude"].between(7.8, 15.4).all()
    dates = pd.to_datetime(df["eventDate"], format="%Y-%m-%d")
    assert (dates.dt.year == df["year"]).all() and (dates.dt.month == df["month"]).all()
    assert (df["specificEpithet"] == df["species"].str.split().str[1]).all()
    assert df["captions"].str.len().gt(20).all() and df["substrate"].notna().all()
    assert frames["train"]["year"].max() < frames["val"]["year"].min() <= frames["test"]["year"].min()


# ---------------------------------------------------------------------- taxonomy
def test_real_taxonomy_with_amanita_and_lookalikes():
    table = taxonomy.species_table()
    assert table["species"].nunique() >= 60 and table["phylum"].nunique() >= 4
    poisonous = dict(zip(table["scientificName"], table["poisonous"]))
    for epithet in ("phalloides", "virosa", "muscaria", "pantherina", "rubescens", "citrina"):
        assert f"Amanita {epithet}" in poisonous
    for name in ("Amanita phalloides", "Amanita virosa", "Galerina marginata", "Cortinarius rubellus",
                 "Gyromitra esculenta", "Omphalotus olearius", "Agaricus xanthodermus"):
        assert poisonous[name] == 1, name
    for name in ("Amanita rubescens", "Cantharellus cibarius", "Boletus edulis", "Morchella esculenta",
                 "Kuehneromyces mutabilis", "Agaricus campestris"):
        assert poisonous[name] == 0, name
    assert table.groupby("genus")["species"].nunique().max() >= 5  # real depth: big genera,
    assert table.groupby("family")["genus"].nunique().max() >= 4  # families of several genera
    assert (table["genus"] == table["species"].str.split().str[0]).all()


def test_category_ids_contiguous_and_synonym_pair():
    table = taxonomy.species_table()
    assert table["category_id"].tolist() == list(range(len(table)))
    assert table["scientificName"].is_unique and table["scientificName"].is_monotonic_increasing
    syn = table[table["species"] == "Phlebia tremellosa"]
    assert sorted(syn["scientificName"]) == ["Merulius tremellosus", "Phlebia tremellosa"]
    assert len(syn[list(RANKS)].drop_duplicates()) == 1  # one accepted lineage


def test_build_taxonomy_accepts_the_csvs(small_set):
    _, frames, summary = small_set
    tax = build_taxonomy(frames.values(), count_frame=frames["train"])
    assert tax.n_leaves == len(taxonomy.SPECIES) == summary["leaves"]
    assert len(tax.classes["species"]) == len(taxonomy.SPECIES) - 1  # the synonym pair shares a species
    assert {r: len(tax.classes[r]) for r in RANKS} == summary["classes"]
    leaf = tax.leaf_index()[int(taxonomy.species_table().set_index("scientificName")
                                .loc["Amanita phalloides", "category_id"])]
    assert tax.poisonous[leaf] and tax.lineage(leaf)["family"] == "Amanitaceae"


# ---------------------------------------------------------------------- splits and long tail
def test_observations_never_cross_splits(small_set):
    _, frames, _ = small_set
    for plan in (frames, metadata.plan_dataset(seed=3)):
        owners = pd.concat([df[["observationID"]].assign(split=s) for s, df in plan.items()])
        assert owners.groupby("observationID")["split"].nunique().max() == 1
        sizes = owners.groupby("observationID").size()
        assert sizes.max() > 1  # several images per observation


@pytest.mark.parametrize("seed", [0, 1])
def test_default_plan_is_long_tailed_with_every_species_everywhere(seed):
    plan = metadata.plan_dataset(seed=seed)
    assert 2500 <= sum(len(df) for df in plan.values()) <= 3500
    train = plan["train"]
    images = train.groupby("species").size()
    assert images.max() >= 20 * images.min()
    assert train.groupby("species")["observationID"].nunique().min() >= 2
    every = set(taxonomy.species_table()["species"])
    assert set(plan["val"]["species"]) == every and set(plan["test"]["species"]) == every
    n_obs = {s: df["observationID"].nunique() for s, df in plan.items()}
    assert 0.6 < n_obs["train"] / sum(n_obs.values()) < 0.8


# ---------------------------------------------------------------------- visual traits
def test_habitat_substrate_and_month_are_drawn_like_field_records():
    """Shared ecologies, some out-of-season finds, habitats of another ecology, some missing habitats."""
    df = pd.concat(metadata.plan_dataset(seed=0).values(), ignore_index=True)
    obs = df.drop_duplicates("observationID")
    assert obs["habitat"].isna().mean() == pytest.approx(metadata.MISSING_HABITAT, abs=0.03)
    assert df["substrate"].notna().all() and df["month"].between(1, 12).all()
    assert obs.groupby("habitat")["scientificName"].nunique().max() >= 20  # many species share a habitat
    ecology = {t.scientific_name: metadata._ECOLOGY[t.ecology] for t in taxonomy.SPECIES}
    peak = obs["scientificName"].map(lambda n: ecology[n][3])
    gap = (obs["month"] - peak).abs()
    off_season = np.minimum(gap, 12 - gap) > 1  # more than a month from the peak, around the year
    assert 0.03 < off_season.mean() < 0.15
    usual = obs["scientificName"].map(lambda n: ecology[n][0])
    other = obs["habitat"].notna() & (obs["habitat"] != usual)
    assert 0.03 < other.mean() < 0.25


def test_each_rank_sets_distinct_traits_among_siblings():
    table = taxonomy.species_table().drop_duplicates("species")
    traits = {sp: drawing.species_traits(sp) for sp in table["species"]}
    own = {"phylum": ("background",), "class": ("ground", "ground_style"), "order": ("plan",),
           "family": ("hue",), "genus": ("pattern", "pattern_color"),
           "species": ("body", "density", "element_size", "mark")}
    for i, rank in enumerate(RANKS):
        for _, group in table.groupby(list(RANKS[:i]) or (lambda _: 0)):
            reps = group.drop_duplicates(rank)
            keys = {tuple(getattr(traits[sp], f) for f in own[rank]) for sp in reps["species"]}
            assert len(keys) == len(reps), f"{rank} siblings look alike: {sorted(reps[rank])}"
    for genus, group in table.groupby("genus"):  # a genus shares every trait above species
        shared = {(t.background, t.ground, t.plan, t.hue, t.pattern, t.pattern_color)
                  for t in map(traits.get, group["species"])}
        assert len(shared) == 1, genus


def test_draw_image_is_deterministic_and_4_by_3():
    a = drawing.draw_image("Amanita phalloides", seed=0, index=7)
    assert a.size == (400, 300) and a.mode == "RGB"
    assert drawing.encode_jpeg(a) == drawing.encode_jpeg(drawing.draw_image("Amanita phalloides", seed=0, index=7))
    assert a.tobytes() != drawing.draw_image("Amanita phalloides", seed=0, index=8).tobytes()
    assert a.tobytes() != drawing.draw_image("Amanita phalloides", seed=1, index=7).tobytes()
    with pytest.raises(KeyError):
        drawing.draw_image("Amanita caesarea", seed=0, index=0)


# ---------------------------------------------------------------------- generation
@pytest.mark.slow
def test_same_seed_same_bytes_whatever_the_workers(small_set, tmp_path):
    root, _, _ = small_set
    again = tmp_path / "again"
    dataset.generate_dataset(again, seed=1, workers=1, **SMALL)
    other = file_hashes(again)
    stale = again / "FungiTastic" / "train" / "48p" / "stale.JPG"
    stale.write_bytes(b"old")
    dataset.generate_dataset(again, seed=0, workers=1, **SMALL)  # in place, over the seed-1 set
    first = file_hashes(root)
    assert file_hashes(again) == first and not stale.exists()
    csvs = [k for k in first if k.endswith(".csv")]
    assert len(csvs) == 5 and all(first[k] != other[k] for k in csvs)  # 3 closed-set, 2 open-set
    jpegs = (set(first) & set(other)) - set(csvs)
    assert jpegs and not any(first[k] == other[k] for k in jpegs)


def test_max_images_keeps_a_sample_of_the_same_plan(small_set, tmp_path):
    root, frames, _ = small_set
    dataset.generate_dataset(tmp_path / "few", seed=0, workers=1, max_images=5, **SMALL)
    full, few = file_hashes(root), file_hashes(tmp_path / "few")
    for split, name in CSV_FILES.items():
        df = pd.read_csv(tmp_path / "few" / "metadata" / "FungiTastic" / name)
        assert len(df) == 5 and set(df["filename"]) < set(frames[split]["filename"])
        assert all(few[f"FungiTastic/{split}/48p/{f}"] == full[f"FungiTastic/{split}/48p/{f}"] for f in df["filename"])
    open_val = pd.read_csv(dataset.open_set_csv_path(tmp_path / "few", "val"))
    assert len(open_val) == 10 and (open_val["category_id"] == -1).sum() == 5  # 5 closed-set rows + 5 unknown


def test_refuses_a_folder_that_is_not_a_demo_set(tmp_path):
    foreign = tmp_path / "real_data"
    (foreign / "FungiTastic").mkdir(parents=True)
    with pytest.raises(UserError, match="not empty"):
        dataset.generate_dataset(foreign, seed=0, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["FungiTastic"]


@pytest.mark.slow
def test_cli_help_and_tiny_run(tmp_path):
    out = run_script("create_synthetic_dataset.py", "--help").stdout
    for flag in ("--output-dir", "--seed", "--n-observations", "--image-size", "--workers"):
        assert flag in out
    assert "data/demo" in out
    proc = run_script("create_synthetic_dataset.py", "--output-dir", tmp_path / "d", "--n-observations", 1,
                      "--image-size", 48, "--workers", 1)
    assert "train" in proc.stdout and "Amanita phalloides" in proc.stdout and "species 77" in proc.stdout
    for f in CSV_FILES.values():
        assert (tmp_path / "d" / "metadata" / "FungiTastic" / f).is_file()


def test_bad_arguments_are_user_errors(tmp_path):
    for bad in (dict(seed=-1), dict(image_size=8), dict(n_observations=0)):
        with pytest.raises(UserError):
            dataset.generate_dataset(tmp_path / "x", **(SMALL | bad))
    assert not (tmp_path / "x").exists()


def test_open_set_csvs_hold_the_closed_split_and_new_species_of_known_genera(small_set):
    root, frames, summary = small_set
    train = frames["train"]
    for split in ("val", "test"):
        df = pd.read_csv(dataset.open_set_csv_path(root, split))
        known, unknown = df[df["category_id"] >= 0], df[df["category_id"] == -1]
        assert known.reset_index(drop=True).equals(frames[split])  # the closed split, unchanged
        assert len(unknown) == summary["open_set"][split] > 0
        assert set(unknown["species"]) == {t.species for t in taxonomy.OPEN_SET_SPECIES}
        assert not set(unknown["species"]) & set(train["species"])  # never seen in training
        assert set(unknown["genus"]) <= set(train["genus"])  # but their genera were
        assert unknown["observationID"].nunique() == 3 * len(taxonomy.OPEN_SET_SPECIES)
        assert not set(unknown["observationID"]) & set(pd.concat(frames.values())["observationID"])
        assert df["filename"].is_unique
        folder = dataset.image_dir(root, split, SMALL["image_size"])
        assert all((folder / f).is_file() for f in unknown["filename"])
    assert drawing.species_traits("Cortinarius orellanus").pattern == drawing.species_traits("Cortinarius rubellus").pattern
