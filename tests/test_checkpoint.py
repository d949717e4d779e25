"""Checkpoints in-process: old formats, errors, update_checkpoint, RNG capture, an exact resume of the
loop, and background writing (snapshots, ordering, best-model links, failures, stale temporaries)."""
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from amanita import checkpoint as ck
from amanita.checkpoint import Checkpointer, load_checkpoint, update_checkpoint
from amanita.engine import train_one_epoch
from amanita.backbone import ModelSpec
from amanita.io import UserError
from amanita.losses import MultiTaskLoss
from amanita.model import create_multitask_model
from amanita.run import Run
from amanita.taxonomy import LEAF, build_taxonomy
from tests.helpers import TRAIN_IDS, rows, train_config

SMALL = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 16, "patch_size": 8}


@pytest.fixture
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def _multitask_checkpoint(tax) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = create_multitask_model("beit_base_patch16_224", tax, SMALL, pretrained=False).eval()
    return model, {"format_version": ck.CHECKPOINT_VERSION, "model": model.state_dict(), "model_ema": None,
                   "kind": "multitask", "architecture": "beit_base_patch16_224", "model_kwargs": SMALL,
                   "head_sizes": tax.head_sizes(), "head_mode": "residual", "taxonomy": tax.to_dict(),
                   "taxonomy_sha256": tax.sha256(),
                   "data_config": {"input_size": (3, 16, 16), "interpolation": "bicubic", "mean": (0.5,) * 3,
                                   "std": (0.5,) * 3, "crop_pct": 1.0},
                   "history": [{"epoch": 0, "train/leaf/loss": 1.5, "val/species/f1": 0.25}]}


def _as_version_1(ckpt: dict) -> dict:
    """What the same checkpoint looked like before the rename: the leaf head was called species."""
    old = {k: v for k, v in ckpt.items() if k != "format_version"}
    old["model"] = {k.replace("heads.leaf.", "heads.species."): v for k, v in ckpt["model"].items()}
    old["head_sizes"] = {("species" if k == LEAF else k): n for k, n in ckpt["head_sizes"].items()}
    old["history"] = [{"epoch": 0, "train/species/loss": 1.5, "val/species/f1": 0.25}]
    return old


def test_a_checkpoint_from_before_the_leaf_rename_loads_with_the_same_outputs(tax, tmp_path):
    model, ckpt = _multitask_checkpoint(tax)
    old = _as_version_1(ckpt)
    assert "heads.species.weight" in old["model"]
    ck.save_checkpoint(old, tmp_path / "old.pth")
    loaded, tax2, _, _ = ck.load_for_eval(tmp_path / "old.pth")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want, got = model(x), loaded(x)
    assert set(got) == set(want) and LEAF in got and "species" not in got
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    upgraded = ck.load_checkpoint(tmp_path / "old.pth")
    assert upgraded["head_sizes"] == tax.head_sizes() and upgraded["format_version"] == ck.CHECKPOINT_VERSION
    assert upgraded["history"] == ckpt["history"]  # the leaf loss renamed, the species-rank F1 kept
    ck.check_compatible(upgraded, tax, "multitask", "old.pth")  # resumes like a new one


def test_a_current_checkpoint_is_left_as_it_is(tax):
    _, ckpt = _multitask_checkpoint(tax)
    assert ck.upgrade_checkpoint(ckpt) is ckpt


