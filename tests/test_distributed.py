"""Samplers in-process; two CPU processes with gloo under torchrun, as on a cluster node (slow)."""
import json
import subprocess
import sys

import pytest
import torch

from amanita.distributed import ResumableDistributedSampler, ShardSampler
from tests.helpers import ROOT, SMALL_MODEL, make_image_dataset, script_env

ENV = script_env(OMP_NUM_THREADS="1")


def torchrun(*args, nproc=2, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_sampler_order_depends_on_seed_and_epoch_only():
    a, b = ResumableDistributedSampler(10, seed=3), ResumableDistributedSampler(10, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.set_epoch(2)
    assert list(a) != list(b)
    assert list(ShardSampler(5)) == list(range(5))


def test_sampler_resumes_at_the_sample_it_stopped_at():
    s = ResumableDistributedSampler(10, seed=0)
    s.set_epoch(4)
    full = list(s)
    s.set_start(6)  # six samples (e.g. 3 batches of 2) were trained before the kill
    assert list(s) == full[6:] and len(s) == 4
    s.set_epoch(5)  # a new epoch starts from its beginning
    assert len(s) == 10


def test_two_ranks_partition_the_padded_epoch_and_shards_count_each_sample_once():
    ranks = [ResumableDistributedSampler(7, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    parts = [list(r) for r in ranks]
    assert [len(p) for p in parts] == [4, 4]  # 7 padded to 8 with the first index, like DistributedSampler
    merged = sorted(parts[0] + parts[1])
    assert set(merged) == set(range(7)) and len(merged) == 8
    shards = [list(ShardSampler(7, 2, r)) for r in (0, 1)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = make_image_dataset(root, n_train=40, n_val=21)  # 21: not a multiple of the world size
    save = root / "ckpt"
    proc = torchrun(ROOT / "train_multitask.py", "--train-path", data["train"], "--val-path", data["val"],
                    "--mappings", root / "m.json", *SMALL_MODEL, "--batch-size", 8, "--workers", 0,
                    "--epochs", 1, "--save-dir", save, "--auto-augment", "none")
    return data, save, proc


@pytest.mark.slow
def test_train_multitask_runs_unchanged_under_torchrun(ddp_run):
    data, save, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/1:") == 1         # only rank 0 prints
    assert "2 process(es)" in proc.stdout
    c = torch.load(save / "last.pth", weights_only=True)
    assert c["sampler"]["world_size"] == 2 and c["epoch"] == 1
    assert len((save / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_two_process_validation_counts_each_sample_once(ddp_run, tmp_path):
    data, save, _ = ddp_run
    worker = ROOT / "tests" / "ddp_eval_worker.py"
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = subprocess.run([sys.executable, str(worker), save / "last.pth", data["val"], one], env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    double = torchrun(worker, save / "last.pth", data["val"], two)
    assert double.returncode == 0, double.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["n"] == b["n"] == 21 and b["indices"] == list(range(21))
    assert a["metrics"] == pytest.approx(b["metrics"]) and a["conf"] == pytest.approx(b["conf"], abs=1e-5)


@pytest.mark.slow
def test_an_error_on_one_rank_stops_every_rank(tmp_path):
    data = make_image_dataset(tmp_path, n_train=40, n_val=10)
    bad = sorted((tmp_path / "FungiTastic" / "train" / "300p").iterdir())[3]
    bad.write_bytes(b"truncated")
    proc = torchrun(ROOT / "train_multitask.py", "--train-path", data["train"], "--val-path", data["val"],
                    "--mappings", tmp_path / "m.json", *SMALL_MODEL, "--batch-size", 4, "--workers", 0,
                    "--epochs", 2, "--save-dir", tmp_path / "ck", "--max-bad-image-fraction", 0,
                    "--log-interval", 1, timeout=240)
    assert proc.returncode != 0
    assert "could not be read" in proc.stderr and str(bad) in proc.stderr


@pytest.mark.slow
def test_accumulation_remainder_keeps_ranks_identical(tmp_path):
    """2 ranks, accumulation 3, 8 batches (groups of 3, 3, 2): the last group must all-reduce."""
    out = tmp_path / "accum.json"
    proc = torchrun(ROOT / "tests" / "ddp_accum_worker.py", out, 3, 8, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result == {"equal": True, "steps": 3, "batches": 8}


@pytest.mark.slow
def test_training_wrapper_is_ddp_without_buffer_broadcast_then_compile():
    import torch.distributed as dist
    from torch._dynamo.eval_frame import OptimizedModule
    from torch.nn.parallel import DistributedDataParallel as DDP

    from amanita.checkpoint import unwrap
    from amanita.distributed import DistInfo, wrap_for_training
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = torch.nn.Linear(3, 2)
        info = DistInfo(rank=0, world_size=2)  # "distributed": the group above stands in for it
        wrapped = wrap_for_training(model, info, compile=True)
        assert isinstance(wrapped, OptimizedModule) and isinstance(wrapped._orig_mod, DDP)  # DDP inside compile
        ddp = wrapped._orig_mod
        assert ddp.forward_sync_buffers is False and ddp.gradient_as_bucket_view is True
        assert unwrap(wrapped) is model and hasattr(wrapped, "no_sync")  # accumulation still skips syncs
        eager = wrap_for_training(model, info)
        assert isinstance(eager, DDP) and eager.broadcast_buffers is False
        assert wrap_for_training(model, DistInfo()) is model  # one process, no compile: the module itself
    finally:
        dist.destroy_process_group()


def _fault_worker(mode: str, tmp_path) -> dict:
    out = tmp_path / f"{mode}.json"
    proc = torchrun(ROOT / "tests" / "ddp_fault_worker.py", mode, out, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_a_head_weighted_zero_trains_under_ddp(tmp_path):
    """--rank-weights with a 0: the head stays in the graph, so DDP reduces every parameter every step."""
    assert _fault_worker("rank-weights", tmp_path) == {"steps": 3, "params": True, "buffers": True}


@pytest.mark.slow
def test_batchnorm_statistics_agree_across_ranks_after_an_epoch(tmp_path):
    """Ranks see different batches: their running means and variances must still be rank 0's."""
    assert _fault_worker("batchnorm", tmp_path) == {"steps": 3, "params": True, "buffers": True}


def test_buffers_are_synced_for_models_with_batchnorm_only():
    from amanita.distributed import has_batchnorm
    assert has_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)))
    assert not has_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.LayerNorm(4)))


@pytest.mark.slow
def test_a_rank_that_does_not_see_the_checkpoint_folder_stops_every_rank_naming_it(tmp_path):
    """Rank 0 decides whether best_model.pth and last.pth exist; rank 1, on a folder of its own, cannot
    read them: both ranks stop with one line naming the folder (before: a hang in the final gather)."""
    data = make_image_dataset(tmp_path, n_train=16, n_val=6)
    shared, private = tmp_path / "ckpt", tmp_path / "node1"
    cmd = [ROOT / "tests" / "ddp_private_folder.py", private, ROOT / "train_multitask.py", "--train-path",
           data["train"], "--val-path", data["val"], "--test-path", data["val"], "--mappings", tmp_path / "m.json",
           *SMALL_MODEL, "--batch-size", 8, "--workers", 0, "--epochs", 1, "--save-dir", shared,
           "--auto-augment", "none", "--accum-steps", 1]
    for what in ("best_model.pth", "last.pth"):  # the final test, then the resume of the finished run
        proc = torchrun(*cmd, timeout=240)
        assert proc.returncode != 0
        assert f"rank 1 cannot read {private / what}, which rank 0 reads: the checkpoint folder {private} " \
               "must be shared by every node" in proc.stderr, proc.stderr[-3000:]
    assert (shared / "last.pth").is_file() and not private.exists()
