"""Learning rate from the global batch, following timm's ``--lr-base`` convention."""
from __future__ import annotations

from amanita.io import UserError


def resolve_lr(lr: float | None, lr_base: float, lr_base_size: int, lr_base_scale: str, opt: str,
               global_batch: int) -> dict:
    """The peak learning rate for ``global_batch`` images per update, and how it was found.

    An explicit ``lr`` wins. Otherwise ``lr = lr_base × ratio`` with ``ratio = global_batch /
    lr_base_size`` (``linear``) or its square root (``sqrt``); ``auto`` picks ``sqrt`` for
    Ada*/LAMB optimizers and ``linear`` otherwise, as timm's train.py does. Returns a plain dict
    (``lr``, ``global_batch``, ``lr_base``, ``lr_base_size``, ``lr_base_scale``, ``source``) that
    goes into the start-up log and the checkpoint.
    """
    if global_batch < 1:
        raise UserError(f"the global batch must be at least 1 image, got {global_batch}")
    if lr is not None:
        if lr <= 0:
            raise UserError(f"--lr must be positive, got {lr}")
        return dict(lr=float(lr), global_batch=global_batch, lr_base=None, lr_base_size=None,
                    lr_base_scale=None, source="--lr")
    if lr_base <= 0 or lr_base_size < 1:
        raise UserError(f"--lr-base must be positive and --lr-base-size at least 1, got {lr_base} and {lr_base_size}")
    if lr_base_scale == "auto":
        lr_base_scale = "sqrt" if any(o in opt.lower() for o in ("ada", "lamb")) else "linear"
    if lr_base_scale not in ("linear", "sqrt"):
        raise UserError(f"--lr-base-scale must be auto, linear or sqrt, got {lr_base_scale!r}")
    ratio = global_batch / lr_base_size
    if lr_base_scale == "sqrt":
        ratio **= 0.5
    return dict(lr=lr_base * ratio, global_batch=global_batch, lr_base=lr_base, lr_base_size=lr_base_size,
                lr_base_scale=lr_base_scale, source="--lr-base")


def describe_lr(info: dict) -> str:
    """One start-up line: the resolved lr, the global batch and where the lr came from."""
    head = f"learning rate {info['lr']:.3g} for a global batch of {info['global_batch']} images"
    if info["source"] == "--lr":
        return f"{head} (--lr as given)"
    return (f"{head} (--lr-base {info['lr_base']:g} at {info['lr_base_size']} images, "
            f"{info['lr_base_scale']} scaling)")
