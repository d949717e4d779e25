#!/usr/bin/env python3
"""Time and memory of the data tools and the train loader at FungiTastic's full size.

Generates a FungiTastic-format train CSV of 433,701 rows with all 32 columns (``captions``
of 200–500 characters) over 2,829 leaves with long-tailed counts (the taxonomy of
``amanita.demo.synthetic_predictions.synthetic_taxonomy``) and a validation CSV of 89,659 rows, then measures,
each in its own process (wall time, and peak RSS as the VmHWM of its own memory map):

- ``create_taxonomic_mappings.py`` (train + val), ``compute_class_weights.py``,
  ``create_minimal_subset.py``;
- ``FungiTasticDataset`` construction from the train CSV;
- the loader workers: ``--workers`` processes, batch ``--batch-size``, ``--batches`` batches in
  the shuffled training order (the images that order needs are hard links to a few real
  photographs); the PSS of each worker after its first batch and after the last, for
  amanita's dataset and for ``before``: the same dataset also holding the DataFrame and the
  paths as a list of str, as it did before issue 8.

Targets (issue 8): every script < 30 s and < 2 GB; PSS growth < 50 MB per worker.
Prints one JSON object. Examples:
  python benchmarks/bench_scale.py --workers 4 --batches 200
  python benchmarks/bench_scale.py --smoke      # 2,000 rows, one worker, two batches: seconds
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from _measure import measure  # benchmarks/_measure.py: a child's own peak memory

import numpy as np
import pandas as pd

from amanita.demo.synthetic_predictions import synthetic_taxonomy
from amanita.taxonomy import RANKS

ROOT = Path(__file__).resolve().parents[1]

N_TRAIN, N_VAL = 433_701, 89_659
POOLS = {
    "habitat": ["Mixed woodland", "Deciduous woodland", "Coniferous woodland", "Park/churchyard",
                "Bog", "Garden", "Dune", "Roadside", "Heath", "Meadow"],
    "substrate": ["soil", "dead wood", "leaf or needle litter", "bark of living trees", "mosses", "cones"],
    "metaSubstrate": ["soil", "wood", "litter", "other"],
    "landcover": ["forest", "grassland", "urban", "wetland", "agriculture"],
    "biogeographicalRegion": ["continental", "atlantic", "boreal"],
    "region": [f"Region {k}" for k in range(5)],
    "district": [f"District {k}" for k in range(98)],
    "iucnRedListCategory": ["LC", "NT", "VU", "EN", "DD"],
}
WORDS = ("cap convex brown white gills free crowded stipe ring volva smell earthy mild bruising yellow "
         "reddish pores spores flesh firm fragile surface smooth scaly margin striate young old base").split()


SMOKE = {"rows": 2000, "val_rows": 500, "workers": 1, "batches": 2, "batch_size": 4,  # --smoke: seconds
         "skip_before": True}  # (tests/test_benchmarks.py runs every benchmark so)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=N_TRAIN, help="train CSV rows")
    p.add_argument("--val-rows", type=int, default=N_VAL, help="validation CSV rows")
    p.add_argument("--workers", type=int, default=4, help="loader workers whose memory is measured")
    p.add_argument("--batches", type=int, default=200, help="batches drawn before the second PSS reading")
    p.add_argument("--batch-size", type=int, default=32, help="loader batch size")
    p.add_argument("--skip-before", action="store_true", help="measure only amanita's dataset, not the old layout")
    p.add_argument("--work-dir", default=None, help="where the CSVs go (default: a temporary folder, removed after)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one measured stage
    p.add_argument("--smoke", action="store_true", help=f"a size that runs in seconds: {SMOKE}")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    return p.parse_args(argv)


# ---------------------------------------------------------------------- the data
def captions(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` different captions of 200–500 characters."""
    out = []
    for _ in range(n):
        words = rng.choice(WORDS, 120)
        text, limit = "", int(rng.integers(200, 501))
        for w in words:
            if len(text) + len(w) + 1 > limit:
                break
            text += w + " "
        out.append(text.strip().capitalize() + ".")
    return np.array(out, dtype=object)


