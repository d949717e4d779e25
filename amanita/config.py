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
# when the config is built, never written back into it.
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


# ---- inference configs (validate.py, test.py)
@dataclass(frozen=True, kw_only=True)
class InferenceConfig(Config):
    """``--decode``, ``--amp``, ``--device`` (cli.add_inference_args)."""
    decode: str
    amp: str
    device: str


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
