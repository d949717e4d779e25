"""Resuming a training run: a checkpoint written on an epoch's final update, and one resumed
under another layout (world size, batch, accumulation)."""
import pytest
import torch
from torch.utils.data import DataLoader

from amanita import training
from amanita.cli import parse_train_config
from amanita.distributed import ResumableDistributedSampler
from tests.helpers import SMALL_MODEL, make_image_dataset, train_config


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
    return parse_train_config("test", False, [str(a) for a in (
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
        training.train(_args(data, save, *args))
    saved = torch.load(save / "last.pth", weights_only=True)
    assert (saved["epoch"], saved["step"], saved["sampler"]["batch_in_epoch"]) == (0, 3, 3)
    monkeypatch.undo()
    for _ in range(2):  # the restart, and a restart of the finished run: neither fails
        assert training.train(_args(data, save, *args)) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch 1/2" in out and "epoch 2/2" in out
    done = torch.load(save / "last.pth", weights_only=True)
    assert (done["epoch"], done["step"]) == (2, 6) and [h["epoch"] for h in done["history"]] == [1, 2]


def _run(tax, save_dir, world: int, upe: int, epochs: int = 3):
    """A tiny single-head run whose schedule is sized like build_run's: ``upe`` updates per epoch."""
    import torch.nn as nn
    from timm.scheduler import create_scheduler_v2

    from amanita.backbone import ModelSpec
    from amanita.checkpoint_writer import Checkpointer
    from amanita.distributed import DistInfo
    from amanita.losses import MultiTaskLoss
    from amanita.run import Run
    from tests.helpers import LeafModel
    torch.manual_seed(0)
    model = LeafModel(nn.Flatten(), nn.Linear(12, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched, _ = create_scheduler_v2(opt, "cosine", num_epochs=epochs, min_lr=1e-4, warmup_lr=1e-3, warmup_epochs=1,
                                   step_on_epochs=False, updates_per_epoch=upe)
    return Run(model, opt, MultiTaskLoss(tax, {"leaf": 1.0}),
               dist=DistInfo(rank=0, world_size=world), scheduler=sched, updates_per_epoch=upe,
               checkpointer=Checkpointer(save_dir, "auto"), cfg=train_config(batch_size=2, seed=0),
               taxonomy=tax, spec=ModelSpec("single", "tiny", {}, {"input_size": (3, 2, 2)}))


@pytest.mark.parametrize("world, upe", [(4, 3), (1, 12)])  # as 16 GPUs resumed on 32, and on 8
def test_resuming_under_another_world_size_follows_a_fresh_schedule_of_the_new_layout(tmp_path, capsys, world, upe):
    """Saved by 2 processes (6 updates an epoch) inside epoch 2; resumed by ``world`` processes."""
    from amanita.taxonomy import build_taxonomy
    from tests.helpers import TRAIN_IDS, rows
    tax = build_taxonomy([rows(TRAIN_IDS)])
    old = _run(tax, tmp_path, world=2, upe=6)
    old.state.epoch, old.state.step, old.state.batch_in_epoch = 1, 8, 2  # killed inside epoch 2
    old.scheduler.step_update(num_updates=8)
    old.checkpointer.save(old)
    old.checkpointer.close()
    new = _run(tax, tmp_path, world=world, upe=upe)
    new.checkpointer.restore(new, tmp_path / "last.pth")
    fresh = _run(tax, tmp_path / "fresh", world=world, upe=upe)
    assert (new.state.epoch, new.state.step, new.state.batch_in_epoch) == (1, upe, 0)
    assert new.scheduler.t_initial == fresh.scheduler.t_initial == 3 * upe
    for step in (upe, 2 * upe, 3 * upe - 1):  # from here to the end, lr for lr as a fresh run of this layout
        new.scheduler.step_update(num_updates=step)
        fresh.scheduler.step_update(num_updates=step)
        assert new.optimizer.param_groups[0]["lr"] == fresh.optimizer.param_groups[0]["lr"]
    line = [x for x in capsys.readouterr().out.splitlines() if "schedule rebuilt" in x]
    assert len(line) == 1 and f"resuming at update {upe}, the start of epoch 2" in line[0]
    assert f"batch 2 × 2 process(es) × accumulation 1, this run uses 2 × {world} × 1" in line[0] and "2 batches done are trained again" in line[0]
