"""The training recipe behind train_minimal.py and train_multitask.py, one short function a step.

:func:`build_run` builds the :class:`~amanita.run.Run` once; :func:`train_epoch` trains, validates,
saves (``run.checkpointer.save``) and logs (:func:`log_record`, the one place an epoch's record goes).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from amanita import checkpoint as ck
from amanita.backbone import ModelSpec, parse_model_args, resolve_architecture, resolve_data_config
from amanita.checkpoint_writer import Checkpointer, remove_stale_temporaries
from amanita.data import (BadImageCounter, DeviceLoader, FungiTasticDataset, check_labels, check_unreadable,
                          create_transforms, make_loader, read_split)
from amanita.distill import load_teacher
from amanita.faults import dump_rank_state, fault_point
from amanita.config import AugmentConfig, DataConfig, DistillConfig, ModelConfig, TrainConfig
from amanita.tracking import create_tracker, epoch_scalars
from amanita.distributed import (DistInfo, ResumableDistributedSampler, ShardSampler, barrier,
                                 broadcast_from_main, cleanup, init_distributed, wrap_for_training)
from amanita.engine import amp_dtype, finite_or_raise, predict, reduce_mean, summarize, train_one_epoch, \
    updates_per_epoch
from amanita.heads import init_from_single_head
from amanita.io import UserError, atomic_write_text, check_not_inputs, git_sha, load_tensor_file
from amanita.lora import LoraSpec, adapt, freeze, frozen_digest, trainable_parameters
from amanita.losses import MultiTaskLoss, compute_class_weights
from amanita.model import create_multitask_model, create_single_head_model, describe
from amanita.optim import describe_lr, resolve_lr
from amanita.run import Run, StepConfig
from amanita.seeding import seed_everything
from amanita.taxonomy import DISPLAY_ORDER, HEADS, LEAF, Taxonomy, build_taxonomy

RUN_FILES = ("last.pth", "best_model.pth", "metrics.jsonl", "args.yaml", "test_metrics.json")  # in --save-dir


def log(dist: DistInfo, *msg) -> None:
    if dist.is_main:
        print(*msg, flush=True)


# ---------------------------------------------------------------------- set-up
def resolve_config(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """The config with its resolved values, computed once: the peak lr for the global batch
    (:func:`amanita.optim.resolve_lr`), the folders (on Strong Compute ISC: checkpoints in
    $CHECKPOINT_ARTIFACT_PATH, small logs in $LOSSY_ARTIFACT_PATH) and the evaluation batch."""
    checkpoint_dir = os.environ.get("CHECKPOINT_ARTIFACT_PATH") or cfg.save_dir
    lr_scaling = resolve_lr(cfg.lr, cfg.lr_base, cfg.lr_base_size, cfg.lr_base_scale, cfg.opt,
                            cfg.batch_size * max(cfg.accum_steps, 1) * world_size)
    return cfg.replace(world_size=world_size, lr_scaling=lr_scaling, checkpoint_dir=checkpoint_dir,
                       log_dir=os.environ.get("LOSSY_ARTIFACT_PATH") or checkpoint_dir,
                       eval_batch=cfg.eval_batch_size or 2 * cfg.batch_size)


def load_taxonomy(cfg: DataConfig, dist: DistInfo) -> Taxonomy:
    """The mappings file, or (when it does not exist) the taxonomy of the given CSVs, saved there."""
    if Path(cfg.mappings).is_file():
        return Taxonomy.load(cfg.mappings)
    frames = [read_split(p) for p in (cfg.train_path, cfg.val_path, cfg.test_path) if p]
    tax = build_taxonomy(frames, count_frame=frames[0])
    if dist.is_main:
        tax.save(cfg.mappings)
        print(f"built {cfg.mappings} from the CSVs: {tax.summary()}")
    return tax


def build_model(cfg: TrainConfig, tax: Taxonomy) -> tuple[nn.Module, ModelSpec]:
    """The model to train and the spec that rebuilds it offline (architecture, kwargs, data config)."""
    model_args = parse_model_args(cfg.model_args)
    pretrained = {"auto": None, "yes": True, "no": False}[cfg.pretrained]
    kw = dict(model_args=model_args, pretrained=pretrained, pretrained_file=cfg.pretrained_file,
              drop_path_rate=cfg.drop_path, drop_rate=cfg.drop)
    multitask = cfg.multitask
    kind, head_mode = ("multitask", cfg.head_mode) if multitask else ("single", None)
    if cfg.init_from:
        model, src = _model_from_checkpoint(cfg.init_from, tax, cfg)
        return model, ModelSpec(kind, src.architecture, src.kwargs, override_data_config(src.data_config, cfg),
                                head_mode)
    if multitask:
        model = create_multitask_model(cfg.model, tax, **kw, head_mode=cfg.head_mode)
    else:
        model = create_single_head_model(cfg.model, tax, **kw)
    arch, arch_kwargs = resolve_architecture(cfg.model, model_args)
    data_config = resolve_data_config(model.backbone, cfg.model)
    return model, ModelSpec(kind, arch, arch_kwargs, override_data_config(data_config, cfg), head_mode)


def restrict_training(model: nn.Module, spec: ModelSpec, cfg: TrainConfig) -> ModelSpec:
    """``--lora-rank``: LoRA adapters on the frozen backbone; ``--freeze-backbone``: the heads only.

    The heads (the classifier of a single-head model) always train. Returns the spec, with the
    adapters recorded so that evaluation rebuilds and merges them.
    """
    if not cfg.lora_rank and not cfg.freeze_backbone:
        return spec
    if cfg.lora_rank:
        lora = LoraSpec(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets))
        try:
            adapt(model, lora, spec.data_config["input_size"])
        except ValueError as e:
            raise UserError(f"--lora-targets: {e}") from None
        record = lora.plain()
        if cfg.lora_save == "adapters":  # checkpoints without the frozen weights
            record |= {"adapters_only": True, "base": str(Path(cfg.init_from).resolve()),
                       "base_sha256": frozen_digest(model)}
        spec = dataclasses.replace(spec, lora=record)
    else:
        freeze(model.backbone)
    for p in model.head_parameters():
        p.requires_grad_(True)
    return spec


def override_data_config(data_config: dict, cfg: ModelConfig) -> dict:
    """Apply ``--crop-pct``/``--crop-mode``/``--interpolation``/``--mean``/``--std`` when given."""
    given = dict(crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode, interpolation=cfg.interpolation, mean=cfg.mean,
                 std=cfg.std)
    return data_config | {k: v for k, v in given.items() if v is not None}


def _model_from_checkpoint(path, tax: Taxonomy, cfg: TrainConfig) -> tuple[nn.Module, ModelSpec]:
    """``--init-from``: a single-head checkpoint seeds the heads as the stock model would (it plays the stock model).

    Returns the model to train and the source checkpoint's spec (architecture, data config)."""
    multitask = cfg.multitask
    src = ck.load_checkpoint(path, for_model=True)
    spec = ck.model_spec(src)
    if not multitask and spec.kind == "multitask":
        raise UserError(f"--init-from {path} holds a multi-task model; train_minimal.py starts from a single-head one")
    # heads are taken by category_id: another taxonomy would silently rename the classes
    ck.check_compatible(src, tax, src.get("kind"), path, cfg.head_mode if multitask else "residual")
    source, _, _ = ck.build_from_checkpoint(src)
    arch = spec.architecture
    kw = dict(model_args=spec.kwargs, pretrained=False, drop_path_rate=cfg.drop_path, drop_rate=cfg.drop)
    try:
        if not multitask:
            model = create_single_head_model(arch, tax, **kw)
            model.load_state_dict(source.state_dict())
        elif spec.kind == "multitask":
            model = create_multitask_model(arch, tax, **kw, head_mode=cfg.head_mode)
            model.load_state_dict(source.state_dict())
        else:
            model = create_multitask_model(arch, tax, **kw, head_mode=cfg.head_mode)
            init_from_single_head(model, source, tax)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--init-from {path} does not fit this run: {str(e).strip().splitlines()[0][:200]}") from None
    return model, spec


