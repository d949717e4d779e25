"""preflight.py: each check's verdict and numbers in-process, the whole preflight and its injected faults (slow)."""
import json
import subprocess
import sys

import pytest
import torch

from amanita import preflight as pf
from amanita.config import PreflightConfig
from amanita.distributed import DistInfo
from amanita.taxonomy import build_taxonomy
from tests.helpers import ROOT, TINY_BEIT, TRAIN_IDS, make_image_dataset, rows, script_env, train_config, \
    write_hub_cache_model

CHECKS = {"environment", "data", "loader", "model", "distributed", "checkpoint", "forecast"}


def context(tmp_path, **flags) -> pf.Context:
    own = dict(sample_images=64, output=None, max_seconds=30.0, allow_download=False)
    changes = dict(save_dir=str(tmp_path / "ckpt"), seed=0, batch_size=8, accum_steps=1, epochs=2) | flags
    cfg = train_config(multitask=True, cls=PreflightConfig, extra=own, **changes)
    return pf.Context(cfg, DistInfo(), pf.Budget(30))


# ---------------------------------------------------------------------- in-process: each verdict
def test_largest_batch_halves_until_a_step_fits():
    tried, freed = [], []

    def step(batch):
        tried.append(batch)
        if batch > 20:
            raise torch.OutOfMemoryError(f"batch {batch}")
    assert pf.largest_batch(step, 128, lambda: freed.append(1)) == 16
    assert tried == [128, 64, 32, 16] and len(freed) == 3
    assert pf.largest_batch(lambda b: (_ for _ in ()).throw(torch.OutOfMemoryError()), 4) == 0


def test_taxonomy_difference_names_the_leaf_and_rank():
    mappings = build_taxonomy([rows(TRAIN_IDS)])
    assert pf.taxonomy_difference(build_taxonomy([rows([0, 2, 5])]), mappings) is None  # a subset is consistent
    other = rows(TRAIN_IDS)
    other.loc[other.category_id == 5, "genus"] = "Verpa"
    assert pf.taxonomy_difference(build_taxonomy([other]), mappings) == \
        "category_id 5 (Morchella esculenta) has genus 'Verpa' in the CSVs, 'Morchella' in the mappings"
    extra = rows(TRAIN_IDS)
    extra.loc[0, "category_id"] = 9
    assert "category_id 9 (Amanita phalloides) is not in the mappings" in \
        pf.taxonomy_difference(build_taxonomy([extra]), mappings)


def test_ranks_merge_to_the_worst_status_naming_the_rank():
    per_rank = [[dict(name="data", status="PASS", why="fine", numbers={"a": 1})],
                [dict(name="data", status="WARN", why="slow disk", numbers={"a": 2})],
                [dict(name="data", status="FAIL", why="missing images", numbers={"a": 3})]]
    merged = pf.merge_ranks(per_rank)["data"]
    assert merged["status"] == "FAIL" and merged["why"] == "rank 2: missing images"
    assert merged["numbers"] == {"a": 1} and [n["a"] for n in merged["per_rank"]] == [1, 2, 3]


def test_forecast_takes_the_slowest_rank_and_names_the_bound(tmp_path):
    def rank(model, loader, read, reduce_s):
        return [dict(name="model", numbers=dict(images_per_s=model, largest_batch=8)),
                dict(name="loader", numbers=dict(train_images_per_s=loader)),
                dict(name="data", numbers=dict(images={"train": dict(read_images_per_s=read)})),
                dict(name="distributed", numbers=dict(all_reduce_s=reduce_s))]
    per_rank = [rank(100.0, 400.0, 1000.0, 0.1), rank(50.0, 500.0, 2000.0, 0.2)]
    parts = pf.forecast_parts(per_rank, batch=8, accum=2)
    assert parts == pytest.approx({"compute": 1 / 50, "loader": 1 / 400, "storage": 1 / 1000,
                                   "all-reduce": 0.2 / 16})
    ctx = context(tmp_path, epochs=3, accum_steps=2)
    ctx.dist = DistInfo(0, 0, 2)
    ctx.frames = {"train": rows([0] * 100)}
    c = pf.forecast(ctx, per_rank)
    # 50 images a rank × (1/50 + 0.2/16) s, compute + all-reduce without overlap
    assert c.numbers["epoch_s"] == pytest.approx(50 * (1 / 50 + 0.2 / 16), abs=0.05)
    assert c.numbers["run_s"] == pytest.approx(3 * c.numbers["epoch_s"], abs=0.1)
    assert c.numbers["bound"] == "compute" and c.why.startswith("forecast:")


