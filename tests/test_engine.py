"""The training loop in-process: accumulation groups, partial-group scaling, scheduler steps."""
import pytest
import torch
import torch.nn as nn

from amanita.engine import accumulation_group, finite_or_raise, train_one_epoch, updates_per_epoch
from amanita.io import UserError
from amanita.run import Run, StepConfig
from tests.helpers import LeafModel


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
    return {"loss": ((out["leaf"] - labels.float()) ** 2).mean()}


def _run(batches, accum):
    torch.manual_seed(0)
    model = LeafModel(nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = _CountingScheduler()
    run = Run(model, opt, _mse, step_config=StepConfig(accum_steps=accum), scheduler=sched)
    train_one_epoch(run, batches)
    return model, run.state, sched


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


class _LeafLinear(nn.Module):
    """A single-head model over leaves that records whether it ran under inference mode."""

    def __init__(self, n_leaves):
        super().__init__()
        self.fc = nn.Linear(12, n_leaves)
        self.modes = []

    def forward(self, x):
        self.modes.append(torch.is_inference_mode_enabled())
        return {"leaf": self.fc(x.flatten(1))}


def test_predict_keeps_results_on_the_device_and_copies_once_per_split(monkeypatch):
    import numpy as np

    from amanita.data import BAD_IMAGE
    from amanita.engine import predict
    from amanita.predictions import COLUMNS
    from amanita.taxonomy import build_taxonomy, encode_labels
    from tests.helpers import TRAIN_IDS, rows
    df = rows(TRAIN_IDS)
    tax = build_taxonomy([df])
    labels = torch.as_tensor(encode_labels(tax, df))  # (10, 7)
    labels[4, 0] = BAD_IMAGE  # an unreadable image is left out
    g = torch.Generator().manual_seed(3)
    images = torch.randn(10, 3, 2, 2, generator=g)
    order = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]  # batches of 4, 4, 2 in a shuffled order
    loader = [(images[order[s:s + 4]], labels[order[s:s + 4]], torch.tensor(order[s:s + 4])) for s in (0, 4, 8)]
    model = _LeafLinear(tax.n_leaves)
    copies = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: copies.append(t.shape) or real_cpu(t, *a, **k))
    got = predict(model, loader, tax, torch.device("cpu"), decode="independent")
    monkeypatch.undo()
    assert model.modes == [True, True, True]
    assert len(copies) == 2  # one integer block, one float block for the whole split
    assert list(got.columns) == COLUMNS and got["index"].tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    with torch.no_grad():
        p = model.fc(images.flatten(1)).softmax(1)
    keep = torch.tensor(got["index"].to_numpy())
    np.testing.assert_array_equal(got["leaf_pred"], p[keep].argmax(1).numpy())
    np.testing.assert_array_equal(got["leaf_true"], labels[keep, 0].numpy())
    np.testing.assert_allclose(got["leaf_conf"], p[keep].max(1).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(got["leaf_ptrue"], p[keep, labels[keep, 0]].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(got["leaf_top1"], got["leaf_pred"])
    assert got["leaf_top2"].dtype == np.int64 and got["phylum_top3"].eq(-1).all()  # 2 phyla: top-3 padded
    assert got["phylum_conf"].dtype == np.float32


def test_a_compiled_model_is_not_recompiled_for_the_epochs_short_last_batch():
    graphs = []

    def counting_backend(gm, example_inputs):  # called once per graph Dynamo compiles
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g), None) for n in (4, 4, 3)]
    model = LeafModel(nn.Linear(3, 1))
    run = Run(model, torch.optim.SGD(model.parameters(), lr=0.1), _mse,
              train_model=torch.compile(model, backend=counting_backend))
    train_one_epoch(run, batches)
    assert run.state.step == 3 and len(graphs) == 1  # the batch of 3 reused the graph of the batches of 4
    torch._dynamo.reset()


def test_a_non_finite_epoch_loss_stops_the_run_with_one_line_naming_the_epoch_and_heads():
    finite_or_raise({"loss": 1.0, "loss/leaf": 2.0}, 0)
    with pytest.raises(UserError, match=r"epoch 3: \['loss', 'loss/genus'\]; lower --lr"):
        finite_or_raise({"loss": float("inf"), "loss/genus": float("nan"), "loss/leaf": 2.0}, 2)


def test_evaluation_copies_labels_to_the_device_without_blocking(monkeypatch):
    from amanita.engine import iter_log_probs
    from amanita.taxonomy import build_taxonomy, encode_labels
    from tests.helpers import TRAIN_IDS, rows
    df = rows(TRAIN_IDS)
    tax = build_taxonomy([df])
    labels = torch.as_tensor(encode_labels(tax, df))[:4]
    loader = [(torch.randn(4, 3, 2, 2), labels, torch.arange(4))]
    copies = []
    real_to = torch.Tensor.to

    def to(t, *a, **k):
        if t.data_ptr() == labels.data_ptr():  # the batch's labels (not the decoder's one-off matrices)
            copies.append(k.get("non_blocking", False))
        return real_to(t, *a, **k)
    monkeypatch.setattr(torch.Tensor, "to", to)
    batches = list(iter_log_probs(_LeafLinear(tax.n_leaves), loader, tax, torch.device("cpu")))
    monkeypatch.undo()
    assert len(batches) == 1 and torch.equal(batches[0][1], labels)
    assert copies == [True]  # a pinned batch's labels overlap the next batch's work on CUDA
