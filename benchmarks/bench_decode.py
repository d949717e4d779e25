#!/usr/bin/env python3
"""Decoding cost per batch at FungiTastic size: matrices built once (decode.Decoder) against per batch.

test.py used to rebuild the roll-up and ancestor matrices for every batch; every path now goes
through :class:`amanita.decode.Decoder` (inside :class:`amanita.engine.BatchPredictor`), which
builds them once. Both are timed on the same random leaf logits, interleaved, over a random
taxonomy with FungiTastic's sizes (2,829 leaves, 2,786 species, ...). No model: this is the part
after the forward pass.

Prints one JSON object. Examples:
  python benchmarks/bench_decode.py --batch-size 32 --rounds 20
  python benchmarks/bench_decode.py --smoke      # two small batches: seconds
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch

from amanita.decode import Decoder, decode, rank_log_probs
from amanita.demo.synthetic_predictions import synthetic_taxonomy
from amanita.taxonomy import LEAF

SMOKE = {"batch_size": 4, "rounds": 2}  # --smoke (tests/test_benchmarks.py runs every benchmark so)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--rounds", type=int, default=20, help="batches timed per variant (interleaved); medians reported")
    p.add_argument("--decode", choices=("consistent", "independent"), default="consistent", help="decoding")
    p.add_argument("--smoke", action="store_true", help=f"a size that runs in seconds: {SMOKE}")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)
    return p.parse_args(argv)


def per_batch(tax, outputs, mode):
    """The old test.py path: matrices rebuilt for this batch."""
    logp = rank_log_probs(outputs, tax)
    return decode(logp, tax.ancestor_matrix(), mode)


def main():
    args = parse_args()
    torch.manual_seed(0)
    tax = synthetic_taxonomy(seed=0)
    decoder = Decoder(tax, "cpu", args.decode)
    times = {"matrices_once_ms": [], "matrices_per_batch_ms": []}
    for _ in range(args.rounds):
        outputs = {LEAF: torch.randn(args.batch_size, tax.n_leaves)}
        t0 = time.perf_counter()
        once = decoder.decode(decoder.log_probs(outputs))
        t1 = time.perf_counter()
        again = per_batch(tax, outputs, args.decode)
        t2 = time.perf_counter()
        assert all(torch.equal(once[k], again[k]) for k in once)  # the same predictions
        times["matrices_once_ms"].append(1000 * (t1 - t0))
        times["matrices_per_batch_ms"].append(1000 * (t2 - t1))
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    print(json.dumps({
        "batch_size": args.batch_size, "leaves": tax.n_leaves, "decode": args.decode, "rounds": args.rounds,
        "median_ms": med, "per_batch_over_once": round(med["matrices_per_batch_ms"] / med["matrices_once_ms"], 2),
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
    }, indent=1))


if __name__ == "__main__":
    main()
