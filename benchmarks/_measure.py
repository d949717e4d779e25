"""Run a script in a child process and read its own peak memory: the measurement the benchmarks share
(``from _measure import measure``), also runnable on its own (``--smoke``: a 64 MiB allocation).

The child reports VmHWM from /proc/self/status: the new program's memory map only (ru_maxrss from
wait4 would also count the forked benchmark's pages before exec). With ``preload``, it first
imports those modules and reports what the imports every run pays cost: seconds and RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tempfile
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Measure a script's wall time and own peak memory (VmHWM) in a child "
                                "process, as the benchmarks do.")
    p.add_argument("script", nargs="?", help="the script to run (not with --smoke)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    p.add_argument("--smoke", action="store_true", help="measure a tiny generated script that allocates 64 MiB")
    args = p.parse_args(argv)
    if not args.smoke and not args.script:
        p.error("give a script (or --smoke)")
    with tempfile.TemporaryDirectory(prefix="measure_smoke_") as tmp:
        script = args.script
        if args.smoke:
            script = Path(tmp) / "alloc.py"
            script.write_text("block = bytearray(64 * 2**20)\nprint(len(block))\n")
        m = measure(Path(script).resolve(), args.args, Path.cwd())
    print(json.dumps({"script": str(args.script or "smoke"), "seconds": round(m["seconds"], 3),
                      "peak_mb": round(m["peak_mb"], 1)}))


if __name__ == "__main__":
    main()
