"""Synthetic predictions tables of any size, up to FungiTastic's, for the tests and the scale benchmark.

:func:`synthetic_taxonomy` draws a random tree with FungiTastic's class counts;
:func:`synthetic_predictions` a predictions table over it that looks like a real model's
(the format of :mod:`amanita.predictions`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from amanita.predictions import TOPK, topk_columns
from amanita.taxonomy import LEAF, RANKS, Taxonomy

FUNGITASTIC_SIZES = {"phylum": 7, "class": 28, "order": 95, "family": 308, "genus": 918,
                     "species": 2786, LEAF: 2829}
FUNGITASTIC_VAL_SIZE = 89_659


def _tree_parents(n_child: int, n_parent: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted parent index of each child: every parent gets at least one child."""
    extra = rng.integers(0, n_parent, size=n_child - n_parent)
    return np.sort(np.concatenate([np.arange(n_parent), extra]))


def synthetic_taxonomy(sizes: dict[str, int] | None = None, seed: int = 0,
                       poisonous_fraction: float = 0.06) -> Taxonomy:
    """A random tree with ``sizes`` classes per rank (and ``sizes['leaf']`` leaves).

    Defaults to FungiTastic's sizes. Indices are in lineage order like a real
    :class:`Taxonomy`; the first genus with three or more species is renamed *Amanita*
    with *Amanita phalloides* (poisonous) as its first species. Leaves beyond the species
    count are synonyms. Train counts per class are long-tailed.
    """
    sizes = dict(FUNGITASTIC_SIZES if sizes is None else sizes)
    rng = np.random.default_rng(seed)
    n_leaves = sizes.get(LEAF, sizes["species"])
    parents = [np.zeros(sizes[RANKS[0]], dtype=np.int64)]
    for upper, lower in zip(RANKS[:-1], RANKS[1:]):
        parents.append(_tree_parents(sizes[lower], sizes[upper], rng))
    leaf_species = _tree_parents(n_leaves, sizes["species"], rng)
    anc = np.empty((n_leaves, len(RANKS)), dtype=np.int64)
    anc[:, -1] = leaf_species
    for i in range(len(RANKS) - 2, -1, -1):
        anc[:, i] = parents[i + 1][anc[:, i + 1]]
    classes = {r: [f"{r.capitalize()}{j:04d}" for j in range(sizes[r])] for r in RANKS[:-1]}
    classes["species"] = [f"{classes['genus'][g]} sp{j:04d}" for j, g in enumerate(parents[-1])]
    names = list(np.array(classes["species"], dtype=object)[leaf_species])
    pois = rng.random(n_leaves) < poisonous_fraction
    _name_amanita(classes, names, parents[-1], leaf_species, pois)
    tax = Taxonomy(classes, list(range(n_leaves)), names, anc, pois.tolist())
    leaf_counts = np.maximum(1, (2000 / (1 + rng.permutation(n_leaves)) ** 0.9).astype(np.int64))
    leaf_counts[np.array(names) == "Amanita phalloides"] = 400  # a common species, as in FungiTastic
    tax.counts = {LEAF: leaf_counts.tolist()}
    for i, r in enumerate(RANKS):
        tax.counts[r] = np.bincount(anc[:, i], weights=leaf_counts, minlength=sizes[r]).astype(int).tolist()
    return tax


def _name_amanita(classes, names, species_genus, leaf_species, pois) -> None:
    """Rename one genus Amanita and its first species Amanita phalloides (poisonous), in place."""
    n_species = np.bincount(species_genus, minlength=len(classes["genus"]))
    big = np.flatnonzero(n_species >= 3)
    g = int(big[0]) if len(big) else int(np.argmax(n_species))
    classes["genus"][g] = "Amanita"
    for k, s in enumerate(np.flatnonzero(species_genus == g)):
        classes["species"][s] = "Amanita phalloides" if k == 0 else f"Amanita sp{k:03d}"
        for leaf in np.flatnonzero(leaf_species == s):
            names[leaf] = classes["species"][s]
            pois[leaf] |= k == 0


