"""The built-in demo dataset: FungiTastic-format metadata and procedurally drawn fungi.

No download can be relied on, so the demo ships its own data in the real layout::

    <root>/metadata/FungiTastic/FungiTastic-{Train,ClosedSet-Val,ClosedSet-Test}.csv
    <root>/FungiTastic/{train,val,test}/<size>p/<imgIdx>-<observationID>.JPG

The taxonomy is real (:data:`SPECIES`: 78 names, 77 accepted species in five phyla, with
*Amanita phalloides*, its look-alikes, a synonym pair and a true-to-life ``poisonous`` flag);
the observations are invented (Danish localities, seasons, substrates) with long-tailed counts.

Every image is drawn so that each rank adds its own visual trait, coarse ranks the largest:

=========  ==========================================================================
phylum     background colour (the whole upper part of the picture)
class      ground band: colour and texture (moss, litter, wood grain, grass, gravel)
order      body plan (cap and stem, bracket, cup, coral, ...) and its stem/host colour
family     hue of the fruit body (siblings in an order are spread around the hue circle)
genus      surface pattern (spots, stripes, rings, scales, net, ...) and its colour
species    shade of the body, pattern density and element size, a small coloured mark
=========  ==========================================================================

Traits come from the lineage alone (siblings are spread evenly over each trait), so species
of a genus share the genus traits, and two synonymous names draw the same pictures. Pose,
scale, lighting, clutter and noise vary per image. The plan (:func:`plan_dataset`) is separate
from the drawing (:func:`draw_image`), and every image is seeded from ``(seed, imgIdx)``, so the
output is byte-identical for a seed whatever the number of worker processes.
"""
from __future__ import annotations

import colorsys
import functools
import io
import json
import math
import multiprocessing
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageChops, ImageDraw

from amanita.io import UserError, atomic_to_csv, atomic_write_text
from amanita.taxonomy import RANKS

# ---------------------------------------------------------------------- file layout
SPLITS = ("train", "val", "test")
CSV_NAMES = {"train": "FungiTastic-Train.csv", "val": "FungiTastic-ClosedSet-Val.csv",
             "test": "FungiTastic-ClosedSet-Test.csv"}
COLUMNS = ("eventDate", "year", "month", "day", "habitat", "countryCode", "scientificName",
           "kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet",
           "hasCoordinate", "species", "iucnRedListCategory", "substrate", "latitude",
           "longitude", "coorUncert", "observationID", "region", "district", "filename",
           "category_id", "metaSubstrate", "poisonous", "elevation", "landcover",
           "biogeographicalRegion", "captions")
TEST_MISSING = ("elevation", "landcover", "biogeographicalRegion")  # absent from the real test CSV
MARKER = "amanita_synthetic.json"  # marks a folder as ours, so regenerating may clear it

DEFAULT_N_OBSERVATIONS = 1400  # about 3,000 images
DEFAULT_IMAGE_SIZE = 300  # shorter side in pixels, the "300p" of the folder name
MIN_OBSERVATIONS = 4  # per name: two for train, one for val, one for test
IMAGES_PER_OBSERVATION = (1, 2, 3, 4)
IMAGES_PER_OBSERVATION_P = (0.35, 0.3, 0.2, 0.15)
JPEG_QUALITY = 90


def csv_path(root: str | Path, split: str) -> Path:
    """Metadata CSV of ``split`` under a dataset ``root``."""
    return Path(root) / "metadata" / "FungiTastic" / CSV_NAMES[split]


def image_dir(root: str | Path, split: str, image_size: int = DEFAULT_IMAGE_SIZE) -> Path:
    """Image folder of ``split``: ``<root>/FungiTastic/<split>/<size>p``."""
    return Path(root) / "FungiTastic" / split / f"{image_size}p"


# ---------------------------------------------------------------------- taxonomy
_FAMILIES = {  # family: (phylum, class, order)
    "Amanitaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Agaricaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Pluteaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Tricholomataceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Hymenogastraceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Strophariaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Physalacriaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Cortinariaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Inocybaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Omphalotaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Mycenaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Psathyrellaceae": ("Basidiomycota", "Agaricomycetes", "Agaricales"),
    "Boletaceae": ("Basidiomycota", "Agaricomycetes", "Boletales"),
    "Hygrophoropsidaceae": ("Basidiomycota", "Agaricomycetes", "Boletales"),
    "Paxillaceae": ("Basidiomycota", "Agaricomycetes", "Boletales"),
    "Suillaceae": ("Basidiomycota", "Agaricomycetes", "Boletales"),
    "Cantharellaceae": ("Basidiomycota", "Agaricomycetes", "Cantharellales"),
    "Hydnaceae": ("Basidiomycota", "Agaricomycetes", "Cantharellales"),
    "Russulaceae": ("Basidiomycota", "Agaricomycetes", "Russulales"),
    "Polyporaceae": ("Basidiomycota", "Agaricomycetes", "Polyporales"),
    "Fomitopsidaceae": ("Basidiomycota", "Agaricomycetes", "Polyporales"),
    "Meruliaceae": ("Basidiomycota", "Agaricomycetes", "Polyporales"),
    "Laetiporaceae": ("Basidiomycota", "Agaricomycetes", "Polyporales"),
    "Auriculariaceae": ("Basidiomycota", "Agaricomycetes", "Auriculariales"),
    "Phallaceae": ("Basidiomycota", "Agaricomycetes", "Phallales"),
    "Geastraceae": ("Basidiomycota", "Agaricomycetes", "Geastrales"),
    "Tremellaceae": ("Basidiomycota", "Tremellomycetes", "Tremellales"),
    "Dacrymycetaceae": ("Basidiomycota", "Dacrymycetes", "Dacrymycetales"),
    "Discinaceae": ("Ascomycota", "Pezizomycetes", "Pezizales"),
    "Morchellaceae": ("Ascomycota", "Pezizomycetes", "Pezizales"),
    "Helvellaceae": ("Ascomycota", "Pezizomycetes", "Pezizales"),
    "Pyronemataceae": ("Ascomycota", "Pezizomycetes", "Pezizales"),
    "Sarcoscyphaceae": ("Ascomycota", "Pezizomycetes", "Pezizales"),
    "Chlorociboriaceae": ("Ascomycota", "Leotiomycetes", "Helotiales"),
    "Rhytismataceae": ("Ascomycota", "Leotiomycetes", "Rhytismatales"),
    "Xylariaceae": ("Ascomycota", "Sordariomycetes", "Xylariales"),
    "Hypoxylaceae": ("Ascomycota", "Sordariomycetes", "Xylariales"),
    "Clavicipitaceae": ("Ascomycota", "Sordariomycetes", "Hypocreales"),
    "Cordycipitaceae": ("Ascomycota", "Sordariomycetes", "Hypocreales"),
    "Teloschistaceae": ("Ascomycota", "Lecanoromycetes", "Teloschistales"),
    "Mucoraceae": ("Mucoromycota", "Mucoromycetes", "Mucorales"),
    "Phycomycetaceae": ("Mucoromycota", "Mucoromycetes", "Mucorales"),
    "Entomophthoraceae": ("Zoopagomycota", "Entomophthoromycetes", "Entomophthorales"),
    "Synchytriaceae": ("Chytridiomycota", "Chytridiomycetes", "Synchytriales"),
}

