"""Test helpers: hand-written FungiTastic-format rows for worked examples, tiny image sets, scripts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from amanita.backbone import STOCK_MODEL

ROOT = Path(__file__).resolve().parents[1]


def script_env(**extra) -> dict:
    """The environment of a subprocess: this one, the package importable without installing it."""
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def run_script(script: str, *args, env=None, check=True, timeout=600, cwd=None):
    """Run a top-level script with the test interpreter; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True,
                          text=True, env=script_env(**(env or {})), timeout=timeout, cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc

def run_in_process(script: str, *args, check=True):
    """:func:`run_script` without a new interpreter: the script's ``__main__`` block run by ``runpy``
    in this process with ``args`` as its command line; its stdout, stderr and exit code come back
    as a CompletedProcess. For end-to-end tests whose subject is not the process itself (a kill, a
    signal, torchrun, the environment): each call saves the 5 s of imports a new process pays."""
    import contextlib
    import io
    import runpy
    from unittest import mock
    out, err, code = io.StringIO(), io.StringIO(), 0
    with mock.patch.object(sys, "argv", [str(ROOT / script), *map(str, args)]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    proc = subprocess.CompletedProcess([script, *map(str, args)], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


LINEAGES = {  # category_id: (scientificName, phylum, class, order, family, genus, species, poisonous)
    0: ("Amanita phalloides", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "Amanita phalloides", 1),
    1: ("Amanita muscaria", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae", "Amanita", "Amanita muscaria", 1),
    2: ("Agaricus campestris", "Basidiomycota", "Agaricomycetes", "Agaricales", "Agaricaceae", "Agaricus", "Agaricus campestris", 0),
    3: ("Merulius tremellosus", "Basidiomycota", "Agaricomycetes", "Polyporales", "Meruliaceae", "Phlebia", "Phlebia tremellosa", 0),
    4: ("Phlebia tremellosa", "Basidiomycota", "Agaricomycetes", "Polyporales", "Meruliaceae", "Phlebia", "Phlebia tremellosa", 0),
    5: ("Morchella esculenta", "Ascomycota", "Pezizomycetes", "Pezizales", "Morchellaceae", "Morchella", "Morchella esculenta", 0),
}
COLUMNS = ["scientificName", "phylum", "class", "order", "family", "genus", "species", "poisonous"]


def rows(category_ids, start_obs=100, images_per_obs=1):
    """A metadata frame with one row per entry of ``category_ids`` (may repeat)."""
    out = []
    for k, cid in enumerate(category_ids):
        rec = dict(zip(COLUMNS, LINEAGES[cid]))
        obs = start_obs + k // images_per_obs
        rec.update(category_id=cid, observationID=obs, filename=f"{k}-{obs}.JPG", kingdom="Fungi")
        out.append(rec)
    return pd.DataFrame(out)


TRAIN_IDS = [0, 0, 1, 2, 2, 2, 3, 4, 5, 5]
EXPECTED_CLASSES = {
    "phylum": ["Ascomycota", "Basidiomycota"],
    "class": ["Pezizomycetes", "Agaricomycetes"],
    "order": ["Pezizales", "Agaricales", "Polyporales"],
    "family": ["Morchellaceae", "Agaricaceae", "Amanitaceae", "Meruliaceae"],
    "genus": ["Morchella", "Agaricus", "Amanita", "Phlebia"],
    "species": ["Morchella esculenta", "Agaricus campestris", "Amanita muscaria", "Amanita phalloides",
                "Phlebia tremellosa"],
}
EXPECTED_ANCESTORS = np.array([
    [1, 1, 1, 2, 2, 3],  # Amanita phalloides
    [1, 1, 1, 2, 2, 2],  # Amanita muscaria
    [1, 1, 1, 1, 1, 1],  # Agaricus campestris
    [1, 1, 2, 3, 3, 4],  # Merulius tremellosus -> Phlebia tremellosa
    [1, 1, 2, 3, 3, 4],  # Phlebia tremellosa
    [0, 0, 0, 0, 0, 0],  # Morchella esculenta
])


COLOURS = {0: (200, 30, 30), 1: (220, 120, 30), 2: (30, 30, 200), 3: (200, 200, 30), 4: (210, 190, 60),
           5: (30, 200, 200)}
SMALL_MODEL = ["--model", "beit_base_patch16_224", "--model-args",
               '{"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}']


def make_image_dataset(root, n_train=48, n_val=21, seed=0):
    """A tiny FungiTastic-layout dataset: noisy colour squares, one colour per leaf."""
    from pathlib import Path

    from PIL import Image
    root = Path(root)
    rng = np.random.default_rng(seed)
    meta = root / "metadata" / "FungiTastic"
    meta.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, name, n, start in (("train", "FungiTastic-Train.csv", n_train, 0),
                                  ("val", "FungiTastic-ClosedSet-Val.csv", n_val, 5000)):
        ids = [k % 6 for k in range(n)]
        df = rows(ids, start_obs=start)
        df.to_csv(meta / name, index=False)
        folder = root / "FungiTastic" / split / "300p"
        folder.mkdir(parents=True, exist_ok=True)
        for f, c in zip(df.filename, ids):
            noise = rng.normal(0, 30, (24, 24, 3))
            Image.fromarray(np.clip(np.array(COLOURS[c]) + noise, 0, 255).astype(np.uint8)).save(folder / f)
        paths[split] = meta / name
    return paths


TINY_BEIT = ("beit_base_patch16_224", {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8})


class LeafModel(torch.nn.Sequential):
    """A toy single-head model for step-level tests: ``nn.Sequential`` that answers ``{"leaf": logits}``
    like every model the package builds (its state_dict keys are the ``nn.Sequential``'s)."""

    def forward(self, x):
        return {"leaf": super().forward(x)}


def image_dataset_and_taxonomy(root, n_train=48, n_val=21, mappings=None):
    """:func:`make_image_dataset` and the taxonomy of its train and val splits (saved to ``mappings`` if given)."""
    from amanita.data import read_split
    from amanita.taxonomy import build_taxonomy
    data = make_image_dataset(root, n_train=n_train, n_val=n_val)
    tax = build_taxonomy([read_split(data["train"]), read_split(data["val"])])
    if mappings is not None:
        tax.save(mappings)
    return data, tax


def tiny_checkpoint(path, taxonomy, arch=TINY_BEIT[0], model_args=TINY_BEIT[1], seed=0, **extra):
    """Write a multi-task amanita checkpoint of an untrained tiny model in-process (no training run)."""
    import torch

    from amanita.checkpoint import save_checkpoint
    from amanita.backbone import resolve_data_config
    from amanita.model import create_multitask_model
    torch.manual_seed(seed)
    model = create_multitask_model(arch, taxonomy, model_args=dict(model_args), pretrained=False)
    for head in model.heads.values():  # non-zero coarse heads, so every output depends on its own weights
        torch.nn.init.normal_(head.weight, std=0.5)
    cfg = resolve_data_config(model.backbone, arch)
    save_checkpoint(dict(model=model.state_dict(), kind="multitask", architecture=arch, model_kwargs=dict(model_args),
                         head_mode="residual", head_sizes=taxonomy.head_sizes(), taxonomy=taxonomy.to_dict(),
                         taxonomy_sha256=taxonomy.sha256(), data_config=cfg, **({"epoch": 1, "step": 1} | extra)), path)
    return model.eval(), cfg


def tiny_single_head_checkpoint(path, taxonomy, arch=TINY_BEIT[0], model_args=TINY_BEIT[1], seed=0):
    """Write a single-head checkpoint as train_minimal.py always has: a bare timm classifier's state_dict
    (one output per category_id 0..max, keys without prefix) and ``kind="single"``. Returns that timm model."""
    import timm

    from amanita.backbone import resolve_data_config
    from amanita.checkpoint import save_checkpoint
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=max(taxonomy.category_ids) + 1, **model_args)
    torch.nn.init.normal_(model.head.weight, std=0.5)  # logits far from uniform
    cfg = resolve_data_config(model, arch)
    save_checkpoint(dict(model=model.state_dict(), kind="single", architecture=arch, model_kwargs=dict(model_args),
                         head_mode=None, head_sizes=None, taxonomy=taxonomy.to_dict(),
                         taxonomy_sha256=taxonomy.sha256(), data_config=cfg, epoch=1, step=1), path)
    return model.eval(), cfg


# ---------------------------------------------------------------------- an offline hub cache
def hub_cache_folder(cache_dir: str | os.PathLike, model_id: str = STOCK_MODEL) -> Path:
    """The Hugging Face hub-cache folder of a model id (``models--org--name``)."""
    repo = model_id.removeprefix("hf-hub:")
    return Path(cache_dir) / ("models--" + repo.replace("/", "--"))


def write_hub_cache_model(cache_dir: str | os.PathLike, model, config: dict,
                          model_id: str = STOCK_MODEL, revision: str = "0" * 40) -> Path:
    """Write ``model`` into a hub-cache folder as timm would find it offline (tests, air-gapped sites).

    Layout: ``models--org--name/refs/main`` (the revision) and ``snapshots/<rev>/`` holding
    ``config.json`` and ``model.safetensors``.
    """
    from safetensors.torch import save_file
    folder = hub_cache_folder(cache_dir, model_id)
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    (snap / "config.json").write_text(json.dumps(config, indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))
    return snap


# ---------------------------------------------------------------------- scripts in this process
def in_process(work):
    """A script's ``main`` that runs ``work(argv)`` in this process through :func:`amanita.cli.cli_main`."""
    from amanita import cli
    return cli.cli_main(lambda: work(sys.argv[1:]))


def call_main(main, argv) -> tuple[int, str, str]:
    """``main()`` with ``argv`` as the command line, in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io
    from unittest import mock
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["prog", *map(str, argv)]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def one_line(text: str) -> str:
    """The message, checked to be a single line."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def train_config(*flags, multitask: bool = False, world_size: int = 1, cls=None, extra: dict | None = None,
                 **changes):
    """A resolved training config as the scripts build it: the training parser's defaults for
    ``flags`` (plus placeholder CSV paths), ``extra`` flags of ``cls`` (a subclass's own), then
    ``changes``; resolved for ``world_size`` processes."""
    from amanita import cli
    from amanita.config import MultitaskTrainConfig, TrainConfig
    from amanita.training import resolve_config
    argv = ["--train-path", "train.csv", "--val-path", "val.csv", *map(str, flags)]
    parsed = cli.parse_flags(cli.build_train_parser("test", multitask), argv)
    cls = cls or (MultitaskTrainConfig if multitask else TrainConfig)
    cfg = cls.from_flags(parsed | (extra or {})).replace(**changes)
    return resolve_config(cfg, world_size)
