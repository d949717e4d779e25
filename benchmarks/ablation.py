#!/usr/bin/env python3
"""Equal-budget ablation of the heads (issue 12): does the six-head model earn its keep?

From one single-head start (trained here with train_minimal.py's recipe, or ``--start``), every
variant trains the same number of extra updates with the same optimizer, schedule and data
order (per seed), through amanita.training.run (the code behind the training scripts):

  (a) single-head continued        train_minimal.py --init-from START
  (b) multi-task, residual heads   train_multitask.py --init-from START --head-mode residual
  (c) multi-task, independent      train_multitask.py --init-from START --head-mode independent
  (d) residual + consistency       (b) with --consistency-weight > 0

Each final checkpoint (``last.pth``: no selection on validation) is scored on the test split
with consistent and independent decoding, without and with flip TTA; temperatures are fitted on
the validation split and the test ECE is given before and after them. Seeds vary the data order
and augmentation of the extra updates; the start is shared. Prints markdown tables (mean ± std
over seeds), then one JSON object; both are also written to ``--output-dir``.

  python benchmarks/ablation.py --data-root data/demo            # the demo (make demo-data)
  python benchmarks/ablation.py --train-path T.csv --val-path V.csv --test-path X.csv --start ckpt.pth
  python benchmarks/ablation.py --smoke     # a tiny demo set and model in a temporary folder: seconds
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from amanita import training
from amanita.calibration import apply_temperatures, fit_temperatures
from amanita.checkpoint import load_for_eval
from amanita.cli import HelpFormatter, cli_main, parse_train_config
from amanita.data import DeviceLoader, FungiTasticDataset, create_transforms, image_paths, make_loader, read_split
from amanita.decode import Decoder
from amanita.demo.dataset import generate_dataset
from amanita.engine import Readout, collect_log_probs, prediction_columns
from amanita.io import UserError, atomic_write_text
from amanita.metrics import hierarchy_metrics, key_metrics, lineage_calibration, poison_metrics
from amanita.taxonomy import Taxonomy, build_taxonomy

VARIANTS = {"a": "single-head continued", "b": "multi-task, residual heads",
            "c": "multi-task, independent heads", "d": "residual + consistency"}
DEMO_MODEL_ARGS = '{"depth": 4, "embed_dim": 192, "num_heads": 3, "img_size": 96}'

ORDER = ["start", *VARIANTS]
SMOKE = {"data_root": "", "output_dir": "", "start_epochs": 1, "extra_epochs": 1, "extra_train_images": 16,
         "eval_images": 16, "seeds": [0], "variants": ["a", "d"], "batch_size": 8, "workers": 0,
         "model_args": '{"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}'}
PCT = ("leaf_top1", "species_top1", "species_f1", "genus_top1", "family_top1", "all_six_right",
       "leaf_ece", "species_ece", "lineage_ece_species")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    d = p.add_argument_group("Dataset parameters")
    d.add_argument("--data-root", default="data/demo", help="FungiTastic-layout root (the demo: make demo-data)")
    d.add_argument("--train-path", default=None, help="train CSV (default: under --data-root)")
    d.add_argument("--val-path", default=None, help="validation CSV: temperatures (default: under --data-root)")
    d.add_argument("--test-path", default=None, help="test CSV: every reported number (default: under --data-root)")
    d.add_argument("--workers", type=int, default=2, help="data-loading processes")
    r = p.add_argument_group("Ablation parameters")
    r.add_argument("--start", default=None, help="a single-head amanita checkpoint to start from (default: train one)")
    r.add_argument("--model-args", default=DEMO_MODEL_ARGS,
                   help="timm kwargs of the BEiT trained as the start (default: the demo's small BEiT)")
    r.add_argument("--start-epochs", type=int, default=6, help="epochs of the single-head start when trained here")
    r.add_argument("--extra-epochs", type=int, default=1, help="epochs every variant trains from the start")
    r.add_argument("--extra-train-images", type=int, default=0,
                   help="train the extra epochs on this many train images (one random subset for every run; 0: all)")
    r.add_argument("--eval-images", type=int, default=0,
                   help="score on this many val and test images each (one random subset; 0: all)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the extra training")
    r.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS), help="variants to run")
    r.add_argument("--consistency-weight", type=float, default=0.5, help="--consistency-weight of variant (d)")
    r.add_argument("--lr", type=float, default=3e-4, help="peak lr of the extra training (AdamW, every variant)")
    r.add_argument("--batch-size", type=int, default=64, help="batch size of all training")
    r.add_argument("--output-dir", default="checkpoints/ablation", help="runs, logs, ablation.md and ablation.json")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.add_argument("--smoke", action="store_true",
                   help="a size that runs in seconds: a tiny demo set and model in a temporary folder "
                        "(tests/test_benchmarks.py runs every benchmark so)")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    return p.parse_args(argv)


def smoke_data(args, folder: Path) -> None:
    """--smoke: a few demo images per split, and the output, in ``folder`` (where not given)."""
    if not args.data_root:
        args.data_root = str(folder / "data")
        generate_dataset(args.data_root, n_observations=1, max_images=16)
    args.output_dir = args.output_dir or str(folder / "out")


def check_splits(args) -> None:
    """The three split CSVs, from the flags or under --data-root; a missing one is a one-line error."""
    meta = Path(args.data_root) / "metadata" / "FungiTastic"
    for flag, name in (("train_path", "Train"), ("val_path", "ClosedSet-Val"), ("test_path", "ClosedSet-Test")):
        path = getattr(args, flag) or str(meta / f"FungiTastic-{name}.csv")
        if not Path(path).is_file():
            raise UserError(f"--{flag.replace('_', '-')} {path}: no such file (make demo-data writes the demo)")
        setattr(args, flag, path)


# ---------------------------------------------------------------------- training
def common_flags(args, train_path: str, val_path: str) -> list[str]:
    """Flags every training run shares: data, mappings, batch, no augmentation that erases colour."""
    return ["--train-path", train_path, "--val-path", val_path, "--mappings",
            str(Path(args.output_dir) / "taxonomic_mappings.json"), "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), "--auto-augment", "none", "--drop-path", "0", "--resume", "none",
            "--save-every-steps", "0", "--accum-steps", "1", "--device", args.device]


def train(flags: list[str], multitask: bool, log: Path) -> None:
    """One training run in this process, its output in ``log``; a failure names the log."""
    cfg = parse_train_config("ablation run", multitask, flags)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        code = training.train(cfg)
    if code:
        raise UserError(f"training failed (exit {code}); see {log}")


def train_start(args) -> Path:
    """The single-head start: the demo's stock-model recipe (AdamW 1e-3), last epoch's weights."""
    out = Path(args.output_dir) / "start"
    model = ["--model", "beit_base_patch16_224", "--model-args", args.model_args, "--crop-pct", "1",
             "--crop-mode", "squash", "--interpolation", "bilinear"]
    flags = common_flags(args, args.train_path, args.val_path) + model + [
        "--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05", "--epochs", str(args.start_epochs),
        "--warmup-epochs", "1", "--save-dir", str(out), "--seed", "0"]
    train(flags, False, out / "train.log")
    return out / "last.pth"


def write_splits(args) -> dict[str, str]:
    """The CSVs the ablation trains and scores on, with absolute ``image_path`` columns, in ``--output-dir``.

    ``train``: the train split or ``--extra-train-images`` of it; ``val``/``test``: the splits or
    ``--eval-images`` of each; ``train_val``: 64 validation rows for each run's own per-epoch
    validation, which is not used (``last.pth`` is scored).
    """
    out = Path(args.output_dir)
    frames = {k: with_image_paths(p) for k, p in (("train", args.train_path), ("val", args.val_path),
                                                  ("test", args.test_path))}
    for key, n in (("train", args.extra_train_images), ("val", args.eval_images), ("test", args.eval_images)):
        if 0 < n < len(frames[key]):
            frames[key] = frames[key].sample(n, random_state=0).sort_index()
    frames["train_val"] = frames["val"].head(64)
    for key, df in frames.items():
        atomic_write_text(out / f"{key}.csv", df.to_csv(index=False))
    return {key: str(out / f"{key}.csv") for key in frames}


def with_image_paths(csv: str) -> pd.DataFrame:
    """The split with an absolute ``image_path`` column, so a copy elsewhere still finds its images."""
    df = read_split(csv, columns=None)  # every column: the copy stands in for the split
    return df.assign(image_path=[str(Path(p).resolve()) for p in image_paths(df, csv)])


def train_variant(args, start: Path, variant: str, seed: int) -> Path:
    """Extra updates from ``start``; the same optimizer, schedule and data for every variant."""
    out = Path(args.output_dir) / f"{variant}_seed{seed}"
    flags = common_flags(args, args.splits["train"], args.splits["train_val"]) + [
        "--init-from", str(start), "--opt", "adamw", "--lr", str(args.lr), "--weight-decay", "0.05",
        "--layer-decay", "0.75", "--head-lr-scale", "3", "--epochs", str(args.extra_epochs), "--warmup-epochs", "0.5",
        "--seed", str(seed), "--save-dir", str(out)]
    if variant != "a":
        flags += ["--head-mode", "independent" if variant == "c" else "residual"]
        flags += ["--consistency-weight", str(args.consistency_weight if variant == "d" else 0.0)]
    train(flags, variant != "a", out / "train.log")
    return out / "last.pth"


# ---------------------------------------------------------------------- scoring
def score(preds: pd.DataFrame, tax: Taxonomy) -> dict[str, float]:
    """The ablation's numbers from one predictions table."""
    k = {key: key_metrics(preds, key, tax.num_classes(key)) for key in ("leaf", "species", "genus", "family")}
    h, p, lin = hierarchy_metrics(preds, tax), poison_metrics(preds, tax), lineage_calibration(preds)
    return {"leaf_top1": k["leaf"]["top1"], "species_top1": k["species"]["top1"],
            "species_f1": k["species"]["macro_f1_present"], "genus_top1": k["genus"]["top1"],
            "family_top1": k["family"]["top1"], "all_six_right": h["hierarchical_accuracy"],
            "mistake_severity": h["mistake_severity"], "poison_cost": p["cost"], "leaf_ece": k["leaf"]["ece"],
            "species_ece": k["species"]["ece"], "lineage_ece_species": lin["species"]["ece"]}


