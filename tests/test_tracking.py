"""amanita.tracking: W&B (offline) and TensorBoard backends, resume into the same run, rank 0 only."""
import sys
import types

import pytest

from amanita.config import TrackingConfig
from amanita.io import UserError
from amanita.tracking import Tracker, create_tracker, scalars


def args(**kw):
    base = dict(log_wandb=False, wandb_project=None, wandb_name=None, wandb_group=None, wandb_run_id=None,
                wandb_dir=None, log_tensorboard=None)
    return TrackingConfig(**(base | kw))


def test_scalars_keep_finite_numbers_only():
    rec = {"a": 1, "b": 2.5, "c": float("nan"), "d": "text", "e": True, "f": float("inf"), "g": None}
    assert scalars(rec) == {"a": 1.0, "b": 2.5}


class FakeRun:
    def __init__(self, **kw):
        self.kw, self.id, self.project, self.logged, self.metrics = kw, kw["id"] or "fresh123", kw["project"], [], []
        self.summary = {}

    def define_metric(self, name, step_metric=None):
        self.metrics.append((name, step_metric))

    def log(self, values):
        self.logged.append(values)

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []
    module = types.SimpleNamespace(init=lambda **kw: runs.append(FakeRun(**kw)) or runs[-1],
                                   Image=lambda path: ("image", path))
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def test_wandb_run_gets_config_and_update_axis_and_resumes_by_stored_id(fake_wandb):
    config = {"args": {"lr": 0.1}, "git_sha": "abc", "taxonomy_sha256": "f00"}
    t = create_tracker(args(log_wandb=True, wandb_name="try1"), True, config)
    t.log({"train/loss": 2.0, "lr": 1e-3, "note": "x"}, step=7)
    assert fake_wandb[0].kw["id"] is None and fake_wandb[0].kw["resume"] == "allow"  # W&B draws a new id
    assert fake_wandb[0].kw["config"] == config and fake_wandb[0].kw["project"] == "amanita"
    assert fake_wandb[0].logged == [{"train/loss": 2.0, "lr": 1e-3, "update": 7}]
    assert ("*", "update") in fake_wandb[0].metrics
    stored = t.state()
    assert stored == {"wandb_run_id": "fresh123", "wandb_project": "amanita"}
    create_tracker(args(log_wandb=True), True, config, previous=stored, step=9)
    assert fake_wandb[1].kw["id"] == "fresh123" and fake_wandb[1].kw["project"] == "amanita"
    create_tracker(args(log_wandb=True, wandb_run_id="other"), True, config, previous=stored)
    assert fake_wandb[2].kw["id"] == "other"  # the flag wins over the checkpoint


def test_other_ranks_log_nothing(fake_wandb, tmp_path):
    t = create_tracker(args(log_wandb=True, log_tensorboard=str(tmp_path / "tb")), False, {})
    t.log({"x": 1.0}, 1)
    assert not t and fake_wandb == [] and not (tmp_path / "tb").exists()


@pytest.mark.parametrize("flag,module", [("log_wandb", "wandb"), ("log_tensorboard", "tensorboard")])
def test_missing_package_names_the_flag_and_the_install(monkeypatch, tmp_path, flag, module):
    monkeypatch.setitem(sys.modules, module, None)
    value = True if flag == "log_wandb" else str(tmp_path)
    with pytest.raises(UserError, match=rf"--{flag.replace('_', '-')} needs the '{module}' package.*pip install {module}"):
        create_tracker(args(**{flag: value}), True, {})


def test_tensorboard_scalars_and_resume_purges_the_killed_tail(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = tmp_path / "tb"
    first = create_tracker(args(log_tensorboard=str(tb)), True, {"git_sha": "abc"})
    for step in range(5):
        first.log({"train/leaf/loss": 10.0 + step}, step)
    first.close()  # killed after update 4, but the checkpoint was written at update 3
    resumed = create_tracker(args(log_tensorboard="auto"), True, {"git_sha": "abc"},
                             previous=first.state(), step=3)
    for step in (4, 5):
        resumed.log({"train/leaf/loss": 20.0 + step}, step)
    resumed.close()
    acc = EventAccumulator(str(tb))
    acc.Reload()
    events = acc.Scalars("train/leaf/loss")
    assert [(e.step, e.value) for e in events] == [(0, 10.0), (1, 11.0), (2, 12.0), (3, 13.0), (4, 24.0), (5, 25.0)]
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_tensorboard_images(tmp_path):
    pytest.importorskip("tensorboard")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "fig.png")
    t = create_tracker(args(log_tensorboard=str(tmp_path / "tb")), True, {})
    t.images({"validate/confusion": tmp_path / "fig.png"}, step=3)
    t.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    (img,) = acc.Images("validate/confusion")
    assert (img.step, img.width, img.height) == (3, 8, 6)


@pytest.mark.slow
def test_wandb_offline_run_is_continued_under_the_same_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    a = args(log_wandb=True, wandb_project="amanita-test", wandb_dir=str(tmp_path))
    first = create_tracker(a, True, {"git_sha": "abc", "taxonomy_sha256": "f00"})
    first.log({"train/leaf/loss": 1.25}, 1)
    stored = first.state()
    first.close()
    second = create_tracker(a, True, {"git_sha": "abc"}, previous=stored, step=1)
    second.log({"val/genus/f1": 0.5}, 2)
    second.close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(stored["wandb_run_id"]) for r in runs)
    wanted = [(b"train/leaf/loss", b"taxonomy_sha256"), (b"val/genus/f1",)]
    assert _written(runs, wanted), f"W&B run files lack {wanted}"


