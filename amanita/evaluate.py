"""Evaluation: a predictions table (from a model or a file) → metrics.json, figures and the HTML report.

``validate.py`` parses its flags into an :class:`~amanita.config.EvalConfig` (:func:`amanita.cli.parse_validate_config`) and calls
:func:`validate`; the scale benchmark and the tests call :func:`evaluate` on a table they made.
Both return an :class:`Evaluation` holding the metrics they wrote, so nothing reads
``metrics.json`` back.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from amanita.config import EvalConfig
from amanita.io import UserError, check_output_dir, file_sha256, staged_output
from amanita.metrics import compute_metrics
from amanita.predictions import read_predictions, write_predictions
from amanita.report import ReportInputs, base_provenance, extra_sections, make_figures, write_html, write_metrics
from amanita.taxonomy import DISPLAY_ORDER, Taxonomy

if TYPE_CHECKING:  # the model stack is imported only when a model runs
    from amanita.inference import LoadedModel, Source


@dataclass
class Evaluation:
    """What :func:`evaluate` wrote: ``metrics`` is metrics.json's document (model, baseline, provenance, ...)."""
    metrics: dict
    report: Path
    seconds: dict[str, float]  # wall time of each stage
    baseline_name: str | None = None


def evaluate(preds: pd.DataFrame, tax: Taxonomy, out_dir: str | os.PathLike,
             inputs: ReportInputs | None = None) -> Evaluation:
    """Metrics (model and baseline; per observation and open set when asked), metrics.json and the
    per-class CSVs, figures and the HTML page for ``preds`` into ``out_dir``."""
    x = inputs or ReportInputs()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        seconds[stage] = time.perf_counter() - t0
        return result

    metrics = timed("metrics", compute_metrics, preds, tax, x.focus)
    baseline = (timed("metrics_baseline", compute_metrics, x.baseline_preds, tax, x.focus)
                if x.baseline_preds is not None else None)
    sections, extra = timed("observation_open_set", extra_sections, preds, tax, out, x, metrics, baseline)
    doc = timed("metrics_json", write_metrics, out, metrics, baseline, x.provenance, sections)
    figures, notes = timed("figures", make_figures, preds, tax, metrics, out, baseline, x.image_paths,
                           x.training_log)
    page = timed("html", write_html, out, metrics, figures, notes, baseline, x.baseline_name, x.provenance, extra)
    return Evaluation(doc, page, seconds, x.baseline_name)


# ---------------------------------------------------------------------- validate.py
def validate(cfg: EvalConfig) -> Evaluation:
    """validate.py: predictions (run once, or read) per image and per observation, a baseline, then
    :func:`evaluate`, written through a staging folder; with ``--store-threshold`` the open-set
    threshold goes into the checkpoint."""
    out = check_output_dir(cfg.output_dir, "--output-dir")  # a file, read-only or full: said before inference
    preds, obs, tax, prov = load_predictions(cfg)
    if len(preds) == 0:
        raise UserError("no prediction to evaluate: every image was unreadable or the predictions file is empty")
    if obs is None and "image" not in cfg.aggregate:
        raise UserError(f"--aggregate observation: {cfg.val_path or cfg.from_predictions} gives no "
                        "observation-level predictions (no observationID column?)")
    baseline, baseline_obs, baseline_name, baseline_prov = load_baseline(cfg, tax)
    priors_section, baseline, baseline_obs, baseline_name = prior_variants(prov, baseline, baseline_obs, baseline_name)
    provenance = prov | {"n_predictions": len(preds)} | base_provenance(tax, cfg.to_dict())
    if baseline_prov:
        provenance["baseline"] = baseline_prov
    both = len(set(cfg.aggregate)) == 2
    main_preds = preds if "image" in cfg.aggregate else obs
    inputs = ReportInputs(
        baseline_preds=baseline if "image" in cfg.aggregate else baseline_obs, baseline_name=baseline_name,
        focus=cfg.focus_species, provenance=provenance, image_paths=specimen_paths(cfg, main_preds),
        training_log=training_log(cfg), observation_preds=obs if both else None,
        baseline_observation_preds=baseline_obs if both else None, combine=cfg.combine,
        open_set={"score": cfg.unknown_score, "target_tpr": cfg.target_tpr} if cfg.open_set else None,
        priors=priors_section)
    # the previous results stay whole until the new ones are complete; no report file replaces an input
    with staged_output(out, inputs=protected_inputs(cfg), known=RESULT_FILES) as stage:
        save_predictions(stage, tax, preds, obs, prefix="")
        if baseline is not None:  # also when read from a file: the folder's result set is this run's (and whole)
            save_predictions(stage, tax, baseline, baseline_obs, prefix="baseline_")
        result = evaluate(main_preds, tax, stage, inputs)
    result.report = out / result.report.name
    if cfg.store_threshold:
        store_threshold(cfg, result.metrics)
    elif cfg.calibrate:
        refit_threshold(cfg, main_preds, result.metrics)
    if cfg.tracked:
        from amanita.tracking import log_validation
        # the checkpoint's step and W&B/TensorBoard run, as read with the model (no second load)
        log_validation(cfg, cfg.to_dict(), out / "metrics.json", out, provenance.get("step"), provenance.get("tracking"))
    return result