def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="x.pth cannot be loaded as an amanita checkpoint"):
        ck.load_checkpoint(tmp_path / "x.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "y.pth")
    with pytest.raises(UserError, match="no 'model' entry"):
        ck.load_checkpoint(tmp_path / "y.pth")
    with pytest.raises(UserError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "missing.pth")


def test_rng_capture_restores_every_stream_through_a_checkpoint_file(tmp_path):
    ck.seed_everything(5)
    np.random.randn()  # odd count: numpy now holds a cached gaussian, which must be captured too
    ck.save_checkpoint({"model": {}, "rng": ck.capture_rng()}, tmp_path / "r.pth")
    first = (random.random(), np.random.randn(), np.random.rand(), torch.rand(2).tolist())
    ck.seed_everything(99)
    ck.restore_rng(ck.load_checkpoint(tmp_path / "r.pth")["rng"])
    assert (random.random(), np.random.randn(), np.random.rand(), torch.rand(2).tolist()) == first


# ---------------------------------------------------------------------- exact resume, in-process
def _batches(n: int) -> list:
    g = torch.Generator().manual_seed(7)
    labels = lambda: torch.cat([torch.randint(0, 6, (2, 1), generator=g), torch.full((2, 6), -1)], 1)
    return [(torch.randn(2, 3, 2, 2, generator=g), labels(), [2 * i, 2 * i + 1]) for i in range(n)]


def _tiny_run(tax, save_dir, every_steps: int, init_seed: int = 0) -> Run:
    """A single-head run small enough to train in milliseconds, with dropout (so RNG matters)."""
    from timm.scheduler import CosineLRScheduler
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(12, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = CosineLRScheduler(opt, t_initial=6, warmup_t=2, warmup_lr_init=0.01, t_in_epochs=False)
    crit = MultiTaskLoss(tax, {LEAF: 1.0}, leaf_index=torch.arange(6))
    return Run(model, opt, crit, scheduler=sched, checkpointer=Checkpointer(save_dir, "auto", every_steps),
               cfg=train_config(batch_size=2, seed=0), taxonomy=tax,
               spec=ModelSpec("single", "tiny", {}, {"input_size": (3, 2, 2)}))


def test_a_run_killed_after_its_last_save_resumes_to_the_same_weights(tax, tmp_path):
    batches = _batches(6)
    straight = _tiny_run(tax, tmp_path / "straight", every_steps=0)
    ck.seed_everything(1)
    train_one_epoch(straight, batches)
    killed = _tiny_run(tax, tmp_path / "killed", every_steps=2)
    ck.seed_everything(1)
    train_one_epoch(killed, batches[:5])  # saved at updates 2 and 4; the 5th is lost with the kill
    killed.checkpointer.wait()  # the background write of update 4 has landed
    resumed = _tiny_run(tax, tmp_path / "killed", every_steps=2, init_seed=123)
    path = resumed.checkpointer.resume_path()
    assert path == tmp_path / "killed" / "last.pth"
    resumed.checkpointer.restore(resumed, path)
    assert (resumed.state.step, resumed.state.batch_in_epoch) == (4, 4)
    train_one_epoch(resumed, batches[resumed.state.batch_in_epoch:])
    assert resumed.state.step == straight.state.step == 6
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_the_loop_saves_by_the_clock_in_the_background_and_links_best(tax, tmp_path):
    run = _tiny_run(tax, tmp_path, every_steps=0)
    run.checkpointer = Checkpointer(tmp_path, "auto", every_steps=0, every_minutes=1)
    now = [0.0]

    def clock():  # 30 s pass between two looks at the clock
        now[0] += 30.0
        return now[0]
    run.checkpointer.schedule = ck.SaveSchedule(every_minutes=1, clock=clock)
    saved = []
    real_save = run.checkpointer.writer.save
    run.checkpointer.writer.save = lambda state, path, also=(): saved.append(state["step"]) or real_save(state, path, also)
    train_one_epoch(run, _batches(6))
    assert saved == [2, 4, 6]  # a minute after the start, then a minute after each save
    run.checkpointer.save(run, "last.pth", also=("best_model.pth",))
    run.checkpointer.close()
    last, best = tmp_path / "last.pth", tmp_path / "best_model.pth"
    assert os.stat(last).st_ino == os.stat(best).st_ino and torch.load(best, weights_only=True)["step"] == 6


# ---------------------------------------------------------------------- update_checkpoint
def _ckpt(path):
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    return path


def test_update_adds_and_replaces_fields_readable_weights_only(tmp_path):
    path = _ckpt(tmp_path / "best.pth")
    update_checkpoint(path, open_set={"score": "msp", "threshold": 0.25}, epoch=4)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["open_set"] == {"score": "msp", "threshold": 0.25}
    assert ckpt["epoch"] == 4 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    assert not list(tmp_path.glob("*.tmp*"))


def test_update_refuses_objects_and_leaves_the_file_unchanged(tmp_path):
    path = _ckpt(tmp_path / "best.pth")
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"open_set\.where is a PosixPath"):
        update_checkpoint(path, open_set={"where": tmp_path})
    assert path.read_bytes() == before


def test_update_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found: .*nope.pth"):
        update_checkpoint(tmp_path / "nope.pth", x=1)
    assert load_checkpoint(_ckpt(tmp_path / "a.pth"))["epoch"] == 3


def _state(value: float) -> dict:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    with torch.no_grad():
        model.weight.fill_(value)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7,
            "history": [{"epoch": 0, "loss": 1.5}], "rng": ck.capture_rng()}


