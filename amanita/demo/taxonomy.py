"""The demo's taxonomy table: 78 real names (77 accepted species, a synonym pair) in five phyla,
with *Amanita phalloides*, its look-alikes and a true-to-life ``poisonous`` flag."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from amanita.taxonomy import RANKS

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
# abundance: relative number of observations (long tail); ecology: a key of metadata._ECOLOGY.
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

# Species held out of training, as FungiTastic's OpenSet CSVs have them (category_id -1): each a
# new species of a genus that is in training, so the hierarchy can still name its genus.
_OPEN_SET_TABLE = (
    ("Amanita porphyria", "Amanitaceae", 0, "forest"),
    ("Agaricus bitorquis", "Agaricaceae", 0, "grass"),
    ("Boletus aereus", "Boletaceae", 0, "forest"),
    ("Cortinarius orellanus", "Cortinariaceae", 1, "forest"),  # deadly, like its genus's C. rubellus
    ("Russula nobilis", "Russulaceae", 1, "forest"),
)
OPEN_SET_SPECIES: tuple[Taxon, ...] = tuple(
    Taxon(-1, name, name, name.split()[0], family, *_FAMILIES[family][::-1], bool(poisonous), 1, ecology)
    for name, family, poisonous, ecology in _OPEN_SET_TABLE)


def species_table() -> pd.DataFrame:
    """One row per leaf: ``category_id``, ``scientificName``, the six ranks, flags, abundance."""
    return pd.DataFrame([{"category_id": t.category_id, "scientificName": t.scientific_name,
                          **t.lineage, "poisonous": int(t.poisonous), "abundance": t.abundance}
                         for t in SPECIES])
