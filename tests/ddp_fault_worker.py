"""Under torchrun: a few DDP updates of a small model through the real wrapper and loop, then a digest.

``rank-weights``: a multi-head model whose loss weighs one head 0 (each step must still reduce
every parameter). ``batchnorm``: a model with BatchNorm whose ranks see different data (the
running statistics must agree after the epoch). Rank 0 writes whether every rank holds the same
parameters and buffers.
"""
import json
import sys

import torch
import torch.nn as nn

from amanita.distributed import cleanup, init_distributed, wrap_for_training
from amanita.engine import train_one_epoch
from amanita.losses import MultiTaskLoss
from amanita.run import Run
from amanita.taxonomy import HEADS, build_taxonomy
from tests.helpers import TRAIN_IDS, rows


class Heads(nn.Module):
    """A body, optionally with BatchNorm, and one linear head per key of ``sizes``."""

    def __init__(self, sizes: dict[str, int], batchnorm: bool):
        super().__init__()
        layers = [nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)] if batchnorm else [nn.Conv2d(3, 4, 1)]
        self.body = nn.Sequential(*layers, nn.ReLU(), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(16, n) for k, n in sizes.items()})

    def forward(self, x):
        f = self.body(x)
        return {k: h(f) for k, h in self.heads.items()}


def _batches(tax, rank: int, n: int) -> list:
    g = torch.Generator().manual_seed(100 + rank)  # different data on every rank
    anc = tax.ancestor_matrix()
    out = []
    for _ in range(n):
        leaf = torch.randint(0, tax.n_leaves, (4,), generator=g)
        labels = torch.cat([leaf[:, None], anc[leaf]], 1)  # (4, 7) in KEYS order
        out.append((torch.randn(4, 3, 2, 2, generator=g) * (1 + rank), labels, list(range(4))))
    return out


def _same_on_every_rank(tensors: list[torch.Tensor], world: int) -> bool:
    if not tensors:
        return True
    flat = torch.cat([t.detach().float().flatten() for t in tensors])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    torch.distributed.all_gather(gathered, flat)
    return all(torch.equal(gathered[0], t) for t in gathered[1:])


def main(mode: str, out_path: str) -> None:
    dist = init_distributed("cpu")
    tax = build_taxonomy([rows(TRAIN_IDS)])
    torch.manual_seed(0)
    model = Heads(tax.head_sizes(), batchnorm=mode == "batchnorm")
    weights = {k: (0.0 if k == "genus" else 1.0) for k in HEADS} if mode == "rank-weights" else None
    criterion = MultiTaskLoss(tax, weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = Run(model, optimizer, criterion, dist=dist, train_model=wrap_for_training(model, dist))
    train_one_epoch(run, _batches(tax, dist.rank, 3))
    result = {"steps": run.state.step,
              "params": _same_on_every_rank(list(model.parameters()), dist.world_size),
              "buffers": _same_on_every_rank([b for b in model.buffers() if b.is_floating_point()], dist.world_size)}
    if dist.is_main:
        json.dump(result, open(out_path, "w"))
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