def test_the_file_holds_the_state_at_save_time_not_after(tmp_path, monkeypatch):
    monkeypatch.setenv(ck.WRITE_DELAY_ENV, "0.2")  # the write lands after the changes below
    state = _state(1.0)
    writer = ck.CheckpointWriter()
    writer.save(state, tmp_path / "last.pth")
    assert writer.busy
    state["model"]["weight"].add_(5.0)  # training goes on in place while the thread writes
    state["history"].append({"epoch": 1})
    state["optimizer"]["state"][0]["exp_avg"].zero_()
    writer.close()
    got = torch.load(tmp_path / "last.pth", weights_only=True)
    assert torch.equal(got["model"]["weight"], torch.ones(3, 4))
    assert got["history"] == [{"epoch": 0, "loss": 1.5}] and got["step"] == 7
    assert got["optimizer"]["state"][0]["exp_avg"].abs().sum() > 0
    assert set(got["rng"]) >= {"torch", "python", "numpy"}


def test_a_save_waits_for_the_previous_write_and_buffers_are_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(ck.WRITE_DELAY_ENV, "0.2")
    writer = ck.CheckpointWriter()
    state = _state(1.0)
    writer.save(state, tmp_path / "a.pth")
    buffers = {k: v.data_ptr() for k, v in writer._buffers.items()}
    state["model"]["weight"].fill_(2.0)
    writer.save(state, tmp_path / "b.pth")
    assert (tmp_path / "a.pth").is_file()  # the first write was finished before the second began
    writer.close()
    assert {k: v.data_ptr() for k, v in writer._buffers.items()} == buffers
    assert torch.load(tmp_path / "a.pth", weights_only=True)["model"]["weight"][0, 0] == 1.0
    assert torch.load(tmp_path / "b.pth", weights_only=True)["model"]["weight"][0, 0] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.pth"]  # no temporaries left


def test_best_is_a_link_to_the_file_just_written_and_outlives_the_next_save(tmp_path):
    writer = ck.CheckpointWriter()
    last, best = tmp_path / "last.pth", tmp_path / "best_model.pth"
    writer.save(_state(1.0), last, also=[best])
    writer.wait()
    assert os.stat(last).st_ino == os.stat(best).st_ino  # one serialisation, two names
    writer.save(_state(3.0), last)
    writer.close()
    assert torch.load(best, weights_only=True)["model"]["weight"][0, 0] == 1.0
    assert torch.load(last, weights_only=True)["model"]["weight"][0, 0] == 3.0


def test_link_or_copy_copies_where_hard_links_fail(tmp_path, monkeypatch):
    src, dst = tmp_path / "last.pth", tmp_path / "best_model.pth"
    src.write_bytes(b"x" * 1000)
    dst.write_bytes(b"old")

    def no_links(a, b):
        raise OSError(1, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    ck.link_or_copy(src, dst)
    assert dst.read_bytes() == b"x" * 1000 and os.stat(src).st_ino != os.stat(dst).st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pth", "last.pth"]


def test_a_failed_write_is_reported_and_raised_and_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    writer = ck.CheckpointWriter()
    writer.save(_state(1.0), tmp_path / "last.pth")
    writer.wait()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    writer.save(_state(2.0), tmp_path / "last.pth")
    with pytest.raises(ck.CheckpointWriteError, match=r"last\.pth failed: .*No space left.*intact"):
        writer.close()
    assert issubclass(ck.CheckpointWriteError, UserError)  # scripts print it as one line, exit 2
    assert "error: writing checkpoint" in capsys.readouterr().err  # printed when it happened
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pth", weights_only=True)["model"]["weight"][0, 0] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
    writer.close()  # reported once


def test_synchronous_mode_writes_before_returning(tmp_path):
    writer = ck.CheckpointWriter(background=False)
    writer.save(_state(1.0), tmp_path / "last.pth", also=[tmp_path / "best_model.pth"])
    assert not writer.busy
    assert torch.load(tmp_path / "best_model.pth", weights_only=True)["step"] == 7


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    for name in (".last.pth.a1b2c3d4.tmp", ".best_model.pth.abc_1234.tmp", "last.pth", "notes.tmp",
                 ".last.pth.short.tmp"):
        (tmp_path / name).write_bytes(b"")
    removed = ck.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".best_model.pth.abc_1234.tmp", ".last.pth.a1b2c3d4.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.pth.short.tmp", "last.pth", "notes.tmp"]
    assert ck.remove_stale_temporaries(tmp_path / "missing") == []


