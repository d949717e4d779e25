"""Preflight: check and measure a machine or cluster before a run, with the run's own flags.

:func:`preflight` runs one check after another (environment, data, model, loader,
distributed, checkpoint folder), each a :class:`Check` with a status (PASS / WARN / FAIL),
one line of why and what to do, and the numbers it measured; every rank runs every check and
rank 0 merges them (the worst status wins), adds a forecast of the run's time from the
measurements, prints the table and writes ``preflight.json``. Every size is bounded by a time
budget (``--max-seconds``), so the whole preflight stays under two minutes on a node.
Collectives are reached by every rank whatever a local check found.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import secrets
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as tdist
from tqdm import tqdm

from amanita.checkpoint_writer import CheckpointWriter
from amanita.config import DataConfig, PreflightConfig
from amanita.data import IMAGE_ERRORS, FungiTasticDataset, image_paths, make_loader, read_image, read_split
from amanita.distributed import DistInfo, all_gather_objects, barrier
from amanita.engine import amp_dtype, autocast
from amanita.io import UserError, atomic_write_text
from amanita.taxonomy import RANKS, Taxonomy, build_taxonomy

CHECKS = ("environment", "data", "loader", "model", "distributed", "checkpoint", "forecast")  # table order
STATUSES = ("PASS", "WARN", "FAIL")
OOM_ENV = "AMANITA_TEST_PREFLIGHT_OOM_ABOVE"  # tests: a step with a larger batch raises torch.OutOfMemoryError
SHARES = dict(data=0.15, model=0.35, loader=0.15, distributed=0.1, checkpoint=0.1)  # of --max-seconds
CHECKPOINTS_OF_SPACE = 3  # last.pth, best_model.pth and a temporary being written
COMPUTE = "compute"  # the forecast's name for the training step on the device (GPU or CPU)


@dataclass
class Check:
    """One row of the table: a status, one line of why and what to do, and the numbers measured."""
    name: str
    status: str = "PASS"
    why: str = ""
    numbers: dict = field(default_factory=dict)

    def worse(self, status: str, why: str) -> None:
        """Lower the status to ``status`` (never raise it back) and put ``why`` first."""
        if STATUSES.index(status) >= STATUSES.index(self.status):
            self.status, self.why = status, f"{why}; {self.why}" if self.why else why


def worst(statuses) -> str:
    return max(statuses, key=STATUSES.index, default="PASS")


class Budget:
    """The preflight's time budget: each part gets a share of ``seconds``, never past the end."""

    def __init__(self, seconds: float):
        self.seconds, self.end = float(seconds), time.monotonic() + float(seconds)

    def deadline(self, share: float) -> float:
        """A ``time.monotonic()`` deadline ``share`` of the budget from now (at least a second)."""
        return min(time.monotonic() + max(share * self.seconds, 1.0), max(self.end, time.monotonic() + 1.0))


@dataclass
class Context:
    """What the checks share: the flags, the processes, and what earlier checks found."""
    cfg: PreflightConfig  # resolved (training.resolve_config), as the run would resolve it
    dist: DistInfo
    budget: Budget
    taxonomy: Taxonomy | None = None
    frames: dict = field(default_factory=dict)    # split -> its metadata frame
    samples: dict = field(default_factory=dict)   # split -> the sampled rows (found or not)
    model: torch.nn.Module | None = None
    state: dict | None = None                     # model + optimizer state, the size of a checkpoint
    data_config: dict | None = None
    step_s: float | None = None                   # one training step at the measured batch
    images_per_s: float | None = None             # the training step's rate
    grad_bytes: int = 0


# ---------------------------------------------------------------------- running and reporting
def preflight(cfg: PreflightConfig, dist: DistInfo) -> dict:
    """Run every check on every rank; the merged report (with the forecast) on every rank."""
    ctx = Context(cfg, dist, Budget(cfg.max_seconds))
    t0 = time.perf_counter()
    local = [guarded(name, fn, ctx) for name, fn in LOCAL_CHECKS]
    local += [check_distributed(ctx), check_checkpoint(ctx)]  # collectives: every rank, whatever came before
    per_rank = all_gather_objects([asdict(c) for c in local])
    checks = merge_ranks(per_rank)
    checks["forecast"] = {k: v for k, v in asdict(forecast(ctx, per_rank)).items() if k != "name"}
    checks = {name: checks[name] for name in CHECKS}
    return {"status": worst(c["status"] for c in checks.values()), "seconds": round(time.perf_counter() - t0, 1),
            "world_size": dist.world_size, "device": str(dist.device), "checks": checks,
            "args": cfg.to_dict()}


