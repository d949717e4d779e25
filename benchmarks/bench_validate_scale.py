#!/usr/bin/env python3
"""Time and memory of validate.py's report stages at FungiTastic scale, without a model.

Builds synthetic predictions for 89,659 validation images over a random taxonomy of
FungiTastic's size (7 phyla, 28 classes, 95 orders, 308 families, 918 genera, 2,786 species,
2,829 leaves) and a baseline, then runs what ``validate.py --from-predictions`` runs
(:func:`amanita.evaluate.evaluate`, timed per stage): metrics for both, predictions.csv,
metrics.json + per-class CSVs, every figure (the specimen grids over a few shared thumbnails,
training curves from a 30-epoch log) and the HTML page.
Target (issue 4): metrics + figures + report under 60 s wall and 6 GB peak on 2 cores.

Prints one JSON object. Examples:
  python benchmarks/bench_validate_scale.py --output-dir /tmp/bench_validate
  python benchmarks/bench_validate_scale.py --smoke      # a few hundred images: seconds
"""
import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from amanita.evaluate import evaluate
from amanita.demo.synthetic_predictions import FUNGITASTIC_SIZES, FUNGITASTIC_VAL_SIZE, synthetic_predictions, synthetic_taxonomy
from amanita.predictions import write_predictions
from amanita.report import ReportInputs, base_provenance


SMOKE = {"samples": 300, "taxonomy_scale": 0.03}  # --smoke (tests/test_benchmarks.py runs every benchmark so)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=FUNGITASTIC_VAL_SIZE, help="validation images")
    p.add_argument("--output-dir", default=None, help="where the report goes (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic taxonomy and predictions")
    p.add_argument("--taxonomy-scale", type=float, default=1.0,
                   help="classes per rank as a share of FungiTastic's (1: its sizes; at least 2 per rank)")
    p.add_argument("--smoke", action="store_true", help=f"a size that runs in seconds: {SMOKE}")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    return p.parse_args(argv)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def scaled_sizes(scale: float) -> dict[str, int]:
    """FungiTastic's classes per rank times ``scale``, at least 2 per rank (the tree stays a tree)."""
    return {k: max(2, round(v * scale)) for k, v in FUNGITASTIC_SIZES.items()}


def inputs(out: Path, n: int, seed: int, sizes: dict[str, int]):
    """Taxonomy, predictions, baseline, 32 shared thumbnails and a training log."""
    tax = synthetic_taxonomy(sizes, seed=seed)
    preds, baseline = synthetic_predictions(tax, n, seed=seed), synthetic_predictions(tax, n, seed=seed + 1)
    rng = np.random.default_rng(seed)
    thumbs = out / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    for k in range(32):
        Image.fromarray(rng.integers(0, 255, (225, 300, 3), dtype=np.uint8)).save(thumbs / f"{k}.jpg")
    paths = [str(thumbs / f"{i % 32}.jpg") for i in range(n)]
    log = out / "metrics.jsonl"
    log.write_text("".join(json.dumps({"epoch": e, "lr": 1e-4, "train/loss": 3 / (e + 1),
                                       **{f"val/{k}/acc1": 0.5 + e / 100 for k in ("leaf", "genus")}}) + "\n"
                           for e in range(30)))
    return tax, preds, baseline, paths, log


def main():
    args = parse_args()
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_validate_"))
    out.mkdir(parents=True, exist_ok=True)
    rss_import = peak_rss_gb()
    t = time.perf_counter()
    tax, preds, baseline, paths, log = inputs(out, args.samples, args.seed, scaled_sizes(args.taxonomy_scale))
    stages = {"synthetic_inputs": time.perf_counter() - t}
    rss_inputs = peak_rss_gb()

    t = time.perf_counter()
    write_predictions(preds, out / "predictions.csv")
    stages["predictions_csv"] = time.perf_counter() - t
    report = ReportInputs(baseline_preds=baseline, baseline_name="baseline", image_paths=paths, training_log=log,
                          provenance=base_provenance(tax, vars(args)))
    result = evaluate(preds, tax, out, report)
    stages |= result.seconds
    page = result.report
    figs = list(out.glob("*.png"))
    measured = [k for k in stages if k != "synthetic_inputs"]
    print(json.dumps({
        "samples": len(preds), "classes": scaled_sizes(args.taxonomy_scale), "figures": len(figs),
        "stages_s": {k: round(v, 2) for k, v in stages.items()},
        "total_s": round(sum(stages[k] for k in measured), 2),
        "peak_rss_gb": round(peak_rss_gb(), 3), "rss_after_imports_gb": round(rss_import, 3),
        "rss_after_inputs_gb": round(rss_inputs, 3),
        "report": str(page), "report_kb": round(page.stat().st_size / 1024),
        "png_mb": round(sum(f.stat().st_size for f in out.glob("*.png")) / 2**20, 1),
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    }, indent=1))


if __name__ == "__main__":
    main()