def test_unwritable_checkpoint_folder_fails_in_one_line_and_leaves_nothing(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    ctx = context(tmp_path, save_dir=str(tmp_path / "a_file" / "checkpoints"))
    c = pf.check_checkpoint(ctx)
    assert c.status == "FAIL" and "\n" not in c.why
    assert c.why.startswith(f"checkpoint folder {tmp_path / 'a_file' / 'checkpoints'} is not writable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_writable_checkpoint_folder_times_a_save_and_removes_it(tmp_path):
    ctx = context(tmp_path, save_dir=str(tmp_path / "new" / "ckpt"))
    ctx.state = {"model": {"w": torch.zeros(1000)}, "optimizer": {"state": {0: {"exp_avg": torch.zeros(1000)}}}}
    c = pf.check_checkpoint(ctx)
    assert c.status == "PASS", c.why
    assert c.numbers["checkpoint_mb"] == pytest.approx(0.008) and c.numbers["shared"] is True
    assert c.numbers["save_written_s"] >= c.numbers["save_blocked_s"] >= 0
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone with the token and the test checkpoint


def test_a_folder_other_nodes_cannot_read_fails_and_says_what_it_means_for_resume(tmp_path):
    c = pf.Check("checkpoint")
    pf.judge_sharing(c, [(0, "node-a", True), (1, "node-a", True), (2, "node-b", False), (3, "node-b", False)],
                     tmp_path)
    assert c.status == "FAIL" and c.numbers == {"shared": False, "ranks_reading": 2}
    assert c.why.startswith(f"{tmp_path} is not shared: rank(s) 2, 3 on node-b cannot read rank 0's files")
    assert "start afresh while rank 0 resumes" in c.why
    shared = pf.Check("checkpoint")
    pf.judge_sharing(shared, [(0, "node-a", True), (1, "node-b", True)], tmp_path)
    assert shared.status == "PASS" and shared.numbers["shared"] is True


def test_data_check_counts_missing_images_per_split(tmp_path):
    paths = make_image_dataset(tmp_path, n_train=12, n_val=6)
    for f in sorted((tmp_path / "FungiTastic" / "val" / "300p").iterdir())[:2]:
        f.unlink()
    build_taxonomy([rows([k % 6 for k in range(12)])]).save(tmp_path / "maps.json")
    ctx = context(tmp_path, train_path=str(paths["train"]), val_path=str(paths["val"]),
                  mappings=str(tmp_path / "maps.json"), max_bad_image_fraction=0.2)
    c = pf.check_data(ctx)
    assert c.numbers["images"]["train"]["missing"] == 0 and c.numbers["images"]["val"]["missing"] == 2
    assert c.numbers["images"]["val"]["sampled"] == 6
    assert c.status == "FAIL" and c.why.startswith("val: 2 of 6 sampled images missing or unreadable (33% > "
                                                   "--max-bad-image-fraction 0.2)")


def test_requirements_pins_are_compared(tmp_path):
    (tmp_path / "req.txt").write_text("torch==2.14.1\ntimm==1.0.31  # pinned\nnumpy\n")
    found = {"torch": "2.14.1+cu130", "timm": "1.0.30", "numpy": "2.0"}
    assert pf.version_problems(found, tmp_path / "req.txt") == ["timm 1.0.30 (requirements.txt: 1.0.31)"]


def test_hub_offline_for_the_block_only(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pf.hub_offline():
        assert constants.is_offline_mode()
    assert not constants.is_offline_mode()
    with pf.hub_offline(False):  # --allow-download
        assert not constants.is_offline_mode()


# ---------------------------------------------------------------------- the script, end to end
def hub_config(num_classes: int) -> dict:
    """A hub config.json for a tiny BEiT under the stock id (no mean/std, as the real one)."""
    return {"architecture": TINY_BEIT[0], "num_classes": num_classes, "model_args": TINY_BEIT[1],
            "pretrained_cfg": {"input_size": [3, 32, 32], "fixed_input_size": True, "interpolation": "bicubic",
                               "crop_pct": 0.875, "crop_mode": "center", "num_classes": num_classes,
                               "first_conv": "patch_embed.proj", "classifier": "head"}}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny FungiTastic layout, its mappings, and an offline hub cache holding a tiny stock model."""
    import timm
    root = tmp_path_factory.mktemp("preflight")
    paths = make_image_dataset(root / "data", n_train=24, n_val=9)
    from amanita.data import read_split
    build_taxonomy([read_split(paths["train"]), read_split(paths["val"])]).save(root / "maps.json")
    stock = timm.create_model(TINY_BEIT[0], pretrained=False, num_classes=6, **TINY_BEIT[1])
    write_hub_cache_model(root / "hub", stock, hub_config(6))
    return root, paths


def preflight(demo, tmp_path, *extra, env=None):
    """preflight.py on the demo (tiny model from the offline hub cache), a fresh save dir; (process, report)."""
    root, paths = demo
    out = tmp_path / "preflight.json"
    args = ["--train-path", paths["train"], "--val-path", paths["val"], "--mappings", root / "maps.json",
            "--save-dir", tmp_path / "ckpt", "--output", out, "--workers", "0", "--batch-size", "8",
            "--sample-images", "16", "--max-seconds", "20", "--epochs", "2", *extra]
    proc = subprocess.run([sys.executable, str(ROOT / "preflight.py"), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=script_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(root / "hub"),
                                                                    OMP_NUM_THREADS="1", **(env or {})))
    report = json.loads(out.read_text()) if out.is_file() else None
    return proc, report


def table_row(stdout: str, check: str) -> str:
    return next(line for line in stdout.splitlines() if line.split()[:1] == [check])


@pytest.mark.slow
def test_preflight_of_the_demo_passes_and_reports_every_check(demo, tmp_path):
    proc, report = preflight(demo, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(report["checks"]) == CHECKS and report["world_size"] == 1
    statuses = {k: c["status"] for k, c in report["checks"].items()}
    assert statuses.pop("loader") in ("PASS", "WARN")  # WARN when this loaded machine's loader is slower than the model
    assert set(statuses.values()) == {"PASS"}, report["checks"]
    model = report["checks"]["model"]["numbers"]
    assert model["model"].startswith("hf-hub:BVRA/") and model["largest_batch"] == 8 and model["images_per_s"] > 0
    assert report["checks"]["data"]["numbers"]["images"]["train"]["sampled"] == 16
    assert report["checks"]["data"]["numbers"]["taxonomy_sha256_csv"] == \
        report["checks"]["data"]["numbers"]["taxonomy_sha256_mappings"]
    assert report["checks"]["forecast"]["numbers"]["run_s"] > 0
    assert "forecast:" in table_row(proc.stdout, "forecast")
    assert not (tmp_path / "ckpt").exists()


def fault_taxonomy(demo, tmp_path):
    df = rows([k % 6 for k in range(24)])
    df.loc[df.category_id == 5, "genus"] = "Verpa"
    df.to_csv(tmp_path / "other.csv", index=False)
    build_taxonomy([df]).save(tmp_path / "other_maps.json")
    return ["--mappings", tmp_path / "other_maps.json"], {}


def fault_missing_images(demo, tmp_path):
    root, paths = demo
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted((root / "data" / "FungiTastic" / "train" / "300p").iterdir())[:12]:  # half of the 24
        (images / f.name).write_bytes(f.read_bytes())
    return ["--image-root", images, "--val-path", paths["train"], "--sample-images", "24"], {}


FAULTS = {  # name: (extra flags and environment, the failing check, what its line says)
    "unwritable checkpoint folder": (lambda d, t: (["--save-dir", t / "a_file" / "ckpt"], {}), "checkpoint",
                                     "is not writable"),
    "taxonomy differs from the mappings": (fault_taxonomy, "data", "category_id 5 (Morchella esculenta) has genus 'Morchella' in the CSVs, 'Verpa' in the mappings"),
    "missing images": (fault_missing_images, "data", "train: 12 of 24 sampled images missing or unreadable (50% > --max-bad-image-fraction 0.001)"),
    "model absent from the offline hub cache": (
        lambda d, t: (["--model", "hf-hub:BVRA/no_such_model"], {}), "model", "is not in the Hugging Face cache"),
    "batch that cannot fit": (lambda d, t: ([], {pf.OOM_ENV: "2"}), "model",
                              "--batch-size 8 does not fit on cpu (out of memory); the largest batch that fits "
                              "(halving) is 2: --batch-size 2 --accum-steps 4"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_injected_fault_is_a_one_line_fail_and_leaves_nothing(demo, tmp_path, fault):
    make, check, says = FAULTS[fault]
    (tmp_path / "a_file").write_text("a file where the checkpoint folder would go")
    extra, env = make(demo, tmp_path)
    proc, report = preflight(demo, tmp_path, *extra, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert report["status"] == "FAIL" and report["checks"][check]["status"] == "FAIL"
    row = table_row(proc.stdout, check)
    assert row.split()[1] == "FAIL" and says in row, row
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ckpt").exists() and (tmp_path / "a_file").is_file()