def prior_variants(prov: dict, baseline, baseline_obs, baseline_name):
    """``(section, baseline, baseline_obs, baseline_name)``: the priors/decision section when the pass was
    kept (else None), and the same model without priors as the baseline when none was given."""
    variants = prov.pop("_variants", None)
    if variants is None:
        return None, baseline, baseline_obs, baseline_name
    from amanita.prior_eval import evaluate_variants
    section, (plain, plain_obs) = evaluate_variants(variants)
    if baseline is None and variants.priors is not None:
        meta = variants.metadata
        plain = with_metadata_of(plain, meta)
        plain_obs = None if plain_obs is None else with_metadata_of(plain_obs, meta)
        return section, plain, plain_obs, "the same model without metadata priors"
    return section, baseline, baseline_obs, baseline_name


def with_metadata_of(preds, metadata):
    from amanita.predictions import with_metadata
    return with_metadata(preds, metadata)


def protected_inputs(cfg: EvalConfig) -> dict:
    """validate.py's inputs that no file of the report may replace (``--from-predictions`` may: it is regenerated)."""
    return {"--checkpoint": cfg.checkpoint, "--val-path": cfg.val_path, "--mappings": cfg.mappings,
            "--training-log": cfg.training_log, "--baseline-checkpoint": cfg.baseline_checkpoint,
            "--baseline-predictions": cfg.baseline_predictions}


OBSERVATION_FILE = "observation_predictions.csv"  # beside predictions.csv; baseline_ prefix for the baseline
# what an earlier run left in a folder without a manifest (amanita.io.MANIFEST) and this run may not rewrite
RESULT_FILES = tuple(f"{p}{n}" for p in ("", "baseline_") for n in ("predictions.csv", OBSERVATION_FILE))


def save_predictions(folder: Path, tax: Taxonomy, preds, obs, prefix: str) -> None:
    """``{prefix}predictions.csv`` and, when there are any, ``{prefix}observation_predictions.csv``."""
    write_predictions(preds, folder / f"{prefix}predictions.csv", tax)
    if obs is not None:
        write_predictions(obs, folder / f"{prefix}{OBSERVATION_FILE}", tax)


def store_threshold(cfg: EvalConfig, doc: dict) -> None:
    """Write the unknown-species threshold into --checkpoint for test.py (key ``open_set``), with the
    temperatures and TTA its scores were computed under (test.py refuses it under others)."""
    d = doc["open_set"]["detection"][cfg.unknown_score]
    if d["threshold"] is None:
        raise UserError(f"{cfg.val_path} has no known-species image: no threshold to store")
    write_threshold(cfg, doc, cfg.unknown_score, d, cfg.target_tpr)


def write_threshold(cfg: EvalConfig, doc: dict, score: str, d: dict, target_tpr: float) -> None:
    """``open_set`` in --checkpoint: the threshold of detection ``d`` and what it was fitted under."""
    from amanita.checkpoint import update_checkpoint
    from amanita.openset import readout_conditions
    temperatures = None if cfg.no_temperatures else doc["provenance"].get("temperatures")
    update_checkpoint(cfg.checkpoint, open_set={
        "score": score, "threshold": d["threshold"], "target_tpr": target_tpr,
        "tpr": d["tpr"], "tnr": d["tnr_at_tpr"], "auroc": d["auroc"], "val_path": str(cfg.val_path)}
        | readout_conditions(temperatures, cfg.tta))
    print(f"stored in {cfg.checkpoint}: unknown-species threshold {d['threshold']:.4g} "
          f"({score}, {100 * d['tpr']:.1f}% of known images accepted)")


