"""The checkpoint format in-process: old formats and their upgrades, errors, update_checkpoint, and a
checkpoint assembled from and restored into plain objects (no run object); the format never imports the writer."""
import ast
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from amanita import checkpoint as ck
from amanita.backbone import ModelSpec
from amanita.checkpoint import RunFacts, Trainables, load_checkpoint, update_checkpoint
from amanita.io import UserError
from amanita.model import create_multitask_model
from amanita.run import TrainState
from amanita.taxonomy import LEAF, build_taxonomy
from tests.helpers import TRAIN_IDS, rows, train_config

SMALL = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 16, "patch_size": 8}


@pytest.fixture
def tax():
    return build_taxonomy([rows(TRAIN_IDS)])


def _multitask_checkpoint(tax) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = create_multitask_model("beit_base_patch16_224", tax, SMALL, pretrained=False).eval()
    return model, {"format_version": ck.CHECKPOINT_VERSION, "model": model.state_dict(), "model_ema": None,
                   "kind": "multitask", "architecture": "beit_base_patch16_224", "model_kwargs": SMALL,
                   "head_sizes": tax.head_sizes(), "head_mode": "residual", "taxonomy": tax.to_dict(),
                   "taxonomy_sha256": tax.sha256(),
                   "data_config": {"input_size": (3, 16, 16), "interpolation": "bicubic", "mean": (0.5,) * 3,
                                   "std": (0.5,) * 3, "crop_pct": 1.0},
                   "history": [{"epoch": 0, "train/leaf/loss": 1.5, "val/species/f1": 0.25}]}


def _as_version_1(ckpt: dict) -> dict:
    """What the same checkpoint looked like before the rename: the leaf head was called species."""
    old = {k: v for k, v in ckpt.items() if k != "format_version"}
    old["model"] = {k.replace("heads.leaf.", "heads.species."): v for k, v in ckpt["model"].items()}
    old["head_sizes"] = {("species" if k == LEAF else k): n for k, n in ckpt["head_sizes"].items()}
    old["history"] = [{"epoch": 0, "train/species/loss": 1.5, "val/species/f1": 0.25}]
    return old


def test_a_checkpoint_from_before_the_leaf_rename_loads_with_the_same_outputs(tax, tmp_path):
    model, ckpt = _multitask_checkpoint(tax)
    old = _as_version_1(ckpt)
    assert "heads.species.weight" in old["model"]
    ck.save_checkpoint(old, tmp_path / "old.pth")
    loaded, tax2, _, _ = ck.load_for_eval(tmp_path / "old.pth")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want, got = model(x), loaded(x)
    assert set(got) == set(want) and LEAF in got and "species" not in got
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    upgraded = ck.load_checkpoint(tmp_path / "old.pth")
    assert upgraded["head_sizes"] == tax.head_sizes() and upgraded["format_version"] == ck.CHECKPOINT_VERSION
    assert upgraded["history"] == ckpt["history"]  # the leaf loss renamed, the species-rank F1 kept
    ck.check_compatible(upgraded, tax, "multitask", "old.pth")  # resumes like a new one


def test_a_current_checkpoint_is_left_as_it_is(tax):
    _, ckpt = _multitask_checkpoint(tax)
    assert ck.upgrade_checkpoint(ckpt) is ckpt