def make_split(tax, n: int, rng: np.random.Generator, first_obs: int) -> pd.DataFrame:
    """``n`` rows of the 32 FungiTastic columns, leaves drawn from the taxonomy's long-tailed counts."""
    counts = np.asarray(tax.counts["leaf"], dtype=np.float64)
    leaf = rng.choice(tax.n_leaves, size=n, p=counts / counts.sum())
    anc = tax.ancestors[leaf]
    obs = first_obs + np.cumsum(rng.random(n) < 0.7)  # about 1.4 images per observation
    names = np.array(tax.scientific_names, dtype=object)[leaf]
    day = rng.integers(1, 29, n)
    month = rng.integers(1, 13, n)
    year = rng.integers(2000, 2022, n)
    cols = {"eventDate": [f"{y}-{m:02d}-{d:02d}" for y, m, d in zip(year, month, day)],
            "year": year, "month": month, "day": day, "countryCode": "DK", "scientificName": names,
            "kingdom": "Fungi"}
    for i, r in enumerate(RANKS[:-1]):
        cols[r] = np.array(tax.classes[r], dtype=object)[anc[:, i]]
    cols["specificEpithet"] = [s.split(" ")[-1] for s in names]
    cols["hasCoordinate"] = True
    cols["species"] = np.array(tax.classes["species"], dtype=object)[anc[:, -1]]
    for k, pool in POOLS.items():
        cols[k] = np.array(pool, dtype=object)[rng.integers(0, len(pool), n)]
    cols |= {"latitude": rng.uniform(54.5, 57.7, n).round(5), "longitude": rng.uniform(8, 15, n).round(5),
             "coorUncert": rng.choice([10.0, 100.0, 1000.0, np.nan], n), "observationID": obs,
             "filename": [f"{i}-{o}.JPG" for i, o in enumerate(obs)],
             "category_id": np.asarray(tax.category_ids)[leaf],
             "poisonous": np.asarray(tax.poisonous, dtype=int)[leaf], "elevation": rng.uniform(0, 170, n).round(1),
             "captions": captions(rng, 4000)[rng.integers(0, 4000, n)]}
    order = ["eventDate", "year", "month", "day", "habitat", "countryCode", "scientificName", "kingdom", "phylum",
             "class", "order", "family", "genus", "specificEpithet", "hasCoordinate", "species",
             "iucnRedListCategory", "substrate", "latitude", "longitude", "coorUncert", "observationID", "region",
             "district", "filename", "category_id", "metaSubstrate", "poisonous", "elevation", "landcover",
             "biogeographicalRegion", "captions"]
    return pd.DataFrame(cols)[order]


def write_data(work: Path, args) -> dict:
    tax = synthetic_taxonomy(seed=0)
    rng = np.random.default_rng(0)
    meta = work / "metadata" / "FungiTastic"
    meta.mkdir(parents=True, exist_ok=True)
    paths = {"train": meta / "FungiTastic-Train.csv", "val": meta / "FungiTastic-ClosedSet-Val.csv"}
    t0 = time.perf_counter()
    make_split(tax, args.rows, rng, 0).to_csv(paths["train"], index=False)
    make_split(tax, args.val_rows, rng, 10**7).to_csv(paths["val"], index=False)
    return paths | {"seconds": time.perf_counter() - t0,
                    "train_csv_mb": paths["train"].stat().st_size / 2**20}


# ---------------------------------------------------------------------- measured processes


def measured(script: str, *args: str) -> dict:
    """Run ``script args``; its wall seconds, peak RSS (GiB) and the JSON it prints last, if any."""
    m = measure(script, args, ROOT)
    result = {"seconds": round(m["seconds"], 2), "peak_rss_gb": round(m["peak_mb"] / 1024, 3)}
    lines = m["stdout"].strip().splitlines()
    if lines and lines[-1].startswith("{"):
        result |= json.loads(lines[-1])
    return result


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def link_images(ds, sampler, n: int) -> None:
    """Hard links to real photographs for the first ``n`` samples of the training order."""
    from sklearn.datasets import load_sample_images
    from PIL import Image
    folder = Path(ds.path(0)).parent
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for k, photo in enumerate(load_sample_images().images):
        src = folder.parent / f"source{k}.jpg"
        Image.fromarray(photo).crop((0, 0, 400, 300)).save(src, quality=90)
        sources.append(src)
    for k, i in enumerate(sampler.indices()[:n]):
        dest = Path(ds.path(i))
        if not dest.exists():
            os.link(sources[k % len(sources)], dest)