def make_loaders(cfg: TrainConfig, tax: Taxonomy, data_config: dict, dist: DistInfo):
    """The train loader (resumable shuffling sampler) and eval loaders (each sample on one rank).

    Each is built once for the run, with persistent workers; batches arrive on the device,
    normalised there (:class:`amanita.data.DeviceLoader`). Returns ``(train_loader, sampler, evals)``.
    """
    common = dict(image_root=cfg.image_root, image_size_folder=cfg.image_size_folder,
                  input_size=data_config["input_size"])
    train_tf, eval_tf = run_transforms(cfg, data_config)
    train_ds = FungiTasticDataset(cfg.train_path, tax, train_tf, **common, seed=cfg.seed)
    check_labels(train_ds, cfg.max_bad_image_fraction, "train")
    sampler = ResumableDistributedSampler(len(train_ds), dist.world_size, dist.rank, True, cfg.seed)
    train_loader = _loader(train_ds, sampler, cfg, dist, data_config)
    evals = {}
    for split, path in (("val", cfg.val_path), ("test", cfg.test_path)):
        if path:  # used once per epoch or once per run: workers that come and go hold no memory between
            ds = FungiTasticDataset(path, tax, eval_tf, **common)
            check_labels(ds, cfg.max_bad_image_fraction, split)
            evals[split] = _loader(ds, ShardSampler(len(ds), dist.world_size, dist.rank), cfg, dist, data_config,
                                   persistent=False, batch_size=cfg.eval_batch)
    return train_loader, sampler, evals


