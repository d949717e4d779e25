"""Shared fixtures: the repo root on sys.path and a small demo dataset generated once."""
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_script(script: str, *args, env=None, check=True, timeout=600, cwd=None):
    """Run a top-level script with the test interpreter; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
