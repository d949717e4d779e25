"""Distribution: torchrun environment, samplers that resume mid-epoch, gathers, rank-0 guards."""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from amanita.io import UserError


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``--device``: ``auto`` is CUDA when available, else the CPU; a bare ``cuda`` is this process's GPU.

    Asking for CUDA where there is none is a :class:`~amanita.io.UserError`.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here (use --device cpu)")
    if dev.type == "cuda" and (dev.index is None or local_rank is not None):
        dev = torch.device("cuda", local_rank or 0)
    return dev


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (torchrun) and start the process group.

    NCCL on CUDA, gloo on CPU. Without torchrun's variables this is one process. Each process
    uses the GPU of its ``LOCAL_RANK``.
    """
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    dev = resolve_device(device, local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({"device_id": dev} if use_cuda else {}))
    return DistInfo(rank, local_rank, world, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (a list of world-size entries; ``[obj]`` without DDP)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_main(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself without DDP): rank 0 decides, the others follow."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def stop_all_if_any(error: str | None) -> None:
    """Every rank calls it with its own error (None: none); when any rank has one, every rank raises
    the first such rank's as a :class:`~amanita.io.UserError`, so no rank waits in a collective alone."""
    errors = [e for e in all_gather_objects(error) if e]
    if errors:
        raise UserError(errors[0])


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes."""
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
    return t


def wrap_for_training(model: torch.nn.Module, info: DistInfo, compile: bool = False) -> torch.nn.Module:
    """The module the training step calls: DDP (when distributed), then ``torch.compile`` over it.

    DDP first, as PyTorch's DDP notes describe: Dynamo then compiles the inner module while
    inside DDP's forward and splits its graph at DDP's bucket boundaries (DDPOptimizer), so
    gradient all-reduces still overlap the backward pass. No buffer broadcast before each
    forward (``forward_sync_buffers=False``, torch 2.14's name for ``broadcast_buffers=False``;
    buffers are still synced once at start-up): the buffers (roll-up matrices, relative-position
    indices) are constants. ``gradient_as_bucket_view=True``: gradients live in the all-reduce
    buckets, saving a copy and a second gradient set. ``checkpoint.unwrap`` gives the plain module.
    A model with BatchNorm (a MobileNet student) changes its buffers: then rank 0's are broadcast
    before each forward, and :func:`sync_batchnorm` makes them agree after the epoch's last one.
    """
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
            forward_sync_buffers=has_batchnorm(model), gradient_as_bucket_view=True)
    if compile:
        model = torch.compile(model)
    return model


def has_batchnorm(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds BatchNorm layers, whose running statistics change as it trains."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def sync_batchnorm(*models: torch.nn.Module | None) -> None:
    """Rank 0's BatchNorm running statistics on every rank (timm's ``distribute_bn``), so every rank
    validates and saves the same model; nothing without DDP or BatchNorm. Every rank calls it."""
    if not dist.is_initialized():
        return
    from timm.utils import distribute_bn
    for model in models:
        if model is not None and has_batchnorm(model):
            distribute_bn(model, dist.get_world_size(), reduce=False)


class ResumableDistributedSampler(Sampler[int]):
    """Shuffles every epoch like ``DistributedSampler`` and can start part-way into an epoch.

    The permutation depends only on ``seed`` and the epoch, so a resumed run sees the same
    order; ``set_start(n)`` skips this rank's first ``n`` samples. The dataset is padded with
    its first indices to a multiple of the world size, as ``DistributedSampler`` does.
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        self.n, self.num_replicas, self.rank, self.shuffle, self.seed = n, num_replicas, rank, shuffle, seed
        self.num_samples = math.ceil(n / num_replicas)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip this rank's first ``start`` samples; at or past the shard's end the epoch is done.

        A checkpoint written on an epoch's last update, whose last batch was partial, holds a
        start past the end (batches × batch size): that is an empty remainder, not a negative one.
        """
        self.start = min(max(start, 0), self.num_samples)

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.num_samples * self.num_replicas
        order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


class ShardSampler(Sampler[int]):
    """Evaluation shards: rank r takes samples r, r+W, ...; no padding, so each counts once."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0):
        self.idx = list(range(rank, n, num_replicas))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)
