"""The training recipe behind train_minimal.py and train_multitask.py, one short function a step."""
from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from amanita import checkpoint as ck
from amanita.cli import check_train_args
from amanita.data import (BadImageCounter, DeviceLoader, FungiTasticDataset, check_labels, check_unreadable,
                          create_transforms, make_loader,
                          read_split)
from amanita.distributed import (DistInfo, ResumableDistributedSampler, ShardSampler, barrier,
                                 cleanup, init_distributed)
from amanita.engine import StepConfig, TrainState, amp_dtype, finite_or_raise, predict, reduce_mean, \
    summarize, train_one_epoch, updates_per_epoch
from amanita.io import UserError, atomic_write_text, load_tensor_file
from amanita.losses import MultiTaskLoss, compute_class_weights
from amanita.model import (create_multitask_model, create_single_head_model, describe, init_from_stock,
                           parse_model_args, resolve_architecture, resolve_data_config)
from amanita.taxonomy import LEAF, RANKS, Taxonomy, build_taxonomy

KEYS = RANKS + (LEAF,)
RUN_FILES = ("last.pth", "best_model.pth", "metrics.jsonl", "args.json", "test_metrics.json")  # in --save-dir


def log(dist: DistInfo, *msg) -> None:
    if dist.is_main:
        print(*msg, flush=True)


# ---------------------------------------------------------------------- set-up
def apply_cluster_environment(args) -> None:
    """On Strong Compute ISC: checkpoints in $CHECKPOINT_ARTIFACT_PATH, small logs in $LOSSY_ARTIFACT_PATH."""
    if os.environ.get("CHECKPOINT_ARTIFACT_PATH"):
        args.save_dir = os.environ["CHECKPOINT_ARTIFACT_PATH"]
    args.log_dir = os.environ.get("LOSSY_ARTIFACT_PATH") or args.save_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_taxonomy(args, dist: DistInfo) -> Taxonomy:
    """The mappings file, or (when it does not exist) the taxonomy of the given CSVs, saved there."""
    if Path(args.mappings).is_file():
        return Taxonomy.load(args.mappings)
    frames = [read_split(p) for p in (args.train_path, args.val_path, args.test_path) if p]
    tax = build_taxonomy(frames, count_frame=frames[0])
    if dist.is_main:
        tax.save(args.mappings)
        print(f"built {args.mappings} from the CSVs: {tax.summary()}")
    return tax


def build_model(args, tax: Taxonomy, multitask: bool) -> tuple[nn.Module, dict, str, dict]:
    """The model to train, its data config, and the (architecture, kwargs) that rebuild it offline."""
    model_args = parse_model_args(args.model_args)
    pretrained = {"auto": None, "yes": True, "no": False}[args.pretrained]
    kw = dict(model_args=model_args, pretrained=pretrained, pretrained_file=args.pretrained_file,
              drop_path_rate=args.drop_path, drop_rate=args.drop)
    if args.init_from:
        model, cfg, arch, arch_kwargs = _model_from_checkpoint(args.init_from, tax, multitask, args)
        return model, override_data_config(cfg, args), arch, arch_kwargs
    if multitask:
        model = create_multitask_model(args.model, tax, **kw, head_mode=args.head_mode)
    else:
        model = create_single_head_model(args.model, tax, **kw)
    arch, arch_kwargs = resolve_architecture(args.model, model_args)
    base = model.backbone if multitask else model
    return model, override_data_config(resolve_data_config(base, args.model), args), arch, arch_kwargs


def override_data_config(cfg: dict, args) -> dict:
    """Apply ``--crop-pct``/``--crop-mode``/``--interpolation``/``--mean``/``--std`` when given."""
    for key in ("crop_pct", "crop_mode", "interpolation", "mean", "std"):
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = tuple(value) if isinstance(value, list) else value
    return cfg


