"""The demo's metadata: one CSV row per image in FungiTastic's schema, planned without drawing anything.

Observations per name follow the table's abundance (long tail); each observation has one to
four images, a split (about 70/15/15 within each name) and a date whose year follows the split
(FungiTastic's splits are chronological), and one place.

Habitat, substrate and month follow each species' ecology the way a field record does, so that
metadata priors (``compute_metadata_priors.py``) have something real to learn and to get wrong:
ten ecologies are shared by the 78 names (most live in "forest" or "wood", so a habitat narrows
the answer without naming it); the month is the ecology's peak month ± 1 (wrapped around the
year), except that :data:`OUT_OF_SEASON` of the finds come in any month; :data:`OTHER_HABITAT` of
the habitats and :data:`OTHER_SUBSTRATE` of the substrates are another ecology's, and
:data:`MISSING_HABITAT` of the habitats are not recorded (empty, as in many real records). These
draws come from their own random stream, so the rest of the plan is unchanged by them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from amanita.demo.drawing import caption
from amanita.demo.taxonomy import OPEN_SET_SPECIES, SPECIES, species_table
from amanita.taxonomy import RANKS

SPLITS = ("train", "val", "test")
OPEN_SET_OBSERVATIONS = 6  # per held-out species, alternately val and test
COLUMNS = ("eventDate", "year", "month", "day", "habitat", "countryCode", "scientificName",
           "kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet",
           "hasCoordinate", "species", "iucnRedListCategory", "substrate", "latitude",
           "longitude", "coorUncert", "observationID", "region", "district", "filename",
           "category_id", "metaSubstrate", "poisonous", "elevation", "landcover",
           "biogeographicalRegion", "captions")
TEST_MISSING = ("elevation", "landcover", "biogeographicalRegion")  # absent from the real test CSV

OUT_OF_SEASON = 0.08    # share of finds in a month drawn uniformly (a mild winter, a late flush)
OTHER_HABITAT = 0.15    # share of habitats drawn from another ecology (a forest species in a park)
OTHER_SUBSTRATE = 0.10  # share of substrates drawn from another ecology
MISSING_HABITAT = 0.10  # share of records with no habitat
DEFAULT_N_OBSERVATIONS = 1400  # about 3,000 images
MIN_OBSERVATIONS = 4  # per name: two for train, one for val, one for test
IMAGES_PER_OBSERVATION = (1, 2, 3, 4)
IMAGES_PER_OBSERVATION_P = (0.35, 0.3, 0.2, 0.15)

_ECOLOGY = {  # ecology (of the taxonomy table): habitat, substrate, metaSubstrate, month of most finds
    "forest": ("Deciduous woodland", "soil", "soil", 10),
    "wood": ("Mixed woodland (with coniferous and deciduous trees)", "dead wood (including bark)", "wood", 10),
    "grass": ("natural grassland", "stems of herbs, grass etc", "plant material", 9),
    "spring": ("Deciduous woodland", "wood chips or mulch", "wood", 4),
    "leaves": ("hedgerow", "living leaves", "plant material", 8),
    "plants": ("meadow", "living stems", "plant material", 7),
    "insects": ("garden", "insects", "animal material", 7),
    "bark": ("park/churchyard", "bark of living trees", "wood", 11),
    "dung": ("meadow", "dung", "dung", 9),
    "fungi": ("Deciduous woodland", "fungi", "fungi", 10),
}
_FIXED = {"kingdom": "Fungi", "countryCode": "DK", "hasCoordinate": True, "iucnRedListCategory": "LC",
          "region": "Region Hovedstaden", "district": "København", "latitude": 55.68, "longitude": 12.57,
          "coorUncert": 25.0, "elevation": 10.0, "landcover": 13, "biogeographicalRegion": "continental"}
_SPLIT_YEARS = {"train": tuple(range(2009, 2022)), "val": (2022,), "test": (2023,)}  # as FungiTastic


def observation_counts(n_observations: int = DEFAULT_N_OBSERVATIONS) -> np.ndarray:
    """Observations per leaf (``category_id`` order): ``n_observations`` shared by abundance.

    Each leaf gets at least :data:`MIN_OBSERVATIONS`, so small sets keep every name in every split.
    """
    a = np.array([t.abundance for t in SPECIES], dtype=np.float64)
    return np.maximum(MIN_OBSERVATIONS, np.round(n_observations * a / a.sum())).astype(np.int64)

def _split_observations(leaf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split name per observation: about 70/15/15 within each leaf, at least 2/1/1."""
    order = np.lexsort((rng.random(len(leaf)), leaf))  # shuffled within each leaf
    rank = np.empty(len(leaf), dtype=np.int64)
    counts = np.bincount(leaf)
    starts = np.cumsum(counts) - counts
    rank[order] = np.arange(len(leaf)) - np.repeat(starts, counts)
    n = counts[leaf]
    n_held = np.maximum(1, np.round(0.15 * n))  # val and test each
    return np.where(rank < n_held, "val", np.where(rank < 2 * n_held, "test", "train"))