def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="x.pth cannot be loaded as an amanita checkpoint"):
        ck.load_checkpoint(tmp_path / "x.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "y.pth")
    with pytest.raises(UserError, match="no 'model' entry"):
        ck.load_checkpoint(tmp_path / "y.pth")
    with pytest.raises(UserError, match="checkpoint not found"):
        ck.load_checkpoint(tmp_path / "missing.pth")


# ---------------------------------------------------------------------- update_checkpoint
def _ckpt(path):
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    return path


def test_update_adds_and_replaces_fields_readable_weights_only(tmp_path):
    path = _ckpt(tmp_path / "best.pth")
    update_checkpoint(path, open_set={"score": "msp", "threshold": 0.25}, epoch=4)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["open_set"] == {"score": "msp", "threshold": 0.25}
    assert ckpt["epoch"] == 4 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    assert not list(tmp_path.glob("*.tmp*"))


def test_update_refuses_objects_and_leaves_the_file_unchanged(tmp_path):
    path = _ckpt(tmp_path / "best.pth")
    before = path.read_bytes()
    with pytest.raises(UserError, match=r"open_set\.where is a PosixPath"):
        update_checkpoint(path, open_set={"where": tmp_path})
    assert path.read_bytes() == before


def test_update_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found: .*nope.pth"):
        update_checkpoint(tmp_path / "nope.pth", x=1)
    assert load_checkpoint(_ckpt(tmp_path / "a.pth"))["epoch"] == 3




def test_a_format_2_checkpoint_names_its_species_results_as_the_metrics_do(tax, tmp_path):
    _, ckpt = _multitask_checkpoint(tax)
    old = dict(ckpt, format_version=2, val_f1=0.375, val_acc=0.5)
    upgraded = ck.upgrade_checkpoint(old)
    assert (upgraded["species_f1"], upgraded["species_acc1"]) == (0.375, 0.5)
    assert "val_f1" not in upgraded and "val_acc" not in upgraded and upgraded["format_version"] == 3
    assert old["val_f1"] == 0.375 and old["format_version"] == 2  # the dict given is left as it was
    ck.save_checkpoint(old, tmp_path / "v2.pth")
    info = ck.load_for_eval(tmp_path / "v2.pth")[3]
    assert (info["species_f1"], info["species_acc1"]) == (0.375, 0.5)  # an old file shows its values
    v1 = _as_version_1(ckpt) | {"val_f1": 0.25}  # both upgrades in one load
    assert ck.upgrade_checkpoint(v1)["species_f1"] == 0.25 and "heads.leaf.weight" in ck.upgrade_checkpoint(v1)["model"]


# ---------------------------------------------------------------------- assemble and restore, plain objects
def _plain(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _facts(tax, **kw) -> RunFacts:
    spec = ModelSpec("single", "tiny", {}, {"input_size": (3, 2, 2)})
    return RunFacts(spec=spec, taxonomy=tax, flags={"opt": "sgd", "batch_size": 2}, seed=5, layout=(2, 1, 1), **kw)


def _trained_checkpoint(tax) -> tuple[nn.Module, torch.optim.Optimizer, dict]:
    model, opt = _plain(0)
    model(torch.randn(2, 3, 2, 2)).sum().backward()
    opt.step()  # a momentum buffer to restore
    state = TrainState(epoch=1, step=3, batch_in_epoch=2, history=[{"epoch": 1, "val/species/f1": 0.5}],
                       best_metric=0.5, epoch_sums={"loss": 4.0}, epoch_batches=2, epoch_images=4)
    return model, opt, ck.checkpoint_state(Trainables(model, opt), state, _facts(tax))


def test_restore_state_puts_weights_optimizer_position_and_rng_back_into_plain_objects(tax, tmp_path):
    model, opt, saved = _trained_checkpoint(tax)
    assert saved["species_f1"] == 0.5 and saved["sampler"]["batch_size"] == 2 and saved["args"]["opt"] == "sgd"
    ck.save_checkpoint(saved, tmp_path / "last.pth")
    want_draw = torch.rand(3)  # what the saved torch stream gives next
    new_model, new_opt = _plain(123)
    state = TrainState()
    ck.restore_state(load_checkpoint(tmp_path / "last.pth"), tmp_path / "last.pth", Trainables(new_model, new_opt),
                     state, _facts(tax))
    assert torch.equal(torch.rand(3), want_draw)
    for old_p, new_p in zip(model.parameters(), new_model.parameters()):
        assert torch.equal(old_p, new_p)
        assert torch.equal(opt.state[old_p]["momentum_buffer"], new_opt.state[new_p]["momentum_buffer"])
    assert (state.epoch, state.step, state.batch_in_epoch, state.best_metric) == (1, 3, 2, 0.5)
    assert state.history == [{"epoch": 1, "val/species/f1": 0.5}]
    assert (state.epoch_sums, state.epoch_batches, state.epoch_images) == ({"loss": 4.0}, 2, 4)


def test_a_rank_other_than_0_draws_from_its_own_seed_after_a_restore(tax):
    _, _, saved = _trained_checkpoint(tax)
    from amanita.seeding import seed_everything
    seed_everything(5 + 1 + 7919 * 3)  # seed + rank + 7919 × step
    want = torch.rand(2)
    model, opt = _plain(1)
    ck.restore_state(saved, "last.pth", Trainables(model, opt), TrainState(), _facts(tax, rank=1))
    assert torch.equal(torch.rand(2), want)


def test_a_resume_with_another_optimizer_flag_names_it(tax):
    _, _, saved = _trained_checkpoint(tax)
    model, opt = _plain(1)
    facts = dataclasses.replace(_facts(tax), flags={"opt": "adamw"})
    with pytest.raises(UserError, match="last.pth was trained with --opt sgd, this run asks for adamw"):
        ck.restore_state(saved, "last.pth", Trainables(model, opt), TrainState(), facts)


def _imports(path: Path) -> set[str]:
    """The amanita modules ``path`` imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("amanita"):
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("amanita")}
    return names


def test_the_format_imports_neither_the_writer_nor_the_run_even_indirectly():
    package = Path(ck.__file__).parent
    seen, todo = set(), ["amanita.checkpoint"]
    while todo:
        name = todo.pop()
        path = package.parent / (name.replace(".", "/") + ".py")
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        todo += sorted(_imports(path))
    assert "amanita.backbone" in seen and "amanita.seeding" in seen  # the walk follows imports
    assert not seen & {"amanita.checkpoint_writer", "amanita.run", "amanita.training"}
