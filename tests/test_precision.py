"""Mixed precision: the roll-up of leaf probabilities (residual heads, consistency loss, decoding) runs
in fp32 under any autocast, so a confident model trains on a finite loss in fp16 and bf16 (CPU autocast)."""
import pytest
import torch

from amanita.decode import rank_log_probs
from amanita.losses import MultiTaskLoss
from amanita.model import create_multitask_model
from amanita.taxonomy import COARSE_RANKS, HEADS, LEAF, build_taxonomy
from tests.helpers import TINY_BEIT, TRAIN_IDS, rows

GAP = 20.0  # leaf logit gap: the others' probabilities ~2e-9, below fp16's smallest number (6e-8)


@pytest.fixture(scope="module")
def confident():
    """A residual multi-task model at step 0 (coarse heads at zero) whose leaf head is sure of leaf 0."""
    tax = build_taxonomy([rows(TRAIN_IDS)])
    torch.manual_seed(0)
    model = create_multitask_model(TINY_BEIT[0], tax, dict(TINY_BEIT[1]), pretrained=False).eval()
    with torch.no_grad():
        for head in model.heads.values():
            head.weight.zero_()
            head.bias.zero_()
        model.heads[LEAF].bias[0] = GAP
    x = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([[0, 1, 1, 1, 2, 2, 3], [2, 1, 1, 1, 1, 1, 1], [5, 0, 0, 0, 0, 0, 0], [3, 1, 1, 2, 3, 3, 4]])
    return tax, model, x, labels


def _forward(model, x, dtype):
    if dtype is None:
        return model(x)
    with torch.autocast("cpu", dtype=dtype):
        return model(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_confident_model_gives_finite_losses_close_to_fp32_under_autocast(confident, dtype):
    tax, model, x, labels = confident
    criterion = MultiTaskLoss(tax, label_smoothing=0.1, consistency_weight=0.1)
    with torch.no_grad():
        want = criterion(_forward(model, x, None), labels)
        with torch.autocast("cpu", dtype=dtype):
            got = criterion(model(x), labels)
    assert set(got) == {"loss", "loss/consistency", *(f"loss/{k}" for k in HEADS)}
    for k, v in got.items():
        assert torch.isfinite(v), f"{k} is {v.item()} under {dtype}"
        torch.testing.assert_close(v.float(), want[k], rtol=1e-3, atol=1e-4, msg=f"{k} under {dtype}")


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_at_step_0_the_residual_prior_is_the_leaf_heads_summed_probabilities(confident, dtype):
    """Exactly the stock model's roll-up of its own leaf output (float64 reference), in every precision."""
    tax, model, x, _ = confident
    with torch.no_grad():
        out = _forward(model, x, dtype)
    p = out[LEAF].double().softmax(1)
    for rank in COARSE_RANKS:
        assert out[rank].dtype == torch.float32
        want = (p @ tax.rollup_matrix(rank, torch.float64)).clamp_min(1e-12).log()
        torch.testing.assert_close(out[rank].double(), want, rtol=0, atol=1e-5, msg=f"{rank} under {dtype}")


def test_decoding_rolls_up_in_fp32_from_half_precision_outputs(confident):
    tax, model, x, _ = confident
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        logp = rank_log_probs({LEAF: model(x)[LEAF]}, tax)  # a single-head model: every rank rolled up
    p = logp[LEAF].double().exp()
    for rank in ("genus", "species"):
        assert logp[rank].dtype == torch.float32 and torch.isfinite(logp[rank]).all()
        torch.testing.assert_close(logp[rank].double().exp(), p @ tax.rollup_matrix(rank, torch.float64),
                                   rtol=1e-5, atol=1e-7)
