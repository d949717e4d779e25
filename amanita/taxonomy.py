"""The fungal taxonomy: six ranks over the FungiTastic leaves (one per ``category_id``).

The leaves of the tree are the ``category_id`` values (one per ``scientificName``), in
``category_id`` order, so that leaf ``i`` lines up with output ``i`` of the stock model's head
when the ids are contiguous. The *species* rank holds the accepted ``species`` names: two
synonymous ``scientificName``s are two leaves under one species.

Class indices at every rank are sorted by their lineage (phylum, class, ..., name), so that
consecutive indices share ancestors and a confusion matrix shows families and genera as blocks.
A rank value that is missing (NaN) is "unknown" (index -1): never a class of its own.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from amanita.io import UserError, atomic_write_text

from amanita.config import COARSE_RANKS, DISPLAY_ORDER, HEADS, KEYS, LEAF, RANKS  # noqa: F401 (the vocabulary)
REQUIRED_COLUMNS = ("filename", "category_id") + RANKS
FORMAT_VERSION = 1

# The vocabulary is defined once, in amanita/config.py; ``leaf`` is the ``category_id`` head,
# ``species`` only the accepted-name rank (synonymous leaves summed).
KEY_LABEL = {LEAF: "leaf (category_id)"} | {r: r for r in RANKS}
LABEL_COLUMN = {k: j for j, k in enumerate(KEYS)}  # column of each key in the (n, 7) label arrays


def label_column(labels, key: str):
    """The labels of ``key`` from an ``(n, 7)`` label array or tensor (see :func:`encode_labels`)."""
    return labels[:, LABEL_COLUMN[key]]


class TaxonomyError(UserError, ValueError):
    """Raised for inconsistent taxonomies: the message lists every problem."""


@dataclass
class Taxonomy:
    """Per-rank class names and, per leaf, its ``category_id``, name and ancestor indices.

    ``ancestors`` is ``(n_leaves, 6)`` int64 with one column per rank in :data:`RANKS`
    (species included); -1 marks an unknown rank.
    """

    classes: dict[str, list[str]]
    category_ids: list[int]
    scientific_names: list[str]
    ancestors: np.ndarray
    poisonous: list[bool] = field(default_factory=list)
    counts: dict[str, list[int]] = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes and lookups
    @property
    def n_leaves(self) -> int:
        return len(self.category_ids)

    def num_classes(self, rank: str) -> int:
        """Number of classes of ``rank`` (``"leaf"``: the leaves)."""
        return self.n_leaves if rank == LEAF else len(self.classes[rank])

    def head_sizes(self) -> dict[str, int]:
        """Outputs of each head of the multi-task model, in :data:`HEADS` order.

        The five coarse ranks and the leaf head, one output per leaf (``category_id``) like the
        stock head; the species rank has no head (its probabilities are summed leaves).
        """
        return {k: self.num_classes(k) for k in HEADS}

    def index(self, rank: str) -> dict[str, int]:
        """Name → index at ``rank``."""
        return {n: i for i, n in enumerate(self.classes[rank])}

    def leaf_index(self) -> dict[int, int]:
        """``category_id`` → leaf index."""
        return {c: i for i, c in enumerate(self.category_ids)}

    def lineage(self, leaf: int) -> dict[str, str | None]:
        """Names of a leaf's ancestors at every rank (None where unknown)."""
        return {r: (self.classes[r][a] if a >= 0 else None) for r, a in zip(RANKS, self.ancestors[leaf])}

    def class_poisonous(self, rank: str = "species") -> np.ndarray:
        """Per class of ``rank`` (or per leaf for ``"leaf"``): True if any of its leaves is poisonous."""
        pois = np.asarray(self.poisonous if self.poisonous else [False] * self.n_leaves, dtype=bool)
        if rank == LEAF:
            return pois
        col = self.ancestors[:, RANKS.index(rank)]
        out = np.zeros(len(self.classes[rank]), dtype=bool)
        known = col >= 0
        np.logical_or.at(out, col[known], pois[known])
        return out

    # ------------------------------------------------------------------ tensors
    def ancestor_matrix(self) -> torch.Tensor:
        """``(n_leaves, 6)`` LongTensor: the ancestor index of each leaf at each rank, -1 unknown."""
        return torch.as_tensor(self.ancestors, dtype=torch.long)

    def rollup_matrix(self, rank: str, dtype=torch.float32) -> torch.Tensor:
        """``(n_leaves, n_classes(rank))`` 0/1 matrix: ``leaf_probs @ M`` sums leaves up to ``rank``.

        Leaves whose ancestor at ``rank`` is unknown contribute to no class.
        """
        n = self.num_classes(rank)
        if rank == LEAF:
            return torch.eye(n, dtype=dtype)
        col = self.ancestor_matrix()[:, RANKS.index(rank)]
        m = torch.zeros(self.n_leaves, n, dtype=dtype)
        known = col >= 0
        m[torch.nonzero(known).squeeze(1), col[known]] = 1
        return m

    def rollup_matrices(self, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """:meth:`rollup_matrix` for each of the six ranks."""
        return {r: self.rollup_matrix(r, dtype) for r in RANKS}

    def class_ancestors(self, rank: str) -> np.ndarray:
        """``(n_classes(rank), 6)``: the ancestors of each class of ``rank`` (-1 below it)."""
        i = RANKS.index(rank)
        out = np.full((len(self.classes[rank]), len(RANKS)), -1, dtype=np.int64)
        col = self.ancestors[:, i]
        known = col >= 0
        out[col[known], : i + 1] = self.ancestors[known, : i + 1]
        return out

    def lca_height(self, a: np.ndarray | Sequence[int], b: np.ndarray | Sequence[int],
                   rank: str = LEAF) -> np.ndarray:
        """Height of the lowest common ancestor of classes ``a`` and ``b`` of ``rank``.

        Heights count ranks from the species: 0 for the same species (synonymous leaves are
        the same species), 1 for the same genus, ..., 5 for the same phylum and 6 when only
        the root is shared. For a coarser ``rank`` the same scale is used, so two different
        families of one order are at height 3. An unknown ancestor never matches.
        Vectorised: ``a`` and ``b`` broadcast against each other.
        """
        anc = self.ancestors if rank == LEAF else self.class_ancestors(rank)
        a, b = np.asarray(a), np.asarray(b)
        ea, eb = anc[a], anc[b]  # (..., 6)
        eq = (ea == eb) & (ea >= 0)
        # deepest matching rank (ranks above a match also match in a consistent tree)
        deepest = np.where(eq.any(-1), len(RANKS) - 1 - np.argmax(eq[..., ::-1], axis=-1), -1)
        return (len(RANKS) - 1 - deepest).astype(np.int64)

    def distance_matrix(self, rank: str = LEAF) -> np.ndarray:
        """All-pairs :meth:`lca_height` as an int8 matrix (2,829² bytes for the real leaves)."""
        n = self.num_classes(rank)
        idx = np.arange(n)
        return self.lca_height(idx[:, None], idx[None, :], rank).astype(np.int8)

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        leaves = []
        for i, (cid, name) in enumerate(zip(self.category_ids, self.scientific_names)):
            leaf = {"category_id": int(cid), "scientificName": name,
                    "ancestors": {r: int(a) for r, a in zip(RANKS, self.ancestors[i])}}
            if self.poisonous:
                leaf["poisonous"] = bool(self.poisonous[i])
            leaves.append(leaf)
        return {"format_version": FORMAT_VERSION, "ranks": list(RANKS),
                "classes": {r: list(self.classes[r]) for r in RANKS},
                "num_classes": {r: len(self.classes[r]) for r in RANKS} | {LEAF: self.n_leaves},
                "leaves": leaves, "counts": self.counts}

    @classmethod
    def from_dict(cls, d: dict, source: str = "the taxonomy") -> "Taxonomy":
        """The taxonomy of a mappings document; its structure is checked first (:func:`check_mappings`)."""
        check_mappings(d, source)
        leaves = d["leaves"]
        anc = np.array([[lf["ancestors"][r] for r in RANKS] for lf in leaves], dtype=np.int64)
        anc = anc.reshape(len(leaves), len(RANKS))
        return cls(classes={r: list(d["classes"][r]) for r in RANKS},
                   category_ids=[int(lf["category_id"]) for lf in leaves],
                   scientific_names=[lf["scientificName"] for lf in leaves],
                   ancestors=anc,
                   poisonous=[bool(lf.get("poisonous", False)) for lf in leaves],
                   counts=d.get("counts", {}))

    def save(self, path: str | os.PathLike) -> None:
        """Write the mappings JSON atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Taxonomy":
        """Read and check a mappings JSON; any problem is one :class:`TaxonomyError` line naming ``path``."""
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"taxonomic mappings not found: {path} "
                                    "(make them with create_taxonomic_mappings.py)") from None
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise TaxonomyError(f"{path} is UTF-16 text; save it as UTF-8 "
                                "(or rebuild it with create_taxonomic_mappings.py)")
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise TaxonomyError(f"{path} is not a taxonomic_mappings.json file (not UTF-8 text: byte "
                                f"{e.start} is 0x{raw[e.start]:02x})") from None
        except json.JSONDecodeError as e:
            raise TaxonomyError(f"{path} is not a taxonomic_mappings.json file ({e})") from None
        return cls.from_dict(d, str(path))

    def sha256(self) -> str:
        """Digest of the tree (names, leaves, ancestors): checkpoints refuse another taxonomy."""
        d = self.to_dict()
        core = {k: d[k] for k in ("ranks", "classes")} | {
            "leaves": [{k: lf[k] for k in ("category_id", "scientificName", "ancestors")} for lf in d["leaves"]]}
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()

    def summary(self) -> str:
        parts = [f"{r}: {len(self.classes[r])}" for r in RANKS]
        return f"{self.n_leaves} leaves (category_id); " + ", ".join(parts)


def check_mappings(d, source: str = "the taxonomy") -> None:
    """Raise a one-line :class:`TaxonomyError` naming ``source`` unless ``d`` is a well-formed mappings document.

    Checked: the ``classes`` of every rank (non-empty lists of names), the ``leaves`` (a unique
    integer ``category_id``, a name, and at every rank an ancestor index inside that rank or -1).
    """
    def bad(why: str) -> TaxonomyError:
        return TaxonomyError(f"{source} is not a valid taxonomic_mappings.json: {why}")
    if not isinstance(d, dict) or not isinstance(d.get("classes"), dict) or not isinstance(d.get("leaves"), list):
        raise bad("expected a JSON object with 'classes' (names per rank) and 'leaves'")
    sizes = {}
    for r in RANKS:
        names = d["classes"].get(r)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad(f"classes.{r} is not a list of names")
        if not names:
            raise bad(f"rank {r} has no classes")
        sizes[r] = len(names)
    if not d["leaves"]:
        raise bad("no leaves (category_ids)")
    seen = set()
    for i, lf in enumerate(d["leaves"]):
        anc = lf.get("ancestors") if isinstance(lf, dict) else None
        cid = lf.get("category_id") if isinstance(lf, dict) else None
        if not isinstance(anc, dict) or type(cid) is not int or not isinstance(lf.get("scientificName"), str):
            raise bad(f"leaves[{i}] needs an integer category_id, a scientificName and ancestors")
        if cid in seen:
            raise bad(f"category_id {cid} appears twice (leaves[{i}])")
        seen.add(cid)
        for r in RANKS:
            a = anc.get(r)
            if type(a) is not int or not -1 <= a < sizes[r]:
                raise bad(f"leaves[{i}] (category_id {cid}) has {r} ancestor {a!r}, outside -1..{sizes[r] - 1}")


def use_mappings(stored: Taxonomy, path: str | os.PathLike, checkpoint: str | os.PathLike) -> Taxonomy:
    """The mappings file at ``path`` in place of the taxonomy ``checkpoint`` holds (``stored``): it must be
    the same tree (names, leaves, ancestors); what it adds, the poisonous flags, is then what counts."""
    given = Taxonomy.load(path)
    if given.sha256() != stored.sha256():
        raise TaxonomyError(f"--mappings {path} is not the taxonomy {checkpoint} was trained with "
                            f"(sha256 {given.sha256()[:12]}… vs {stored.sha256()[:12]}…); "
                            "leave --mappings out to use the one stored in the checkpoint")
    return given


# ---------------------------------------------------------------------- building
def _clean(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    s = str(value).strip()
    return s if s and s.lower() != "nan" else None


def _is_poisonous(value) -> bool:
    """One ``poisonous`` cell: 1, 1.0, true, yes, t (any case) or a True bool; missing is not."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return str(value).strip().lower() in ("1", "1.0", "true", "yes", "t")


def _conflicts(df: pd.DataFrame) -> list[str]:
    """Every inconsistency in the rows, each value with the first file and line it comes from."""
    def where(rows: pd.DataFrame, col: str, values) -> str:
        first = rows.drop_duplicates(col).set_index(col)["_where"]
        return "; ".join(f"'{v}': {first[v]}" for v in values)

    errors: list[str] = []
    # a leaf has one scientificName and one accepted species
    for c in ("scientificName", "species"):
        n = df.dropna(subset=[c]).groupby("category_id")[c].nunique()
        for cid in n[n > 1].index:
            sel = df[(df["category_id"] == cid) & df[c].notna()]
            vals = sorted(sel[c].unique())
            errors.append(f"category_id {cid} has {len(vals)} values of '{c}': {vals} ({where(sel, c, vals)})")
    # a name at each rank has one parent at the rank above
    for parent, child in zip(RANKS[:-1], RANKS[1:]):
        pairs = df[[child, parent, "_where"]].dropna().drop_duplicates([child, parent])
        dup = pairs[pairs.duplicated(child, keep=False)]
        for name, g in dup.groupby(child):
            vals = sorted(g[parent])
            errors.append(f"{child} '{name}' has {len(g)} different parents at rank {parent}: "
                          f"{vals} ({where(g, parent, vals)})")
    return errors


def _check_no_empty_rank(classes: dict[str, list[str]], df: pd.DataFrame) -> None:
    """A rank empty in every row would make a head of 0 classes (an ``IndexError`` in training): refused."""
    empty = [r for r in RANKS if not classes[r]]
    if empty:
        sources = sorted({w.split(" line ")[0] for w in df["_where"].unique()})
        raise TaxonomyError(f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty in every row of "
                            f"{', '.join(sources)}: each of the six ranks needs at least one name")


def build_taxonomy(frames: Iterable[pd.DataFrame], count_frame: pd.DataFrame | None = None) -> Taxonomy:
    """Build the taxonomy from FungiTastic metadata frames (all splits given).

    Raises :class:`TaxonomyError` listing every conflict: a ``category_id`` with two
    names or two species, or a name at one rank with two different parents.
    ``count_frame`` (usually train) gives the per-rank image counts.
    """
    cols = ["category_id", "scientificName", *RANKS] + ["poisonous"]
    parts = []
    for k, f in enumerate(frames):
        sub = f[[c for c in cols if c in f.columns]].copy()
        source = os.path.basename(f.attrs.get("source", f"table {k + 1}"))
        sub["_where"] = [f"{source} line {i + 2}" for i in range(len(f))]  # header = line 1
        parts.append(sub)
    df = pd.concat(parts, ignore_index=True)
    # NaN, or -1 (a species unseen in training, in FungiTastic's OpenSet CSVs): not a leaf
    df = df[df["category_id"].fillna(-1) >= 0].astype({"category_id": np.int64})
    if "scientificName" not in df.columns:
        df["scientificName"] = df["species"]
    for c in ("scientificName", *RANKS):
        df[c] = map_distinct(df[c], _clean)
    errors = _conflicts(df)
    if errors:
        raise TaxonomyError(f"{len(errors)} taxonomy conflict(s):\n  " + "\n  ".join(errors))

    # per-name parent, then per-leaf full lineage (filling a rank from a known child)
    parent_of = {child: dict(df[[child, parent]].dropna().drop_duplicates().values)
                 for parent, child in zip(RANKS[:-1], RANKS[1:])}
    leaf_rows = df.groupby("category_id", sort=True)
    category_ids = list(leaf_rows.groups.keys())
    first = leaf_rows.first()  # first non-null per column
    lineages = []
    for cid in category_ids:
        row = first.loc[cid]
        lin = [row[r] if isinstance(row[r], str) else None for r in RANKS]
        for i in range(len(RANKS) - 1, 0, -1):  # fill a missing parent from a known child
            if lin[i - 1] is None and lin[i] is not None:
                lin[i - 1] = parent_of[RANKS[i]].get(lin[i])
        lineages.append(lin)

    # class indices sorted by lineage so indices of one family/genus are contiguous
    classes: dict[str, list[str]] = {}
    for i, r in enumerate(RANKS):
        keyed = {tuple(l[: i + 1]) for l in lineages if l[i] is not None}
        names = [k[-1] for k in sorted(keyed, key=lambda t: tuple(x or "" for x in t))]
        classes[r] = list(dict.fromkeys(names))
    _check_no_empty_rank(classes, df)
    index = {r: {n: j for j, n in enumerate(classes[r])} for r in RANKS}
    ancestors = np.array([[index[r][n] if n is not None else -1 for r, n in zip(RANKS, lin)]
                          for lin in lineages], dtype=np.int64).reshape(len(lineages), len(RANKS))
    names = [first.loc[c, "scientificName"] or lineages[k][-1] or str(c)
             for k, c in enumerate(category_ids)]
    poisonous = ([bool(p) for p in map_distinct(df["poisonous"], _is_poisonous).astype(bool)
                  .groupby(df["category_id"]).any().reindex(category_ids)]  # any image of a leaf says so
                 if "poisonous" in df.columns else [False] * len(category_ids))
    tax = Taxonomy(classes, [int(c) for c in category_ids], names, ancestors, poisonous)
    if count_frame is not None:
        tax.counts = class_counts(tax, count_frame)
    return tax


def encode_labels(tax: Taxonomy, df: pd.DataFrame) -> np.ndarray:
    """``(len(df), 7)`` int64 labels in :data:`KEYS` order (leaf, then the six ranks); -1 unknown.

    A rank label is taken from the row's own value (NaN → -1), the leaf from ``category_id``.
    """
    out = np.full((len(df), len(KEYS)), -1, dtype=np.int64)
    cid = pd.to_numeric(df["category_id"], errors="coerce")
    leaf_of = tax.leaf_index()
    out[:, LABEL_COLUMN[LEAF]] = map_distinct(cid, lambda c: leaf_of.get(int(c), -1) if pd.notna(c) else -1).to_numpy()
    for r in RANKS:
        idx = tax.index(r)
        out[:, LABEL_COLUMN[r]] = map_distinct(df[r], lambda v: idx.get(_clean(v), -1) if _clean(v) else -1).to_numpy()
    return out


def lineage_conflicts(tax: Taxonomy, df: pd.DataFrame, labels: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Rows whose rank columns contradict the taxonomy's lineage of their ``category_id``.

    ``labels`` is :func:`encode_labels` of ``df``. A row conflicts when it names a class at a rank
    (any name, known to the taxonomy or not) and its leaf's ancestor there is another class; a
    missing name, an unknown ancestor or a row without a known leaf is not a conflict. Returns
    ``(bool mask per row, a description of the first conflict or None)``.
    """
    leaf = labels[:, LABEL_COLUMN[LEAF]]
    known = leaf >= 0
    bad = np.zeros(len(df), dtype=bool)
    first, what = None, None
    for j, r in enumerate(RANKS):
        named = map_distinct(df[r], _clean).notna().to_numpy()
        anc = np.where(known, tax.ancestors[np.clip(leaf, 0, None), j], -1)
        wrong = known & named & (anc >= 0) & (labels[:, LABEL_COLUMN[r]] != anc)
        if wrong.any() and (first is None or np.flatnonzero(wrong)[0] < first):
            first = int(np.flatnonzero(wrong)[0])
            what = (f"{r} is {_clean(df[r].iloc[first])!r}, but category_id {tax.category_ids[leaf[first]]} "
                    f"({tax.scientific_names[leaf[first]]}) is in {r} {tax.classes[r][anc[first]]!r} in the mappings")
        bad |= wrong
    return bad, what


def map_distinct(values: pd.Series, fn) -> pd.Series:
    """``values.map(fn)`` calling ``fn`` once per distinct value (433,701 rows hold a few thousand names)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    table = np.empty(len(uniques) + 1, dtype=object)
    table[:] = [fn(u) for u in uniques] + [fn(np.nan)]  # the last entry: missing values (code -1)
    return pd.Series(table[codes], index=values.index, dtype=object)


def class_counts(tax: Taxonomy, df: pd.DataFrame) -> dict[str, list[int]]:
    """Images per class at each rank and per leaf in ``df`` (unknown labels not counted)."""
    labels = encode_labels(tax, df)
    out = {}
    for r in KEYS:
        col = label_column(labels, r)
        out[r] = np.bincount(col[col >= 0], minlength=tax.num_classes(r)).tolist()
    return out


def roll_up(leaf_p: torch.Tensor, parent: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(B, n_classes)`` float32 sums of ``leaf_p`` ``(B, n_leaves)`` over the leaves under each class.

    The one roll-up of leaf probabilities to a rank (the residual heads' priors, the consistency
    loss, decoding). ``parent`` is each leaf's class at the rank (a column of
    :meth:`Taxonomy.ancestor_matrix`, -1 unknown: counted nowhere). Always float32, whatever the
    autocast: ``leaf_p @ rollup_matrix`` would run in fp16/bf16 under autocast, where a
    probability below ~6e-8 is 0 (fp16) or the sum loses ~0.05 nats (bf16); a scatter-add is
    not on autocast's lists. O(B × leaves) instead of O(B × leaves × classes): at FungiTastic
    size 1 ms instead of 80 ms a batch of 64 on one CPU thread.
    """
    leaf_p = leaf_p.float()
    slot = torch.where(parent >= 0, parent, n_classes)  # unknown → a spare column, dropped below
    summed = leaf_p.new_zeros(leaf_p.shape[0], n_classes + 1).index_add_(1, slot, leaf_p)
    return summed[:, :n_classes]


def log_roll_up(leaf_p: torch.Tensor, parent: torch.Tensor, n_classes: int, floor: float = 1e-12) -> torch.Tensor:
    """``log`` of :func:`roll_up` (floored at ``floor``, so a class with no probability is finite), in float32."""
    return roll_up(leaf_p, parent, n_classes).clamp_min(floor).log()