def _model_from_checkpoint(path, tax: Taxonomy, multitask: bool, args) -> tuple[nn.Module, dict, str, dict]:
    """``--init-from``: a single-head checkpoint seeds the heads as the stock model would."""
    src = ck.load_checkpoint(path)
    kind = src.get("kind")
    if not multitask and kind == "multitask":
        raise UserError(f"--init-from {path} holds a multi-task model; train_minimal.py starts from a single-head one")
    # heads are taken by category_id: another taxonomy would silently rename the classes
    ck.check_compatible(src, tax, kind, path, getattr(args, "head_mode", "residual"))
    arch, arch_kwargs = src["architecture"], dict(src.get("model_kwargs", {}))
    stock, _, data_config = ck.build_from_checkpoint(src)
    kw = dict(model_args=arch_kwargs, pretrained=False, drop_path_rate=args.drop_path, drop_rate=args.drop)
    try:
        if not multitask:
            model = create_single_head_model(arch, tax, **kw)
            model.load_state_dict(stock.state_dict())
        elif kind == "multitask":
            model = create_multitask_model(arch, tax, **kw, head_mode=args.head_mode)
            model.load_state_dict(stock.state_dict())
        else:
            model = create_multitask_model(arch, tax, **kw, head_mode=args.head_mode)
            init_from_stock(model, stock, tax)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--init-from {path} does not fit this run: {str(e).strip().splitlines()[0][:200]}") from None
    return model, data_config, arch, arch_kwargs


def make_loaders(args, tax: Taxonomy, data_config: dict, dist: DistInfo):
    """The train loader (resumable shuffling sampler) and eval loaders (each sample on one rank).

    Each is built once for the run, with persistent workers; batches arrive on the device,
    normalised there (:class:`amanita.data.DeviceLoader`). Returns ``(train_loader, sampler, evals)``.
    """
    common = dict(image_root=args.image_root, image_size_folder=args.image_size_folder,
                  input_size=data_config["input_size"])
    aa = None if str(args.auto_augment).lower() in ("none", "") else args.auto_augment
    train_tf = create_transforms(data_config, True, args.hflip, args.vflip, tuple(args.scale), aa, args.color_jitter)
    eval_tf = create_transforms(data_config, False)
    train_ds = FungiTasticDataset(args.train_path, tax, train_tf, **common)
    check_labels(train_ds, args.max_bad_image_fraction, "train")
    train_ds.seed = args.seed
    sampler = ResumableDistributedSampler(len(train_ds), dist.world_size, dist.rank, True, args.seed)
    train_loader = _loader(train_ds, sampler, args, dist, data_config)
    evals = {}
    for split, path in (("val", args.val_path), ("test", args.test_path)):
        if path:  # used once per epoch or once per run: workers that come and go hold no memory between
            ds = FungiTasticDataset(path, tax, eval_tf, **common)
            check_labels(ds, args.max_bad_image_fraction, split)
            evals[split] = _loader(ds, ShardSampler(len(ds), dist.world_size, dist.rank), args, dist, data_config,
                                   persistent=False)
    return train_loader, sampler, evals


def _loader(ds, sampler, args, dist, data_config, persistent=True) -> DeviceLoader:
    loader = make_loader(ds, args.batch_size, args.workers, dist.device, sampler, args.prefetch_factor, args.seed,
                         persistent)
    return DeviceLoader(loader, dist.device, data_config, args.channels_last)


def make_criterion(args, tax: Taxonomy, multitask: bool, device) -> MultiTaskLoss:
    if not multitask:  # single head over category_id outputs
        leaf_index = torch.tensor(tax.category_ids)
        return MultiTaskLoss(tax, {"species": 1.0}, label_smoothing=args.label_smoothing,
                             leaf_index=leaf_index).to(device)
    weights = None
    if args.use_class_weights:
        weights = (load_tensor_file(args.class_weights, "a class_weights.pt from compute_class_weights.py")
                   if args.class_weights else compute_class_weights(tax, args.class_weight_method))
        for k in (*RANKS[:-1], LEAF):
            if not isinstance(weights, dict) or not isinstance(weights.get(k), torch.Tensor):
                raise UserError(f"{args.class_weights} has no {k} weights; make it with compute_class_weights.py")
            if len(weights[k]) != tax.num_classes(k):
                raise UserError(f"{args.class_weights}: {k} has {len(weights[k])} weights, the taxonomy "
                                f"{tax.num_classes(k)} classes; recompute them for these mappings")
    return MultiTaskLoss(tax, dict(zip(RANKS, args.rank_weights)), weights, args.label_smoothing,
                         args.consistency_weight).to(device)