def guarded(name: str, fn: Callable[[Context], Check], ctx: Context) -> Check:
    """``fn(ctx)``, with any error turned into a one-line FAIL of that check (the other checks still run)."""
    try:
        return fn(ctx)
    except (UserError, OSError) as e:  # a user error names the problem itself
        return Check(name, "FAIL", one_line(str(e) or type(e).__name__))
    except Exception as e:  # noqa: BLE001 - a preflight reports; a rank that stopped here would hang the others
        return Check(name, "FAIL", one_line(f"{type(e).__name__}: {e}"))


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def merge_ranks(per_rank: list[list[dict]]) -> dict:
    """Each check over the ranks: the worst status and its reason (naming the rank), rank 0's numbers."""
    merged = {}
    for i, first in enumerate(per_rank[0]):
        rows = [r[i] for r in per_rank]
        status = worst(r["status"] for r in rows)
        rank = next(k for k, r in enumerate(rows) if r["status"] == status)
        why = rows[rank]["why"] if len(rows) == 1 or status == "PASS" else f"rank {rank}: {rows[rank]['why']}"
        entry = dict(status=status, why=one_line(why), numbers=first["numbers"])
        if len(rows) > 1:
            entry["per_rank"] = [r["numbers"] for r in rows]
        merged[first["name"]] = entry
    return merged


def table(report: dict) -> str:
    """The printed table: one line per check, then the verdict."""
    lines = [f"preflight of {report['world_size']} process(es) on {report['device']}, {report['seconds']:.0f} s",
             f"{'check':<12} {'status':<6}  why / what to do"]
    for name, c in report["checks"].items():
        lines.append(f"{name:<12} {c['status']:<6}  {c['why']}")
    lines.append(f"preflight: {report['status']}")
    return "\n".join(lines)


def write_report(report: dict, path: str | os.PathLike) -> None:
    atomic_write_text(path, json.dumps(report, indent=1, default=str) + "\n")


def default_output() -> str:
    """``preflight.json`` beside the run's small logs on ISC ($LOSSY_ARTIFACT_PATH), else here."""
    return str(Path(os.environ.get("LOSSY_ARTIFACT_PATH") or ".") / "preflight.json")


# ---------------------------------------------------------------------- environment
def check_environment(ctx: Context) -> Check:
    """Versions (torch, CUDA, cuDNN, NCCL, timm, torchvision against requirements.txt), devices, bf16, TF32."""
    import timm
    import torchvision
    dev = ctx.dist.device
    cuda = dev.type == "cuda"
    n = dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
             torchvision=torchvision.__version__, cuda=torch.version.cuda if cuda else None,
             cudnn=torch.backends.cudnn.version() if cuda else None,
             nccl=nccl_version() if cuda else None,
             host=socket.gethostname(), cpu_count=os.cpu_count(), device=str(dev),
             tf32=bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None)
    if cuda:
        p = torch.cuda.get_device_properties(dev)
        n.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                 bf16=torch.cuda.is_bf16_supported())
    c = Check("environment", "PASS", f"torch {n['torch']}, timm {n['timm']}, " +
              (f"{n['gpu_count']}× {n['gpu']} ({n['gpu_memory_gib']} GiB), CUDA {n['cuda']}, NCCL {n['nccl']}, "
               f"bf16 {'yes' if n['bf16'] else 'no'}" if cuda else f"CPU only ({n['cpu_count']} cores)"), n)
    for problem in version_problems(n):
        c.worse("WARN", f"{problem}: install requirements.txt's versions (pip install -r requirements.txt)")
    if cuda and amp_dtype(ctx.cfg.amp, dev) == torch.bfloat16 and not n["bf16"]:
        c.worse("FAIL", f"--amp {ctx.cfg.amp} asks for bf16, which {n['gpu']} lacks: use --amp fp16")
    return c


def nccl_version() -> str | None:
    """NCCL's version as ``2.21.5`` (torch gives a tuple or, in older builds, one integer); None without NCCL."""
    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def version_problems(found: dict, requirements: str | os.PathLike | None = None) -> list[str]:
    """``name X (requirements.txt: Y)`` for each package pinned with ``==`` whose version differs."""
    path = Path(requirements or Path(__file__).resolve().parents[1] / "requirements.txt")
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        name, _, pinned = line.split("#")[0].strip().partition("==")
        have = found.get(name.strip())
        if pinned and have and have.split("+")[0] != pinned.strip():
            out.append(f"{name.strip()} {have} (requirements.txt: {pinned.strip()})")
    return out


