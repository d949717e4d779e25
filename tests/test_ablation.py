"""benchmarks/ablation.py end to end on a tiny dataset: equal budgets, every table, plain JSON."""
import json
import shutil

import pytest

from tests.helpers import make_image_dataset, run_script

TINY = '{"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}'


@pytest.mark.slow
def test_ablation_gives_every_variant_the_same_updates_and_writes_its_tables(tmp_path):
    paths = make_image_dataset(tmp_path / "data", n_train=32, n_val=18)
    for f in (tmp_path / "data" / "FungiTastic" / "val" / "300p").iterdir():  # the test split: val's images again
        (tmp_path / "data" / "FungiTastic" / "test" / "300p").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, tmp_path / "data" / "FungiTastic" / "test" / "300p" / f.name)
    shutil.copy(paths["val"], str(paths["val"]).replace("ClosedSet-Val", "ClosedSet-Test"))
    out = tmp_path / "ablation"
    proc = run_script("benchmarks/ablation.py", "--data-root", tmp_path / "data", "--model-args", TINY,
                      "--start-epochs", 1, "--extra-epochs", 1, "--extra-train-images", 24, "--seeds", 0, 1, "--variants", "a", "d",
                      "--batch-size", 8, "--workers", 0, "--output-dir", out, env={"OMP_NUM_THREADS": "1"})
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["updates_at_end"] == {"a": [3], "d": [3]}  # 24 of the 32 images / batch 8, one epoch each
    assert set(summary["run_s"]) == {"a_seed0", "a_seed1", "d_seed0", "d_seed1"}
    rows = json.loads((out / "ablation.json").read_text())["rows"]
    assert len(rows) == (1 + 2 * 2) * 6  # (start + 2 variants × 2 seeds) × (none, none calibrated, flip) × decoding
    for r in rows:
        if r["decode"] == "independent" and r["tta"] == "none":  # a temperature never moves an argmax
            twin = next(t for t in rows if t["calibrated"] != r["calibrated"] and
                        all(t[k] == r[k] for k in ("variant", "seed", "tta", "decode")))
            assert twin["species_top1"] == r["species_top1"] and twin["leaf_top1"] == r["leaf_top1"]
    table = (out / "ablation.md").read_text()
    assert table in proc.stdout
    assert "| (a) single-head continued | consistent |" in table and "| (d) residual + consistency | independent |" in table
    assert "start (no extra update)" in table and "Flip TTA" in table and "ECE before → after" in table
    assert (out / "d_seed1" / "last.pth").is_file()


@pytest.mark.slow
def test_ablation_names_a_missing_split(tmp_path):
    proc = run_script("benchmarks/ablation.py", "--data-root", tmp_path, check=False)
    assert proc.returncode == 2 and "--train-path" in proc.stderr and "make demo-data" in proc.stderr