def evaluate(path: Path, loaders: dict, device) -> list[dict]:
    """Rows per (tta, decode, calibrated) of one checkpoint, scored on test.

    Temperatures are fitted on val without TTA, so only the rows without TTA come calibrated
    (a second validation pass per run would cost more than the flip rows tell).
    """
    model, tax, _, info = load_for_eval(path, device)
    val_lp, val_y = collect_log_probs(model, loaders["val"], tax, device)
    temps = fit_temperatures(val_lp, val_y)
    rows = []
    for tta in ("none", "flip"):
        test_lp, test_y = collect_log_probs(model, loaders["test"], tax, device, readout=Readout(tta))
        for calibrated in ((False, True) if tta == "none" else (False,)):
            lp = {k: v.to(device) for k, v in apply_temperatures(test_lp, temps if calibrated else None).items()}
            for decode in ("consistent", "independent"):
                cols = prediction_columns(lp, test_y.to(device), np.arange(len(test_y)), Decoder(tax, device, decode))
                rows.append({"tta": tta, "decode": decode, "calibrated": calibrated, "step": info["step"],
                             "T_leaf": temps["leaf"]} | score(pd.DataFrame(cols), tax))
    return rows


def eval_loaders(args, start: Path, device: torch.device) -> dict:
    """Validation and test loaders with the start's preprocessing (every variant keeps it)."""
    _, tax, data_config, _ = load_for_eval(start)
    tf = create_transforms(data_config, train=False)
    return {split: DeviceLoader(make_loader(FungiTasticDataset(path, tax, tf, input_size=data_config["input_size"]),
                                            args.batch_size, args.workers, device), device, data_config)
            for split, path in (("val", args.splits["val"]), ("test", args.splits["test"]))}