# ---------------------------------------------------------------------- data
def run_splits(cfg: DataConfig) -> dict[str, str]:
    return {s: p for s, p in (("train", cfg.train_path), ("val", cfg.val_path), ("test", cfg.test_path)) if p}


def check_data(ctx: Context) -> Check:
    """CSVs readable with amanita's columns, their taxonomy against the mappings, sampled images per split."""
    cfg = ctx.cfg
    ctx.frames = {s: read_split(p) for s, p in run_splits(cfg).items()}
    csv_tax = build_taxonomy(list(ctx.frames.values()), count_frame=ctx.frames["train"])
    c = Check("data", numbers={"rows": {s: len(f) for s, f in ctx.frames.items()},
                               "taxonomy_sha256_csv": csv_tax.sha256()})
    if Path(cfg.mappings).is_file():
        ctx.taxonomy = Taxonomy.load(cfg.mappings)
        c.numbers["taxonomy_sha256_mappings"] = ctx.taxonomy.sha256()
        diff = taxonomy_difference(csv_tax, ctx.taxonomy)
        if diff:
            c.worse("FAIL", f"{cfg.mappings} does not match the CSVs: {diff}; rebuild it with "
                            "create_taxonomic_mappings.py from these CSVs")
        elif csv_tax.sha256() != ctx.taxonomy.sha256():
            c.worse("WARN", f"the CSVs hold {csv_tax.n_leaves} of the {ctx.taxonomy.n_leaves} leaves of "
                            f"{cfg.mappings} (same lineages; the heads follow the mappings)")
    else:
        ctx.taxonomy = csv_tax
        c.worse("WARN", f"{cfg.mappings} does not exist: the run builds it from the CSVs at start-up")
    deadline = ctx.budget.deadline(SHARES["data"])
    per_split = {}
    for split, frame in ctx.frames.items():
        per_split[split] = sample_images(ctx, split, frame, deadline)
    c.numbers["images"] = per_split
    judge_images(c, per_split, cfg.max_bad_image_fraction)
    return c


def taxonomy_difference(csv_tax: Taxonomy, mappings: Taxonomy) -> str | None:
    """None when every leaf of the CSVs has the same name and lineage in the mappings; else the first difference."""
    index = mappings.leaf_index()
    for i, cid in enumerate(csv_tax.category_ids):
        j = index.get(cid)
        name = csv_tax.scientific_names[i]
        if j is None:
            return f"category_id {cid} ({name}) is not in the mappings"
        if mappings.scientific_names[j] != name:
            return f"category_id {cid} is {name!r} in the CSVs, {mappings.scientific_names[j]!r} in the mappings"
        ours, theirs = csv_tax.lineage(i), mappings.lineage(j)
        for rank in RANKS:
            if ours[rank] != theirs[rank]:
                return f"category_id {cid} ({name}) has {rank} {ours[rank]!r} in the CSVs, {theirs[rank]!r} in the mappings"
    return None


def sample_images(ctx: Context, split: str, frame, deadline: float) -> dict:
    """Read and decode up to ``--sample-images`` rows of ``split`` (this rank's share): counts, MB/s, images/s."""
    cfg, dist = ctx.cfg, ctx.dist
    rng = np.random.default_rng(cfg.seed)
    rows = rng.permutation(len(frame))[: cfg.sample_images * dist.world_size][dist.rank::dist.world_size]
    ctx.samples[split] = frame.iloc[np.sort(rows)]
    paths = image_paths(ctx.samples[split], run_splits(cfg)[split], cfg.image_root, cfg.image_size_folder)
    n = dict(sampled=0, missing=0, unreadable=0, bytes=0, read_s=0.0, decode_s=0.0, example=None)
    for path in tqdm(paths, desc=f"preflight: {split} images", disable=not dist.is_main, leave=False):
        if n["sampled"] and time.monotonic() > deadline:
            break
        n["sampled"] += 1
        t0 = time.perf_counter()
        try:
            with open(path, "rb") as f:
                n["bytes"] += len(f.read())
            t1 = time.perf_counter()
            read_image(path)  # from the page cache now: the decode alone
            n["read_s"] += t1 - t0
            n["decode_s"] += time.perf_counter() - t1
        except FileNotFoundError:
            n["missing"] += 1
            n["example"] = n["example"] or f"{path} is missing"
        except IMAGE_ERRORS as e:
            n["unreadable"] += 1
            n["example"] = n["example"] or f"{path} cannot be read ({type(e).__name__})"
    good = n["sampled"] - n["missing"] - n["unreadable"]
    n["read_mb_per_s"] = round(n["bytes"] / 1e6 / n["read_s"], 1) if n["read_s"] else None
    n["read_images_per_s"] = round(good / n["read_s"], 1) if n["read_s"] else None
    n["decode_images_per_s"] = round(good / n["decode_s"], 1) if n["decode_s"] else None
    return n