def child_dataset(args, layout: str) -> dict:
    """Build the train dataset, then read PSS of the loader workers after 1 and ``--batches`` batches.

    ``before`` adds what the dataset held before issue 8 (the whole frame, every column, and the
    paths as a list of str read per sample), to compare.
    """
    from amanita.data import FungiTasticDataset, create_transforms, make_loader, read_split
    from amanita.distributed import ResumableDistributedSampler
    from amanita.taxonomy import Taxonomy
    from amanita.backbone import FUNGITASTIC_DATA_CONFIG as STOCK_CONFIG
    csv = Path(args.work_dir) / "metadata" / "FungiTastic" / "FungiTastic-Train.csv"
    tax = Taxonomy.load(Path(args.work_dir) / "taxonomic_mappings.json")
    t0 = time.perf_counter()
    ds = FungiTasticDataset(csv, tax, create_transforms(STOCK_CONFIG, True), input_size=STOCK_CONFIG["input_size"])
    seconds = time.perf_counter() - t0
    if layout == "before":  # what the dataset held before: the whole frame and a list of str, read per sample
        ds.df = read_split(csv, columns=None)
        ds.path_list = [ds.path(i) for i in range(len(ds))]
        ds.path = ds.path_list.__getitem__
    ds.seed = 0
    sampler = ResumableDistributedSampler(len(ds), 1, 0, True, seed=0)
    link_images(ds, sampler, (args.batches + 4 * args.workers) * args.batch_size)
    loader = make_loader(ds, args.batch_size, args.workers, "cpu", sampler, prefetch_factor=2)
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]
    first = [pss_mb(p) for p in pids]
    for _ in range(args.batches - 1):
        next(it)
    last = [pss_mb(p) for p in pids]
    return {"dataset_construction_s": round(seconds, 2), "workers": args.workers,
            "worker_pss_mb_after_1_batch": [round(x, 1) for x in first],
            "worker_pss_mb_after_last_batch": [round(x, 1) for x in last],
            "worker_pss_growth_mb": [round(b - a, 1) for a, b in zip(first, last)],
            "total_worker_pss_mb": round(sum(last), 1), "main_pss_mb": round(pss_mb(os.getpid()), 1)}


def main():
    args = parse_args()
    if args.child:
        print(json.dumps(child_dataset(args, args.child)))
        return
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="amanita_scale_")
    work = Path(args.work_dir or tmp.name)
    data = write_data(work, args)
    out, mappings = work / "out", str(work / "taxonomic_mappings.json")
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": args.rows,
           "val_rows": args.val_rows, "generate_s": round(data["seconds"], 1),
           "train_csv_mb": round(data["train_csv_mb"], 1)}
    train, val = str(data["train"]), str(data["val"])
    res["create_taxonomic_mappings"] = measured("create_taxonomic_mappings.py", "--train-path", train,
                                                "--val-path", val, "--output", mappings)
    res["compute_class_weights"] = measured("compute_class_weights.py", "--train-path", train, "--mappings", mappings,
                                            "--output", str(out / "class_weights.pt"))
    res["create_minimal_subset"] = measured("create_minimal_subset.py", "--train-path", train, "--val-path", val,
                                            "--output-dir", str(out / "minimal"))
    child = [str(Path(__file__).resolve()), "--work-dir", str(work), "--workers", str(args.workers),
             "--batches", str(args.batches), "--batch-size", str(args.batch_size), "--child"]
    res["dataset_and_workers"] = measured(*child, "amanita")
    if not args.skip_before:
        res["dataset_and_workers_before"] = measured(*child, "before")
    print(json.dumps(res, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