def test_save_schedule_by_steps_by_minutes_or_both():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    steps = ck.SaveSchedule(every_steps=50, clock=clock)
    assert [s for s in range(1, 151) if steps.due(s)] == [50, 100, 150]
    timed = ck.SaveSchedule(every_minutes=2, clock=clock)
    now[0] = 119.0
    assert not timed.due(1)
    now[0] = 120.0
    assert timed.due(2)
    timed.saved()
    now[0] = 200.0
    assert not timed.due(3)  # the clock restarted at the save
    both = ck.SaveSchedule(every_steps=10, every_minutes=1, clock=clock)
    assert both.due(10) and not both.due(11)
    now[0] = 260.0
    assert both.due(11)
    assert not ck.SaveSchedule(clock=clock).due(10)  # both off: only epoch ends save


def test_reserve_allocates_the_buffers_the_saves_then_reuse(tmp_path):
    writer = ck.CheckpointWriter()
    state = _state(1.0)
    writer.reserve(state)
    before = {k: v.data_ptr() for k, v in writer._buffers.items()}
    # model weight and bias, 3 AdamW tensors per parameter, torch and numpy RNG states
    assert len(before) == 2 + 6 + 2
    writer.save(state, tmp_path / "last.pth")
    writer.close()
    assert {k: v.data_ptr() for k, v in writer._buffers.items()} == before
    assert not list(tmp_path.glob(".*.tmp")) and (tmp_path / "last.pth").is_file()


def test_a_kill_between_the_names_of_an_epoch_end_save_never_leaves_last_newer_than_best(tmp_path, monkeypatch):
    """last.pth is put in place after best_model.pth: a resume from an older last.pth redoes the epoch
    and links best again, while a newer last.pth would mark the epoch saved and best_model.pth never come."""
    writer = ck.CheckpointWriter(background=False)
    last, best = tmp_path / "last.pth", tmp_path / "best_model.pth"
    writer.save(_state(1.0), last, also=[best])

    def killed(src, dst):  # the process dies after the first name is in place
        raise KeyboardInterrupt
    monkeypatch.setattr(ck, "link_or_copy", killed)
    with pytest.raises(ck.CheckpointWriteError):
        writer.save(_state(2.0), last, also=[best])
    weight = {p.name: torch.load(p, weights_only=True)["model"]["weight"][0, 0].item() for p in (last, best)}
    assert weight == {"last.pth": 1.0, "best_model.pth": 2.0}


def test_saves_ask_git_for_the_commit_once_per_process(tax, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ck, "git_sha", lambda: calls.append(1) or "abc")
    ck.process_git_sha.cache_clear()
    run = _tiny_run(tax, tmp_path, every_steps=1)
    train_one_epoch(run, _batches(3))  # three saves
    run.checkpointer.close()
    ck.process_git_sha.cache_clear()
    assert len(calls) == 1 and torch.load(tmp_path / "last.pth", weights_only=True)["git_sha"] == "abc"


def test_the_buffers_are_reserved_after_the_first_update_once_adamws_state_exists(tax, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    run = _tiny_run(tax, tmp_path, every_steps=0)
    run.model, run.scheduler = model, None
    run.optimizer = torch.optim.AdamW(model.parameters())  # its state appears at the first step
    run.checkpointer.start(run)
    assert not run.checkpointer.writer._buffers  # nothing reserved before the loop
    train_one_epoch(run, _batches(2))
    keys = set(run.checkpointer.writer._buffers)
    assert {f"/optimizer/state/{i}/{k}" for i in (0, 1) for k in ("exp_avg", "exp_avg_sq")} <= keys
    assert "/model/1.weight" in keys and not list(tmp_path.iterdir())  # reserved, nothing written
