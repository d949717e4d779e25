"""validate.py's metadata priors and decisions: one inference pass, decoded once per variant.

With ``--priors`` or a ``--decision`` other than argmax, the pass's log-probabilities are kept on
the CPU (like ``--calibrate``: N × all heads' classes floats, about 2.5 GB for FungiTastic's
validation split), then decoded with the chosen decision once per variant: without priors, each
field alone, all fields. The report gets the metrics of every variant per image and per
observation, the same model without priors as its baseline (every metric side by side), and the
min-cost sweep: species top-1 against the FungiCLEF poison cost as the cost of naming a poisonous
species edible grows from 0 (see :mod:`amanita.decisions`).
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import torch

from amanita.config import EvalConfig
from amanita.decisions import costs_of, make_decoder, sweep, sweep_stats
from amanita.io import file_sha256, read_metadata_csv
from amanita.priors import Priors, fit_prior_weight, resolve_priors
from amanita.taxonomy import LEAF, Taxonomy, label_column

SWEEP_COSTS = (0, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
NONE = "without priors"
ALL = "all fields"


def wanted(cfg: EvalConfig) -> bool:
    """Whether validate.py keeps the pass for priors and decisions."""
    return bool(cfg.priors) or cfg.decision != "argmax"


class Variants:
    """The kept batches of one pass, the priors (or None) and the decision's decoder."""

    def __init__(self, cfg: EvalConfig, tax: Taxonomy, info: dict, device):
        self.cfg, self.tax, self.info = cfg, tax, info
        self.priors: Priors | None = resolve_priors(cfg, tax, info)
        self.codes = None
        if self.priors is not None:
            fields = read_metadata_csv(cfg.val_path, columns=self.priors.fields)
            self.codes = self.priors.codes(fields)
        self.costs = costs_of(cfg)
        self.decoder = make_decoder(tax, device, cfg.decode, cfg.decision, self.costs)
        self.kept: list = []
        self.labels: torch.Tensor | None = None  # the dataset's (n, 7) labels, set by the caller
        self.observation_ids = None              # per dataset row, None: no observation level
        self.metadata: pd.DataFrame | None = None  # the CSV's rows (filename, observationID)

    def run(self, batches):
        """Keep ``batches`` (on the CPU), fit the weight if asked, and yield them with the priors applied."""
        for logp, labels, idx, energy in batches:
            self.kept.append(({k: v.cpu() for k, v in logp.items()}, labels.cpu(), torch.as_tensor(idx), energy.cpu()))
        if self.priors is not None and self.cfg.fit_prior_weight:
            self.fit_weight()
        yield from self.variant(self.priors.fields if self.priors else ())

    def variant(self, fields):
        """The kept batches with the priors of ``fields`` applied (none: as they are)."""
        for logp, labels, idx, energy in self.kept:
            if fields:
                logp = self.priors.apply(logp, self.codes[idx.long()], fields)
            yield logp, labels, idx, energy

    def fit_weight(self) -> None:
        """Fit w on the kept leaf log-probabilities and store it in the checkpoint (key ``metadata_priors``)."""
        from amanita.checkpoint import update_checkpoint
        from amanita.data import BAD_IMAGE
        leaf = torch.cat([lp[LEAF] for lp, *_ in self.kept])
        idx = torch.cat([i.long() for *_, i, _ in self.kept])
        labels = torch.cat([label_column(y, LEAF) for _, y, _, _ in self.kept])
        labels = torch.where(labels == BAD_IMAGE, -1, labels)
        fit = fit_prior_weight(leaf, self.priors.bonus(LEAF, self.codes[idx]), labels)
        self.priors.weight = fit["weight"]
        entry = fit | {"fields": list(self.priors.fields), "priors": str(self.cfg.priors),
                       "priors_sha256": file_sha256(self.cfg.priors), "fitted_on": str(self.cfg.val_path)}
        update_checkpoint(self.cfg.checkpoint, metadata_priors=entry)
        self.info["metadata_priors"] = entry
        print(f"prior weight {fit['weight']:.3f} (leaf NLL {fit['nll_without']:.4f} → {fit['nll_with']:.4f}) "
              f"stored in {self.cfg.checkpoint}")

    def decode(self, fields, decoder=None):
        """``(preds, obs_preds, image_stats, obs_stats)`` of one variant (obs None without observation ids)."""
        from amanita.engine import predict_batches, predict_observations
        from amanita.observations import ObservationPooler
        decoder = decoder or self.decoder
        pooler = None if self.observation_ids is None else ObservationPooler(self.observation_ids, self.cfg.combine)
        stats, index = [], []

        def watched():
            from amanita.data import BAD_IMAGE
            for logp, labels, idx, energy in self.variant(fields):
                ok = label_column(labels, LEAF) != BAD_IMAGE
                stats.append(sweep_stats(logp[LEAF], decoder)[ok])
                index.append(idx[ok])
                yield logp, labels, idx, energy

        preds = predict_batches(watched(), self.tax, decoder, pooler)
        image_stats = (torch.cat(stats)[torch.argsort(torch.cat(index))].numpy() if stats
                       else np.zeros((0, 5)))
        obs = obs_stats = None
        if pooler is not None:
            obs = predict_observations(pooler, self.labels, self.tax, decoder)
            pooled, count, _ = pooler.result()
            keep = count > 0
            obs_stats = sweep_stats(pooled[LEAF][keep], decoder).numpy() if LEAF in pooled else np.zeros((0, 5))
        return preds, obs, image_stats, obs_stats