def _written(runs, wanted, timeout=60.0):
    """Whether each run file comes to hold its strings (wandb-core writes them after finish() returns)."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        data = [next(r.glob("run-*.wandb")).read_bytes() for r in runs]
        if all(w in d for d, words in zip(data, wanted) for w in words):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def test_empty_tracker_is_a_no_op():
    t = Tracker()
    t.log({"x": 1.0}, 0)
    t.summary({"x": 1.0})
    t.close()
    assert not t and t.state() == {}


def test_validation_numbers_and_figures_join_the_checkpoints_run(tmp_path, fake_wandb):
    pytest.importorskip("tensorboard")
    import json

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from amanita.taxonomy import build_taxonomy
    from amanita.checkpoint import load_for_eval
    from amanita.tracking import log_validation
    from tests.helpers import TRAIN_IDS, rows, tiny_checkpoint
    tb = tmp_path / "tb"
    tiny_checkpoint(tmp_path / "best.pth", build_taxonomy([rows(TRAIN_IDS)]), step=12,
                    tracking={"wandb_run_id": "run42", "wandb_project": "fungi", "tensorboard_dir": str(tb)})
    out = tmp_path / "validation_results"
    out.mkdir()
    metrics = {"model": {"keys": {"genus": {"top1": 0.75, "top5": 1.0, "macro_f1_present": 0.5, "ece": 0.1},
                                  "leaf": {"top1": 0.5, "top5": None}},
                         "hierarchy": {"hierarchical_accuracy": 0.25}, "poison": {"psc": 2, "cost": 0.5}}}
    (out / "metrics.json").write_text(json.dumps(metrics))
    Image.new("RGB", (4, 4)).save(out / "confusion_genus.png")
    info = load_for_eval(tmp_path / "best.pth")[3]  # what validate.py read with the model: no second load
    log_validation(args(log_wandb=True, log_tensorboard="auto"), {"decode": "consistent"}, out / "metrics.json", out,
                   info["step"], info["tracking"])
    run = fake_wandb[0]
    assert (run.kw["id"], run.kw["project"]) == ("run42", "fungi")
    assert run.summary["validate/genus/top1"] == 0.75 and run.summary["validate/poison/psc"] == 2
    assert "validate/leaf/top5" not in run.summary  # None is not a number
    assert run.logged[0]["update"] == 12 and run.logged[1]["validate/confusion_genus"] == ("image", str(out / "confusion_genus.png"))
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("validate/genus/macro_f1_present")] == [(12, 0.5)]
    assert [i.step for i in acc.Images("validate/confusion_genus")] == [12]


@pytest.mark.slow
def test_training_logs_updates_and_epochs_and_resume_continues_the_run(tmp_path):
    """train_multitask.py --log-tensorboard --log-wandb (offline): per-update losses of every head, lr and
    images/s, per-epoch metrics, config; a resumed run keeps the W&B id and the update axis."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from amanita.checkpoint import load_checkpoint
    from amanita.taxonomy import HEADS
    from tests.helpers import SMALL_MODEL, make_image_dataset, run_script
    data = make_image_dataset(tmp_path, n_train=24, n_val=6)
    common = ["--train-path", data["train"], "--val-path", data["val"], "--mappings", tmp_path / "m.json",
              *SMALL_MODEL, "--batch-size", 4, "--workers", 0, "--auto-augment", "none", "--lr", 1e-3,
              "--save-dir", tmp_path / "run", "--log-interval", 2, "--log-tensorboard", tmp_path / "tb",
              "--log-wandb", "--wandb-dir", tmp_path, "--wandb-project", "amanita-test"]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    run_script("train_multitask.py", *common, "--epochs", 1, env=env)
    first = load_checkpoint(tmp_path / "run" / "last.pth")["tracking"]
    assert first["tensorboard_dir"] == str(tmp_path / "tb") and first["wandb_run_id"]
    run_script("train_multitask.py", *common, "--epochs", 2, env=env)  # resumes last.pth
    assert load_checkpoint(tmp_path / "run" / "last.pth")["tracking"]["wandb_run_id"] == first["wandb_run_id"]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(first["wandb_run_id"]) for r in runs)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    # 24 images / batch 4 = 6 updates an epoch, a record every 2 batches
    for head in HEADS:
        assert [e.step for e in acc.Scalars(f"train/{head}/loss")] == [2, 4, 6, 8, 10, 12]
    assert all(e.value > 0 for e in acc.Scalars("lr")) and len(acc.Scalars("images_per_s")) == 6
    assert [e.step for e in acc.Scalars("val/leaf/acc1")] == [6, 12]
    assert [e.step for e in acc.Scalars("epoch/train/loss")] == [6, 12]
    assert "config/text_summary" in acc.Tags()["tensors"]


@pytest.mark.slow
def test_validate_py_logs_into_the_checkpoints_tensorboard_folder_at_its_update(tmp_path):
    """validate.py --log-tensorboard auto: the numbers go to the folder and update the checkpoint
    holds, read with the model (evaluate passes them on; tracking loads nothing)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from amanita.taxonomy import build_taxonomy
    from tests.helpers import TRAIN_IDS, make_image_dataset, rows, run_in_process, tiny_checkpoint
    data = make_image_dataset(tmp_path, n_train=6, n_val=8)
    tb = tmp_path / "tb"
    tiny_checkpoint(tmp_path / "best.pth", build_taxonomy([rows(TRAIN_IDS)]), step=7,
                    tracking={"tensorboard_dir": str(tb)})
    run_in_process("validate.py", "--checkpoint", tmp_path / "best.pth", "--val-path", data["val"], "--workers", 0,
                   "--aggregate", "image", "--output-dir", tmp_path / "out", "--log-tensorboard", "auto")
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert [e.step for e in acc.Scalars("validate/genus/top1")] == [7]
