"""Hand-written FungiTastic-format rows for worked examples."""
import numpy as np
import pandas as pd

LINEAGES = {  # category_id: (scientificName, phylum, class, order, family, genus, species, poisonous)
    0: ("Amanita phalloides", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "Amanita phalloides", 1),
    1: ("Amanita muscaria", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "Amanita muscaria", 1),
    2: ("Agaricus campestris", "Basidiomycota", "Agaricomycetes", "Agaricales", "Agaricaceae", "Agaricus", "Agaricus campestris", 0),
    3: ("Merulius tremellosus", "Basidiomycota", "Agaricomycetes", "Polyporales", "Meruliaceae", "Phlebia", "Phlebia tremellosa", 0),
    4: ("Phlebia tremellosa", "Basidiomycota", "Agaricomycetes", "Polyporales", "Meruliaceae", "Phlebia", "Phlebia tremellosa", 0),
    5: ("Morchella esculenta", "Ascomycota", "Pezizomycetes", "Pezizales", "Morchellaceae", "Morchella", "Morchella esculenta", 0),
}
COLUMNS = ["scientificName", "phylum", "class", "order", "family", "genus", "species", "poisonous"]


def rows(category_ids, start_obs=100, images_per_obs=1):
    """A metadata frame with one row per entry of ``category_ids`` (may repeat)."""
    out = []
    for k, cid in enumerate(category_ids):
        rec = dict(zip(COLUMNS, LINEAGES[cid]))
        obs = start_obs + k // images_per_obs
        rec.update(category_id=cid, observationID=obs, filename=f"{k}-{obs}.JPG", kingdom="Fungi")
        out.append(rec)
    return pd.DataFrame(out)


TRAIN_IDS = [0, 0, 1, 2, 2, 2, 3, 4, 5, 5]
EXPECTED_CLASSES = {
    "phylum": ["Ascomycota", "Basidiomycota"],
    "class": ["Pezizomycetes", "Agaricomycetes"],
    "order": ["Pezizales", "Agaricales", "Polyporales"],
    "family": ["Morchellaceae", "Agaricaceae", "Amanitaceae", "Meruliaceae"],
    "genus": ["Morchella", "Agaricus", "Amanita", "Phlebia"],
    "species": ["Morchella esculenta", "Agaricus campestris", "Amanita muscaria", "Amanita phalloides",
                "Phlebia tremellosa"],
}
EXPECTED_ANCESTORS = np.array([
    [1, 1, 1, 2, 2, 3],  # Amanita phalloides
    [1, 1, 1, 2, 2, 2],  # Amanita muscaria
    [1, 1, 1, 1, 1, 1],  # Agaricus campestris
    [1, 1, 2, 3, 3, 4],  # Merulius tremellosus -> Phlebia tremellosa
    [1, 1, 2, 3, 3, 4],  # Phlebia tremellosa
    [0, 0, 0, 0, 0, 0],  # Morchella esculenta
])