# (scientificName, family, poisonous, abundance, ecology[, accepted species name])
# abundance: relative number of observations (long tail); ecology: a key of _ECOLOGY.
_TABLE = (
    ("Amanita phalloides", "Amanitaceae", 1, 45, "forest"),
    ("Amanita virosa", "Amanitaceae", 1, 8, "forest"),
    ("Amanita muscaria", "Amanitaceae", 1, 80, "forest"),
    ("Amanita pantherina", "Amanitaceae", 1, 12, "forest"),
    ("Amanita rubescens", "Amanitaceae", 0, 50, "forest"),
    ("Amanita citrina", "Amanitaceae", 0, 30, "forest"),
    ("Amanita fulva", "Amanitaceae", 0, 25, "forest"),
    ("Agaricus campestris", "Agaricaceae", 0, 20, "grass"),
    ("Agaricus arvensis", "Agaricaceae", 0, 10, "grass"),
    ("Agaricus xanthodermus", "Agaricaceae", 1, 10, "grass"),
    ("Macrolepiota procera", "Agaricaceae", 0, 35, "grass"),
    ("Lepiota cristata", "Agaricaceae", 1, 10, "forest"),
    ("Lepiota brunneoincarnata", "Agaricaceae", 1, 2, "grass"),
    ("Coprinus comatus", "Agaricaceae", 0, 30, "grass"),
    ("Volvopluteus gloiocephalus", "Pluteaceae", 0, 3, "grass"),
    ("Pluteus cervinus", "Pluteaceae", 0, 20, "wood"),
    ("Tricholoma equestre", "Tricholomataceae", 1, 4, "forest"),
    ("Tricholoma portentosum", "Tricholomataceae", 0, 5, "forest"),
    ("Tricholoma pardinum", "Tricholomataceae", 1, 2, "forest"),
    ("Clitocybe dealbata", "Tricholomataceae", 1, 4, "grass"),
    ("Lepista nuda", "Tricholomataceae", 0, 20, "forest"),
    ("Galerina marginata", "Hymenogastraceae", 1, 10, "wood"),
    ("Hebeloma crustuliniforme", "Hymenogastraceae", 1, 10, "forest"),
    ("Kuehneromyces mutabilis", "Strophariaceae", 0, 25, "wood"),
    ("Hypholoma fasciculare", "Strophariaceae", 1, 70, "wood"),
    ("Armillaria mellea", "Physalacriaceae", 0, 35, "wood"),
    ("Armillaria ostoyae", "Physalacriaceae", 0, 8, "wood"),
    ("Cortinarius rubellus", "Cortinariaceae", 1, 3, "forest"),
    ("Cortinarius violaceus", "Cortinariaceae", 0, 5, "forest"),
    ("Inocybe geophylla", "Inocybaceae", 1, 10, "forest"),
    ("Inosperma erubescens", "Inocybaceae", 1, 3, "forest"),
    ("Omphalotus olearius", "Omphalotaceae", 1, 2, "wood"),
    ("Mycena pura", "Mycenaceae", 1, 15, "forest"),
    ("Coprinopsis atramentaria", "Psathyrellaceae", 1, 10, "grass"),
    ("Boletus edulis", "Boletaceae", 0, 60, "forest"),
    ("Boletus reticulatus", "Boletaceae", 0, 8, "forest"),
    ("Rubroboletus satanas", "Boletaceae", 1, 2, "forest"),
    ("Leccinum scabrum", "Boletaceae", 0, 20, "forest"),
    ("Hygrophoropsis aurantiaca", "Hygrophoropsidaceae", 0, 15, "forest"),
    ("Paxillus involutus", "Paxillaceae", 1, 40, "forest"),
    ("Suillus luteus", "Suillaceae", 0, 15, "forest"),
    ("Cantharellus cibarius", "Cantharellaceae", 0, 60, "forest"),
    ("Craterellus cornucopioides", "Cantharellaceae", 0, 12, "forest"),
    ("Hydnum repandum", "Hydnaceae", 0, 12, "forest"),
    ("Russula emetica", "Russulaceae", 1, 15, "forest"),
    ("Russula cyanoxantha", "Russulaceae", 0, 10, "forest"),
    ("Russula ochroleuca", "Russulaceae", 0, 25, "forest"),
    ("Lactarius deliciosus", "Russulaceae", 0, 10, "forest"),
    ("Lactarius torminosus", "Russulaceae", 1, 10, "forest"),
    ("Trametes versicolor", "Polyporaceae", 0, 100, "wood"),
    ("Fomes fomentarius", "Polyporaceae", 0, 50, "wood"),
    ("Fomitopsis betulina", "Fomitopsidaceae", 0, 30, "wood"),
    ("Phlebia tremellosa", "Meruliaceae", 0, 6, "wood"),
    ("Merulius tremellosus", "Meruliaceae", 0, 3, "wood", "Phlebia tremellosa"),
    ("Laetiporus sulphureus", "Laetiporaceae", 0, 15, "wood"),
    ("Auricularia auricula-judae", "Auriculariaceae", 0, 30, "wood"),
    ("Phallus impudicus", "Phallaceae", 0, 25, "forest"),
    ("Geastrum triplex", "Geastraceae", 0, 5, "forest"),
    ("Tremella mesenterica", "Tremellaceae", 0, 12, "wood"),
    ("Calocera viscosa", "Dacrymycetaceae", 0, 20, "wood"),
    ("Gyromitra esculenta", "Discinaceae", 1, 6, "spring"),
    ("Gyromitra infula", "Discinaceae", 1, 2, "wood"),
    ("Morchella esculenta", "Morchellaceae", 0, 6, "spring"),
    ("Morchella elata", "Morchellaceae", 0, 4, "spring"),
    ("Helvella crispa", "Helvellaceae", 0, 8, "forest"),
    ("Aleuria aurantia", "Pyronemataceae", 0, 15, "grass"),
    ("Sarcoscypha austriaca", "Sarcoscyphaceae", 0, 6, "spring"),
    ("Chlorociboria aeruginascens", "Chlorociboriaceae", 0, 6, "wood"),
    ("Rhytisma acerinum", "Rhytismataceae", 0, 35, "leaves"),
    ("Xylaria hypoxylon", "Xylariaceae", 0, 45, "wood"),
    ("Daldinia concentrica", "Hypoxylaceae", 0, 20, "wood"),
    ("Claviceps purpurea", "Clavicipitaceae", 1, 3, "plants"),
    ("Cordyceps militaris", "Cordycipitaceae", 0, 3, "insects"),
    ("Xanthoria parietina", "Teloschistaceae", 0, 15, "bark"),
    ("Mucor mucedo", "Mucoraceae", 0, 2, "dung"),
    ("Spinellus fusiger", "Phycomycetaceae", 0, 2, "fungi"),
    ("Entomophthora muscae", "Entomophthoraceae", 0, 2, "insects"),
    ("Synchytrium endobioticum", "Synchytriaceae", 0, 2, "plants"),
)


@dataclass(frozen=True)
class Taxon:
    """One leaf of the demo taxonomy: a ``scientificName`` and its accepted lineage."""

    category_id: int
    scientific_name: str
    species: str
    genus: str
    family: str
    order: str
    class_name: str
    phylum: str
    poisonous: bool
    abundance: int
    ecology: str

    @property
    def lineage(self) -> dict[str, str]:
        """Rank name → taxon name, for the six ranks of :data:`amanita.taxonomy.RANKS`."""
        return dict(zip(RANKS, (self.phylum, self.class_name, self.order, self.family,
                                self.genus, self.species)))


