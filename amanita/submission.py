"""FungiCLEF-style submissions: one line per observation, ``observationID,class_id``.

The format is the one FungiCLEF's ``evaluate.py`` (BohemianVRA/FGVC-Competitions,
FungiCLEF2023) reads: a CSV with the columns ``observationID`` and ``class_id``, exactly one
row per observation of the test metadata, ``class_id`` the predicted ``category_id`` and -1
for "an unknown species". Each observation's answer pools its images' probabilities
(:mod:`amanita.observations`) and decodes them like one image; with an unknown threshold the
observations whose unknown-species score is above it are answered -1.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from amanita.config import IdentifyConfig, SubmissionConfig
from amanita.io import UserError, atomic_to_csv, read_metadata_csv
from amanita.openset import is_unknown, score_column

if TYPE_CHECKING:  # the model stack is imported only when a model runs
    from amanita.inference import LoadedModel

COLUMNS = ("observationID", "class_id")
UNKNOWN = -1


def read_test_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """A FungiTastic/FungiCLEF test CSV: ``filename`` and ``observationID`` are required; label
    columns are optional (a challenge's test set has none) and read as unknown when absent."""
    from amanita.data import REQUIRED_COLUMNS
    df = read_metadata_csv(path, required=("filename", "observationID"))
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    if df["observationID"].isna().any():
        row = int(np.flatnonzero(df["observationID"].isna().to_numpy())[0]) + 2  # 1-based, after the header
        raise UserError(f"{path}: row {row} has no observationID; every image of a submission needs one")
    return df


def submission_frame(obs_preds: pd.DataFrame, category_ids, metadata: pd.DataFrame,
                     unknown: np.ndarray | None = None) -> pd.DataFrame:
    """One row per observation of ``metadata``, in order of first appearance.

    ``obs_preds`` holds per-observation ``observationID`` and ``leaf_pred`` (a leaf index);
    ``category_ids`` maps leaves to ``category_id``; ``unknown`` (bool per row of
    ``obs_preds``) answers -1. An observation without any readable image is answered -1 too,
    and counted on stderr, so the file still has every observation evaluate.py asks for.
    """
    ids = np.asarray(category_ids, dtype=np.int64)
    class_id = ids[obs_preds["leaf_pred"].to_numpy(dtype=np.int64)]
    if unknown is not None:
        class_id = np.where(np.asarray(unknown, dtype=bool), UNKNOWN, class_id)
    answered = dict(zip(obs_preds["observationID"].tolist(), class_id.tolist()))
    order = metadata["observationID"].drop_duplicates().tolist()
    missing = [o for o in order if o not in answered]
    if missing:
        print(f"warning: {len(missing)} observation(s) have no readable image and are answered {UNKNOWN} "
              f"(first: {missing[0]})", file=sys.stderr)
    return pd.DataFrame({COLUMNS[0]: order, COLUMNS[1]: [answered.get(o, UNKNOWN) for o in order]})


def check_submission(sub: pd.DataFrame, metadata: pd.DataFrame, category_ids) -> None:
    """The checks FungiCLEF's evaluate.py makes before scoring, as a :class:`UserError`.

    Columns ``observationID`` and ``class_id``; as many rows as observations; every observation
    present, none twice; and (beyond evaluate.py) integer class ids that are known or -1.
    """
    missing = [c for c in COLUMNS if c not in sub.columns]
    if missing:
        raise UserError(f"submission is missing column(s) {missing}")
    observations = metadata["observationID"].drop_duplicates()
    if len(sub) != len(observations):
        raise UserError(f"submission has {len(sub)} rows, the test set {len(observations)} observations")
    if sub["observationID"].duplicated().any():
        raise UserError(f"observation {sub['observationID'][sub['observationID'].duplicated()].iloc[0]} "
                        "appears twice in the submission")
    absent = observations[~observations.isin(sub["observationID"])]
    if len(absent):
        raise UserError(f"submission lacks observation(s) {', '.join(map(str, absent.iloc[:3]))}")
    valid = set(int(c) for c in category_ids) | {UNKNOWN}
    bad = sub.loc[~sub["class_id"].isin(valid), "class_id"]
    if len(bad):
        raise UserError(f"submission has class_id {bad.iloc[0]}, which is neither a category_id of the model nor -1")


def write_submission(path: str | os.PathLike, sub: pd.DataFrame, metadata: pd.DataFrame, category_ids) -> None:
    """Check ``sub`` and write it atomically (a failed check writes nothing)."""
    check_submission(sub, metadata, category_ids)
    atomic_to_csv(sub.loc[:, list(COLUMNS)], path)


def observation_answers(loaded: LoadedModel, metadata: pd.DataFrame, cfg: IdentifyConfig) -> pd.DataFrame:
    """Per-observation predictions of ``metadata``'s images through :func:`amanita.inference.predict`.

    ``cfg`` gives ``test_path``, ``image_root``/``image_size_folder``, the readout, ``--priors``
    (their values read from the rows), ``--decision``, ``combine``, ``batch_size``, ``workers`` and
    ``amp``. One row per observation with a readable image: ``observationID``, ``leaf_pred`` and the
    ``unknown_*`` scores of the pooled leaf distribution, among the predictions-table columns.
    """
    from amanita.inference import Settings, predict, readout, split_source
    source = split_source(loaded, metadata, image_root(cfg), observations=True)
    priors, decoder = answer_rule(cfg, loaded)
    transform = None if priors is None else (lambda batches: priors.batches(batches, priors.codes(metadata)))
    how = Settings(decoder, cfg.amp, readout(cfg, loaded.info), cfg.combine, cfg.batch_size, cfg.workers)
    return predict(loaded, source, how, transform).observations


def image_root(cfg: SubmissionConfig):
    """``--image-root``, else the FungiTastic layout beside ``--test-path``."""
    from amanita.data import default_image_root
    return cfg.image_root or default_image_root(cfg.test_path, cfg.image_size_folder)


def answer_rule(cfg: IdentifyConfig, loaded: LoadedModel) -> tuple:
    """``(Priors or None, decoder)`` of ``--priors`` and ``--decision`` (see amanita.priors, amanita.decisions)."""
    from amanita.decisions import costs_of, make_decoder
    from amanita.priors import resolve_priors
    return (resolve_priors(cfg, loaded.taxonomy, loaded.info),
            make_decoder(loaded.taxonomy, loaded.device, cfg.decode, cfg.decision, costs_of(cfg)))


def unknown_mask(obs_preds: pd.DataFrame, rule: tuple[str, float | None]) -> np.ndarray | None:
    """Observations answered -1 under ``rule`` = ``(score, threshold)`` of :func:`amanita.identify.unknown_rule`
    (the one rule test.py applies too); None without a threshold."""
    score, threshold = rule
    if threshold is None:
        return None
    column = score_column(score)
    if column not in obs_preds.columns:
        raise UserError(f"unknown-species score {column!r} is not computed (one of "
                        f"{sorted(c for c in obs_preds.columns if c.startswith('unknown_'))})")
    return is_unknown(obs_preds[column].to_numpy(), threshold)



def submit(cfg: IdentifyConfig, loaded: LoadedModel, rule: tuple[str, float | None]) -> int:
    """--submission: pooled observation answers → a checked FungiCLEF CSV; ``rule`` is test.py's
    ``(score, threshold)`` (:func:`amanita.identify.unknown_rule`)."""
    metadata = read_test_metadata(cfg.test_path)
    obs = observation_answers(loaded, metadata, cfg)
    if len(obs) == 0:
        raise UserError(f"no image of {cfg.test_path} could be read from {image_root(cfg)}; pass --image-root")
    unknown = unknown_mask(obs, rule)
    tax = loaded.taxonomy
    sub = submission_frame(obs, tax.category_ids, metadata, unknown)
    write_submission(cfg.submission, sub, metadata, tax.category_ids)
    n_unknown = int((sub["class_id"] == -1).sum())
    print(f"wrote {cfg.submission}: {len(sub)} observations from {len(metadata)} images, "
          f"{n_unknown} answered -1 (unknown species)", file=sys.stderr)
    return 0
