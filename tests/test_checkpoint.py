"""Checkpoints: update_checkpoint (fields added atomically, plain types only) and background writing
(snapshots, ordering, best-model links, failures, stale temporaries)."""
import os

import pytest
import torch

from amanita import checkpoint as ck
from amanita.checkpoint import load_checkpoint, update_checkpoint
from amanita.io import UserError


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
