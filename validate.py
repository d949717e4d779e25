#!/usr/bin/env python3
"""Validate a multi-rank model: per-sample predictions, metrics, figures, validation_report.html.

    python validate.py --checkpoint checkpoints/multitask/best_model.pth \
        --val-path metadata/FungiTastic/FungiTastic-ClosedSet-Val.csv
    python validate.py --from-predictions validation_results/predictions.csv --mappings taxonomic_mappings.json

Inference runs once and its predictions are saved (``predictions.csv``); ``--from-predictions``
turns such a file into the same report without the model.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from amanita.cli import device_name, nonneg_int, positive_int, probability
from amanita.io import UserError, cli_main
from amanita.observations import COMBINE
from amanita.openset import SCORES

DEFAULT_FOCUS = ["Amanita phalloides"]  # the Death Cap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("Model parameters")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default=None,
                     help="multi-task checkpoint to validate (its taxonomy and data config are stored inside)")
    src.add_argument("--from-predictions", default=None, metavar="PATH",
                     help="make the report from a saved predictions.csv instead of running a model")
    g.add_argument("--decode", choices=("independent", "consistent"), default="consistent",
                   help="independent: argmax per head; consistent: best root-to-leaf path over all heads")
    g.add_argument("--tta", choices=("none", "flip"), default="none",
                   help="test-time augmentation: flip = mean logits of each image and its mirror image (2× the time)")
    c = p.add_argument_group("Calibration parameters")
    c.add_argument("--calibrate", action="store_true",
                   help="fit one temperature per rank on --val-path by NLL, store them in --checkpoint "
                        "('temperatures', 'calibration'; rewritten atomically) and use them; one more pass over the images")
    c.add_argument("--no-temperatures", action="store_true",
                   help="ignore the temperatures stored in the checkpoint (uncalibrated confidences)")
    b = p.add_argument_group("Baseline parameters").add_mutually_exclusive_group()
    b.add_argument("--baseline-checkpoint", default=None, help="a second checkpoint to compare against")
    b.add_argument("--baseline-model", default=None,
                   help="a stock single-head timm model (name, hf-hub: id or weights file) to compare against; "
                        "its species probabilities are summed up the tree")
    b.add_argument("--baseline-predictions", default=None, metavar="PATH",
                   help="a saved baseline_predictions.csv to compare against")
    d = p.add_argument_group("Dataset parameters")
    d.add_argument("--val-path", default=None, help="validation CSV (FungiTastic schema); needed to run a model, "
                   "and for the specimen grids")
    d.add_argument("--image-root", default=None,
                   help="folder of the images; None: the FungiTastic layout beside the CSV")
    d.add_argument("--mappings", default=None,
                   help="taxonomic_mappings.json; None: the taxonomy stored in the checkpoint "
                        "(required with --from-predictions)")
    add_level_args(p)
    r = p.add_argument_group("Report parameters")
    r.add_argument("--focus-species", nargs="+", default=DEFAULT_FOCUS, metavar="NAME",
                   help="species analysed one by one in the report")
    r.add_argument("--output-dir", default="validation_results", help="where the report and its files go")
    r.add_argument("--training-log", default=None,
                   help="metrics.jsonl for the training curves; None: the one beside --checkpoint")
    x = p.add_argument_group("Runtime parameters")
    x.add_argument("--batch-size", type=positive_int, default=64, help="images per inference batch")
    x.add_argument("--workers", type=nonneg_int, default=4, help="data-loading worker processes")
    x.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="autocast for inference: auto = bf16 on CUDA, none on CPU")
    x.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    x.add_argument("--max-bad-image-fraction", type=probability, default=0.001,
                   help="stop when more than this share of the validation images cannot be read, or have "
                        "a category_id outside the mappings")
    args = p.parse_args(argv)
    check_args(args)
    return args


def add_level_args(p: argparse.ArgumentParser) -> None:
    """The observation and open-set flag groups."""
    o = p.add_argument_group("Observation parameters")
    o.add_argument("--aggregate", nargs="+", choices=("image", "observation"), default=["image", "observation"],
                   help="levels to report: per image, per observation (observationID: its images' outputs "
                        "combined), or both side by side")
    o.add_argument("--combine", choices=COMBINE, default="mean-prob",
                   help="how an observation's images are combined at every rank before decoding: mean of "
                        "probabilities or mean of log-probabilities (renormalised)")
    u = p.add_argument_group("Open-set parameters")
    u.add_argument("--open-set", action="store_true",
                   help="score known vs unknown species (category_id -1 rows, e.g. FungiTastic-OpenSet-Val.csv): "
                        "AUROC, TNR at --target-tpr, and top-1 of the unknown species at the ranks seen")
    u.add_argument("--unknown-score", choices=SCORES, default="msp",
                   help="unknown-species score of the leaf head used for the threshold: msp (1 - max "
                        "probability), entropy, or energy (-logsumexp of the logits)")
    u.add_argument("--target-tpr", type=float, default=0.95,
                   help="share of known-species images the stored threshold must accept")
    u.add_argument("--store-threshold", action="store_true",
                   help="write the threshold for --target-tpr into --checkpoint (key 'open_set') for test.py")


def check_args(args: argparse.Namespace) -> None:
    """Combinations argparse cannot express, as one-line errors."""
    if args.from_predictions is None and args.checkpoint is None:
        raise UserError("give --checkpoint (with --val-path) or --from-predictions")
    if args.from_predictions is not None and args.mappings is None:
        raise UserError("--from-predictions needs --mappings "
                        "(the taxonomic_mappings.json the predictions were made with)")
    if args.checkpoint is not None and args.val_path is None:
        raise UserError("--checkpoint needs --val-path (the validation CSV)")
    if args.from_predictions is not None and (args.baseline_checkpoint or args.baseline_model):
        raise UserError("with --from-predictions, give the baseline as --baseline-predictions")
    if args.calibrate and (args.checkpoint is None or args.no_temperatures):
        raise UserError("--calibrate needs --checkpoint (the model to calibrate) and not --no-temperatures")
    if not 0 < args.target_tpr <= 1:
        raise UserError(f"--target-tpr {args.target_tpr} is not a share in (0, 1]")
    if args.store_threshold and (args.checkpoint is None or not args.open_set):
        raise UserError("--store-threshold needs --open-set and --checkpoint (where the threshold is written)")


# ---------------------------------------------------------------------- inference
def resolve_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(args: argparse.Namespace, device, spec: str | None = None, taxonomy=None):
    """``(model, taxonomy, data_config, info)`` of ``--checkpoint``, or of a baseline ``spec``.

    A baseline checkpoint is loaded like the main one; a ``--baseline-model`` is a stock timm
    classifier (one output per ``category_id``) evaluated over ``taxonomy``.
    """
    from amanita.checkpoint import load_for_eval
    if spec is None or spec == args.baseline_checkpoint:
        return load_for_eval(spec or args.checkpoint, device)
    from amanita.model import create_timm_model, resolve_data_config
    model = create_timm_model(spec).to(device).eval()
    return model, taxonomy, resolve_data_config(model, spec), {"model": spec, "kind": "single-head (stock)"}


def run_inference(args: argparse.Namespace, spec: str | None = None, taxonomy=None):
    """Predict the validation set with ``--checkpoint``, or with the baseline ``spec`` over ``taxonomy``.

    Returns ``(preds, obs_preds, tax, info)``: the predictions table (see amanita.predictions),
    the per-observation one (None unless ``--aggregate observation``), the taxonomy of the
    model's heads and what the checkpoint says about itself.
    """
    from amanita.data import (DeviceLoader, FungiTasticDataset, check_labels, check_unreadable, create_transforms,
                              make_loader, read_split)
    from amanita.engine import Readout, iter_log_probs, predict_batches, predict_observations, with_metadata
    from amanita.observations import ObservationPooler

    device = resolve_device(args.device)
    model, tax, data_config, info = load_model(args, device, spec, taxonomy)
    expected = taxonomy if taxonomy is not None else _load_taxonomy(args.mappings) if args.mappings else None
    check_same_taxonomy(tax, expected, spec or args.checkpoint)
    metadata = read_split(args.val_path, open_set=args.open_set)  # kept here for the predictions' filename/observationID columns
    dataset = FungiTasticDataset(args.val_path, tax, transform=create_transforms(data_config, train=False),
                                 image_root=args.image_root, input_size=data_config["input_size"], metadata=metadata)
    check_labels(dataset, args.max_bad_image_fraction, "validation")
    loader = DeviceLoader(make_loader(dataset, args.batch_size, args.workers, device, persistent=False),
                          device, data_config)  # normalised on the device
    if args.calibrate and spec is None:
        info["calibration"] = calibrate(args, model, loader, tax, device)
        info["temperatures"] = info["calibration"]["temperatures"]
    temperatures = None if args.no_temperatures else info.get("temperatures")
    pooler = None
    if "observation" in args.aggregate and "observationID" in metadata:
        pooler = ObservationPooler(metadata["observationID"].to_numpy(), args.combine)
    batches = iter_log_probs(model, loader, tax, device, args.amp, readout=Readout(args.tta, temperatures))
    preds = predict_batches(batches, tax, args.decode, pooler)
    check_unreadable(len(dataset), len(preds), args.max_bad_image_fraction, "validation")
    obs = None if pooler is None else with_metadata(predict_observations(pooler, dataset.labels, tax, args.decode),
                                                    metadata)
    return with_metadata(preds, metadata), obs, tax, info


def calibrate(args: argparse.Namespace, model, loader, tax, device) -> dict:
    """Fit the temperatures on the validation images and store them in the checkpoint; returns the summary."""
    from amanita.calibration import calibration_summary
    from amanita.checkpoint import update_checkpoint
    from amanita.engine import Readout, collect_log_probs
    log_probs, labels = collect_log_probs(model, loader, tax, device, args.amp, readout=Readout(args.tta))
    if len(labels) == 0:
        raise UserError(f"--calibrate: no readable image in {args.val_path}")
    summary = calibration_summary(log_probs, labels, f"{args.val_path} (tta {args.tta})")
    update_checkpoint(args.checkpoint, temperatures=summary["temperatures"], calibration=summary)
    print("temperatures " + " ".join(f"{k} {t:.3f}" for k, t in summary["temperatures"].items())
          + f" stored in {args.checkpoint}")
    return summary


def _load_taxonomy(path: str):
    from amanita.taxonomy import Taxonomy
    return Taxonomy.load(path)


def check_same_taxonomy(tax, expected, what: str) -> None:
    """A model compared or scored against another taxonomy is a user error, not a wrong report."""
    if expected is not None and tax.sha256() != expected.sha256():
        raise UserError(f"{what} was trained on another taxonomy ({tax.summary()}) than expected "
                        f"({expected.summary()})")


def model_provenance(path: str, info: dict) -> dict:
    """Checkpoint path, file digest and what the checkpoint says about itself."""
    out = {"checkpoint": str(path)}
    if os.path.isfile(path):
        from amanita.report import file_sha256
        out["checkpoint_sha256"] = file_sha256(path)
    return out | {k: v for k, v in (info or {}).items() if k not in out}


# ---------------------------------------------------------------------- report inputs
OBSERVATION_FILE = "observation_predictions.csv"  # beside predictions.csv; baseline_ prefix for the baseline


def load_predictions(args: argparse.Namespace):
    """Predictions (per image and per observation), taxonomy and provenance, from files or by running
    the model. With --from-predictions, the observation file beside it is used if there."""
    from amanita.predictions import read_predictions
    from amanita.report import file_sha256
    from amanita.taxonomy import Taxonomy
    if args.from_predictions:
        tax = Taxonomy.load(args.mappings)
        preds = read_predictions(args.from_predictions, tax)
        obs = read_beside(args.from_predictions, OBSERVATION_FILE, tax)
        prov = {"predictions": args.from_predictions, "predictions_sha256": file_sha256(args.from_predictions),
                "mappings": args.mappings}
        return preds, obs, tax, prov | earlier_provenance(Path(args.from_predictions).parent / "metrics.json")
    preds, obs, tax, info = run_inference(args)
    return preds, obs, tax, model_provenance(args.checkpoint, info) | {"decode": args.decode, "tta": args.tta}


def read_beside(path, name: str, tax):
    """The predictions file ``name`` in the folder of ``path``, or None when there is none."""
    from amanita.predictions import read_predictions
    other = Path(path).parent / name
    return read_predictions(other, tax) if other.is_file() else None


def earlier_provenance(metrics_json: Path) -> dict:
    """The provenance of the run that wrote the predictions, from its metrics.json if it is there."""
    import json
    try:
        prov = json.loads(metrics_json.read_text(encoding="utf-8")).get("provenance")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(prov, dict) or not prov:
        return {}
    return {"original_run": prov.get("original_run", prov)}


def load_baseline(args: argparse.Namespace, tax):
    """``(predictions, observation predictions, name, provenance)`` of the baseline, or Nones and ``{}``."""
    from amanita.predictions import read_predictions
    from amanita.report import file_sha256
    if args.baseline_predictions:
        path = args.baseline_predictions
        return (read_predictions(path, tax), read_beside(path, f"baseline_{OBSERVATION_FILE}", tax), path,
                {"predictions": path, "predictions_sha256": file_sha256(path)})
    spec = args.baseline_checkpoint or args.baseline_model
    if spec is None:
        return None, None, None, {}
    preds, obs, _, info = run_inference(args, spec, taxonomy=tax)
    return preds, obs, spec, model_provenance(spec, info) if args.baseline_checkpoint else info


def specimen_paths(args: argparse.Namespace, preds) -> list[str | None] | None:
    """Image path of each prediction row, from the validation CSV (or --image-root + filename)."""
    from amanita.data import image_paths, read_split
    if args.val_path:
        paths = image_paths(read_split(args.val_path, open_set=args.open_set), args.val_path, args.image_root)
        return [paths[i] if 0 <= i < len(paths) else None for i in preds["index"].astype(int)]
    if args.image_root:
        return [str(Path(args.image_root) / f) for f in preds["filename"].astype(str)]
    return None


def training_log(args: argparse.Namespace) -> str | None:
    if args.training_log:
        return args.training_log
    return str(Path(args.checkpoint).parent / "metrics.jsonl") if args.checkpoint else None


@cli_main
def main() -> int:
    args = parse_args()
    from amanita.io import staged_output
    from amanita.report import ReportInputs, base_provenance, build_report
    out = Path(args.output_dir)
    preds, obs, tax, prov = load_predictions(args)
    if len(preds) == 0:
        raise UserError("no prediction to evaluate: every image was unreadable or the predictions file is empty")
    if obs is None and "image" not in args.aggregate:
        raise UserError(f"--aggregate observation: {args.val_path or args.from_predictions} gives no "
                        "observation-level predictions (no observationID column?)")
    baseline, baseline_obs, baseline_name, baseline_prov = load_baseline(args, tax)
    provenance = prov | {"n_predictions": len(preds)} | base_provenance(tax, vars(args))
    if baseline_prov:
        provenance["baseline"] = baseline_prov
    both = len(set(args.aggregate)) == 2
    main_preds = preds if "image" in args.aggregate else obs
    inputs = ReportInputs(
        baseline_preds=baseline if "image" in args.aggregate else baseline_obs, baseline_name=baseline_name,
        focus=args.focus_species, provenance=provenance, image_paths=specimen_paths(args, main_preds),
        training_log=training_log(args), observation_preds=obs if both else None,
        baseline_observation_preds=baseline_obs if both else None, combine=args.combine,
        open_set={"score": args.unknown_score, "target_tpr": args.target_tpr} if args.open_set else None)
    with staged_output(out) as stage:  # the previous results stay whole until the new ones are complete
        save_predictions(stage, tax, preds, obs, prefix="")
        if args.baseline_checkpoint or args.baseline_model:
            save_predictions(stage, tax, baseline, baseline_obs, prefix="baseline_")
        report = build_report(main_preds, tax, stage, inputs)
        summary = summary_lines(stage / "metrics.json", baseline_name)
    if args.store_threshold:
        summary.append(store_threshold(args, out / "metrics.json"))
    print("\n".join(summary))
    print(f"report: {(out / report.name).resolve()}")
    return 0


def save_predictions(folder: Path, tax, preds, obs, prefix: str) -> None:
    """``{prefix}predictions.csv`` and, when there are any, ``{prefix}observation_predictions.csv``."""
    from amanita.predictions import write_predictions
    write_predictions(preds, folder / f"{prefix}predictions.csv", tax)
    if obs is not None:
        write_predictions(obs, folder / f"{prefix}{OBSERVATION_FILE}", tax)


def store_threshold(args: argparse.Namespace, metrics_path: Path) -> str:
    """Write the unknown-species threshold into --checkpoint for test.py (key ``open_set``); returns a line to print."""
    from amanita.checkpoint import update_checkpoint
    d = json.loads(metrics_path.read_text())["open_set"]["detection"][args.unknown_score]
    if d["threshold"] is None:
        raise UserError(f"{args.val_path} has no known-species image: no threshold to store")
    update_checkpoint(args.checkpoint, open_set={
        "score": args.unknown_score, "threshold": d["threshold"], "target_tpr": args.target_tpr,
        "tpr": d["tpr"], "tnr": d["tnr_at_tpr"], "auroc": d["auroc"], "val_path": str(args.val_path)})
    return (f"stored in {args.checkpoint}: unknown-species threshold {d['threshold']:.4g} "
            f"({args.unknown_score}, {100 * d['tpr']:.1f}% of known images accepted)")


def summary_lines(metrics_path: Path, baseline_name: str | None) -> list[str]:
    """The report's headline numbers for the terminal: per rank, then the safety lines."""
    m = json.loads(metrics_path.read_text())
    model, base = m["model"], m.get("baseline")
    head = f"{'rank':<8} {'top-1':>7} {'top-5':>7} {'F1':>7} {'ECE':>6}"
    lines = [head + (f" {'baseline':>9} {'Δ top-1':>8}" if base else "")]
    for key in ("phylum", "class", "order", "family", "genus", "species", "leaf"):
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
    for f in model.get("focus", []):
        if not f.get("found"):
            lines.append(f"{f['name']}: not in the taxonomy")
        elif not f.get("support"):
            lines.append(f"{f['name']}: no validation images")
        else:
            acc = f["accuracy"]
            lines.append(f"{f['name']}: {f['support']} images, species {_pct(acc['species'])}, "
                         f"genus {_pct(acc['genus'])}")
    if base:
        lines.append(f"(baseline: {baseline_name})")
    return lines + level_and_open_set_lines(m)


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


def _pct(x, digits: int = 1) -> str:
    """A share as a percentage; "n/a" where there was nothing to measure (None)."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    main()