def _build_species() -> tuple[Taxon, ...]:
    """The table as :class:`Taxon` records; ``category_id`` follows sorted ``scientificName``."""
    rows = sorted(_TABLE, key=lambda r: r[0])
    out = []
    for cid, (name, family, poisonous, abundance, ecology, *accepted) in enumerate(rows):
        species = accepted[0] if accepted else name
        phylum, class_name, order = _FAMILIES[family]
        out.append(Taxon(cid, name, species, species.split()[0], family, order, class_name,
                         phylum, bool(poisonous), abundance, ecology))
    return tuple(out)


SPECIES: tuple[Taxon, ...] = _build_species()


def species_table() -> pd.DataFrame:
    """One row per leaf: ``category_id``, ``scientificName``, the six ranks, flags, abundance."""
    return pd.DataFrame([{"category_id": t.category_id, "scientificName": t.scientific_name,
                          **t.lineage, "poisonous": int(t.poisonous), "abundance": t.abundance}
                         for t in SPECIES])


# ---------------------------------------------------------------------- observation context
_WOODLAND = ("Deciduous woodland", "Mixed woodland (with coniferous and deciduous trees)",
             "Coniferous woodland/plantation", "Unmanaged deciduous woodland",
             "Acidic oak woodland", "park/churchyard")
_OPEN = ("lawn", "natural grassland", "park/churchyard", "roadside", "garden", "meadow")
_ECOLOGY = {  # key: (habitats, substrates, season)
    "forest": (_WOODLAND, ("soil", "leaf or needle litter", "mosses"), "autumn"),
    "wood": (_WOODLAND + ("garden",), ("dead wood (including bark)", "wood", "wood chips or mulch"),
             "autumn"),
    "grass": (_OPEN, ("soil", "stems of herbs, grass etc", "wood chips or mulch"), "autumn"),
    "spring": (_WOODLAND[:4], ("soil", "wood chips or mulch"), "spring"),
    "leaves": (_WOODLAND + ("hedgerow",), ("living leaves",), "autumn"),
    "plants": (_OPEN + ("fallow field",), ("stems of herbs, grass etc", "living stems"), "summer"),
    "insects": (_WOODLAND[:3] + ("garden",), ("insects",), "summer"),
    "bark": (("park/churchyard", "hedgerow", "roadside", "garden"), ("bark of living trees",),
             "all"),
    "dung": (("meadow", "natural grassland"), ("dung",), "autumn"),
    "fungi": (_WOODLAND[:3], ("fungi",), "autumn"),
}
_META_SUBSTRATE = {"soil": "soil", "leaf or needle litter": "plant material", "mosses": "mosses",
                   "dead wood (including bark)": "wood", "wood": "wood",
                   "wood chips or mulch": "wood", "stems of herbs, grass etc": "plant material",
                   "living stems": "plant material", "living leaves": "plant material",
                   "insects": "animal material", "bark of living trees": "wood",
                   "dung": "dung", "fungi": "fungi"}
_SEASONS = {  # relative observations per month, January first
    "autumn": (2, 1, 2, 3, 4, 5, 7, 12, 20, 25, 14, 5),
    "spring": (1, 2, 10, 25, 20, 6, 2, 2, 3, 3, 1, 1),
    "summer": (1, 1, 2, 4, 8, 14, 18, 18, 14, 10, 4, 1),
    "all": (6, 5, 7, 8, 8, 8, 8, 9, 10, 12, 11, 8),
}
_LANDCOVER = {  # habitat: MODIS land-cover class
    "Deciduous woodland": 4, "Mixed woodland (with coniferous and deciduous trees)": 5,
    "Coniferous woodland/plantation": 1, "Unmanaged deciduous woodland": 4,
    "Acidic oak woodland": 4, "park/churchyard": 13, "garden": 13, "lawn": 13, "meadow": 10,
    "natural grassland": 10, "roadside": 12, "hedgerow": 14, "fallow field": 12}
_DISTRICTS = (  # region, district (municipality), latitude, longitude, typical elevation (m)
    ("Region Hovedstaden", "Gribskov", 56.03, 12.30, 35),
    ("Region Hovedstaden", "Hillerød", 55.93, 12.31, 40),
    ("Region Hovedstaden", "Rudersdal", 55.83, 12.49, 30),
    ("Region Hovedstaden", "Bornholm", 55.13, 14.92, 80),
    ("Region Hovedstaden", "Furesø", 55.79, 12.35, 35),
    ("Region Hovedstaden", "København", 55.68, 12.57, 10),
    ("Region Sjælland", "Roskilde", 55.64, 12.08, 25),
    ("Region Sjælland", "Næstved", 55.23, 11.76, 20),
    ("Region Sjælland", "Lolland", 54.77, 11.35, 5),
    ("Region Sjælland", "Odsherred", 55.87, 11.57, 30),
    ("Region Syddanmark", "Odense", 55.40, 10.39, 20),
    ("Region Syddanmark", "Svendborg", 55.06, 10.61, 25),
    ("Region Syddanmark", "Vejle", 55.71, 9.53, 60),
    ("Region Syddanmark", "Esbjerg", 55.48, 8.46, 10),
    ("Region Syddanmark", "Sønderborg", 54.91, 9.79, 20),
    ("Region Midtjylland", "Aarhus", 56.16, 10.20, 40),
    ("Region Midtjylland", "Silkeborg", 56.17, 9.55, 70),
    ("Region Midtjylland", "Viborg", 56.45, 9.40, 50),
    ("Region Midtjylland", "Skanderborg", 56.03, 9.93, 60),
    ("Region Nordjylland", "Aalborg", 57.05, 9.92, 15),
    ("Region Nordjylland", "Thisted", 56.96, 8.69, 20),
    ("Region Nordjylland", "Frederikshavn", 57.44, 10.54, 15),
    ("Region Nordjylland", "Rebild", 56.83, 9.83, 60),
)
_JUTLAND = {"Vejle", "Esbjerg", "Aarhus", "Silkeborg", "Viborg", "Skanderborg", "Aalborg",
            "Thisted", "Frederikshavn", "Rebild"}  # atlantic region; the islands are continental
_SPLIT_YEARS = {"train": tuple(range(2009, 2022)), "val": (2022,), "test": (2023,)}  # as FungiTastic
_COOR_UNCERT = (5, 10, 25, 50, 100, 250, 1000)


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


def _choose(groups: np.ndarray, options: dict, rng: np.random.Generator) -> np.ndarray:
    """Per row, a uniform choice among ``options[group of the row]`` (a loop over groups only)."""
    out = np.empty(len(groups), dtype=object)
    for g, opts in options.items():
        rows = np.flatnonzero(groups == g)
        out[rows] = np.asarray(opts, dtype=object)[rng.integers(len(opts), size=len(rows))]
    return out


