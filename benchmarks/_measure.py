"""Run a script in a child process and read its own peak memory: shared by the benchmarks (this
file is not one; tests/test_benchmarks.py skips names that start with ``_``).

The child reports VmHWM from /proc/self/status: the new program's memory map only (ru_maxrss from
wait4 would also count the forked benchmark's pages before exec). With ``preload``, it first
imports those modules and reports what the imports every run pays cost: seconds and RSS.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

WRAPPER = """import os, runpy, sys, time
status = lambda key: next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]
preload = os.environ.pop("MEASURE_PRELOAD", "")
if preload:
    t0 = time.perf_counter()
    for name in preload.split(","):
        __import__(name)
    print("__imports", time.perf_counter() - t0, status("VmRSS"), file=sys.stderr)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as `python SCRIPT` would
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("__peak_kb", status("VmHWM"), file=sys.stderr)
"""


def measure(script: str | Path, args, cwd: str | Path, preload: tuple[str, ...] = (), env: dict | None = None) -> dict:
    """Run ``script args`` from ``cwd`` (which is put on PYTHONPATH); stop with its stderr when it
    fails. Returns its ``stdout``, wall ``seconds``, ``peak_mb`` and, with ``preload``,
    ``imports_s`` and ``imports_rss_mb``."""
    env = dict(os.environ, PYTHONPATH=str(cwd), **(env or {}))
    if preload:
        env["MEASURE_PRELOAD"] = ",".join(preload)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{script} failed:\n{proc.stderr[-3000:]}")
    lines = proc.stderr.splitlines()
    peak = [line.split()[1] for line in lines if line.startswith("__peak_kb")]
    out = {"stdout": proc.stdout, "seconds": seconds, "peak_mb": int(peak[-1]) / 1024}
    imports = [line.split()[1:] for line in lines if line.startswith("__imports")]
    if imports:
        out |= {"imports_s": float(imports[0][0]), "imports_rss_mb": int(imports[0][1]) / 1024}
    return out