def run_transforms(cfg: AugmentConfig, data_config: dict):
    """The run's train transform (its augmentation flags) and eval transform, for ``data_config``."""
    aa = None if str(cfg.auto_augment).lower() in ("none", "") else cfg.auto_augment
    return (create_transforms(data_config, True, cfg.hflip, cfg.vflip, tuple(cfg.scale), aa, cfg.color_jitter),
            create_transforms(data_config, False))


def _loader(ds, sampler, cfg: TrainConfig, dist, data_config, persistent=True, batch_size=None) -> DeviceLoader:
    loader = make_loader(ds, batch_size or cfg.batch_size, cfg.workers, dist.device, sampler, cfg.prefetch_factor,
                         cfg.seed, persistent)
    return DeviceLoader(loader, dist.device, data_config, cfg.channels_last)


def make_criterion(cfg: TrainConfig, tax: Taxonomy, device) -> MultiTaskLoss:
    if not cfg.multitask:  # the single head: the leaf alone
        return MultiTaskLoss(tax, {LEAF: 1.0}, label_smoothing=cfg.label_smoothing).to(device)
    weights = None
    if cfg.use_class_weights:
        weights = (load_tensor_file(cfg.class_weights, "a class_weights.pt from compute_class_weights.py")
                   if cfg.class_weights else compute_class_weights(tax, cfg.class_weight_method))
        for k in HEADS:
            if not isinstance(weights, dict) or not isinstance(weights.get(k), torch.Tensor):
                raise UserError(f"{cfg.class_weights} has no {k} weights; make it with compute_class_weights.py")
            if len(weights[k]) != tax.num_classes(k):
                raise UserError(f"{cfg.class_weights}: {k} has {len(weights[k])} weights, the taxonomy "
                                f"{tax.num_classes(k)} classes; recompute them for these mappings")
    return MultiTaskLoss(tax, dict(zip(HEADS, cfg.rank_weights)), weights, cfg.label_smoothing,
                         cfg.consistency_weight).to(device)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device):
    """timm optimizer over layer-decay groups; the heads get ``--head-lr-scale`` on top."""
    from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
    nwd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if cfg.layer_decay:
        groups = param_groups_layer_decay(model, cfg.weight_decay, nwd, layer_decay=cfg.layer_decay)
    else:
        groups = [dict(g, lr_scale=1.0) for g in param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=nwd)]
    head_ids = {id(p) for p in model.head_parameters()}
    split = []
    for g in groups:
        body = [p for p in g["params"] if id(p) not in head_ids]
        head = [p for p in g["params"] if id(p) in head_ids]
        if body:
            split.append(dict(g, params=body))
        if head:
            split.append(dict(g, params=head, lr_scale=g["lr_scale"] * cfg.head_lr_scale, is_head=True))
    extra = {"momentum": cfg.momentum} if cfg.opt.lower() in ("sgd", "momentum") else {}
    if cfg.opt.lower() in ("adamw", "adam") and device.type == "cuda":
        extra["fused"] = True
    return create_optimizer_v2(split, opt=cfg.opt, lr=cfg.peak_lr, weight_decay=cfg.weight_decay, **extra)