def variant_metrics(preds: pd.DataFrame, tax: Taxonomy) -> dict:
    """The numbers a variant is compared by: leaf top-1 and macro-F1, species top-1, poison cost, mistake
    severity (mean LCA height over mistakes), hierarchical distance@1 (over all samples: what
    min-severity minimises in expectation) and the leaf NLL."""
    from amanita.metrics import hierarchy_metrics, key_metrics, poison_metrics
    leaf = key_metrics(preds, LEAF, tax.num_classes(LEAF))
    return {"n": leaf["n"], "leaf_top1": leaf["top1"], "leaf_macro_f1": leaf["macro_f1_present"],
            "leaf_macro_f1_all": leaf["macro_f1_all"], "leaf_nll": leaf["nll"],
            "species_top1": key_metrics(preds, "species", tax.num_classes("species"))["top1"],
            "poison_cost": poison_metrics(preds, tax)["cost"]} | {
                k: h[k] for h in [hierarchy_metrics(preds, tax)] for k in ("mistake_severity", "hdist@1")}


def evaluate_variants(v: Variants) -> tuple[dict, tuple]:
    """``(section, (preds, obs) without priors)``: every variant's metrics per level, and the sweep."""
    fields = v.priors.fields if v.priors else ()
    names = [NONE] + ([*fields, ALL] if len(fields) > 1 else list(fields))
    rows, plain = [], (None, None)
    for name in names:
        chosen = () if name == NONE else fields if name == ALL else (name,)
        preds, obs, img_stats, obs_stats = v.decode(chosen)
        row = {"variant": name, "image": variant_metrics(preds, v.tax),
               "observation": variant_metrics(obs, v.tax) if obs is not None and len(obs) else None}
        rows.append(row)
        if name == NONE:
            plain = (preds, obs)
    main = names[-1]
    # the curve of the main variant (all fields): truths of the rows decoded, in the same order
    preds, obs, img_stats, obs_stats = v.decode(fields)
    costs = sorted(set(SWEEP_COSTS) | {v.costs.poisonous_as_edible})
    argmax = make_decoder(v.tax, v.decoder.ancestors.device, v.cfg.decode)
    a_preds, a_obs, _, _ = v.decode(fields, decoder=argmax)
    curves = {"image": {"points": sweep(img_stats, preds["species_true"].to_numpy(np.int64), v.tax, costs, v.costs),
                        "argmax": variant_metrics(a_preds, v.tax)}}
    if obs is not None and len(obs):
        curves["observation"] = {"points": sweep(obs_stats, obs["species_true"].to_numpy(np.int64), v.tax, costs,
                                                 v.costs), "argmax": variant_metrics(a_obs, v.tax)}
    section = {"fields": list(fields), "weight": v.priors.weight if v.priors else None,
               "priors": str(v.cfg.priors) if v.priors else None, "decision": v.cfg.decision,
               "costs": asdict(v.costs), "main_variant": main, "rows": rows, "sweep": curves,
               "chosen_cost": v.costs.poisonous_as_edible}
    return section, plain
