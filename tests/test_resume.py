"""Resuming a training run: a checkpoint written on an epoch's final update, and one resumed
under another layout (world size, batch, accumulation)."""
import pytest
import torch
from torch.utils.data import DataLoader

from amanita import training
from amanita.cli import build_train_parser
from amanita.distributed import ResumableDistributedSampler
from tests.helpers import SMALL_MODEL, make_image_dataset


def test_a_start_past_the_shards_end_is_an_empty_epoch_not_a_negative_length():
    # 10 images, batch 4: batches of 4, 4, 2; a save on the last update records 3 batches = 12 samples
    sampler = ResumableDistributedSampler(10, seed=0)
    sampler.set_start(3 * 4)
    assert len(sampler) == 0 and list(sampler) == []
    assert len(DataLoader(range(10), batch_size=4, sampler=sampler)) == 0
    two = ResumableDistributedSampler(9, num_replicas=2, rank=1, seed=0)  # 5 samples a rank
    two.set_start(2 * 4)
    assert len(two) == 0
    two.set_start(4)
    assert len(two) == 1


def _args(data, save_dir, *extra):
    parser = build_train_parser("test", multitask=False)
    return parser.parse_args([str(a) for a in (
        "--train-path", data["train"], "--val-path", data["val"], "--mappings", save_dir.parent / "m.json",
        *SMALL_MODEL, "--batch-size", 4, "--workers", 0, "--save-dir", save_dir, "--auto-augment", "none",
        "--device", "cpu", "--accum-steps", 1, *extra)])


@pytest.mark.slow
def test_a_kill_during_validation_after_a_save_on_the_epochs_final_update_resumes(tmp_path, monkeypatch, capsys):
    """10 images, batch 4 (last batch partial), --save-every-steps 3: last.pth holds batch 3 of 3."""
    data = make_image_dataset(tmp_path, n_train=10, n_val=4)
    save = tmp_path / "ck"
    args = ("--epochs", 2, "--save-every-steps", 3)

    def killed(*a, **k):
        raise KeyboardInterrupt  # the kill, once the epoch's last update has been saved
    monkeypatch.setattr(training, "evaluate_split", killed)
    with pytest.raises(KeyboardInterrupt):
        training.train(_args(data, save, *args), multitask=False)
    saved = torch.load(save / "last.pth", weights_only=True)
    assert (saved["epoch"], saved["step"], saved["sampler"]["batch_in_epoch"]) == (0, 3, 3)
    monkeypatch.undo()
    for _ in range(2):  # the restart, and a restart of the finished run: neither fails
        assert training.train(_args(data, save, *args), multitask=False) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch 1/2" in out and "epoch 2/2" in out
    done = torch.load(save / "last.pth", weights_only=True)
    assert (done["epoch"], done["step"]) == (2, 6) and [h["epoch"] for h in done["history"]] == [1, 2]