# ---------------------------------------------------------------------- tables
def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (variant, tta, decode, calibrated)."""
    metrics = [c for c in rows.columns if c not in ("variant", "seed", "tta", "decode", "calibrated")]
    g = rows.groupby(["variant", "tta", "decode", "calibrated"], sort=True)[metrics]
    out = g.mean().join(g.std(ddof=1).fillna(0.0).add_suffix("_std")).reset_index()
    return out.sort_values("variant", key=lambda v: v.map(ORDER.index), kind="stable")


def cell(row, metric: str) -> str:
    scale, digits = (100, 1) if metric in PCT else (1, 2)
    return f"{scale * row[metric]:.{digits}f} ± {scale * row[metric + '_std']:.{digits}f}"


def paired_delta(rows: pd.DataFrame, variant: str, metric: str, **where) -> str:
    """Mean ± std over seeds of ``variant - (a)`` with the same seed (same data order)."""
    sel = rows[(rows[list(where)] == pd.Series(where)).all(axis=1)]
    a, v = (sel[sel.variant == x].set_index("seed")[metric] for x in ("a", variant))
    d = 100 * (v - a).dropna()
    if variant in ("a", "start") or d.empty:
        return ""
    return f"{d.mean():+.1f} ± {d.std(ddof=1) if len(d) > 1 else 0:.1f}"


def markdown(rows: pd.DataFrame, agg: pd.DataFrame) -> str:
    """Three tables: accuracy by decoding, flip TTA, calibration."""
    name = lambda v: f"({v}) {VARIANTS[v]}" if v in VARIANTS else "start (no extra update)"  # noqa: E731
    head = ("| variant | decoding | leaf top-1 | species top-1 | Δ species vs (a), paired | species macro-F1 | "
            "genus top-1 | family top-1 | all six right | mistake severity | poison cost |\n|" + "---|" * 11)
    lines = ["Test split, mean ± std over seeds; no TTA, no temperature.", "", head]
    for _, r in agg[(agg.tta == "none") & ~agg.calibrated].iterrows():
        delta = paired_delta(rows, r.variant, "species_top1", tta="none", decode=r.decode, calibrated=False)
        lines.append(f"| {name(r.variant)} | {r.decode} | " + " | ".join(
            [cell(r, "leaf_top1"), cell(r, "species_top1"), delta] + [cell(r, m) for m in (
                "species_f1", "genus_top1", "family_top1", "all_six_right", "mistake_severity", "poison_cost")]) + " |")
    lines += ["", "Flip TTA (consistent decoding, no temperature); Δ = flip − none, paired by seed.", "",
              "| variant | species top-1, none | species top-1, flip | Δ species | all six right, none | "
              "all six right, flip |\n|" + "---|" * 6]
    sel = agg[(agg.decode == "consistent") & ~agg.calibrated].set_index(["variant", "tta"])
    for v in sel.index.get_level_values(0).unique():
        n, f = sel.loc[(v, "none")], sel.loc[(v, "flip")]
        d = 100 * (rows[(rows.variant == v) & (rows.tta == "flip") & (rows.decode == "consistent") & ~rows.calibrated]
                   .set_index("seed").species_top1 - rows[(rows.variant == v) & (rows.tta == "none")
                   & (rows.decode == "consistent") & ~rows.calibrated].set_index("seed").species_top1)
        lines.append(f"| {name(v)} | {cell(n, 'species_top1')} | {cell(f, 'species_top1')} | "
                     f"{d.mean():+.1f} ± {d.std(ddof=1) if len(d) > 1 else 0:.1f} | "
                     f"{cell(n, 'all_six_right')} | {cell(f, 'all_six_right')} |")
    lines += ["", "Calibration on the test split (temperatures fitted on val; consistent decoding, no TTA): "
              "ECE before → after.", "",
              "| variant | T leaf | leaf ECE | species ECE | lineage ECE, species |\n|" + "---|" * 5]
    cal = agg[(agg.tta == "none") & (agg.decode == "consistent")].set_index(["variant", "calibrated"])
    for v in cal.index.get_level_values(0).unique():
        b, a = cal.loc[(v, False)], cal.loc[(v, True)]
        lines.append(f"| {name(v)} | {a['T_leaf']:.2f} | " + " | ".join(
            f"{cell(b, m)} → {cell(a, m)}" for m in ("leaf_ece", "species_ece", "lineage_ece_species")) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- main
@cli_main
def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="ablation_smoke_") if args.smoke else contextlib.nullcontext() as tmp:
        if args.smoke:
            smoke_data(args, Path(tmp))
        check_splits(args)
        return ablation(args)


def ablation(args) -> int:
    """Train the start and every variant, score them, print and write the tables."""
    t0 = time.perf_counter()
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    build_taxonomy([read_split(p) for p in (args.train_path, args.val_path, args.test_path)],
                   count_frame=read_split(args.train_path)).save(Path(args.output_dir) / "taxonomic_mappings.json")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    jobs = [(v, s) for v in args.variants for s in args.seeds]
    bar = tqdm(total=len(jobs) + (args.start is None), desc="ablation runs", unit="run")
    args.splits = write_splits(args)
    start = Path(args.start) if args.start else train_start(args)
    bar.update(args.start is None)
    loaders = eval_loaders(args, start, device)
    records = [dict(r, variant="start", seed=0) for r in evaluate(start, loaders, device)]
    timings = {}
    for variant, seed in jobs:
        t = time.perf_counter()
        path = train_variant(args, start, variant, seed)
        records += [dict(r, variant=variant, seed=seed) for r in evaluate(path, loaders, device)]
        timings[f"{variant}_seed{seed}"] = round(time.perf_counter() - t, 1)
        bar.update()
    bar.close()
    rows = pd.DataFrame(records)
    extra = rows[rows.variant != "start"].groupby("variant").step.unique().apply(lambda s: sorted(s.tolist()))
    table = markdown(rows, aggregate(rows))
    out = Path(args.output_dir)
    result = {"command": " ".join(sys.argv), "wall_s": round(time.perf_counter() - t0, 1), "run_s": timings,
              "updates_at_end": extra.to_dict(), "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} torch threads, {device}", "rows": records}
    atomic_write_text(out / "ablation.md", table + "\n")
    atomic_write_text(out / "ablation.json", json.dumps(result, indent=1, default=float))
    print(table)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    main()
