"""The checkpoint writer in-process: an exact resume of the loop through the Checkpointer, saves by the
clock, background writing (snapshots, ordering, best-model links, failures), the save schedule and stale
temporaries."""
import os

import pytest
import torch
import torch.nn as nn

from amanita import checkpoint as ck
from amanita import checkpoint_writer as cw
from amanita.backbone import ModelSpec
from amanita.checkpoint_writer import Checkpointer
from amanita.engine import train_one_epoch
from amanita.io import UserError
from amanita.losses import MultiTaskLoss
from amanita.run import Run
from amanita.seeding import capture_rng, seed_everything
from amanita.taxonomy import LEAF, build_taxonomy
from tests.helpers import TRAIN_IDS, LeafModel, rows, train_config


@pytest.fixture
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def _batches(n: int) -> list:
    g = torch.Generator().manual_seed(7)
    labels = lambda: torch.cat([torch.randint(0, 6, (2, 1), generator=g), torch.full((2, 6), -1)], 1)
    return [(torch.randn(2, 3, 2, 2, generator=g), labels(), [2 * i, 2 * i + 1]) for i in range(n)]


def _tiny_run(tax, save_dir, every_steps: int, init_seed: int = 0) -> Run:
    """A single-head run small enough to train in milliseconds, with dropout (so RNG matters)."""
    from timm.scheduler import CosineLRScheduler
    torch.manual_seed(init_seed)
    model = LeafModel(nn.Flatten(), nn.Dropout(0.3), nn.Linear(12, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = CosineLRScheduler(opt, t_initial=6, warmup_t=2, warmup_lr_init=0.01, t_in_epochs=False)
    crit = MultiTaskLoss(tax, {LEAF: 1.0})
    return Run(model, opt, crit, scheduler=sched, checkpointer=Checkpointer(save_dir, "auto", every_steps),
               cfg=train_config(batch_size=2, seed=0), taxonomy=tax,
               spec=ModelSpec("single", "tiny", {}, {"input_size": (3, 2, 2)}))


def test_a_run_killed_after_its_last_save_resumes_to_the_same_weights(tax, tmp_path):
    batches = _batches(6)
    straight = _tiny_run(tax, tmp_path / "straight", every_steps=0)
    seed_everything(1)
    train_one_epoch(straight, batches)
    killed = _tiny_run(tax, tmp_path / "killed", every_steps=2)
    seed_everything(1)
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
    run.checkpointer.schedule = cw.SaveSchedule(every_minutes=1, clock=clock)
    saved = []
    real_save = run.checkpointer.writer.save
    run.checkpointer.writer.save = lambda state, path, also=(): saved.append(state["step"]) or real_save(state, path, also)
    train_one_epoch(run, _batches(6))
    assert saved == [2, 4, 6]  # a minute after the start, then a minute after each save
    run.checkpointer.save(run, "last.pth", also=("best_model.pth",))
    run.checkpointer.close()
    last, best = tmp_path / "last.pth", tmp_path / "best_model.pth"
    assert os.stat(last).st_ino == os.stat(best).st_ino and torch.load(best, weights_only=True)["step"] == 6


# ---------------------------------------------------------------------- background writing
def _state(value: float) -> dict:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    with torch.no_grad():
        model.weight.fill_(value)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7,
            "history": [{"epoch": 0, "loss": 1.5}], "rng": capture_rng()}


def test_the_file_holds_the_state_at_save_time_not_after(tmp_path, monkeypatch):
    monkeypatch.setenv(cw.WRITE_DELAY_ENV, "0.2")  # the write lands after the changes below
    state = _state(1.0)
    writer = cw.CheckpointWriter()
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
    monkeypatch.setenv(cw.WRITE_DELAY_ENV, "0.2")
    writer = cw.CheckpointWriter()
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
    writer = cw.CheckpointWriter()
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
    cw.link_or_copy(src, dst)
    assert dst.read_bytes() == b"x" * 1000 and os.stat(src).st_ino != os.stat(dst).st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pth", "last.pth"]


def test_a_failed_write_is_reported_and_raised_and_keeps_the_previous_file(tmp_path, monkeypatch, capsys):
    writer = cw.CheckpointWriter()
    writer.save(_state(1.0), tmp_path / "last.pth")
    writer.wait()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    writer.save(_state(2.0), tmp_path / "last.pth")
    with pytest.raises(cw.CheckpointWriteError, match=r"last\.pth failed: .*No space left.*intact"):
        writer.close()
    assert issubclass(cw.CheckpointWriteError, UserError)  # scripts print it as one line, exit 2
    assert "error: writing checkpoint" in capsys.readouterr().err  # printed when it happened
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pth", weights_only=True)["model"]["weight"][0, 0] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
    writer.close()  # reported once


def test_synchronous_mode_writes_before_returning(tmp_path):
    writer = cw.CheckpointWriter(background=False)
    writer.save(_state(1.0), tmp_path / "last.pth", also=[tmp_path / "best_model.pth"])
    assert not writer.busy
    assert torch.load(tmp_path / "best_model.pth", weights_only=True)["step"] == 7


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    for name in (".last.pth.a1b2c3d4.tmp", ".best_model.pth.abc_1234.tmp", "last.pth", "notes.tmp",
                 ".last.pth.short.tmp"):
        (tmp_path / name).write_bytes(b"")
    removed = cw.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".best_model.pth.abc_1234.tmp", ".last.pth.a1b2c3d4.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.pth.short.tmp", "last.pth", "notes.tmp"]
    assert cw.remove_stale_temporaries(tmp_path / "missing") == []


def test_save_schedule_by_steps_by_minutes_or_both():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    steps = cw.SaveSchedule(every_steps=50, clock=clock)
    assert [s for s in range(1, 151) if steps.due(s)] == [50, 100, 150]
    timed = cw.SaveSchedule(every_minutes=2, clock=clock)
    now[0] = 119.0
    assert not timed.due(1)
    now[0] = 120.0
    assert timed.due(2)
    timed.saved()
    now[0] = 200.0
    assert not timed.due(3)  # the clock restarted at the save
    both = cw.SaveSchedule(every_steps=10, every_minutes=1, clock=clock)
    assert both.due(10) and not both.due(11)
    now[0] = 260.0
    assert both.due(11)
    assert not cw.SaveSchedule(clock=clock).due(10)  # both off: only epoch ends save


def test_reserve_allocates_the_buffers_the_saves_then_reuse(tmp_path):
    writer = cw.CheckpointWriter()
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
    writer = cw.CheckpointWriter(background=False)
    last, best = tmp_path / "last.pth", tmp_path / "best_model.pth"
    writer.save(_state(1.0), last, also=[best])

    def killed(src, dst):  # the process dies after the first name is in place
        raise KeyboardInterrupt
    monkeypatch.setattr(cw, "link_or_copy", killed)
    with pytest.raises(cw.CheckpointWriteError):
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
    model = LeafModel(nn.Flatten(), nn.Linear(12, 6))
    run = _tiny_run(tax, tmp_path, every_steps=0)
    run.model, run.scheduler = model, None
    run.optimizer = torch.optim.AdamW(model.parameters())  # its state appears at the first step
    run.checkpointer.start(run)
    assert not run.checkpointer.writer._buffers  # nothing reserved before the loop
    train_one_epoch(run, _batches(2))
    keys = set(run.checkpointer.writer._buffers)
    assert {f"/optimizer/state/{i}/{k}" for i in (0, 1) for k in ("exp_avg", "exp_avg_sq")} <= keys
    assert "/model/1.weight" in keys and not list(tmp_path.iterdir())  # reserved, nothing written