def group_table(model: nn.Module, optimizer) -> str:
    names = {id(p): n for n, p in model.named_parameters()}
    lines = [f"{'group':>5} {'lr scale':>9} {'wd':>6} {'params':>9}  first parameter"]
    for i, g in enumerate(optimizer.param_groups):
        n = sum(p.numel() for p in g["params"])
        lines.append(f"{i:>5} {g.get('lr_scale', 1.0):>9.4f} {g['weight_decay']:>6.2g} {n:>9}  "
                     f"{names.get(id(g['params'][0]), '?')}{'  (heads)' if g.get('is_head') else ''}")
    scales = sorted({round(g.get("lr_scale", 1.0), 8) for g in optimizer.param_groups if not g.get("is_head")})
    lines.append(f"{len(scales)} layer scales for the backbone, from {scales[0]:.4g} to {scales[-1]:.4g}" if scales
                 else "the backbone is frozen: only the heads train")
    return "\n".join(lines)


# ---------------------------------------------------------------------- reporting
def rank_table(train: dict, val: dict, split: str = "val") -> str:
    """Per key: train loss and the eval split's top-1 and F1 (the split names the columns)."""
    lines = [f"  {'rank':<8} {'train loss':>10} {split + ' top-1':>10} {split + ' F1':>8}"]
    for k in DISPLAY_ORDER:
        loss = train.get(f"loss/{k}")
        acc, f1 = val.get(f"{k}/acc1"), val.get(f"{k}/f1")
        lines.append(f"  {k:<8} {'' if loss is None else f'{loss:10.4f}':>10} "
                     f"{'' if acc is None else f'{100 * acc:9.2f}%':>10} {'' if f1 is None else f'{100 * f1:7.2f}%':>8}")
    return "\n".join(lines)


