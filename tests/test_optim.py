"""Learning rate from the global batch (timm's --lr-base convention)."""
import math

import pytest

from amanita.io import UserError
from amanita.optim import describe_lr, resolve_lr


def test_linear_scaling_for_sgd_and_sqrt_for_adamw_by_default():
    sgd = resolve_lr(None, 0.01, 256, "auto", "sgd", global_batch=32 * 8 * 1)
    assert sgd["lr"] == pytest.approx(0.01) and sgd["lr_base_scale"] == "linear"
    assert resolve_lr(None, 0.01, 256, "auto", "momentum", 16 * 1 * 16 * 4)["lr"] == pytest.approx(0.04)
    adamw = resolve_lr(None, 1e-4, 256, "auto", "adamw", global_batch=128 * 1 * 16)
    assert adamw["lr"] == pytest.approx(1e-4 * math.sqrt(8)) and adamw["lr_base_scale"] == "sqrt"
    assert resolve_lr(None, 1e-4, 256, "auto", "lamb", 64)["lr"] == pytest.approx(5e-5)
    assert resolve_lr(None, 1e-4, 256, "linear", "adamw", 64)["lr"] == pytest.approx(2.5e-5)
    assert resolve_lr(None, 0.01, 256, "sqrt", "sgd", 1024)["lr"] == pytest.approx(0.02)


def test_an_explicit_lr_wins_and_everything_is_a_plain_value():
    info = resolve_lr(3e-4, 1e-4, 256, "auto", "adamw", global_batch=2048)
    assert info == dict(lr=3e-4, global_batch=2048, lr_base=None, lr_base_size=None, lr_base_scale=None,
                        source="--lr")
    assert describe_lr(info) == "learning rate 0.0003 for a global batch of 2048 images (--lr as given)"
    info = resolve_lr(None, 1e-4, 256, "auto", "adamw", 1024)
    assert all(isinstance(v, (int, float, str)) for v in info.values())
    assert describe_lr(info) == ("learning rate 0.0002 for a global batch of 1024 images "
                                 "(--lr-base 0.0001 at 256 images, sqrt scaling)")


@pytest.mark.parametrize("args, flag", [((None, 0.0, 256, "auto", "sgd", 256), "--lr-base"),
                                        ((None, 0.1, 0, "auto", "sgd", 256), "--lr-base-size"),
                                        ((None, 0.1, 256, "cubic", "sgd", 256), "--lr-base-scale"),
                                        ((-1.0, 0.1, 256, "auto", "sgd", 256), "--lr"),
                                        ((None, 0.1, 256, "auto", "sgd", 0), "global batch")])
def test_bad_values_name_the_flag(args, flag):
    with pytest.raises(UserError, match=flag):
        resolve_lr(*args)