def make_optimizer(model: nn.Module, args, device, multitask: bool):
    """timm optimizer over layer-decay groups; the heads get ``--head-lr-scale`` on top."""
    from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
    nwd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if args.layer_decay:
        groups = param_groups_layer_decay(model, args.weight_decay, nwd, layer_decay=args.layer_decay)
    else:
        groups = [dict(g, lr_scale=1.0) for g in param_groups_weight_decay(model, args.weight_decay, no_weight_decay_list=nwd)]
    heads = model.heads if multitask else model.get_classifier()
    head_ids = {id(p) for p in heads.parameters()}
    split = []
    for g in groups:
        body = [p for p in g["params"] if id(p) not in head_ids]
        head = [p for p in g["params"] if id(p) in head_ids]
        if body:
            split.append(dict(g, params=body))
        if head:
            split.append(dict(g, params=head, lr_scale=g["lr_scale"] * args.head_lr_scale, is_head=True))
    extra = {"momentum": args.momentum} if args.opt.lower() in ("sgd", "momentum") else {}
    if args.opt.lower() in ("adamw", "adam") and device.type == "cuda":
        extra["fused"] = True
    return create_optimizer_v2(split, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, **extra)


def group_table(model: nn.Module, optimizer) -> str:
    names = {id(p): n for n, p in model.named_parameters()}
    lines = [f"{'group':>5} {'lr scale':>9} {'wd':>6} {'params':>9}  first parameter"]
    for i, g in enumerate(optimizer.param_groups):
        n = sum(p.numel() for p in g["params"])
        lines.append(f"{i:>5} {g.get('lr_scale', 1.0):>9.4f} {g['weight_decay']:>6.2g} {n:>9}  "
                     f"{names.get(id(g['params'][0]), '?')}{'  (heads)' if g.get('is_head') else ''}")
    scales = sorted({round(g.get("lr_scale", 1.0), 8) for g in optimizer.param_groups if not g.get("is_head")})
    lines.append(f"{len(scales)} layer scales for the backbone, from {scales[0]:.4g} to {scales[-1]:.4g}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Saves ``last.pth`` / ``best_model.pth`` on rank 0 and restores every state on resume."""

    def __init__(self, args, dist, kind, tax, model, optimizer, scheduler, scaler, ema, state,
                 data_config, arch, arch_kwargs, sampler_batch_size):
        self.args, self.dist, self.kind, self.tax, self.state = args, dist, kind, tax, state
        self.model, self.optimizer, self.scheduler, self.scaler, self.ema = model, optimizer, scheduler, scaler, ema
        self.data_config, self.arch, self.arch_kwargs = data_config, arch, arch_kwargs
        self.sampler_batch_size = sampler_batch_size
        self.dir = Path(args.save_dir)

    def state_dict(self, best_metric, bad_epochs) -> dict:
        model = ck.unwrap(self.model)
        return {
            "model": model.state_dict(),
            "model_ema": ck.unwrap(self.ema.module).state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.state.epoch, "step": self.state.step,
            "sampler": {"epoch": self.state.epoch, "batch_in_epoch": self.state.batch_in_epoch,
                        "batch_size": self.sampler_batch_size, "world_size": self.dist.world_size},
            "rng": ck.capture_rng(), "args": _plain(vars(self.args)), "kind": self.kind,
            "architecture": self.arch, "model_kwargs": self.arch_kwargs,
            "head_sizes": self.tax.head_sizes() if self.kind == "multitask" else None,
            "head_mode": getattr(self.args, "head_mode", None),
            "taxonomy": self.tax.to_dict(), "taxonomy_sha256": self.tax.sha256(),
            "data_config": dict(self.data_config), "history": self.state.history,
            "best_metric": best_metric, "bad_epochs": bad_epochs,
            "val_f1": _last(self.state.history, "val/species/f1"), "val_acc": _last(self.state.history, "val/species/acc1"),
            "git_sha": ck.git_sha(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def save(self, name: str, best_metric=None, bad_epochs=0) -> None:
        if self.dist.is_main:
            ck.save_checkpoint(self.state_dict(best_metric, bad_epochs), self.dir / name)

    def resume_path(self) -> Path | None:
        r = self.args.resume
        if r in (None, "", "none"):
            return None
        if r == "auto":
            p = self.dir / "last.pth"
            return p if p.is_file() else None
        return Path(r)

    def restore(self, path: Path) -> tuple[float | None, int]:
        """Load every state from ``path``; returns (best metric so far, epochs without improvement)."""
        c = ck.load_checkpoint(path)
        ck.check_compatible(c, self.tax, self.kind, path, getattr(self.args, "head_mode", "residual"))
        self.check_same_run(c, path)
        try:
            ck.unwrap(self.model).load_state_dict(c["model"])
            if self.ema is not None and c.get("model_ema") is not None:
                ck.unwrap(self.ema.module).load_state_dict(c["model_ema"])
            self.optimizer.load_state_dict(c["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{path} does not fit this run ({str(e).strip().splitlines()[0][:160]}); resume with "
                            "the flags it was trained with or start a new --save-dir (or --resume none)") from None
        if self.scheduler is not None and c.get("scheduler"):
            self.scheduler.load_state_dict(c["scheduler"])
        if self.scaler is not None and c.get("scaler"):
            self.scaler.load_state_dict(c["scaler"])
        s = c["sampler"]
        self.state.epoch, self.state.step, self.state.history = c["epoch"], c["step"], list(c.get("history", []))
        same_layout = (s["batch_size"], s["world_size"]) == (self.sampler_batch_size, self.dist.world_size)
        self.state.batch_in_epoch = s["batch_in_epoch"] if same_layout else 0
        if not same_layout and s["batch_in_epoch"]:
            log(self.dist, f"warning: {path} was saved with batch {s['batch_size']} × {s['world_size']} processes; "
                           f"epoch {c['epoch'] + 1} restarts from its beginning")
        ck.restore_rng(c["rng"])  # rank 0's streams; the other ranks draw their own from seed + rank
        if self.dist.rank:
            seed_everything(self.args.seed + self.dist.rank + 7919 * c["step"])
        return c.get("best_metric"), c.get("bad_epochs", 0)


    def check_same_run(self, c: dict, path: Path) -> None:
        """Resuming needs the same architecture and optimizer layout; say which flag differs."""
        def canon(x):
            return json.dumps(x, sort_keys=True, default=str)
        have = (c.get("architecture"), canon(dict(c.get("model_kwargs") or {})))
        want = (self.arch, canon(dict(self.arch_kwargs or {})))
        if have != want:
            raise UserError(f"{path} holds a {have[0]} {have[1]} model, this run builds {want[0]} {want[1]}; "
                            "resume with its --model/--model-args or start a new --save-dir (or --resume none)")
        saved = c.get("args") or {}
        for flag in ("layer_decay", "opt"):
            if flag in saved and saved[flag] != getattr(self.args, flag):
                raise UserError(f"{path} was trained with --{flag.replace('_', '-')} {saved[flag]}, this run asks "
                                f"for {getattr(self.args, flag)}; resume with the same value or start a new "
                                "--save-dir (or --resume none)")


def clean_save_dir(args, dist: DistInfo) -> None:
    """Delete the temporary files a killed write of this run's files left (each up to a checkpoint's size)."""
    if dist.is_main:
        for f in ck.remove_stale_temporaries(args.save_dir, RUN_FILES):
            print(f"removed {f}, left by an interrupted write", flush=True)


def _plain(d: dict) -> dict:
    """Arguments as plain types, so ``torch.load(weights_only=True)`` reads them."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()
            if v is None or isinstance(v, (str, int, float, bool, list, tuple, dict))}


def _last(history: list, key: str):
    vals = [h[key] for h in history if key in h]
    return vals[-1] if vals else None


# ---------------------------------------------------------------------- reporting
def rank_table(train: dict, val: dict, split: str = "val") -> str:
    """Per key: train loss and the eval split's top-1 and F1 (the split names the columns)."""
    lines = [f"  {'rank':<8} {'train loss':>10} {split + ' top-1':>10} {split + ' F1':>8}"]
    for k in KEYS:
        loss = train.get(f"loss/{k}")
        acc, f1 = val.get(f"{k}/acc1"), val.get(f"{k}/f1")
        lines.append(f"  {k:<8} {'' if loss is None else f'{loss:10.4f}':>10} "
                     f"{'' if acc is None else f'{100 * acc:9.2f}%':>10} {'' if f1 is None else f'{100 * f1:7.2f}%':>8}")
    return "\n".join(lines)


def write_metrics(history: list, log_dir: str) -> None:
    atomic_write_text(Path(log_dir) / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))


# ---------------------------------------------------------------------- the run
def run(args, multitask: bool) -> int:
    """Train (or resume) and evaluate; returns the process exit code."""
    check_train_args(args)
    apply_cluster_environment(args)
    dist = init_distributed(args.device)
    try:
        return _run(args, multitask, dist)
    finally:
        cleanup()


def _run(args, multitask: bool, dist: DistInfo) -> int:
    seed_everything(args.seed + dist.rank)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = dist.device
    kind = "multitask" if multitask else "single"
    tax = load_taxonomy(args, dist)
    model, data_config, arch, arch_kwargs = build_model(args, tax, multitask)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader, sampler, evals = make_loaders(args, tax, data_config, dist)
    criterion = make_criterion(args, tax, multitask, device)
    optimizer = make_optimizer(model, args, device, multitask)
    accum = max(args.accum_steps, 1)
    n_updates = updates_per_epoch(-(-len(sampler) // args.batch_size), accum)
    from timm.scheduler import create_scheduler_v2
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=args.epochs, min_lr=args.min_lr,
                                       warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
                                       step_on_epochs=False, updates_per_epoch=n_updates)
    dtype = amp_dtype(args.amp, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    ema = None
    if args.model_ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=True)
    state = TrainState()
    saver = Checkpointer(args, dist, kind, tax, model, optimizer, scheduler, scaler, ema, state,
                         data_config, arch, arch_kwargs, args.batch_size)
    best, bad_epochs = None, 0
    clean_save_dir(args, dist)
    resume = saver.resume_path()
    if resume is not None:
        best, bad_epochs = saver.restore(resume)
        log(dist, f"resumed from {resume}: epoch {state.epoch + 1}, batch {state.batch_in_epoch}, update {state.step}")
    scheduler.step_update(num_updates=state.step)
    announce(args, dist, model, optimizer, tax, data_config, train_loader.dataset, n_updates)
    train_model = model
    if args.compile:
        train_model = torch.compile(model)
    if dist.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    if dist.is_main:
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.save_dir) / "args.json", json.dumps(_plain(vars(args)), indent=1))
    cfg = StepConfig(accum, args.clip_grad or None, dtype, args.log_interval, args.save_every_steps)
    bad = BadImageCounter(len(sampler), args.max_bad_image_fraction, f"train images on rank {dist.rank}")
    saver.model = train_model
    while state.epoch < args.epochs:
        stop, best, bad_epochs = _epoch(args, dist, train_model, model, train_loader, sampler, evals, criterion,
                                        optimizer, scheduler, scaler, ema, state, cfg, saver, bad, tax,
                                        best, bad_epochs, dtype)
        if stop:
            break
    if "test" in evals:
        test_best(args, dist, evals["test"], tax, dtype)
    log(dist, f"done: best val {args.early_stopping_metric} = {best if best is None else f'{best:.4f}'}; "
              f"checkpoints in {args.save_dir}")
    return 0


def _epoch(args, dist, train_model, model, loader, sampler, evals, criterion, optimizer, scheduler,
           scaler, ema, state, cfg, saver, bad, tax, best, bad_epochs, dtype):
    """Train the rest of one epoch, validate, save, log; returns (stop?, best, bad_epochs)."""
    sampler.set_epoch(state.epoch)  # before iterating: the sampler and the dataset's epoch are read then
    sampler.set_start(state.batch_in_epoch * args.batch_size)
    loader.dataset.set_epoch(state.epoch)
    save = (lambda: saver.save("last.pth", best, bad_epochs))
    t0 = time.perf_counter()
    train = train_one_epoch(train_model, loader, criterion, optimizer, scheduler, dist.device, state, cfg,
                            scaler, ema, save, dist.is_main, bad)
    train = reduce_mean(train, dist.device)
    finite_or_raise(train, state.epoch)
    eval_model = ema.module if ema is not None else model
    val = summarize(evaluate(args, dist, eval_model, evals["val"], tax, dtype, "val"), tax)
    record = {"epoch": state.epoch + 1, "step": state.step, "lr": optimizer.param_groups[-1]["lr"] / optimizer.param_groups[-1].get("lr_scale", 1.0),
              "epoch_time_s": time.perf_counter() - t0, "images_per_s": train.pop("images_per_s") * dist.world_size}
    record |= {f"train/{k.removeprefix('loss/')}/loss" if k.startswith("loss/") else "train/loss": v
               for k, v in train.items()}
    record |= {f"val/{k}": v for k, v in val.items()}
    log(dist, f"epoch {state.epoch + 1}/{args.epochs}: lr {record['lr']:.2e}, {record['images_per_s']:.0f} images/s, "
              f"{record['epoch_time_s']:.0f} s\n{rank_table(train, val)}")
    state.history.append(record)
    metric = val.get(args.early_stopping_metric)
    if metric is None:
        raise UserError(f"--early-stopping-metric {args.early_stopping_metric} is not one of {sorted(val)}")
    improved = best is None or metric > best
    best, bad_epochs = (metric, 0) if improved else (best, bad_epochs + 1)
    state.epoch += 1
    state.batch_in_epoch = 0
    if improved:
        saver.save("best_model.pth", best, bad_epochs)
    saver.save("last.pth", best, bad_epochs)
    if dist.is_main:
        write_metrics(state.history, args.log_dir)
    barrier()
    stop = bool(args.early_stopping_patience) and bad_epochs >= args.early_stopping_patience
    if stop:
        log(dist, f"early stopping: {args.early_stopping_metric} has not improved for {bad_epochs} epochs")
    return stop, best, bad_epochs


def evaluate(args, dist, model, loader, tax, dtype, split: str):
    """Predictions of one eval split; unreadable images past --max-bad-image-fraction stop the run."""
    preds = predict(model, loader, tax, dist.device, args.decode, dtype, dist.is_main)
    check_unreadable(len(loader.dataset), len(preds), args.max_bad_image_fraction, split)
    return preds


def test_best(args, dist, loader, tax, dtype) -> None:
    """Evaluate the test split with best_model.pth and record it in test_metrics.json."""
    path = Path(args.save_dir) / "best_model.pth"
    if not path.is_file():
        return
    best_model, _, _, info = ck.load_for_eval(path, dist.device)
    test = summarize(evaluate(args, dist, best_model, loader, tax, dtype, "test"), tax)
    log(dist, f"test split, best checkpoint (epoch {info['epoch']}):\n{rank_table({}, test, 'test')}")
    if dist.is_main:
        atomic_write_text(Path(args.save_dir) / "test_metrics.json",
                          json.dumps({"epoch": info["epoch"]} | {f"test/{k}": v for k, v in test.items()}, indent=1))


def announce(args, dist, model, optimizer, tax, data_config, train_ds, updates_per_epoch) -> None:
    """Start-up: git SHA, resolved arguments, model, data config, train transform, parameter groups."""
    if not dist.is_main:
        return
    print(f"amanita {ck.git_sha()} | {' '.join(sys.argv)}")
    print("arguments: " + json.dumps(_plain(vars(args)), sort_keys=True))
    print(f"taxonomy: {tax.summary()}")
    print(f"model: {describe(model)}")
    print(f"data config: {data_config}")
    print(f"train transform: {train_ds.transform}")
    print(f"{len(train_ds)} training images, {dist.world_size} process(es) on {dist.device}, "
          f"{updates_per_epoch} updates per epoch")
    print(group_table(model, optimizer))