def write_metrics(history: list, log_dir: str) -> None:
    atomic_write_text(Path(log_dir) / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def log_record(run: Run, record: dict) -> None:
    """The one place an epoch's record goes: the history (saved in checkpoints) and metrics.jsonl."""
    run.state.history.append(record)
    if run.dist.is_main:
        write_metrics(run.state.history, run.cfg.log_dir)
    if run.tracker:
        run.tracker.log(epoch_scalars(record), record["step"])


# ---------------------------------------------------------------------- the run
def train(cfg: TrainConfig) -> int:
    """Train (or resume) and evaluate; returns the process exit code.

    ``cfg`` is the script's parsed config (``cli.parse_train_config``); its values for this run's
    layout are resolved once the processes are known (:func:`resolve_config`)."""
    dist = init_distributed(cfg.device)
    try:
        cfg = resolve_config(cfg, dist.world_size)
        check_run_outputs(cfg)
        return _run(cfg, dist)
    finally:
        cleanup()


def check_run_outputs(cfg: TrainConfig) -> None:
    """No file a run writes in ``--save-dir`` may be one of its inputs (a ``--teacher``, an ``--init-from``, a CSV)."""
    flags = cfg.flags()
    names = ("train_path", "val_path", "test_path", "mappings", "class_weights", "init_from", "teacher")
    inputs = {f"--{f.replace('_', '-')}": flags[f] for f in names if f in flags}
    for name in RUN_FILES:
        check_not_inputs({"--save-dir": Path(cfg.checkpoint_dir) / name}, inputs)


def write_run_flags(cfg: TrainConfig, folder) -> Path:
    """``folder/args.yaml``: the run's flags as given (not the resolved values), for ``--config`` to replay."""
    path = Path(folder) / "args.yaml"
    atomic_write_text(path, yaml.safe_dump(cfg.flags(), sort_keys=False))
    return path


def _run(cfg: TrainConfig, dist: DistInfo) -> int:
    run = build_run(cfg, dist)
    clean_save_dir(cfg, dist)
    resume = run.checkpointer.resume_path()
    if resume is not None:
        run.checkpointer.restore(run, resume)
        log(dist, f"resumed from {resume}: epoch {run.state.epoch + 1}, batch {run.state.batch_in_epoch}, "
                  f"update {run.state.step}")
    run.scheduler.step_update(num_updates=run.state.step)
    announce(run)
    if dist.is_main:
        Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        write_run_flags(cfg, cfg.checkpoint_dir)
    run.tracker = create_tracker(cfg, dist.is_main, tracking_config(run), run.tracking, run.state.step)
    run.checkpointer.start(run)
    try:
        train_and_test(run)
    except BaseException:
        run.checkpointer.close(raise_error=False)  # the last write still lands; its own failure was printed
        raise
    finally:
        run.tracker.close()
    run.checkpointer.close()  # the process ends only once the last checkpoint is on disk
    dump_rank_state(run.model, dist.rank)  # tests only (AMANITA_DUMP_RANK_STATE)
    best = run.state.best_metric
    log(dist, f"done: best val {cfg.early_stopping_metric} = {best if best is None else f'{best:.4f}'}; "
              f"checkpoints in {cfg.checkpoint_dir}")
    return 0


def tracking_config(run: Run) -> dict:
    """The tracked run's config: the arguments, taxonomy hash, git SHA, model and data config."""
    return {"args": run.cfg.to_dict(), "taxonomy_sha256": run.taxonomy.sha256(), "git_sha": git_sha(),
            "architecture": run.spec.architecture, "data_config": dict(run.spec.data_config),
            "world_size": run.dist.world_size}


def train_and_test(run: Run) -> None:
    """The epochs that remain, then the test split with the best checkpoint."""
    while run.state.epoch < run.cfg.epochs:
        if train_epoch(run):
            break
    if "test" in run.evals:
        run.checkpointer.wait()  # rank 0's background write of best_model.pth has landed ...
        barrier()  # ... before any rank looks for it
        test_best(run)


def build_run(cfg: TrainConfig, dist: DistInfo) -> Run:
    """Everything the run needs, built once from the resolved config, in an order that seeds reproducibly."""
    seed_everything(cfg.seed + dist.rank)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    tax = load_taxonomy(cfg, dist)
    model, spec = build_model(cfg, tax)
    spec = restrict_training(model, spec, cfg)
    teacher = load_teacher(cfg, tax, dist.device) if isinstance(cfg, DistillConfig) else None
    if teacher is not None:  # one batch feeds the student and the teacher
        spec = dataclasses.replace(spec, data_config=teacher.data_config)
    model.to(dist.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader, sampler, evals = make_loaders(cfg, tax, spec.data_config, dist)
    criterion = make_criterion(cfg, tax, dist.device)
    if teacher is not None:
        criterion = teacher.criterion(criterion, tax, cfg).to(dist.device)
        log(dist, teacher.description)
    optimizer = make_optimizer(model, cfg, dist.device)
    n_updates = updates_per_epoch(-(-len(sampler) // cfg.batch_size), max(cfg.accum_steps, 1))
    from timm.scheduler import create_scheduler_v2
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=cfg.epochs, min_lr=cfg.min_lr,
                                       warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
                                       step_on_epochs=False, updates_per_epoch=n_updates)
    dtype = amp_dtype(cfg.amp, dist.device)
    train_model = wrap_for_training(model if teacher is None else teacher.wrap(model), dist, cfg.compile)
    ema = None
    if cfg.model_ema:  # after DDP's broadcast, so every rank averages rank 0's starting weights
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=True)
    return Run(model=model, optimizer=optimizer, criterion=criterion, dist=dist,
               step_config=StepConfig(max(cfg.accum_steps, 1), cfg.clip_grad or None, dtype, cfg.log_interval),
               train_model=train_model, scheduler=scheduler,
               scaler=torch.amp.GradScaler(dist.device.type) if dtype == torch.float16 else None, ema=ema,
               bad_images=BadImageCounter(len(sampler), cfg.max_bad_image_fraction,
                                          f"train images on rank {dist.rank}"),
               checkpointer=Checkpointer(cfg.checkpoint_dir, cfg.resume, cfg.save_every_steps, cfg.save_every_minutes),
               cfg=cfg, taxonomy=tax, spec=spec, train_loader=train_loader, sampler=sampler, evals=evals,
               updates_per_epoch=n_updates)


def train_epoch(run: Run) -> bool:
    """Train the rest of one epoch, validate, log, save; True when early stopping says stop."""
    cfg, state, dist = run.cfg, run.state, run.dist
    t0 = time.perf_counter() - state.epoch_seconds  # a resumed epoch: its training time before the kill counts
    train = reduce_mean(train_one_epoch(run, epoch_loader(run)), dist.device)
    finite_or_raise(train, state.epoch)
    val = summarize(evaluate_split(run, run.eval_model, "val"), run.taxonomy)
    record = epoch_record(run, train, val, time.perf_counter() - t0)
    log(dist, f"epoch {state.epoch + 1}/{cfg.epochs}: lr {record['lr']:.2e}, {record['images_per_s']:.0f} images/s, "
              f"{record['epoch_time_s']:.0f} s\n{rank_table(train, val)}")
    improved = update_best(run, val)
    state.epoch += 1
    state.batch_in_epoch = 0
    state.epoch_sums, state.epoch_batches, state.epoch_images, state.epoch_seconds = {}, 0, 0, 0.0
    log_record(run, record)
    run.checkpointer.save(run, "last.pth", also=("best_model.pth",) if improved else ())
    barrier()
    stop = bool(cfg.early_stopping_patience) and state.bad_epochs >= cfg.early_stopping_patience
    if stop:
        log(dist, f"early stopping: {cfg.early_stopping_metric} has not improved for {state.bad_epochs} epochs")
    return stop


def epoch_loader(run: Run) -> DeviceLoader:
    """The training loader set to this epoch, starting where the epoch stands (after a resume, mid-epoch).

    Set before iterating: the sampler and the dataset's epoch are read then."""
    state = run.state
    run.sampler.set_epoch(state.epoch)
    run.sampler.set_start(state.batch_in_epoch * run.cfg.batch_size)
    run.train_loader.dataset.set_epoch(state.epoch)
    return run.train_loader


def epoch_record(run: Run, train: dict, val: dict, seconds: float) -> dict:
    """One line of metrics.jsonl: epoch, update, lr, speed, train losses and val metrics."""
    group = run.optimizer.param_groups[-1]
    record = {"epoch": run.state.epoch + 1, "step": run.state.step, "lr": group["lr"] / group.get("lr_scale", 1.0),
              "epoch_time_s": seconds, "images_per_s": train.pop("images_per_s") * run.dist.world_size}
    record |= {f"train/{k.removeprefix('loss/')}/loss" if k.startswith("loss/") else "train/loss": v
               for k, v in train.items()}
    return record | {f"val/{k}": v for k, v in val.items()}


def update_best(run: Run, val: dict) -> bool:
    """Track ``--early-stopping-metric``; True when this epoch is the best so far."""
    name, state = run.cfg.early_stopping_metric, run.state
    metric = val.get(name)
    if metric is None:
        raise UserError(f"--early-stopping-metric {name} is not one of {sorted(val)}")
    improved = state.best_metric is None or metric > state.best_metric
    if improved:
        state.best_metric, state.bad_epochs = metric, 0
    else:
        state.bad_epochs += 1
    return improved


def test_best(run: Run) -> None:
    """Evaluate the test split with best_model.pth and record it in test_metrics.json."""
    cfg, dist, tax = run.cfg, run.dist, run.taxonomy
    path = Path(cfg.checkpoint_dir) / "best_model.pth"
    if not broadcast_from_main(path.is_file()):  # rank 0 wrote it: every rank follows its answer
        return
    best_model, _, _, info = ck.load_on_every_rank(lambda p: ck.load_for_eval(p, dist.device), path, dist.rank)
    test = summarize(evaluate_split(run, best_model, "test"), tax)
    log(dist, f"test split, best checkpoint (epoch {info['epoch']}):\n{rank_table({}, test, 'test')}")
    if dist.is_main:
        atomic_write_text(Path(cfg.checkpoint_dir) / "test_metrics.json",
                          json.dumps({"epoch": info["epoch"]} | {f"test/{k}": v for k, v in test.items()}, indent=1))


def evaluate_split(run: Run, model: nn.Module, split: str):
    """Predictions of one eval split; unreadable images past --max-bad-image-fraction stop the run."""
    loader = run.evals[split]
    if split == "val":
        fault_point("validation", run.state.epoch + 1, settle=run.checkpointer.wait)
    preds = predict(model, loader, run.taxonomy, run.dist.device, run.cfg.decode, run.step_config.amp)
    check_unreadable(len(loader.dataset), len(preds), run.cfg.max_bad_image_fraction, split)
    return preds


def clean_save_dir(cfg: TrainConfig, dist: DistInfo) -> None:
    """Delete the temporary files a killed write of this run's files left (each up to a checkpoint's size)."""
    if dist.is_main:
        for f in remove_stale_temporaries(cfg.checkpoint_dir, RUN_FILES):
            print(f"removed {f}, left by an interrupted write", flush=True)


def announce(run: Run) -> None:
    """Start-up: git SHA, resolved arguments, model, data config, train transform, parameter groups."""
    if not run.dist.is_main:
        return
    n_batches = -(-len(run.sampler) // run.cfg.batch_size)
    print(f"amanita {git_sha() or 'unknown'} | {' '.join(sys.argv)}")
    print("arguments: " + json.dumps(run.cfg.to_dict(), sort_keys=True))
    print(f"taxonomy: {run.taxonomy.summary()}")
    print(f"model: {describe(run.model)}; {trainable_parameters(run.model) / 1e6:.3f} M trainable"
          + (f" (LoRA rank {run.spec.lora['rank']} on {', '.join(run.spec.lora['targets'])})" if run.spec.lora else ""))
    print(f"data config: {run.spec.data_config}")
    print(f"train transform: {run.train_loader.dataset.transform}")
    print(f"{len(run.train_loader.dataset)} training images, {run.dist.world_size} process(es) on {run.dist.device}, "
          f"{updates_per_epoch(n_batches, run.step_config.accum_steps)} updates per epoch")
    print(f"{describe_lr(run.cfg.lr_scaling)}; evaluation batch {run.cfg.eval_batch} per process")
    print(group_table(run.model, run.optimizer))
