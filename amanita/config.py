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
@dataclass(frozen=True)
class Config:
    """Base of the scripts' configs: frozen, built once from the parsed flags, plain values only."""

    @classmethod
    def from_flags(cls, flags: dict, **resolved):
        """The config of ``flags`` (``vars(namespace)``; keys that are not fields are ignored);
        lists become tuples so that nothing in a config can change after it is built."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items() if k in names}
        return cls(**(given | resolved))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON/YAML values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