def _pick_in_group(groups: np.ndarray, of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each sample, a random leaf sharing ``groups[leaf]`` with leaf ``of``."""
    order = np.argsort(groups, kind="stable")
    start = np.searchsorted(groups[order], groups[of], side="left")
    size = np.searchsorted(groups[order], groups[of], side="right") - start
    return order[start + (rng.random(len(of)) * size).astype(np.int64)]


def _topk(pred: np.ndarray, true: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_samples, 5)`` distinct classes, ``pred`` first; the true class in it half the time."""
    k = min(TOPK, n)
    out = np.full((len(pred), TOPK), -1, dtype=np.int64)
    if k == 1:
        out[:, 0] = pred
        return out
    offsets = np.zeros((len(pred), k), dtype=np.int64)  # 0, then k-1 distinct non-zero shifts
    offsets[:, 1:] = rng.integers(1, n - k + 2, size=(len(pred), 1)) + np.arange(k - 1)
    out[:, :k] = (pred[:, None] + offsets) % n
    absent = (out[:, :k] != true[:, None]).all(1) & (true >= 0) & (rng.random(len(pred)) < 0.5)
    out[absent, 1 + rng.integers(0, k - 1, size=absent.sum())] = true[absent]
    return out


def synthetic_predictions(tax: Taxonomy, n: int = FUNGITASTIC_VAL_SIZE, seed: int = 0,
                          unknown_fraction: float = 0.01) -> pd.DataFrame:
    """A predictions frame over ``tax`` that looks like a real model's.

    Leaf accuracy rises with the class's training count; mistakes fall mostly in the same
    genus or family; coarse ranks are sometimes right when the leaf is wrong (so not every
    prediction is a consistent lineage); confidence is higher for correct predictions; a
    ``unknown_fraction`` of coarse labels is unknown (-1).
    """
    rng = np.random.default_rng(seed)
    counts = np.asarray(tax.counts.get(LEAF, np.ones(tax.n_leaves)), dtype=float)
    true = rng.choice(tax.n_leaves, size=n, p=counts / counts.sum())
    p_ok = 0.35 + 0.5 * np.log1p(counts[true]) / np.log1p(counts.max())
    u = rng.random(n)
    pred = np.where(u < p_ok, true, -1)
    wrong = pred < 0
    kind = rng.random(n)
    genus, family = tax.ancestors[:, 4], tax.ancestors[:, 3]
    pred = np.where(wrong & (kind < 0.5), _pick_in_group(genus, true, rng), pred)
    pred = np.where(wrong & (kind >= 0.5) & (kind < 0.8), _pick_in_group(family, true, rng), pred)
    pred = np.where(pred < 0, rng.integers(0, tax.n_leaves, size=n), pred)
    ok = pred == true
    conf = np.where(ok, rng.beta(6, 2, n), rng.beta(2, 3, n))
    cols: dict[str, np.ndarray] = {"index": np.arange(n), "filename": [f"{i}-{i // 2}.JPG" for i in range(n)],
                                   "observationID": np.arange(n) // 2}
    _add_key(cols, LEAF, true, pred, conf, tax.n_leaves, rng)
    for i, r in enumerate(RANKS):
        t, p = tax.ancestors[true, i], tax.ancestors[pred, i]
        p = np.where(~ok & (rng.random(n) < 0.15), t, p)
        t = np.where(rng.random(n) < unknown_fraction * (i > 0), -1, t)
        c = np.clip(conf + 0.05 * (len(RANKS) - i) * rng.random(n), 0, 1)
        _add_key(cols, r, t, p, c, tax.num_classes(r), rng)
    return pd.DataFrame(cols)


def _add_key(cols: dict, key: str, true, pred, conf, n_classes: int, rng) -> None:
    """Fill the columns of one key: true, pred, conf, top-5 and p(true)."""
    cols[f"{key}_true"], cols[f"{key}_pred"], cols[f"{key}_conf"] = true, pred, conf
    top = _topk(pred, true, n_classes, rng)
    for j, c in enumerate(topk_columns(key)):
        cols[c] = top[:, j]
    ptrue = np.where(pred == true, conf, rng.random(len(true)) * (1 - conf))
    cols[f"{key}_ptrue"] = np.where(true >= 0, ptrue, np.nan)
