"""The contract between the scripts and the package: the words every layer shares, and one frozen
config per script.

The bottom layer: this module imports nothing from ``amanita``. ``cli`` declares flags with the
choices and defaults defined here and turns the parsed flags into a config; the domain modules
import their vocabulary from here and take configs (or plain values), never an argparse namespace.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class UserError(Exception):
    """A problem with the user's input: scripts print its one-line message, not a traceback."""


# ------------------------------------------------------------------------------- the vocabulary
RANKS = ("phylum", "class", "order", "family", "genus", "species")
# ``leaf`` is the ``category_id`` head (one output per scientificName); ``species`` is only the
# accepted-name rank (synonymous leaves summed).
LEAF = "leaf"
COARSE_RANKS = RANKS[:-1]        # ranks with a head of their own besides the leaf head
KEYS = (LEAF,) + RANKS           # label columns and prediction keys, in this order
HEADS = COARSE_RANKS + (LEAF,)   # the multi-task model's heads (and its loss terms), in this order
DISPLAY_ORDER = RANKS + (LEAF,)  # tables: coarse to fine, then the leaf
METRIC_NAMES = tuple(f"{k}/{m}" for k in DISPLAY_ORDER for m in ("acc1", "f1"))

STOCK_MODEL = "hf-hub:BVRA/beit_base_patch16_224.in1k_ft_fungitastic_224"

DECODE_MODES = ("consistent", "independent")
DEFAULT_DECODE = "consistent"  # every script, validation during training and predict() alike
DECODE_HELP = ("consistent: the best real root-to-leaf lineage over all heads (every rank is the "
               "predicted leaf's ancestor); independent: argmax per rank")
AMP_MODES = ("auto", "bf16", "fp16", "none")
TTA_MODES = ("none", "flip")
COMBINE = ("mean-prob", "mean-logp")          # how an observation's images are combined
SCORES = ("msp", "entropy", "energy")         # unknown-species scores of the leaf head
WEIGHT_METHODS = ("inverse", "sqrt_inverse", "effective_number")  # class weights
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")  # linear layers that get LoRA adapters by default
DEFAULT_FOCUS = ("Amanita phalloides",)       # species analysed one by one in the report

PRIOR_FIELDS = ("habitat", "substrate", "month", "metaSubstrate", "landcover", "biogeographicalRegion",
                "countryCode")
DECISIONS = ("argmax", "min-cost", "min-severity")
DEFAULT_DECISION = "argmax"
DECISION_HELP = ("argmax: the decoding as it is; min-cost: the species of minimum expected FungiCLEF cost "
                 "(--poisonous-as-edible-cost, --edible-as-poisonous-cost, --mistake-cost); min-severity: the "
                 "leaf of minimum expected tree distance (Karthik et al., ICLR 2021)")

WANDB_HINT = "pip install wandb==0.31.0 (or pip install -r requirements-test.txt)"
TENSORBOARD_HINT = "pip install tensorboard==2.21.0 (or pip install -r requirements-test.txt)"