def judge_images(c: Check, per_split: dict, max_fraction: float) -> None:
    """FAIL where a split's share of missing or unreadable sampled images passes ``--max-bad-image-fraction``."""
    for split, n in per_split.items():
        bad = n["missing"] + n["unreadable"]
        if n["sampled"] and bad / n["sampled"] > max_fraction:
            c.worse("FAIL", f"{split}: {bad} of {n['sampled']} sampled images missing or unreadable "
                            f"({100 * bad / n['sampled']:.0f}% > --max-bad-image-fraction {max_fraction:g}), e.g. "
                            f"{n['example']}: check --image-root and --image-size-folder")
    train = per_split.get("train", {})
    sampled = ", ".join(f"{s} {v['sampled']}" for s, v in per_split.items())
    summary = (f"sampled images: {sampled}; train storage {train.get('read_mb_per_s') or 0:.0f} MB/s "
               f"(page cache included), {train.get('read_images_per_s') or 0:.0f} images/s read, "
               f"{train.get('decode_images_per_s') or 0:.0f} decoded")
    c.why = f"{c.why}; {summary}" if c.why else f"CSVs and taxonomy match the mappings; {summary}"


# ---------------------------------------------------------------------- model
@contextlib.contextmanager
def hub_offline(offline: bool = True):
    """The hub offline for the block (``HF_HUB_OFFLINE=1``), as on a node without internet."""
    from huggingface_hub import constants
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = bool(offline or old)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


