"""Under torchrun: one epoch of accumulated DDP training whose batch count leaves a remainder.

Each rank sees its own data; after the epoch every rank writes a digest of its parameters, and
the test checks they are identical (a partial accumulation group stepped inside ``no_sync()``
would leave each rank with its own weights).
"""
import json
import sys

import torch
import torch.nn as nn

from amanita.distributed import cleanup, init_distributed
from amanita.engine import train_one_epoch
from amanita.run import Run, StepConfig
from amanita.taxonomy import label_column
from tests.helpers import LeafModel


def main(out_path: str, accum: int, n_batches: int) -> None:
    dist = init_distributed("cpu")
    torch.manual_seed(0)
    model = LeafModel(nn.Flatten(), nn.Linear(12, 5))
    ddp = nn.parallel.DistributedDataParallel(model)
    g = torch.Generator().manual_seed(100 + dist.rank)  # different data on every rank
    loader = [(torch.randn(4, 3, 2, 2, generator=g), torch.randint(0, 5, (4, 1), generator=g), list(range(4)))
              for _ in range(n_batches)]
    criterion = lambda out, labels: {"loss": nn.functional.cross_entropy(out["leaf"], label_column(labels, "leaf"))}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    run = Run(model, optimizer, criterion, dist=dist, step_config=StepConfig(accum_steps=accum), train_model=ddp)
    train_one_epoch(run, loader)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(params) for _ in range(dist.world_size)]
    torch.distributed.all_gather(gathered, params)
    if dist.is_main:
        same = all(torch.equal(gathered[0], t) for t in gathered[1:])
        json.dump({"equal": same, "steps": run.state.step, "batches": run.state.batch_in_epoch}, open(out_path, "w"))
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