# ------------------------------------------------------------------------------- configs
# One frozen config per script (training, evaluation, identification, distillation, export), built
# once by ``cli`` from the parsed flags. A config has one field per flag, named as argparse names
# it (``--lr-base`` → ``lr_base``), and no defaults: the parser is the one place a flag's default is
# written. Flag groups that several scripts share are mixins (``TrackingConfig``), so a function
# that needs only one group takes that type and accepts every script's config. Values the scripts
# resolve from the flags (the lr from the global batch, folders) are further fields, computed once
# into a new frozen config (training: ``training.resolve_config``, once the processes are known),
# never written back into the flags.
@dataclass(frozen=True, kw_only=True)
class Config:
    """Base of the configs: frozen, plain values only (tuples, not lists)."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_flags(cls, flags: dict, **resolved):
        """The config of ``flags`` (``vars(namespace)``) plus the ``resolved`` values. A flag that
        has no field is a programming error (ValueError), so no flag is dropped on the way."""
        names = set(cls.field_names())
        extra = sorted(set(flags) - names)
        if extra:
            raise ValueError(f"{cls.__name__} has no field for {', '.join(extra)}")
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items()}
        return cls(**(given | resolved))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON/YAML values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True, kw_only=True)
class TrackingConfig(Config):
    """The ``Tracking parameters`` group (training scripts and validate.py): W&B and TensorBoard."""
    log_wandb: bool
    wandb_project: str | None
    wandb_name: str | None
    wandb_group: str | None
    wandb_run_id: str | None
    wandb_dir: str | None
    log_tensorboard: str | None


@dataclass(frozen=True, kw_only=True)
class InferenceConfig(Config):
    """``--decode``, ``--amp``, ``--device`` (cli.add_inference_args)."""
    decode: str
    amp: str
    device: str


# ---- training configs (train_*.py, distill.py, preflight.py, export.py)
# One mixin per flag group of the training parsers (``cli.build_train_parser``), so a function that
# needs one group takes that type. The values resolved from the flags (the lr for the global batch,
# the folders on a cluster, the evaluation batch) are fields marked by :func:`resolved`: None in the
# config the parser gives, filled once by ``training.resolve_config`` into a new frozen config.
def resolved():
    """A field computed from the flags (never given by the user, never written to ``args.yaml``)."""
    return dataclasses.field(default=None, metadata={"resolved": True})


@dataclass(frozen=True, kw_only=True)
class DataConfig(Config):
    """``Dataset parameters`` (both training scripts)."""
    train_path: str
    val_path: str
    test_path: str | None
    image_root: str | None
    image_size_folder: str
    mappings: str
    workers: int
    prefetch_factor: int
    max_bad_image_fraction: float


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Config):
    """``Model parameters``: which timm model, its start and its preprocessing overrides."""
    model: str
    model_args: str | None
    pretrained: str
    pretrained_file: str | None
    init_from: str | None
    crop_pct: float | None
    crop_mode: str | None
    interpolation: str | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    drop_path: float
    drop: float
    compile: bool
    channels_last: bool


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig(Config):
    """``Optimizer parameters`` and ``Schedule parameters``."""
    opt: str
    lr: float | None              # as given; the lr the run uses is ``TrainConfig.peak_lr``
    lr_base: float
    lr_base_size: int
    lr_base_scale: str
    momentum: float
    weight_decay: float
    layer_decay: float | None
    head_lr_scale: float
    clip_grad: float
    accum_steps: int
    epochs: int
    warmup_epochs: float
    warmup_lr: float
    min_lr: float


@dataclass(frozen=True, kw_only=True)
class AugmentConfig(Config):
    """``Loss and augmentation``: the flags both training scripts have."""
    label_smoothing: float
    auto_augment: str
    scale: tuple[float, float]
    color_jitter: float
    hflip: float
    vflip: float


@dataclass(frozen=True, kw_only=True)
class RunConfig(InferenceConfig):
    """``Run parameters``: batch, folders, saving, seed, EMA, early stopping; decoding and device (the
    :class:`InferenceConfig` group)."""
    batch_size: int
    save_dir: str                 # as given; checkpoints go to ``TrainConfig.checkpoint_dir``
    resume: str
    save_every_steps: int
    save_every_minutes: float
    eval_batch_size: int | None   # as given; evaluation uses ``TrainConfig.eval_batch``
    seed: int
    model_ema: bool
    model_ema_decay: float
    early_stopping_patience: int
    early_stopping_metric: str
    log_interval: int


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(Config):
    """``Parameter-efficient fine-tuning``: LoRA adapters or a frozen backbone."""
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: tuple[str, ...]
    lora_save: str
    freeze_backbone: bool


@dataclass(frozen=True, kw_only=True)
class MultitaskLossConfig(Config):
    """The flags only the multi-task scripts have: head weights, head mode, class weights."""
    rank_weights: tuple[float, ...]
    head_mode: str
    consistency_weight: float
    use_class_weights: bool
    class_weights: str | None
    class_weight_method: str


@dataclass(frozen=True, kw_only=True)
class TrainConfig(DataConfig, ModelConfig, OptimizerConfig, AugmentConfig, RunConfig, FinetuneConfig,
                  TrackingConfig):
    """train_minimal.py's flags (a single head over the leaves), and the values resolved from them."""
    world_size: int | None = resolved()       # processes of the run
    lr_scaling: dict | None = resolved()      # amanita.optim.resolve_lr: the peak lr, the global batch, why
    checkpoint_dir: str | None = resolved()   # --save-dir, or $CHECKPOINT_ARTIFACT_PATH on ISC
    log_dir: str | None = resolved()          # metrics.jsonl: $LOSSY_ARTIFACT_PATH on ISC, else checkpoint_dir
    eval_batch: int | None = resolved()       # --eval-batch-size, else 2 × --batch-size

    multitask = False  # the model: one head over the leaves (a class attribute, not a flag)

    @property
    def peak_lr(self) -> float:
        """The learning rate the optimizer uses (resolved from ``--lr`` or ``--lr-base``)."""
        if self.lr_scaling is None:
            raise ValueError("the config is not resolved: call training.resolve_config first")
        return self.lr_scaling["lr"]

    def flags(self) -> dict:
        """The user-given values (plain types), as ``args.yaml`` holds them for ``--config``."""
        given = {f.name for f in dataclasses.fields(self) if not f.metadata.get("resolved")}
        return {k: v for k, v in self.to_dict().items() if k in given}


@dataclass(frozen=True, kw_only=True)
class MultitaskTrainConfig(TrainConfig, MultitaskLossConfig):
    """train_multitask.py's flags: a head per rank."""
    multitask = True


@dataclass(frozen=True, kw_only=True)
class DistillConfig(MultitaskTrainConfig):
    """distill.py: train_multitask.py's flags and the teacher's."""
    teacher: str
    distill_alpha: float
    distill_temperature: float


