"""Every benchmark still runs: each ``benchmarks/*.py`` with ``--smoke`` (a size that takes seconds and
makes its own data, model or checkpoint) exits 0 and prints JSON, so one that stops importing fails here."""
import json
import time

import pytest

from tests.helpers import ROOT, run_script

BENCHMARKS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
# Benchmarks whose --smoke run a test of their own module makes (with assertions on what it prints):
# run once there, not twice; test_smoke_runs_elsewhere_exist checks that the run is really there.
SMOKE_TESTED_ELSEWHERE = {"bench_lora.py": "test_lora.py", "bench_model_file.py": "test_modelfile.py"}


def last_json(stdout: str):
    """The JSON document that ends ``stdout`` (a benchmark may print a table before it)."""
    lines = stdout.rstrip().splitlines()
    for k, line in enumerate(lines):
        if line.startswith(("{", "[")):
            try:
                return json.loads("\n".join(lines[k:]))
            except ValueError:
                continue
    raise AssertionError(f"no JSON at the end of the output:\n{stdout[-2000:]}")


def test_every_benchmark_is_found():
    assert len(BENCHMARKS) >= 8 and "bench_validate_scale.py" in BENCHMARKS and "ablation.py" in BENCHMARKS


def test_smoke_runs_elsewhere_exist():
    for bench, module in SMOKE_TESTED_ELSEWHERE.items():
        text = (ROOT / "tests" / module).read_text()
        assert f'"benchmarks/{bench}", "--smoke"' in text, f"{module} no longer runs {bench} --smoke"


@pytest.mark.slow
@pytest.mark.parametrize("name", [b for b in BENCHMARKS if b not in SMOKE_TESTED_ELSEWHERE])
def test_benchmark_smoke_runs_and_prints_json(name, tmp_path):
    t0 = time.perf_counter()
    proc = run_script(f"benchmarks/{name}", "--smoke", check=False, cwd=tmp_path, timeout=300,
                      env={"TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, f"{name} --smoke failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    doc = last_json(proc.stdout)
    assert isinstance(doc, dict) and doc
    print(f"{name} --smoke: {time.perf_counter() - t0:.1f} s")
    assert not list(tmp_path.glob("benchmarks")), "a smoke run wrote into the working folder"