def _dates(split: np.ndarray, season: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Year (from the split, like FungiTastic's chronological splits), month (from the season), day."""
    year, month = np.zeros(len(split), np.int64), np.zeros(len(split), np.int64)
    for sp, years in _SPLIT_YEARS.items():
        rows = np.flatnonzero(split == sp)
        k = (len(years) * rng.random(len(rows)) ** 0.6).astype(np.int64)  # recent years busier
        year[rows] = np.asarray(years)[np.minimum(k, len(years) - 1)]
    for name, weights in _SEASONS.items():
        rows = np.flatnonzero(season == name)
        p = np.asarray(weights, np.float64)
        month[rows] = rng.choice(12, size=len(rows), p=p / p.sum()) + 1
    return {"year": year, "month": month, "day": rng.integers(1, 29, size=len(split))}


def _places(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Region, district, coordinates with their uncertainty, elevation and biogeographical region."""
    region, district, lat, lon, elev = (np.asarray(c) for c in zip(*_DISTRICTS))
    k = rng.integers(len(_DISTRICTS), size=n)
    return {"region": region[k], "district": district[k],
            "latitude": np.round(lat[k] + rng.normal(0, 0.04, n), 6),
            "longitude": np.round(lon[k] + rng.normal(0, 0.06, n), 6),
            "coorUncert": np.asarray(_COOR_UNCERT, np.float64)[rng.integers(len(_COOR_UNCERT), size=n)],
            "elevation": np.round(np.maximum(0.0, elev[k] * (1 + rng.normal(0, 1 / 3, n))), 1),
            "biogeographicalRegion": np.where(np.isin(district[k], list(_JUTLAND)),
                                              "atlantic", "continental")}


def _observations(n_observations: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per observation: leaf, split, date, place, habitat, substrate, number of images."""
    leaf = np.repeat(np.arange(len(SPECIES)), observation_counts(n_observations))
    split = _split_observations(leaf, rng)
    ecology = np.asarray([t.ecology for t in SPECIES])[leaf]
    habitat = _choose(ecology, {k: v[0] for k, v in _ECOLOGY.items()}, rng)
    obs = pd.DataFrame({
        "leaf": leaf, "split": split,
        **_dates(split, _choose(ecology, {k: (v[2],) for k, v in _ECOLOGY.items()}, rng), rng),
        "habitat": habitat, "substrate": _choose(ecology, {k: v[1] for k, v in _ECOLOGY.items()}, rng),
        **_places(len(leaf), rng),
        "n_images": rng.choice(IMAGES_PER_OBSERVATION, size=len(leaf), p=IMAGES_PER_OBSERVATION_P)})
    return obs.assign(landcover=obs["habitat"].map(_LANDCOVER).astype(np.int64))


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
    img["captions"] = [_caption(SPECIES[lf], sub) for lf, sub in zip(img["leaf"], img["substrate"])]
    taxa = species_table().set_index("category_id")
    img = img.join(taxa[["scientificName", *RANKS, "poisonous"]], on="leaf")
    img["category_id"] = img["leaf"].astype(np.int64)
    img["specificEpithet"] = img["species"].str.split().str[1]
    img["iucnRedListCategory"] = np.asarray([_redlist(t) for t in SPECIES])[img["leaf"]]
    img["metaSubstrate"] = img["substrate"].map(_META_SUBSTRATE)
    img = img.assign(kingdom="Fungi", countryCode="DK", hasCoordinate=True)
    return {s: img.loc[img["split"] == s, list(COLUMNS)].reset_index(drop=True) for s in SPLITS}


def _redlist(t: Taxon) -> str:
    """A plausible Danish red-list category: rare macrofungi near-threatened, microfungi unassessed."""
    if t.phylum not in ("Basidiomycota", "Ascomycota"):
        return "NE"
    return "VU" if t.abundance <= 2 else "NT" if t.abundance <= 4 else "LC"


# ---------------------------------------------------------------------- visual traits
_BACKGROUNDS = {  # phylum: background colour
    "Ascomycota": (96, 70, 44), "Basidiomycota": (42, 74, 44), "Chytridiomycota": (36, 82, 96),
    "Mucoromycota": (84, 84, 98), "Zoopagomycota": (86, 52, 92)}
_GROUND_COLORS = ((60, 110, 40), (120, 78, 40), (150, 130, 90), (40, 60, 30), (105, 105, 110),
                  (150, 60, 40), (70, 50, 30), (180, 160, 60), (45, 45, 60), (120, 150, 110))
_GROUND_STYLES = ("moss", "litter", "grain", "grass", "gravel")
_PLANS = {  # order: (body plan, stem/host colour, base hue of its families)
    "Agaricales": ("cap", (236, 226, 205), 0.02),
    "Boletales": ("bolete", (214, 190, 140), 0.08),
    "Russulales": ("flatcap", (246, 244, 236), 0.95),
    "Cantharellales": ("funnel", (240, 200, 120), 0.11),
    "Polyporales": ("bracket", (92, 70, 52), 0.07),
    "Auriculariales": ("ear", (110, 85, 60), 0.03),
    "Phallales": ("phallus", (245, 240, 225), 0.25),
    "Geastrales": ("star", (200, 170, 130), 0.08),
    "Tremellales": ("jelly", (120, 95, 70), 0.14),
    "Dacrymycetales": ("antler", (130, 100, 70), 0.12),
    "Pezizales": ("cup", (225, 205, 170), 0.0),
    "Helotiales": ("discs", (120, 95, 70), 0.47),
    "Rhytismatales": ("leafspots", (120, 170, 60), 0.0),
    "Xylariales": ("knobs", (115, 90, 65), 0.0),
    "Hypocreales": ("club", (230, 200, 150), 0.06),
    "Teloschistales": ("rosette", (150, 145, 135), 0.12),
    "Mucorales": ("pins", (235, 235, 230), 0.6),
    "Entomophthorales": ("fly", (50, 45, 40), 0.13),
    "Synchytriales": ("galls", (110, 160, 70), 0.08),
}
_PATTERNS = ("spots", "radial", "rings", "scales", "net", "speckle", "rim", "blotches")
_PATTERN_COLORS = ((250, 250, 244), (38, 28, 22), (250, 225, 110), (120, 24, 30))
_MARK_COLORS = ((230, 30, 30), (30, 60, 230), (250, 250, 250), (20, 20, 20), (250, 200, 0),
                (160, 40, 200), (0, 190, 190))
_DENSITIES = (0.6, 1.0, 1.6)
_ELEMENT_SIZES = (0.8, 1.0, 1.3)


@dataclass(frozen=True)
class Traits:
    """What a species looks like; each field is set by one rank (see the module docstring)."""

    background: tuple[int, int, int]  # phylum
    ground: tuple[int, int, int]  # class
    ground_style: str  # class
    plan: str  # order
    secondary: tuple[int, int, int]  # order: stem, host or substrate object
    body: tuple[int, int, int]  # family hue, species shade
    hue: float  # family
    pattern: str  # genus
    pattern_color: tuple[int, int, int]  # genus
    density: float  # species
    element_size: float  # species
    mark: tuple[int, int, int]  # species


@functools.lru_cache(maxsize=None)
def _siblings() -> dict[tuple[str, str], tuple[int, int]]:
    """(rank, name) → (index among the children of its parent, number of those children)."""
    out = {}
    lineages = sorted({tuple(t.lineage.values()) for t in SPECIES})
    for i, rank in enumerate(RANKS):
        children: dict[tuple, list[str]] = {}
        for lin in lineages:
            names = children.setdefault(lin[:i], [])
            if lin[i] not in names:
                names.append(lin[i])
        for names in children.values():
            out.update({(rank, n): (j, len(names)) for j, n in enumerate(names)})
    return out


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """8-bit RGB of an HSV colour (hue wraps around)."""
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


@functools.lru_cache(maxsize=None)
def species_traits(species: str) -> Traits:
    """The visual traits of an accepted ``species`` name, derived from its lineage only."""
    taxon = next((t for t in SPECIES if t.species == species), None)
    if taxon is None:
        raise KeyError(f"unknown demo species {species!r}")
    sib = _siblings()
    lin = taxon.lineage
    n_class = sorted({t.class_name for t in SPECIES}).index(taxon.class_name)
    plan, secondary, base_hue = _PLANS[taxon.order]
    fam, n_fam = sib[("family", lin["family"])]
    gen, _ = sib[("genus", lin["genus"])]
    sp, n_sp = sib[("species", lin["species"])]
    hue = base_hue + fam / n_fam
    shade = sp / (n_sp - 1) if n_sp > 1 else 0.5  # siblings spread from light to dark
    return Traits(
        background=_BACKGROUNDS[taxon.phylum],
        ground=_GROUND_COLORS[n_class % len(_GROUND_COLORS)],
        ground_style=_GROUND_STYLES[n_class % len(_GROUND_STYLES)],
        plan=plan, secondary=secondary,
        body=_rgb(hue + 0.06 * (shade - 0.5), 0.55 + 0.4 * shade, 0.95 - 0.5 * shade), hue=hue % 1.0,
        pattern=_PATTERNS[(gen + 3 * fam + 5) % len(_PATTERNS)],  # +5: Amanita gets spots (warts)
        pattern_color=_PATTERN_COLORS[(gen + fam) % len(_PATTERN_COLORS)],
        density=_DENSITIES[sp % 3], element_size=_ELEMENT_SIZES[(sp // 3) % 3],
        mark=_MARK_COLORS[sp % len(_MARK_COLORS)])


_COLOUR_NAMES = ("red", "orange", "yellow", "olive", "green", "green", "teal", "blue", "blue",
                 "violet", "purple", "pink")  # by twelfths of the hue circle
_PATTERN_WORDS = {"spots": "spots", "radial": "radial stripes", "rings": "concentric zones",
                  "scales": "scales", "net": "a net pattern", "speckle": "fine speckles",
                  "rim": "a contrasting margin", "blotches": "large blotches"}
_PLAN_WORDS = {
    "cap": "a mushroom with a convex cap and slender stem", "bolete": "a bolete with a bun-shaped cap",
    "flatcap": "a mushroom with a flat, depressed cap", "funnel": "a funnel-shaped fruit body",
    "bracket": "bracket fungi on a trunk", "ear": "an ear-shaped jelly fungus",
    "phallus": "a stinkhorn rising from an egg", "star": "an earthstar",
    "jelly": "a lobed jelly fungus", "antler": "branched antler-like fruit bodies",
    "cup": "a cup fungus", "discs": "tiny discs on wood", "leafspots": "tar spots on a leaf",
    "knobs": "rounded knobs on wood", "club": "club-shaped fruit bodies",
    "rosette": "a lichen rosette", "pins": "a pin mould", "fly": "an insect killed by a fungus",
    "galls": "warty galls on a host plant"}


def _caption(t: Taxon, substrate: str) -> str:
    """A short description of what the picture shows, in the spirit of FungiTastic's captions."""
    tr = species_traits(t.species)
    h, _, v = colorsys.rgb_to_hsv(*(c / 255 for c in tr.body))
    colour = ("pale " if v > 0.8 else "dark " if v < 0.6 else "") + _COLOUR_NAMES[int(h * 12) % 12]
    return (f"The image shows {_PLAN_WORDS[tr.plan]}, {colour} with {_PATTERN_WORDS[tr.pattern]}, "
            f"growing on {substrate}.")


# ---------------------------------------------------------------------- drawing
def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    """``c`` scaled by ``f`` (darker below 1, lighter above), clipped to 0..255."""
    return tuple(int(min(255, max(0, round(v * f)))) for v in c)


class _Layer:
    """A square RGBA drawing of one fruit body in unit coordinates, plus its surface mask.

    The surface (cap, cup, shelves, ...) is where the genus pattern goes: shapes drawn with
    ``surface=True`` also go into ``mask``.
    """

    def __init__(self, size: int):
        self.s = size
        self.img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        self.mask = Image.new("L", (size, size), 0)
        self.draw, self.mdraw = ImageDraw.Draw(self.img), ImageDraw.Draw(self.mask)

    def px(self, xy) -> list[float]:
        return [v * self.s for v in xy]

    def shape(self, kind: str, xy, fill, surface: bool = False, outline: float = 0.0, **kw) -> None:
        """Draw ``kind`` (an ImageDraw method name) at unit coordinates ``xy``."""
        width = max(1, round(outline * self.s)) if outline else 0
        line = _shade(fill, 0.6) if width else None
        if kind == "line":
            getattr(self.draw, kind)(self.px(xy), fill=fill, **kw)
        else:
            getattr(self.draw, kind)(self.px(xy), fill=fill, outline=line, width=width, **kw)
        if surface:
            getattr(self.mdraw, kind)(self.px(xy), fill=255, **kw)


def _plan_cap(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Agaricales: convex cap on a slender stem, gills beneath; returns the mark's anchor."""
    w = 0.07 * rng.uniform(0.85, 1.15)
    L.shape("rectangle", [0.5 - w, 0.42, 0.5 + w, 0.93], t.secondary)
    L.shape("ellipse", [0.5 - 1.7 * w, 0.86, 0.5 + 1.7 * w, 0.97], t.secondary)
    L.shape("chord", [0.14, 0.38, 0.86, 0.54], _shade(t.secondary, 0.7), start=0, end=180)
    L.shape("pieslice", [0.12, 0.16, 0.88, 0.74], t.body, surface=True, outline=0.012,
            start=180, end=360)
    return 0.5, 0.62


def _plan_bolete(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Boletales: thick bun-shaped cap, pores beneath, fat club-shaped stem."""
    L.shape("polygon", [0.39, 0.5, 0.61, 0.5, 0.69, 0.9, 0.31, 0.9], t.secondary)
    L.shape("ellipse", [0.28, 0.8, 0.72, 0.97], t.secondary)
    L.shape("chord", [0.1, 0.42, 0.9, 0.56], (225, 205, 90), start=0, end=180)
    L.shape("pieslice", [0.08, 0.12, 0.92, 0.86], t.body, surface=True, outline=0.012,
            start=180, end=360)
    return 0.5, 0.72


def _plan_flatcap(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Russulales: flat cap with a depressed centre on a short, stout white stem."""
    L.shape("rectangle", [0.39, 0.45, 0.61, 0.93], t.secondary)
    L.shape("ellipse", [0.08, 0.3, 0.92, 0.56], t.body, surface=True, outline=0.012)
    L.shape("ellipse", [0.36, 0.38, 0.64, 0.47], _shade(t.body, 0.75))
    return 0.5, 0.75


def _plan_funnel(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Cantharellales: a trumpet narrowing into the stem, ridges on the outside."""
    L.shape("polygon", [0.44, 0.95, 0.56, 0.95, 0.6, 0.62, 0.88, 0.3, 0.12, 0.3, 0.4, 0.62],
            t.secondary)
    for x in (0.22, 0.34, 0.46, 0.58, 0.7):
        L.shape("line", [x + 0.03, 0.34, 0.5, 0.9], _shade(t.secondary, 0.75), width=max(1, L.s // 90))
    L.shape("ellipse", [0.1, 0.2, 0.9, 0.4], t.body, surface=True, outline=0.012)
    return 0.5, 0.86


def _plan_bracket(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Polyporales: stacked semicircular shelves on a tree trunk."""
    L.shape("rectangle", [0.0, 0.0, 0.24, 1.0], t.secondary)
    for x in (0.05, 0.12, 0.19):
        L.shape("line", [x, 0.0, x, 1.0], _shade(t.secondary, 0.7), width=max(1, L.s // 80))
    for y, r in ((0.28, 0.62), (0.55, 0.55), (0.8, 0.42)):
        L.shape("pieslice", [0.24 - r, y - 0.45 * r, 0.24 + r, y + 0.2 * r], t.body, surface=True,
                outline=0.01, start=270, end=90)
    return 0.12, 0.92


def _plan_ear(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Auriculariales: an ear-shaped gelatinous cup on a branch."""
    L.shape("rectangle", [0.0, 0.8, 1.0, 0.97], t.secondary)
    L.shape("ellipse", [0.18, 0.18, 0.82, 0.84], t.body, surface=True, outline=0.015)
    L.shape("ellipse", [0.33, 0.3, 0.7, 0.72], _shade(t.body, 0.7))
    return 0.15, 0.88


def _plan_phallus(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Phallales: a tall white stem from an egg, topped by a conical head."""
    L.shape("ellipse", [0.34, 0.8, 0.66, 0.98], _shade(t.secondary, 0.85))
    L.shape("rectangle", [0.43, 0.3, 0.57, 0.88], t.secondary)
    L.shape("ellipse", [0.34, 0.06, 0.66, 0.44], t.body, surface=True, outline=0.012)
    return 0.5, 0.9


def _plan_star(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Geastrales: a spore sac sitting on a star of rays."""
    n, cx, cy = 7, 0.5, 0.68
    pts = []
    for k in range(2 * n):
        r, a = (0.46 if k % 2 == 0 else 0.16), math.pi * k / n
        pts += [cx + r * math.cos(a), cy + 0.55 * r * math.sin(a)]
    L.shape("polygon", pts, t.body, surface=True, outline=0.01)
    L.shape("ellipse", [0.34, 0.36, 0.66, 0.7], t.secondary)
    return 0.5, 0.4


def _plan_jelly(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Tremellales: a cluster of brain-like lobes on a branch."""
    L.shape("rectangle", [0.0, 0.82, 1.0, 0.97], t.secondary)
    for _ in range(7):
        x, y, r = rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.65), rng.uniform(0.12, 0.18)
        L.shape("ellipse", [x - r, y - r, x + r, y + r], t.body, surface=True, outline=0.01)
    return 0.12, 0.9


def _plan_antler(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Dacrymycetales: forked, antler-like sticks rising from wood."""
    L.shape("rectangle", [0.0, 0.82, 1.0, 0.97], t.secondary)
    w = max(2, round(0.055 * L.s))
    for x in np.linspace(0.22, 0.78, 4) + rng.uniform(-0.04, 0.04, 4):
        top = rng.uniform(0.12, 0.3)
        fork = (x, (top + 0.84) / 2)
        for seg in ([x, 0.84, *fork], [*fork, x - 0.1, top], [*fork, x + 0.1, top + 0.05]):
            L.shape("line", seg, t.body, surface=True, width=w)
    return 0.88, 0.9


def _plan_cup(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Pezizales: a cup seen from the side, its coloured inside showing."""
    L.shape("pieslice", [0.1, 0.15, 0.9, 0.95], t.secondary, start=0, end=180)
    L.shape("ellipse", [0.12, 0.35, 0.88, 0.75], t.body, surface=True, outline=0.012)
    return 0.5, 0.86


def _plan_discs(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Helotiales: a crowd of small discs on a twig."""
    L.shape("rectangle", [0.0, 0.55, 1.0, 0.8], t.secondary)
    for _ in range(12):
        x, y, r = rng.uniform(0.12, 0.88), rng.uniform(0.4, 0.7), rng.uniform(0.07, 0.11)
        L.shape("ellipse", [x - r, y - 0.6 * r, x + r, y + 0.6 * r], t.body, surface=True, outline=0.008)
    return 0.5, 0.75


def _plan_leafspots(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Rhytismatales: large tar spots on a leaf."""
    L.shape("ellipse", [0.05, 0.12, 0.95, 0.92], t.secondary)
    L.shape("line", [0.08, 0.52, 0.92, 0.52], _shade(t.secondary, 0.7), width=max(1, L.s // 70))
    for _ in range(6):
        x, y, r = rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.74), rng.uniform(0.08, 0.12)
        L.shape("ellipse", [x - r, y - r, x + r, y + r], t.body, surface=True, outline=0.008)
    return 0.12, 0.52


def _plan_knobs(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Xylariales: hard rounded knobs on a log."""
    L.shape("rectangle", [0.0, 0.62, 1.0, 0.88], t.secondary)
    for x in np.linspace(0.2, 0.8, 4) + rng.uniform(-0.04, 0.04, 4):
        r = rng.uniform(0.11, 0.15)
        L.shape("pieslice", [x - r, 0.64 - r, x + r, 0.64 + r], t.body, surface=True,
                outline=0.01, start=180, end=360)
    return 0.5, 0.8


def _plan_club(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Hypocreales: upright clubs on stalks."""
    w = max(2, round(0.05 * L.s))
    for x in (0.33, 0.55, 0.72):
        top = rng.uniform(0.1, 0.3)
        L.shape("line", [x, 0.95, x, top + 0.25], t.secondary, width=w)
        L.shape("ellipse", [x - 0.08, top, x + 0.08, top + 0.32], t.body, surface=True, outline=0.01)
    return 0.5, 0.92


def _plan_rosette(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Teloschistales: a lichen rosette of lobes on bark."""
    L.shape("ellipse", [0.04, 0.08, 0.96, 0.96], t.secondary)
    for k in range(12):
        a = 2 * math.pi * k / 12
        x, y = 0.5 + 0.27 * math.cos(a), 0.52 + 0.27 * math.sin(a)
        L.shape("ellipse", [x - 0.1, y - 0.1, x + 0.1, y + 0.1], t.body, surface=True, outline=0.008)
    L.shape("ellipse", [0.3, 0.32, 0.7, 0.72], t.body, surface=True)
    return 0.5, 0.9


def _plan_pins(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Mucorales: a pin mould, thin stalks each carrying a ball."""
    L.shape("ellipse", [0.2, 0.84, 0.8, 0.98], _shade(t.secondary, 0.6))
    w = max(1, round(0.014 * L.s))
    for _ in range(14):
        x0, x1, y1 = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.9), rng.uniform(0.12, 0.6)
        L.shape("line", [x0, 0.9, x1, y1], t.secondary, width=w)
        r = rng.uniform(0.04, 0.06)
        L.shape("ellipse", [x1 - r, y1 - r, x1 + r, y1 + r], t.body, surface=True)
    return 0.5, 0.9


def _plan_fly(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Entomophthorales: a dead fly, its abdomen banded with fungus."""
    for x0 in (0.14, 0.5):
        L.shape("ellipse", [x0, 0.18, x0 + 0.36, 0.5], (215, 220, 225))
    w = max(1, round(0.015 * L.s))
    for dx in (-0.16, 0.16):
        for y in (0.45, 0.55):
            L.shape("line", [0.5, y, 0.5 + 1.6 * dx, y + 0.2], t.secondary, width=w)
    L.shape("ellipse", [0.3, 0.48, 0.7, 0.95], t.body, surface=True, outline=0.012)
    L.shape("ellipse", [0.39, 0.34, 0.61, 0.54], t.secondary)
    L.shape("ellipse", [0.42, 0.24, 0.58, 0.38], t.secondary)
    return 0.5, 0.44


def _plan_galls(L: _Layer, t: Traits, rng) -> tuple[float, float]:
    """Synchytriales: clusters of warty galls on a host plant."""
    L.shape("polygon", [0.5, 0.05, 0.92, 0.5, 0.5, 0.97, 0.08, 0.5], t.secondary)
    for _ in range(16):
        x, y, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.75), rng.uniform(0.04, 0.07)
        L.shape("ellipse", [x - r, y - r, x + r, y + r], t.body, surface=True, outline=0.008)
    return 0.5, 0.15


_PLAN_DRAW = {"cap": _plan_cap, "bolete": _plan_bolete, "flatcap": _plan_flatcap,
              "funnel": _plan_funnel, "bracket": _plan_bracket, "ear": _plan_ear,
              "phallus": _plan_phallus, "star": _plan_star, "jelly": _plan_jelly,
              "antler": _plan_antler, "cup": _plan_cup, "discs": _plan_discs,
              "leafspots": _plan_leafspots, "knobs": _plan_knobs, "club": _plan_club,
              "rosette": _plan_rosette, "pins": _plan_pins, "fly": _plan_fly, "galls": _plan_galls}


def _pattern_elements(d: ImageDraw.ImageDraw, box, t: Traits, s: int, rng) -> None:
    """Draw the genus pattern over ``box`` (pixels); it is clipped to the surface afterwards."""
    x0, y0, x1, y1 = box
    w, h, c, k = x1 - x0, y1 - y0, t.pattern_color, t.density
    size = t.element_size * s
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if t.pattern in ("spots", "speckle", "blotches"):
        n, r = {"spots": (12, 0.032), "speckle": (70, 0.011), "blotches": (3, 0.09)}[t.pattern]
        for _ in range(max(1, round(n * k))):
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
            rr = r * size * rng.uniform(0.8, 1.2)
            d.ellipse([x - rr, y - rr * 0.85, x + rr, y + rr * 0.85], fill=c)
    elif t.pattern == "radial":
        for a in np.linspace(math.pi, 2 * math.pi, max(3, round(12 * k))):
            d.line([cx, y1, cx + w * math.cos(a), y1 + 2 * h * math.sin(a)], fill=c,
                   width=max(1, round(0.018 * size)))
    elif t.pattern == "rings":
        for j in range(1, max(2, round(4 * k)) + 1):
            f = j / (max(2, round(4 * k)) + 0.5)
            d.ellipse([cx - f * w / 2, cy - f * h / 2, cx + f * w / 2, cy + f * h / 2], outline=c,
                      width=max(1, round(0.022 * size)))
    elif t.pattern == "scales":
        for _ in range(max(3, round(16 * k))):
            x, y, r = rng.uniform(x0, x1), rng.uniform(y0, y1), 0.035 * size
            d.polygon([x - r, y + r * 0.6, x + r, y + r * 0.6, x, y - r * 0.8], fill=c)
    elif t.pattern == "net":
        step = max(3.0, w / (3 + 4 * k))
        for o in np.arange(-h, w + h, step):
            d.line([x0 + o, y0, x0 + o + h, y1], fill=c, width=max(1, round(0.012 * size)))
            d.line([x0 + o + h, y0, x0 + o, y1], fill=c, width=max(1, round(0.012 * size)))
    else:  # rim: filled here, then clipped to the surface's edge by _fruit_body
        d.rectangle(box, fill=c)


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion of a 0/255 mask by a (2r+1)² square (separable running minimum)."""
    m = np.pad(mask, r)
    m = sliding_window_view(m, 2 * r + 1, axis=1).min(axis=-1)
    return sliding_window_view(m, 2 * r + 1, axis=0).min(axis=-1)


def _fruit_body(t: Traits, size: int, rng) -> Image.Image:
    """One fruit body (RGBA, ``size`` square): plan, pattern on its surface, species mark."""
    L = _Layer(size)
    ax, ay = _PLAN_DRAW[t.plan](L, t, rng)
    box = L.mask.getbbox()
    if box:
        pat = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        _pattern_elements(ImageDraw.Draw(pat), box, t, size, rng)
        clip = np.asarray(L.mask)
        if t.pattern == "rim":  # the band between the surface and its erosion
            band = 0.025 * t.element_size * size * (0.6 + 0.6 * t.density)
            clip = clip - _erode(clip, max(1, round(band)))
        alpha = np.asarray(pat.getchannel("A"), np.uint16) * clip // 255
        pat.putalpha(Image.fromarray(alpha.astype(np.uint8)))
        L.img.alpha_composite(pat)
    r = 0.065
    L.shape("ellipse", [ax - r, ay - r, ax + r, ay + r], t.mark, outline=0.012)
    return L.img


def _background(t: Traits, w: int, h: int, ground_y: int, rng) -> Image.Image:
    """Phylum background with low-frequency blotches and clutter, and the class ground band."""
    # mostly brightness blotches: coloured ones would blur the phylum's background hue
    blobs = rng.normal(0, 16, size=(5, 7, 1)) + rng.normal(0, 5, size=(5, 7, 3))
    low = np.asarray(t.background) + rng.uniform(-10, 10, 3) + blobs
    img = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    d = ImageDraw.Draw(img)
    for _ in range(14):  # clutter: twigs and leaves in the background colours
        c = _shade(t.background, rng.uniform(0.6, 1.6))
        x, y = rng.uniform(0, w), rng.uniform(0, ground_y)
        if rng.random() < 0.5:
            d.line([x, y, x + rng.uniform(-60, 60) * h / 300, y + rng.uniform(-40, 40) * h / 300],
                   fill=c, width=max(1, h // 100))
        else:
            r = rng.uniform(4, 14) * h / 300
            d.ellipse([x - 2 * r, y - r, x + 2 * r, y + r], fill=c)
    _ground(img, t, ground_y, rng)
    return img


@functools.lru_cache(maxsize=32)
def _ground_texture(style: str, color: tuple[int, int, int], w: int, h: int) -> Image.Image:
    """A ``(2w, h)`` texture of a ground style, drawn once per process from a fixed seed.

    Images crop it at random offsets: far cheaper than drawing hundreds of elements each time.
    """
    rng = np.random.default_rng([*color, _GROUND_STYLES.index(style), w, h])
    img = Image.new("RGB", (2 * w, h), color)
    d, u = ImageDraw.Draw(img), h / 300
    lw = max(1, round(2 * u))
    for _ in range(600):
        x, y = rng.uniform(0, 2 * w), rng.uniform(0, h)
        c = _shade(color, rng.uniform(0.65, 1.45))
        if style == "moss":
            d.ellipse([x - 3 * u, y - 3 * u, x + 3 * u, y + 3 * u], fill=c)
        elif style == "litter":
            d.ellipse([x - 9 * u, y - 4 * u, x + 9 * u, y + 4 * u], fill=c)
        elif style == "grain":
            d.line([x - 30 * u, y, x + 30 * u, y + rng.uniform(-2, 2) * u], fill=c, width=lw)
        elif style == "grass":
            d.line([x, y, x + rng.uniform(-4, 4) * u, y - 16 * u], fill=c, width=lw)
        else:  # gravel
            c = _shade((128, 128, 128), rng.uniform(0.6, 1.5))
            d.ellipse([x - 5 * u, y - 4 * u, x + 5 * u, y + 4 * u], fill=c)
    return img


def _ground(img: Image.Image, t: Traits, y0: int, rng) -> None:
    """Paste the class's ground band below ``y0``, with a wavy top edge."""
    w, h = img.size
    mask = Image.new("L", (w, h), 0)
    top = y0 + rng.uniform(-0.03, 0.03, 9) * h
    ImageDraw.Draw(mask).polygon([*zip(np.linspace(0, w, 9), top), (w, h), (0, h)], fill=255)
    x0 = int(rng.integers(0, w))
    img.paste(_ground_texture(t.ground_style, t.ground, w, h).crop((x0, 0, x0 + w, h)), (0, 0), mask)


def _place(img: Image.Image, t: Traits, h: int, x: float, base_y: float, scale: float, rng) -> None:
    """Paste a fruit body with its base at ``(x, base_y)``, scaled and slightly rotated."""
    side = max(16, round(0.8 * h * scale))
    # nearest-neighbour: the drawn shapes are not anti-aliased anyway, and it is 10x faster
    body = _fruit_body(t, side, rng).rotate(rng.uniform(-15, 15), resample=Image.NEAREST,
                                            center=(side / 2, side * 0.9))
    ImageDraw.Draw(img).ellipse([x - 0.3 * side, base_y - 0.04 * side, x + 0.3 * side,
                                 base_y + 0.05 * side], fill=_shade(t.ground, 0.55))
    img.paste(body, (round(x - side / 2), round(base_y - 0.95 * side)), body)


@functools.lru_cache(maxsize=4)
def _noise_tile(w: int, h: int) -> Image.Image:
    """A fixed ``(2w, 2h)`` sensor-noise tile of values 16 ± noise, made once per process.

    Images take random crops of it: far cheaper than drawing fresh noise for every image.
    """
    noise = np.random.default_rng([w, h]).normal(16, 4, size=(2 * h, 2 * w, 3))
    return Image.fromarray(np.clip(np.round(noise), 0, 32).astype(np.uint8))


def _lighting(img: Image.Image, rng) -> Image.Image:
    """Random exposure, contrast, colour cast, light gradient and sensor noise.

    Per-pixel work is done by Pillow's uint8 operations (a lookup table, a multiply, an add):
    it runs on every pixel of every image, so numpy floats would dominate the generation time.
    """
    w, h = img.size
    gain, contrast = rng.uniform(0.9, 1.25), rng.uniform(0.85, 1.15)
    x = np.arange(256)
    lut = np.concatenate([np.clip(((x - 128) * contrast + 128) * gain + cast, 0, 255)
                          for cast in rng.uniform(-6, 6, 3)])
    img = img.point(np.round(lut).astype(np.uint8).tolist())
    corners = np.clip(255 * (1 - rng.uniform(0, 0.3, size=(2, 2))), 0, 255).astype(np.uint8)
    light = Image.fromarray(corners).resize((w, h), Image.BILINEAR)  # darker towards some corners
    img = ImageChops.multiply(img, Image.merge("RGB", (light, light, light)))
    tile = _noise_tile(w, h)
    x0, y0 = int(rng.integers(0, tile.width - w + 1)), int(rng.integers(0, tile.height - h + 1))
    return ImageChops.add(img, tile.crop((x0, y0, x0 + w, y0 + h)), offset=-16)


def draw_image(species: str, seed: int, index: int, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """Draw one RGB picture of ``species`` (accepted name), ``size`` px on its shorter side.

    Deterministic in ``(seed, index)``: the same arguments give the same pixels.
    Landscape 4:3, like most FungiTastic photographs.
    """
    t = species_traits(species)
    rng = np.random.default_rng([seed, 1, index])
    h, w = size, round(size * 4 / 3)
    ground_y = round(h * rng.uniform(0.6, 0.72))
    img = _background(t, w, h, ground_y, rng)
    x, base_y = w * rng.uniform(0.35, 0.65), ground_y + h * rng.uniform(0.08, 0.2)
    scale = rng.uniform(0.8, 1.05)
    if rng.random() < 0.35:  # a smaller second fruit body beside the first
        dx = (-1 if x > w / 2 else 1) * 0.3 * h * scale
        _place(img, t, h, x + dx, base_y - 0.03 * h, scale * rng.uniform(0.5, 0.7), rng)
    _place(img, t, h, x, base_y, scale, rng)
    return _lighting(img, rng)


def encode_jpeg(img: Image.Image) -> bytes:
    """JPEG bytes of ``img`` (no metadata, so the bytes depend on the pixels only)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _render(task: tuple[str, str, int, int, int]) -> None:
    """Worker: draw one image and write it (plain write: the CSVs, written last, mark completion)."""
    path, species, seed, index, size = task
    Path(path).write_bytes(encode_jpeg(draw_image(species, seed, index, size)))


# ---------------------------------------------------------------------- the whole dataset
def _prepare_output(root: Path, params: dict) -> None:
    """Make ``root`` ready: refuse a foreign non-empty folder, clear our previous demo set."""
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise UserError(f"{root} is not empty and holds no {MARKER}: refusing to write the "
                        "demo dataset over it (choose an empty or new --output-dir)")
    for old in (root / "FungiTastic", root / "metadata" / "FungiTastic"):
        if old.is_dir():
            shutil.rmtree(old)
    atomic_write_text(root / MARKER, json.dumps(params, indent=1) + "\n")


def _write_images(root: Path, plan: dict[str, pd.DataFrame], seed: int, image_size: int,
                  workers: int) -> None:
    """Draw every image of the plan, in ``workers`` processes (the bytes never depend on it)."""
    tasks = []
    for split, df in plan.items():
        folder = image_dir(root, split, image_size)
        folder.mkdir(parents=True, exist_ok=True)
        tasks += [(str(folder / f), sp, seed, int(f.split("-")[0]), image_size)
                  for f, sp in zip(df["filename"], df["species"])]
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc="drawing demo images", unit="img", leave=False)
    if workers <= 1:
        for task in tasks:
            _render(task)
            bar.update()
    else:
        with multiprocessing.get_context().Pool(workers) as pool:
            for _ in pool.imap_unordered(_render, tasks, chunksize=32):
                bar.update()
    bar.close()


def generate_dataset(output_dir: str | Path, seed: int = 0,
                     n_observations: int = DEFAULT_N_OBSERVATIONS,
                     image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 1) -> dict:
    """Write the demo dataset under ``output_dir`` and return a summary dict.

    A previous demo set there (marked by :data:`MARKER`) is replaced; any other non-empty folder
    is refused. ``workers`` processes draw the images (0 or 1: this process); the same arguments
    give byte-identical files whatever ``workers``. The CSVs are written last, atomically.
    """
    if seed < 0 or n_observations < 1 or image_size < 32 or workers < 0:
        raise UserError(f"need seed >= 0, n_observations >= 1, image_size >= 32 and workers >= 0 "
                        f"(got {seed}, {n_observations}, {image_size}, {workers})")
    root = Path(output_dir)
    params = {"generator": "amanita.synthetic", "seed": seed, "n_observations": n_observations,
              "image_size": image_size}
    _prepare_output(root, params)
    plan = plan_dataset(seed, n_observations)
    _write_images(root, plan, seed, image_size, workers)
    for split, df in plan.items():  # last: a complete CSV set means a complete dataset
        atomic_to_csv(df.drop(columns=list(TEST_MISSING)) if split == "test" else df,
                      csv_path(root, split))
    return summarize(plan) | {"output_dir": str(root), "image_size": image_size, "seed": seed}


def summarize(plan: dict[str, pd.DataFrame]) -> dict:
    """Images and observations per split, classes per rank, leaves and poisonous species."""
    allrows = pd.concat(plan.values(), ignore_index=True)
    return {
        "images": {s: len(df) for s, df in plan.items()},
        "observations": {s: int(df["observationID"].nunique()) for s, df in plan.items()},
        "leaves": int(allrows["category_id"].nunique()),
        "classes": {r: int(allrows[r].nunique()) for r in RANKS},
        "poisonous_species": sorted(allrows.loc[allrows["poisonous"] == 1, "species"].unique()),
    }