def refit_threshold(cfg: EvalConfig, preds: pd.DataFrame, doc: dict) -> None:
    """After --calibrate: a threshold stored earlier was fitted under the old temperatures; refit it at
    its target TPR on this run's known images (now scored under the new ones)."""
    from amanita.openset import FLAG_COLUMN, detection_metrics, score_column
    stored = doc["provenance"].get("open_set") or {}
    if stored.get("threshold") is None:
        return
    score, target = stored.get("score", "msp"), float(stored.get("target_tpr", cfg.target_tpr))
    d = detection_metrics(preds[score_column(score)].to_numpy(), preds[FLAG_COLUMN].to_numpy(dtype=bool), target)
    if d["threshold"] is None:
        raise UserError(f"{cfg.val_path} has no known-species image: the unknown-species threshold stored in "
                        f"{cfg.checkpoint} cannot be refitted for the new temperatures")
    print(f"the new temperatures change the unknown-species scores: refitting the stored threshold "
          f"({float(stored['threshold']):.4g})")
    write_threshold(cfg, doc, score, d, target)


def run_inference(cfg: EvalConfig, loaded: LoadedModel, baseline: bool = False):
    """Predict ``--val-path`` with a loaded model (``baseline``: the model compared against, which is
    neither calibrated nor given priors or decisions) through :func:`amanita.inference.predict`.

    Returns ``(preds, obs_preds, tax, info)``: the predictions table (see amanita.predictions),
    the per-observation one (None unless ``--aggregate observation``), the taxonomy of the
    model's heads and what the checkpoint says about itself.
    """
    from amanita.data import check_labels, check_unreadable
    from amanita.inference import Settings, predict, readout, split_source
    source = split_source(loaded, cfg.val_path, cfg.image_root, observations="observation" in cfg.aggregate,
                          open_set=cfg.open_set)
    check_labels(source.dataset, cfg.max_bad_image_fraction, "validation")
    if cfg.calibrate and not baseline:
        loaded.info["calibration"] = calibrate(cfg, loaded, source)
        loaded.info["temperatures"] = loaded.info["calibration"]["temperatures"]
    transform, decode = (None, cfg.decode) if baseline else with_variants(cfg, loaded, source)
    how = Settings(decode, cfg.amp, readout(cfg, loaded.info), cfg.combine, cfg.batch_size, cfg.workers)
    result = predict(loaded, source, how, transform)
    check_unreadable(len(source.dataset), len(result.images), cfg.max_bad_image_fraction, "validation")
    return result.images, result.observations, loaded.taxonomy, loaded.info


def with_variants(cfg: EvalConfig, loaded: LoadedModel, source: Source):
    """``(transform, decode)``: none and ``--decode``, or (--priors, --decision) the pass kept for every
    variant, with the priors applied, and the decision's decoder; the
    :class:`~amanita.prior_eval.Variants` go in ``loaded.info["_variants"]`` for :func:`validate`."""
    from amanita.prior_eval import Variants, wanted
    if not wanted(cfg):
        return None, cfg.decode
    variants = Variants(cfg, loaded.taxonomy, loaded.info, loaded.device)
    variants.labels, variants.metadata = source.labels, source.metadata  # (n, 7) labels and the CSV's rows
    variants.observation_ids = source.observations
    loaded.info["_variants"] = variants
    return variants.run, variants.decoder


def calibrate(cfg: EvalConfig, loaded: LoadedModel, source: Source) -> dict:
    """Fit the temperatures on the validation images and store them in the checkpoint; returns the summary."""
    from amanita.calibration import calibration_summary
    from amanita.checkpoint import update_checkpoint
    from amanita.engine import Readout, collect_log_probs
    from amanita.inference import device_loader
    loader = device_loader(loaded, source.dataset, cfg.batch_size, cfg.workers)
    log_probs, labels = collect_log_probs(loaded.model, loader, loaded.taxonomy, loaded.device, cfg.amp,
                                          readout=Readout(cfg.tta))
    if len(labels) == 0:
        raise UserError(f"--calibrate: no readable image in {cfg.val_path}")
    summary = calibration_summary(log_probs, labels, f"{cfg.val_path} (tta {cfg.tta})")
    update_checkpoint(cfg.checkpoint, temperatures=summary["temperatures"], calibration=summary)
    print("temperatures " + " ".join(f"{k} {t:.3f}" for k, t in summary["temperatures"].items())
          + f" stored in {cfg.checkpoint}")
    return summary


