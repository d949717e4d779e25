"""The training loop in-process: accumulation groups, partial-group scaling, scheduler steps."""
import torch
import torch.nn as nn

from amanita.engine import StepConfig, TrainState, accumulation_group, train_one_epoch, updates_per_epoch


def test_accumulation_groups_end_on_the_epochs_last_batch():
    # 8 batches, accumulation 3: groups [0,1,2] [3,4,5] [6,7]
    got = [accumulation_group(b, 8, 3) for b in range(8)]
    assert got == [(3, False), (3, False), (3, True), (3, False), (3, False), (3, True), (2, False), (2, True)]
    assert [accumulation_group(b, 4, 1) for b in range(4)] == [(1, True)] * 4
    assert updates_per_epoch(8, 3) == 3 and updates_per_epoch(9, 3) == 3 and updates_per_epoch(0, 3) == 1


class _CountingScheduler:
    def __init__(self):
        self.calls = []

    def step_update(self, num_updates):
        self.calls.append(num_updates)


def _mse(out, labels):
    return {"loss": ((out["species"] - labels.float()) ** 2).mean()}


def _run(batches, accum):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched, state = _CountingScheduler(), TrainState()
    train_one_epoch(model, batches, _mse, opt, sched, torch.device("cpu"), state,
                    StepConfig(accum_steps=accum), show=False)
    return model, state, sched


def test_a_partial_group_is_one_update_on_the_mean_of_its_batches():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    # Two batches under accumulation 3: one update on the mean of both, as one batch of 8 would give.
    two, state, sched = _run([(x[:4], y[:4], None), (x[4:], y[4:], None)], accum=3)
    one, _, _ = _run([(x, y, None)], accum=1)
    assert state.step == 1 and state.batch_in_epoch == 2 and sched.calls == [1]
    for a, b in zip(two.parameters(), one.parameters()):
        torch.testing.assert_close(a, b)


def test_the_scheduler_steps_for_every_update_the_last_partial_one_included():
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(2, 3, generator=g), torch.randn(2, 1, generator=g), None) for _ in range(5)]
    _, state, sched = _run(batches, accum=2)
    assert state.step == 3 and sched.calls == [1, 2, 3]
