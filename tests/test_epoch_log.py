"""An epoch's log record (losses, images/s) covers the whole epoch across a kill and resume: the
running sums are part of the checkpoint."""
import pytest

from amanita.engine import train_one_epoch
from amanita.seeding import seed_everything
from amanita.taxonomy import build_taxonomy
from tests.helpers import TRAIN_IDS, rows
from tests.test_checkpoint_writer import _batches, _tiny_run


@pytest.fixture
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def _resumed(tax, folder):
    run = _tiny_run(tax, folder, every_steps=2, init_seed=123)
    run.checkpointer.restore(run, run.checkpointer.resume_path())
    return run


def test_killed_mid_epoch_the_means_cover_the_batches_before_the_resume(tax, tmp_path):
    batches = _batches(6)
    straight = _tiny_run(tax, tmp_path / "straight", every_steps=0)
    seed_everything(1)
    want = train_one_epoch(straight, batches)
    killed = _tiny_run(tax, tmp_path / "killed", every_steps=2)
    seed_everything(1)
    train_one_epoch(killed, batches[:5])  # saved at update 4; the 5th batch is lost with the kill
    killed.checkpointer.wait()
    resumed = _resumed(tax, tmp_path / "killed")
    assert (resumed.state.epoch_batches, resumed.state.epoch_images) == (4, 8)
    got = train_one_epoch(resumed, batches[4:])
    assert set(got) == set(want)
    for k in want:
        if k != "images_per_s":
            assert got[k] == pytest.approx(want[k], rel=1e-6), k  # the mean of all six batches, not of the last two
    assert resumed.state.epoch_batches == 6 and resumed.state.epoch_images == 12


def test_killed_during_validation_the_resumed_record_keeps_the_losses_and_speed(tax, tmp_path):
    batches = _batches(6)
    run = _tiny_run(tax, tmp_path, every_steps=2)
    seed_everything(1)
    want = train_one_epoch(run, batches)  # saved at its last update, then killed while validating
    run.checkpointer.wait()
    resumed = _resumed(tax, tmp_path)
    assert resumed.state.batch_in_epoch == 6
    got = train_one_epoch(resumed, [])  # nothing left to train in this epoch
    assert {k: v for k, v in got.items() if k != "images_per_s"} == pytest.approx(
        {k: v for k, v in want.items() if k != "images_per_s"}, rel=1e-6)
    assert got["images_per_s"] > 0 and "loss" in got
    assert got["images_per_s"] == pytest.approx(12 / resumed.state.epoch_seconds)