def check_same_taxonomy(tax: Taxonomy, expected: Taxonomy | None, what: str) -> None:
    """A model compared or scored against another taxonomy is a user error, not a wrong report."""
    if expected is not None and tax.sha256() != expected.sha256():
        raise UserError(f"{what} was trained on another taxonomy ({tax.summary()}) than expected "
                        f"({expected.summary()})")


def model_provenance(path: str, info: dict) -> dict:
    """Checkpoint path, file digest and what the checkpoint says about itself."""
    out = {"checkpoint": str(path)}
    if os.path.isfile(path):
        out["checkpoint_sha256"] = file_sha256(path)
    return out | {k: v for k, v in (info or {}).items() if k not in out}


def load_predictions(cfg: EvalConfig):
    """Predictions (per image and per observation), taxonomy and provenance, from files or by running
    the model. With --from-predictions, the observation file beside it is used if there."""
    if cfg.from_predictions:
        tax = Taxonomy.load(cfg.mappings)
        preds = read_predictions(cfg.from_predictions, tax)
        obs = read_beside(cfg.from_predictions, OBSERVATION_FILE, tax)
        prov = {"predictions": cfg.from_predictions, "predictions_sha256": file_sha256(cfg.from_predictions),
                **mappings_provenance(cfg.mappings)}
        return preds, obs, tax, prov | earlier_provenance(Path(cfg.from_predictions).parent / "metrics.json")
    from amanita.inference import load_model
    preds, obs, tax, info = run_inference(cfg, load_model(cfg.checkpoint, cfg.device, cfg.mappings))
    return preds, obs, tax, (model_provenance(cfg.checkpoint, info) | {"decode": cfg.decode, "tta": cfg.tta}
                             | mappings_provenance(cfg.mappings))


def mappings_provenance(path) -> dict:
    """``mappings`` and its file digest: the file given (None: the taxonomy stored in the checkpoint)."""
    return {"mappings": str(path) if path else None, "mappings_sha256": file_sha256(path) if path else None}


def read_beside(path, name: str, tax: Taxonomy):
    """The predictions file ``name`` in the folder of ``path``, or None when there is none."""
    other = Path(path).parent / name
    return read_predictions(other, tax) if other.is_file() else None


def earlier_provenance(metrics_json: Path) -> dict:
    """The provenance of the run that wrote the predictions, from its metrics.json if it is there."""
    try:
        prov = json.loads(metrics_json.read_text(encoding="utf-8")).get("provenance")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(prov, dict) or not prov:
        return {}
    return {"original_run": prov.get("original_run", prov)}


def load_baseline(cfg: EvalConfig, tax: Taxonomy):
    """``(predictions, observation predictions, name, provenance)`` of the baseline, or Nones and ``{}``."""
    if cfg.baseline_predictions:
        path = cfg.baseline_predictions
        return (read_predictions(path, tax), read_beside(path, f"baseline_{OBSERVATION_FILE}", tax), path,
                {"predictions": path, "predictions_sha256": file_sha256(path)})
    spec = cfg.baseline_checkpoint or cfg.baseline_model
    if spec is None:
        return None, None, None, {}
    from amanita.inference import load_model, load_single_head_model
    loaded = (load_model(spec, cfg.device) if cfg.baseline_checkpoint else load_single_head_model(spec, cfg.device, tax))
    check_same_taxonomy(loaded.taxonomy, tax, spec)
    preds, obs, _, info = run_inference(cfg, loaded, baseline=True)
    return preds, obs, spec, model_provenance(spec, info) if cfg.baseline_checkpoint else info