def _observations(n_observations: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per observation: leaf, split, date, habitat and substrate, number of images."""
    leaf = np.repeat(np.arange(len(SPECIES)), observation_counts(n_observations))
    split = _split_observations(leaf, rng)
    eco = pd.DataFrame([_ECOLOGY[SPECIES[i].ecology] for i in leaf],
                       columns=["habitat", "substrate", "metaSubstrate", "peak_month"])
    year = np.zeros(len(leaf), dtype=np.int64)
    for name, years in _SPLIT_YEARS.items():
        rows = np.flatnonzero(split == name)
        year[rows] = rng.choice(years, size=len(rows))
    month = (eco.pop("peak_month").to_numpy() + rng.integers(-1, 2, size=len(leaf)) - 1) % 12 + 1
    eco["month"] = month
    eco = _field_noise(eco, rng.spawn(1)[0])  # its own stream: the main draws stay as they were
    return eco.assign(leaf=leaf, split=split, year=year, day=rng.integers(1, 29, size=len(leaf)),
                      n_images=rng.choice(IMAGES_PER_OBSERVATION, size=len(leaf), p=IMAGES_PER_OBSERVATION_P))


def _field_noise(eco: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Out-of-season months, habitats and substrates of another ecology, missing habitats (see module doc)."""
    n = len(eco)
    table = pd.DataFrame(list(_ECOLOGY.values()), columns=["habitat", "substrate", "metaSubstrate", "peak"])
    eco = eco.copy()
    draws = rng.random((4, n))
    eco["month"] = np.where(draws[0] < OUT_OF_SEASON, rng.integers(1, 13, size=n), eco["month"])
    other = table.iloc[rng.integers(len(table), size=n)].reset_index(drop=True)
    habitat = np.where(draws[1] < OTHER_HABITAT, other["habitat"], eco["habitat"]).astype(object)
    habitat[draws[2] < MISSING_HABITAT] = np.nan
    eco["habitat"] = habitat
    swap = draws[3] < OTHER_SUBSTRATE
    other = table.iloc[rng.integers(len(table), size=n)].reset_index(drop=True)
    for col in ("substrate", "metaSubstrate"):
        eco[col] = np.where(swap, other[col], eco[col])
    return eco


def _number_observations(obs: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Sort by date and give increasing, gapped ``observationID`` values like the real ones."""
    obs = obs.assign(eventDate=pd.to_datetime(obs[["year", "month", "day"]]).dt.strftime("%Y-%m-%d"))
    obs = obs.assign(_key=rng.random(len(obs))).sort_values(["eventDate", "_key"], kind="stable")
    gaps = rng.integers(1, 4000, size=len(obs))
    return obs.drop(columns="_key").assign(observationID=3_000_000_000 + np.cumsum(gaps)) \
        .reset_index(drop=True)

def plan_dataset(seed: int = 0, n_observations: int = DEFAULT_N_OBSERVATIONS) -> dict[str, pd.DataFrame]:
    """The metadata of every split, without drawing an image: split → frame (all columns).

    Rows are images (several per observation); ``filename`` is ``<imgIdx>-<observationID>.JPG``
    with ``imgIdx`` unique across splits: it also seeds the image. Deterministic in ``seed``.
    """
    rng = np.random.default_rng([seed, 0])
    obs = _number_observations(_observations(n_observations, rng), rng)
    img = obs.loc[obs.index.repeat(obs["n_images"])].reset_index(drop=True)
    img["split"] = pd.Categorical(img["split"], categories=SPLITS)
    img = img.sort_values(["split", "eventDate", "observationID"], kind="stable").reset_index(drop=True)
    img_idx = pd.Series(np.arange(len(img))).astype(str)  # unique across splits; seeds the image
    img["filename"] = img_idx + "-" + img["observationID"].astype(str) + ".JPG"
    img["captions"] = [caption(SPECIES[lf], sub) for lf, sub in zip(img["leaf"], img["substrate"])]
    taxa = species_table().set_index("category_id")
    img = img.join(taxa[["scientificName", *RANKS, "poisonous"]], on="leaf")
    img["category_id"] = img["leaf"].astype(np.int64)
    img["specificEpithet"] = img["species"].str.split().str[1]
    img = img.assign(**_FIXED)
    return {s: img.loc[img["split"] == s, list(COLUMNS)].reset_index(drop=True) for s in SPLITS}


def plan_open_set(plan: dict[str, pd.DataFrame], seed: int = 0) -> dict[str, pd.DataFrame]:
    """The unknown-species rows of the OpenSet val and test CSVs: split → frame (all columns).

    Each held-out species gets :data:`OPEN_SET_OBSERVATIONS` observations, alternately val and
    test, modelled on training observations of its genus (date moved to the split's year, a
    new observationID and image index); ``category_id`` is -1, the other ranks are filled.
    """
    rng = np.random.default_rng([seed, 2])
    train = plan["train"]
    next_img = 1 + max(int(f.split("-")[0]) for df in plan.values() for f in df["filename"])
    next_obs = 1 + max(int(df["observationID"].max()) for df in plan.values())
    out = {"val": [], "test": []}
    for t in OPEN_SET_SPECIES:
        templates = train.loc[train["genus"] == t.genus, "observationID"].unique()
        for j, obs_id in enumerate(rng.choice(templates, OPEN_SET_OBSERVATIONS, replace=True)):
            split = ("val", "test")[j % 2]
            rows = train[train["observationID"] == obs_id].copy()
            idx = np.arange(next_img, next_img + len(rows))
            next_img, next_obs = next_img + len(rows), next_obs + int(rng.integers(1, 4000))
            rows = rows.assign(observationID=next_obs, year=_SPLIT_YEARS[split][0], category_id=-1,
                               scientificName=t.scientific_name, species=t.species,
                               specificEpithet=t.species.split()[1], poisonous=int(t.poisonous),
                               filename=[f"{i}-{next_obs}.JPG" for i in idx])
            rows["eventDate"] = pd.to_datetime(rows[["year", "month", "day"]]).dt.strftime("%Y-%m-%d")
            rows["captions"] = [caption(t, sub) for sub in rows["substrate"]]
            out[split].append(rows)
    return {s: pd.concat(v, ignore_index=True)[list(COLUMNS)] for s, v in out.items()}