class StepProbe:
    """One training step (forward, backward, clip, optimizer step) on random images at a given batch.

    With ``$AMANITA_TEST_PREFLIGHT_OOM_ABOVE=N`` a batch above N raises ``torch.OutOfMemoryError``
    (tests: a batch that does not fit, without a GPU).
    """

    def __init__(self, model, criterion, optimizer, cfg: PreflightConfig, taxonomy: Taxonomy, input_size, device):
        self.model, self.criterion, self.optimizer, self.taxonomy = model, criterion, optimizer, taxonomy
        self.input_size, self.device, self.clip = tuple(input_size), device, cfg.clip_grad
        self.dtype = amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.channels_last = cfg.channels_last

    def __call__(self, batch: int) -> None:
        limit = os.environ.get(OOM_ENV)
        if limit and batch > int(limit):
            raise torch.OutOfMemoryError(f"simulated out of memory at batch {batch} (${OOM_ENV}={limit})")
        x = torch.randn(batch, *self.input_size, device=self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        leaf = torch.randint(self.taxonomy.n_leaves, (batch,))
        labels = torch.cat([leaf[:, None], torch.from_numpy(self.taxonomy.ancestors)[leaf]], 1).to(self.device)
        with autocast(self.device, self.dtype):
            loss = self.criterion(self.model(x), labels)["loss"]
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def free(self) -> None:
        """After an out-of-memory error: drop the gradients and the cached blocks."""
        import gc
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def largest_batch(step: Callable[[int], None], batch: int, on_oom: Callable[[], None] = lambda: None) -> int:
    """``batch`` when ``step(batch)`` fits, else the largest of batch/2, batch/4, … that does (0: none)."""
    while batch >= 1:
        try:
            step(batch)
            return batch
        except torch.OutOfMemoryError:
            on_oom()
            batch //= 2
    return 0


def build_probe(ctx: Context) -> StepProbe:
    """The run's model (offline unless ``--allow-download``), optimizer and criterion, as training builds them."""
    from amanita.training import build_model, make_criterion, make_optimizer
    cfg, dev = ctx.cfg, ctx.dist.device
    if ctx.taxonomy is None:
        raise UserError("not measured: no taxonomy (see the data check)")
    with hub_offline(not cfg.allow_download):
        model, spec = build_model(cfg, ctx.taxonomy)
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ctx.data_config = spec.data_config
    ctx.grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    optimizer = make_optimizer(model, cfg, dev)
    ctx.model, ctx.state = model, {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    train_model = torch.compile(model) if cfg.compile else model
    probe = StepProbe(train_model, make_criterion(cfg, ctx.taxonomy, dev), optimizer, cfg, ctx.taxonomy,
                      spec.data_config["input_size"], dev)
    return probe


def check_model(ctx: Context) -> Check:
    """Forward + backward + optimizer step at the configured batch, amp and compile: images/s, peak memory."""
    cfg, dev = ctx.cfg, ctx.dist.device
    probe = build_probe(ctx)
    fit = largest_batch(probe, cfg.batch_size, probe.free)  # its first step is the warm-up (and the compile)
    if not fit:
        return Check("model", "FAIL", f"even a batch of 1 does not fit on {dev} (out of memory): a smaller "
                                      "model or a larger device", {"largest_batch": 0})
    if dev.type == "cuda":  # the peak of the batch that fits, not of the tries that did not
        torch.cuda.reset_peak_memory_stats(dev)
    deadline, steps, t0 = ctx.budget.deadline(SHARES["model"]), 0, time.perf_counter()
    while steps < 1 or (steps < 5 and time.monotonic() < deadline):
        probe(fit)
        steps += 1
    ctx.step_s = (time.perf_counter() - t0) / steps
    ctx.images_per_s = fit / ctx.step_s
    ctx.state = {"model": ctx.model.state_dict(), "optimizer": probe.optimizer.state_dict()}  # with AdamW's moments
    n = dict(model=cfg.model, batch=cfg.batch_size, largest_batch=fit, steps_timed=steps,
             step_s=round(ctx.step_s, 4), images_per_s=round(fit / ctx.step_s, 1), amp=str(probe.dtype).removeprefix("torch.") if probe.dtype else "none",
             compile=bool(cfg.compile), grad_mb=round(ctx.grad_bytes / 1e6, 1), **peak_memory(dev))
    where = "GPU" if dev.type == "cuda" else "process"
    c = Check("model", "PASS", f"{fit / ctx.step_s:.0f} images/s per {where} at batch {fit} (amp {n['amp']}, "
                               f"compile {'on' if cfg.compile else 'off'}), peak {n['peak_memory_gib']} GiB "
                               f"{n['peak_memory_kind']}", n)
    if fit < cfg.batch_size:
        accum = cfg.accum_steps * cfg.batch_size // fit
        c.worse("FAIL", f"--batch-size {cfg.batch_size} does not fit on {dev} (out of memory); the largest batch "
                        f"that fits (halving) is {fit}: --batch-size {fit} --accum-steps {accum} keeps the "
                        "global batch")
    return c


def peak_memory(dev: torch.device) -> dict:
    """Peak device memory on CUDA; on the CPU the process's peak resident memory."""
    if dev.type == "cuda":
        return dict(peak_memory_gib=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
                    peak_memory_kind="allocated on the GPU")
    return dict(peak_memory_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                peak_memory_kind="resident (process)")


# ---------------------------------------------------------------------- loader
def check_loader(ctx: Context) -> Check:
    """The real train and eval transforms with ``--workers`` over the sampled images: images/s per worker."""
    from amanita.training import run_transforms
    cfg = ctx.cfg
    if ctx.data_config is None or "train" not in ctx.samples:
        raise UserError("not measured: the data or model check failed (see them)")
    train_tf, eval_tf = run_transforms(cfg, ctx.data_config)
    deadline = ctx.budget.deadline(SHARES["loader"])
    eval_split = "val" if "val" in ctx.samples else "train"
    rates = {kind: loader_rate(ctx, split, tf, deadline)
             for kind, split, tf in (("train", "train", train_tf), ("eval", eval_split, eval_tf))}
    workers = max(cfg.workers, 1)  # --workers 0: this process loads
    per_worker = rates["train"] / workers
    model_rate = ctx.images_per_s
    needed = math.ceil(model_rate / per_worker) if model_rate and per_worker else None
    procs = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    n = dict(workers=cfg.workers, train_images_per_s=round(rates["train"], 1), eval_images_per_s=round(rates["eval"], 1),
             train_images_per_s_per_worker=round(per_worker, 1), workers_needed=needed, cpu_count=os.cpu_count(),
             processes_on_node=procs)
    c = Check("loader", "PASS", f"{rates['train']:.0f} train images/s with --workers {cfg.workers} "
                                f"({per_worker:.0f} a worker), eval {rates['eval']:.0f}; "
                                f"{needed} worker(s) per {'GPU' if ctx.dist.device.type == 'cuda' else 'process'} keep up "
                                "with the model", n)
    if needed and needed > workers:
        c.worse("WARN", f"the loader bounds the run: --workers {cfg.workers} give {rates['train']:.0f} images/s, "
                        f"the model takes {model_rate:.0f}; use --workers {needed}")
    if cfg.workers * procs > (os.cpu_count() or 1):
        c.worse("WARN", f"--workers {cfg.workers} × {procs} processes is more than the node's {os.cpu_count()} cores")
    return c


def loader_rate(ctx: Context, split: str, transform, deadline: float) -> float:
    """Images/s of a loader over the sampled rows of ``split``; the first batch (workers starting) not counted."""
    cfg = ctx.cfg
    ds = FungiTasticDataset(run_splits(cfg)[split], ctx.taxonomy, transform, image_root=cfg.image_root,
                            image_size_folder=cfg.image_size_folder, input_size=ctx.data_config["input_size"],
                            metadata=ctx.samples[split], seed=cfg.seed)
    batch = max(1, len(ds) // (4 * max(cfg.workers, 1)))
    loader = make_loader(ds, batch, cfg.workers, ctx.dist.device, None, cfg.prefetch_factor, cfg.seed, False)
    t0, t_first, first, n = time.perf_counter(), None, 0, 0
    for images, _, _ in loader:
        if t_first is None:
            t_first, first = time.perf_counter(), len(images)
            continue
        n += len(images)
        if time.monotonic() > deadline:
            break
    if n == 0:  # one batch only: its time includes starting the workers
        return first / max(time.perf_counter() - t0, 1e-9)
    return n / max(time.perf_counter() - t_first, 1e-9)


# ---------------------------------------------------------------------- distributed
def check_distributed(ctx: Context) -> Check:
    """All ranks reach each other; an all-reduce of a gradient-sized buffer: time, bus bandwidth, share of a step."""
    dist = ctx.dist
    if not tdist.is_initialized():
        return Check("distributed", "PASS", "one process: no other rank to reach (under torchrun this times "
                                            "the gradient all-reduce)", {"world_size": 1})
    hosts = all_gather_objects(socket.gethostname())
    size = torch.tensor([ctx.grad_bytes], dtype=torch.int64, device=dist.device)
    tdist.all_reduce(size, op=tdist.ReduceOp.MAX)
    n = dict(world_size=dist.world_size, nodes=len(set(hosts)), backend=tdist.get_backend(),
             buffer_mb=round(int(size) / 1e6, 1))
    reached = f"{dist.world_size} ranks on {n['nodes']} node(s) reach each other ({n['backend']})"
    if not int(size):
        return Check("distributed", "WARN", f"{reached}; all-reduce not timed: no model (see the model check)", n)
    buf = torch.ones(int(size) // 4, dtype=torch.float32, device=dist.device)
    seconds = timed_all_reduce(buf, ctx.budget.deadline(SHARES["distributed"]))
    w = dist.world_size
    n.update(all_reduce_s=round(seconds, 4), bus_gb_per_s=round(2 * (w - 1) / w * int(size) / seconds / 1e9, 2))
    n["share_of_step"] = round(seconds / (seconds + ctx.step_s), 3) if ctx.step_s else None
    share = "" if n["share_of_step"] is None else f", {100 * n['share_of_step']:.0f}% of a step at batch {ctx.cfg.batch_size}"
    c = Check("distributed", "PASS", f"{reached}; all-reduce of {n['buffer_mb']:g} MB (the gradients): "
                                     f"{1000 * seconds:.0f} ms, bus {n['bus_gb_per_s']:g} GB/s{share} without overlap", n)
    if n["share_of_step"] and n["share_of_step"] > 0.5:
        c.worse("WARN", f"the gradient all-reduce takes {100 * n['share_of_step']:.0f}% of a step unless DDP hides it "
                        "under the backward: a larger --batch-size or --accum-steps lowers the share")
    return c


def timed_all_reduce(buf: torch.Tensor, deadline: float, most: int = 5) -> float:
    """Mean seconds of ``all_reduce(buf)`` after a warm-up; every rank runs the same number (rank 0's clock decides)."""
    def sync():
        if buf.is_cuda:
            torch.cuda.synchronize(buf.device)
    tdist.all_reduce(buf)
    sync()
    total, reps = 0.0, 0
    go = torch.ones(1, device=buf.device)
    while go.item():
        t0 = time.perf_counter()
        tdist.all_reduce(buf)
        sync()
        total, reps = total + time.perf_counter() - t0, reps + 1
        go.fill_(float(reps < most and time.monotonic() < deadline))
        tdist.broadcast(go, 0)
    return total / reps


# ---------------------------------------------------------------------- checkpoint folder
def check_checkpoint(ctx: Context) -> Check:
    """The checkpoint folder: writable, room for three checkpoints, one background save timed, shared by all ranks.

    Rank 0 writes a token there and every rank reads it back. Nothing is left behind: the token,
    the test checkpoint and any folder the check made are removed.
    """
    dist, folder = ctx.dist, Path(ctx.cfg.checkpoint_dir)
    c, token, created = Check("checkpoint", numbers={"folder": str(folder)}), None, []
    if dist.is_main:
        try:
            created = make_folder(folder)
            token = secrets.token_hex(8)
            atomic_write_text(folder / f".preflight-{token}.token", token)
        except (UserError, OSError) as e:
            token = None
            c.worse("FAIL", f"checkpoint folder {folder} is not writable ({one_line(e)}): choose a writable "
                            "--save-dir ($CHECKPOINT_ARTIFACT_PATH on ISC)")
    token = all_gather_objects(token)[0]
    seen = all_gather_objects((dist.rank, socket.gethostname(), token is not None and read_token(folder, token)))
    if dist.is_main and token:
        try:
            judge_sharing(c, seen, folder)
            time_save(c, ctx, folder, token)
        except (UserError, OSError, RuntimeError) as e:
            c.worse("FAIL", f"a test checkpoint in {folder} could not be written ({one_line(e)})")
        finally:
            remove_probe(folder, token, created)
    barrier()
    return c


def make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` (and missing parents); returns the folders made, or removes them on failure."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        remove_probe(folder, None, missing)
        raise
    return missing


def read_token(folder: Path, token: str) -> bool:
    try:
        return (folder / f".preflight-{token}.token").read_text() == token
    except OSError:
        return False


def remove_probe(folder: Path, token: str | None, created: list[Path]) -> None:
    """Delete the check's files and the folders it made (deepest first, only when empty)."""
    if token:
        for f in folder.glob(f".preflight-{token}.*"):
            f.unlink(missing_ok=True)
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()


def judge_sharing(c: Check, seen: list[tuple], folder: Path) -> None:
    """FAIL when some rank cannot read rank 0's files in the checkpoint folder (per-node storage)."""
    blind = [(rank, host) for rank, host, ok in seen if not ok]
    c.numbers.update(shared=not blind, ranks_reading=len(seen) - len(blind))
    if blind:
        hosts = sorted({h for _, h in blind})
        c.worse("FAIL", f"{folder} is not shared: rank(s) {', '.join(str(r) for r, _ in blind)} on {', '.join(hosts)} "
                        "cannot read rank 0's files there; only rank 0 writes checkpoints, so after a restart those "
                        "ranks find no last.pth and start afresh while rank 0 resumes: put --save-dir on storage "
                        "every node mounts")


def time_save(c: Check, ctx: Context, folder: Path, token: str) -> None:
    """Free space for three checkpoints, then one save through the run's background writer: blocked vs written."""
    state = ctx.state
    free = shutil.disk_usage(folder).free
    size = sum(t.numel() * t.element_size() for t in iter_tensors(state)) if state else 0
    c.numbers.update(free_gb=round(free / 1e9, 1), checkpoint_mb=round(size / 1e6, 3))
    if not state:
        c.worse("WARN", f"{folder} is writable ({c.numbers['free_gb']:g} GB free); no save timed: no model "
                        "(see the model check)")
        return
    if free < CHECKPOINTS_OF_SPACE * size:
        c.worse("FAIL", f"{folder} has {free / 1e9:.1f} GB free, {CHECKPOINTS_OF_SPACE} checkpoints of "
                        f"{size / 1e6:.0f} MB need {CHECKPOINTS_OF_SPACE * size / 1e9:.1f} GB: free space or "
                        "choose another --save-dir")
    writer = CheckpointWriter(background=True)
    writer.reserve(state)  # the run does this at start-up, outside the loop
    t0 = time.perf_counter()
    blocked = writer.save(state, folder / f".preflight-{token}.pth")
    writer.wait()
    written = time.perf_counter() - t0
    c.numbers.update(save_blocked_s=round(blocked, 3), save_written_s=round(written, 3),
                     write_mb_per_s=round(size / 1e6 / written, 1))
    sharing = "shared by all ranks" if c.numbers["ranks_reading"] > 1 else "one process"
    if c.status == "PASS":
        c.why = (f"{folder} writable ({sharing}), {c.numbers['free_gb']:g} GB free ≥ 3 checkpoints of "
                 f"{size / 1e6:.1f} MB; a background save held the loop {blocked:.2f} s and was "
                 f"written in {written:.2f} s ({c.numbers['write_mb_per_s']:g} MB/s)")


def iter_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_tensors(v)


# ---------------------------------------------------------------------- forecast
def rank_values(per_rank: list[list[dict]], check: str, key: str) -> list[float]:
    """``numbers[key]`` (a dotted path) of ``check`` on every rank that measured it."""
    out = []
    for checks in per_rank:
        value = next((c["numbers"] for c in checks if c["name"] == check), {})
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and value > 0:
            out.append(float(value))
    return out


def forecast_parts(per_rank: list[list[dict]], batch: int, accum: int) -> dict[str, float]:
    """Seconds per training image that each part of the run costs on the slowest rank."""
    parts = {}
    for part, check, key in ((COMPUTE, "model", "images_per_s"), ("loader", "loader", "train_images_per_s"),
                             ("storage", "data", "images.train.read_images_per_s")):
        values = rank_values(per_rank, check, key)
        if values:
            parts[part] = 1 / min(values)
    reduce_s = rank_values(per_rank, "distributed", "all_reduce_s")
    if reduce_s:
        parts["all-reduce"] = max(reduce_s) / (batch * accum)  # once per update
    return parts


def forecast(ctx: Context, per_rank: list[list[dict]]) -> Check:
    """An epoch's and the whole run's time from the measured rates, and the part that bounds it."""
    cfg = ctx.cfg
    fit = rank_values(per_rank, "model", "largest_batch")
    parts = forecast_parts(per_rank, int(min(fit)) if fit else cfg.batch_size, cfg.accum_steps)
    if "train" not in ctx.frames or COMPUTE not in parts or "loader" not in parts:
        return Check("forecast", "WARN", "no forecast: the data, model or loader check measured nothing")
    per_image = max(parts[COMPUTE] + parts.get("all-reduce", 0.0), parts["loader"], parts.get("storage", 0.0))
    images = math.ceil(len(ctx.frames["train"]) / ctx.dist.world_size)
    epoch_s = images * per_image
    bound = max(parts, key=parts.get)
    n = dict(epoch_s=round(epoch_s, 1), run_s=round(epoch_s * cfg.epochs, 1), bound=bound, epochs=cfg.epochs,
             train_images=len(ctx.frames["train"]), seconds_per_image={k: float(f"{v:.3g}") for k, v in parts.items()},
             note="a forecast from this preflight's own measurements; training only (no validation), "
                  "the all-reduce counted without overlap")
    return Check("forecast", "PASS", f"forecast: an epoch of {n['train_images']} images ≈ {duration(epoch_s)}, "
                                     f"{cfg.epochs} epochs ≈ {duration(n['run_s'])} (training only), bounded by {bound}", n)


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


LOCAL_CHECKS = (("environment", check_environment), ("data", check_data), ("model", check_model),
                ("loader", check_loader))  # no collectives inside: a failure on one rank cannot hang the others


def run(cfg: PreflightConfig) -> int:
    """preflight.py: every check under this process group; table and ``--output`` on rank 0; 1 when any FAILs."""
    from amanita.seeding import seed_everything
    from amanita.distributed import cleanup, init_distributed
    from amanita.training import resolve_config
    output = cfg.output or default_output()
    dist = init_distributed(cfg.device, timeout_minutes=max(2.0, cfg.max_seconds / 60))
    try:
        cfg = resolve_config(cfg, dist.world_size)  # the lr and folders the run would use
        seed_everything(cfg.seed + dist.rank)
        torch.backends.cuda.matmul.allow_tf32 = True  # as the run sets them
        torch.backends.cudnn.allow_tf32 = True
        report = preflight(cfg, dist)
        if dist.is_main:
            write_report(report, output)
            print(table(report) + f" ({output})", flush=True)
    finally:
        cleanup()
    return 1 if report["status"] == "FAIL" else 0