@dataclass(frozen=True, kw_only=True)
class PreflightConfig(MultitaskTrainConfig):
    """preflight.py: the flags of the train_multitask.py run it checks, and its own."""
    sample_images: int
    output: str | None
    max_seconds: float
    allow_download: bool


@dataclass(frozen=True, kw_only=True)
class ExportConfig(Config):
    """export.py's flags."""
    checkpoint: str
    format: str
    dtype: str
    output_dir: str
    no_ema: bool
    opset: int
    check_csv: str | None
    image_root: str | None
    check_images: int
    atol: float | None


# ---- inference configs (validate.py, test.py)
@dataclass(frozen=True, kw_only=True)
class ReadoutConfig(Config):
    """``--tta``, ``--no-temperatures`` (cli.add_readout_args): how outputs become probabilities."""
    tta: str
    no_temperatures: bool

    def temperatures(self, info: dict) -> dict | None:
        """The temperatures stored in a checkpoint's ``info``, unless ``--no-temperatures``."""
        return None if self.no_temperatures else info.get("temperatures")


@dataclass(frozen=True, kw_only=True)
class PriorsConfig(Config):
    """``--priors``, ``--prior-fields``, ``--prior-weight`` (cli.add_priors_args)."""
    priors: str | None
    prior_fields: tuple[str, ...] | None
    prior_weight: float | None


@dataclass(frozen=True, kw_only=True)
class DecisionConfig(Config):
    """``--decision`` and the FungiCLEF cost flags (cli.add_decision_args)."""
    decision: str
    poisonous_as_edible_cost: float
    edible_as_poisonous_cost: float
    mistake_cost: float


@dataclass(frozen=True, kw_only=True)
class EvalConfig(TrackingConfig, InferenceConfig, ReadoutConfig, PriorsConfig, DecisionConfig):
    """validate.py's flags; the combinations argparse cannot express are checked when it is built."""
    checkpoint: str | None
    from_predictions: str | None
    calibrate: bool
    fit_prior_weight: bool
    baseline_checkpoint: str | None
    baseline_model: str | None
    baseline_predictions: str | None
    val_path: str | None
    image_root: str | None
    mappings: str | None
    aggregate: tuple[str, ...]
    combine: str
    open_set: bool
    unknown_score: str
    target_tpr: float
    store_threshold: bool
    focus_species: tuple[str, ...]
    output_dir: str
    training_log: str | None
    batch_size: int
    workers: int
    max_bad_image_fraction: float

    def __post_init__(self) -> None:
        for problem in self.problems():
            raise UserError(problem)

    def problems(self) -> list[str]:
        """Combinations of flags that argparse cannot express, as one-line messages."""
        model, preds = self.checkpoint is not None, self.from_predictions is not None
        rules = [
            (not model and not preds, "give --checkpoint (with --val-path) or --from-predictions"),
            (preds and self.mappings is None, "--from-predictions needs --mappings "
             "(the taxonomic_mappings.json the predictions were made with)"),
            (model and self.val_path is None, "--checkpoint needs --val-path (the validation CSV)"),
            (preds and bool(self.baseline_checkpoint or self.baseline_model),
             "with --from-predictions, give the baseline as --baseline-predictions"),
            (self.calibrate and (not model or self.no_temperatures),
             "--calibrate needs --checkpoint (the model to calibrate) and not --no-temperatures"),
            (not 0 < self.target_tpr <= 1, f"--target-tpr {self.target_tpr} is not a share in (0, 1]"),
            (preds and bool(self.priors or self.decision != "argmax"),
             "--priors and --decision need --checkpoint (a predictions file keeps no probabilities)"),
            (self.fit_prior_weight and (not self.priors or not model),
             "--fit-prior-weight needs --priors and --checkpoint (where the weight is stored)"),
            (self.store_threshold and (not model or not self.open_set),
             "--store-threshold needs --open-set and --checkpoint (where the threshold is written)"),
        ]
        return [message for broken, message in rules if broken]

    @property
    def tracked(self) -> bool:
        """Whether the report's numbers go to W&B or TensorBoard."""
        return bool(self.log_wandb or self.log_tensorboard)


@dataclass(frozen=True, kw_only=True)
class SubmissionConfig(Config):
    """test.py's ``Submission parameters`` (cli.add_submission_args)."""
    submission: str | None
    test_path: str | None
    image_root: str | None
    image_size_folder: str


@dataclass(frozen=True, kw_only=True)
class IdentifyConfig(InferenceConfig, ReadoutConfig, PriorsConfig, DecisionConfig, SubmissionConfig):
    """test.py's flags (``inputs``: the images and folders given; ``metadata``: the FIELD=VALUE items)."""
    inputs: tuple[str, ...]
    checkpoint: str
    mappings: str | None
    no_ema: bool
    metadata: tuple[str, ...] | None
    poison_warning: float
    top_k: int
    backoff: float
    json: bool
    observation: bool
    combine: str
    unknown_threshold: float | None
    unknown_score: str | None
    batch_size: int
    workers: int