def specimen_paths(cfg: EvalConfig, preds: pd.DataFrame) -> list[str | None] | None:
    """Image path of each prediction row, from the validation CSV (or --image-root + filename)."""
    from amanita.data import image_paths, read_split
    if cfg.val_path:
        paths = image_paths(read_split(cfg.val_path, open_set=cfg.open_set), cfg.val_path, cfg.image_root)
        return [paths[i] if 0 <= i < len(paths) else None for i in preds["index"].astype(int)]
    if cfg.image_root:
        return [str(Path(cfg.image_root) / f) for f in preds["filename"].astype(str)]
    return None


def training_log(cfg: EvalConfig) -> str | None:
    """``--training-log``, or the metrics.jsonl beside ``--checkpoint``."""
    if cfg.training_log:
        return cfg.training_log
    return str(Path(cfg.checkpoint).parent / "metrics.jsonl") if cfg.checkpoint else None


def summary_lines(result: Evaluation) -> list[str]:
    """What validate.py prints: the headline numbers per rank, the safety lines and the report's path."""
    model, base = result.metrics["model"], result.metrics.get("baseline")
    lines = [f"{'rank':<8} {'top-1':>7} {'top-5':>7} {'F1':>7} {'ECE':>6}" + (f" {'baseline':>9} {'Δ top-1':>8}" if base else "")]
    for key in DISPLAY_ORDER:
        k = model["keys"].get(key) or {}
        if k.get("top1") is None:
            continue
        line = (f"{key:<8} {100 * k['top1']:6.2f}% {100 * k['top5']:6.2f}% {100 * k['macro_f1_present']:6.2f}% "
                f"{k['ece']:6.3f}")
        b = (base or {}).get("keys", {}).get(key) or {}
        if b.get("top1") is not None:
            line += f" {100 * b['top1']:8.2f}% {100 * (k['top1'] - b['top1']):+7.2f}"
        lines.append(line)
    h, p = model["hierarchy"], model["poison"]
    lines.append(f"all six ranks right {_pct(h['hierarchical_accuracy'], 2)} · real lineages "
                 f"{_pct(h['consistency_rate'], 2)} · mean mistake severity {_num(h['mistake_severity'])}")
    lines.append(f"poisonous predicted as edible (PSC) {p['psc']} · edible predicted as poisonous (ESC) {p['esc']} · "
                 f"cost (100·PSC + ESC)/N = {_num(p['cost'], 3)}")
    lines += [_focus_line(f) for f in model.get("focus", [])]
    if base:
        lines.append(f"(baseline: {result.baseline_name})")
    return lines + level_and_open_set_lines(result.metrics) + [f"report: {result.report.resolve()}"]


def level_and_open_set_lines(m: dict) -> list[str]:
    """Per-observation headline next to the per-image one, and the open-set numbers, when present."""
    lines = []
    if m.get("observation"):
        o, i = m["observation"], m["model"]
        line = " · ".join(f"{k} {_pct(i['keys'][k]['top1'], 2)} → {_pct(o['keys'][k]['top1'], 2)}"
                          for k in ("genus", "species", "leaf"))
        lines.append(f"per observation ({o['n_samples']} observations, {o['combine']}): top-1 {line}; poison cost "
                     f"{_num(i['poison']['cost'], 3)} → {_num(o['poison']['cost'], 3)}")
    s = m.get("open_set")
    if s and s.get("available"):
        d = s["detection"][s["score"]]
        named = ", ".join(f"{r} {_pct(v['top1'])}" for r, v in s["named_at_rank"].items() if v["n_seen"])
        lines.append(f"open set ({s['n_unknown']} unknown of {s['n_images']} images, {s['score']}): AUROC "
                     f"{_pct(d['auroc'])} · TNR@{100 * d['target_tpr']:.0f}%TPR {_pct(d['tnr_at_tpr'])} · "
                     f"unknown species named: {named or 'n/a'}")
    return lines


def _focus_line(f: dict) -> str:
    if not f.get("found"):
        return f"{f['name']}: not in the taxonomy"
    if not f.get("support"):
        return f"{f['name']}: no validation images"
    acc = f["accuracy"]
    return f"{f['name']}: {f['support']} images, species {_pct(acc['species'])}, genus {_pct(acc['genus'])}"


def _pct(x, digits: int = 1) -> str:
    """A share as a percentage; "n/a" where there was nothing to measure (None)."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"
