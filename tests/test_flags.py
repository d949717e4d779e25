"""Every flag value is checked at parse time against what the library accepts (issue 17, item 15).

A value that parses but fails later (after a model is built, or after a whole epoch) is refused
by argparse at once: exit code 2 and one line naming the flag.
"""
import contextlib
import io

import pytest

from amanita import cli

TRAIN = ["--train-path", "t.csv", "--val-path", "v.csv"]


def parse_error(parse, argv) -> str:
    """argparse's error line for ``argv`` (exit code 2 checked)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        parse([str(a) for a in argv])
    assert e.value.code == 2
    return err.getvalue().strip().splitlines()[-1]


def distill_parser():
    import distill
    return distill.parse_args


def export_parser():
    import export
    return export.parse_args


BAD_TRAINING_VALUES = [
    (["--interpolation", "foo"], "--interpolation"), (["--auto-augment", "foo"], "--auto-augment"),
    (["--auto-augment", "rand-m1e9"], "--auto-augment"), (["--opt", "foo"], "--opt"),
    (["--seed", "1" * 23], "--seed"), (["--seed", str(2**32)], "--seed"), (["--warmup-lr", "1e300"], "--warmup-lr"),
    (["--lr-base", "1e308"], "--lr-base"), (["--lr", "1e300"], "--lr"), (["--min-lr", "1e300"], "--min-lr"),
    (["--color-jitter", "1e308"], "--color-jitter"), (["--scale", "1e-300", "1e-300"], "--scale"),
    (["--crop-pct", "1e9"], "--crop-pct"), (["--crop-pct", "1e-300"], "--crop-pct"),
    (["--mean", "nan", "nan", "nan"], "--mean"), (["--mean", "inf", "0", "0"], "--mean"),
    (["--std", "inf", "1", "1"], "--std"),
]


@pytest.mark.parametrize("flags,name", BAD_TRAINING_VALUES)
@pytest.mark.parametrize("multitask", [True, False])
def test_training_values_the_libraries_refuse_are_refused_at_parse_time(flags, name, multitask):
    line = parse_error(cli.build_train_parser("t", multitask=multitask).parse_args, TRAIN + flags)
    assert f"argument {name}" in line


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_distill_temperature_must_be_finite_and_positive(value):
    line = parse_error(distill_parser(), ["--teacher", "t.pth", *TRAIN, "--distill-temperature", value])
    assert "argument --distill-temperature" in line


def test_export_opset_must_be_one_torch_exports_to():
    from torch.onnx import _constants
    line = parse_error(export_parser(), ["--checkpoint", "c.pth", "--opset", "99"])
    assert "argument --opset" in line and str(_constants.ONNX_MAX_OPSET) in line
    assert export_parser()(["--checkpoint", "c.pth", "--opset", str(_constants.ONNX_MAX_OPSET)]).opset == \
        _constants.ONNX_MAX_OPSET


def test_values_the_libraries_accept_still_parse():
    from timm.optim import list_optimizers
    args = cli.build_train_parser("t", multitask=True).parse_args(TRAIN + [
        "--interpolation", "bilinear", "--auto-augment", "augmix-m5-w4-d2", "--opt", "lookahead_adamw",
        "--seed", str(2**32 - 1), "--warmup-lr", "0", "--lr-base", "0.1", "--color-jitter", "0.4",
        "--scale", "0.08", "1", "--crop-pct", "0.875", "--mean", "0.5", "0.5", "0.5"])
    assert (args.interpolation, args.opt, args.seed, args.scale, args.crop_pct) == (
        "bilinear", "lookahead_adamw", 2**32 - 1, [0.08, 1.0], 0.875)
    assert "adamw" in list_optimizers() and "sgd" in list_optimizers()
    for policy in ("none", "rand-m9-mstd0.5-inc1", "original", "v0"):
        assert cli.build_train_parser("t", multitask=False).parse_args(TRAIN + ["--auto-augment", policy]).auto_augment \
            == policy
    assert distill_parser()(["--teacher", "t.pth", *TRAIN, "--distill-temperature", "4"]).distill_temperature == 4.0


# ---------------------------------------------------------------------- --config FILE: a run's args.yaml replayed
def write_yaml(path, data) -> str:
    import yaml
    path.write_text(yaml.safe_dump(data))
    return str(path)


GIVEN = ["--layer-decay", "none", "--mean", "0.4", "0.5", "0.6", "--lora-targets", "proj", "fc1", "--rank-weights",
         "0", "0", "0", "0.5", "0.5", "1", "--use-class-weights", "--lr", "3e-4", "--model-args", '{"depth": 2}',
         "--seed", "7", "--early-stopping-metric", "leaf/acc1"]


def test_a_runs_args_yaml_replayed_gives_an_equal_config(tmp_path):
    from amanita.training import resolve_config, write_run_flags
    cfg = cli.parse_train_config("t", True, TRAIN + GIVEN)
    path = write_run_flags(resolve_config(cfg, 2), tmp_path)  # what a run writes beside its checkpoints
    replayed = cli.parse_train_config("t", True, ["--config", str(path)])
    assert replayed == cfg and replayed.layer_decay is None and replayed.mean == (0.4, 0.5, 0.6)
    assert resolve_config(replayed, 2) == resolve_config(cfg, 2)
    minimal = cli.parse_train_config("t", False, TRAIN + ["--epochs", "3", "--hflip", "0"])
    path = write_run_flags(resolve_config(minimal, 1), tmp_path / "m")
    assert cli.parse_train_config("t", False, ["--config", str(path)]) == minimal


def test_args_yaml_holds_the_flags_as_given_not_the_resolved_values(tmp_path, monkeypatch):
    import yaml
    from amanita.training import resolve_config, write_run_flags
    monkeypatch.setenv("CHECKPOINT_ARTIFACT_PATH", str(tmp_path / "artifacts"))
    monkeypatch.delenv("LOSSY_ARTIFACT_PATH", raising=False)
    cfg = resolve_config(cli.parse_train_config("t", True, TRAIN + ["--save-dir", "mine"]), 4)
    saved = yaml.safe_load(write_run_flags(cfg, tmp_path).read_text())
    assert saved["save_dir"] == "mine" and saved["lr"] is None and saved["rank_weights"] == [0.1, 0.1, 0.1, 0.2, 0.3, 1.0]
    assert not {"lr_scaling", "checkpoint_dir", "log_dir", "eval_batch", "world_size", "config", "multitask"} & set(saved)
    assert cfg.checkpoint_dir == cfg.log_dir == str(tmp_path / "artifacts") and cfg.save_dir == "mine"


def test_the_command_line_overrides_the_config_file(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", {"train_path": "a.csv", "val_path": "b.csv", "epochs": 3, "lr": 0.5})
    cfg = cli.parse_train_config("t", True, ["--config", path, "--epochs", "9"])
    assert (cfg.train_path, cfg.val_path, cfg.epochs, cfg.lr) == ("a.csv", "b.csv", 9, 0.5)
    assert cli.parse_train_config("t", True, ["--epochs", "9", "--config", path]).epochs == 9  # wherever it stands


@pytest.mark.parametrize("data,said", [
    ({"lr_bsae": 0.1}, "'lr_bsae' is not a flag of this script (did you mean 'lr_base'?)"),
    ({"rank_weights": [1, 1, 1, 1, 1, 1]}, "'rank_weights' is not a flag of this script"),  # train_minimal.py's
    ({"multitask": True}, "'multitask' is not a flag of this script"),
])
def test_a_config_key_that_names_no_flag_is_refused_naming_the_file_and_the_key(tmp_path, data, said):
    path = write_yaml(tmp_path / "run.yaml", data)
    with pytest.raises(cli.UserError) as e:
        cli.parse_train_config("t", False, TRAIN + ["--config", path])
    assert str(e.value) == f"{path}: {said}"


@pytest.mark.parametrize("data,said", [
    ({"epochs": "many"}, "epochs: expected an integer ≥ 1, got 'many'"),
    ({"epochs": 2.5}, "epochs: expected an integer ≥ 1, got '2.5'"),
    ({"epochs": None}, "epochs: expected a value, got null"),
    ({"lr": 1e300}, "lr: expected a learning rate with 0 < value ≤ 100"),
    ({"use_class_weights": "yes"}, "use_class_weights: expected true or false, got 'yes'"),
    ({"rank_weights": [1, 1]}, "rank_weights: expected 6 values, got 2"),
    ({"scale": 0.5}, "scale: expected a list of values, got 0.5"),
    ({"head_mode": "both"}, "head_mode: expected one of residual, independent, got 'both'"),
    ({"opt": "foo"}, "opt: 'foo' is not an optimizer timm knows"),
    ({"mappings": 3}, "mappings: expected text, got 3"),
])
def test_a_config_value_is_checked_by_its_flags_own_type(tmp_path, data, said):
    path = write_yaml(tmp_path / "run.yaml", data)
    with pytest.raises(cli.UserError) as e:
        cli.parse_train_config("t", True, TRAIN + ["--config", path])
    assert str(e.value).startswith(f"{path}: {said}")


def test_a_config_file_that_is_missing_or_not_a_mapping_is_one_line(tmp_path):
    with pytest.raises(cli.UserError, match="--config .*nope.yaml: No such file"):
        cli.parse_train_config("t", True, TRAIN + ["--config", str(tmp_path / "nope.yaml")])
    path = write_yaml(tmp_path / "list.yaml", [1, 2])
    with pytest.raises(cli.UserError, match="expected flag names and values .* got list"):
        cli.parse_train_config("t", True, TRAIN + ["--config", path])


def test_distill_and_preflight_replay_their_own_flags(tmp_path):
    import distill
    import preflight
    from amanita.training import resolve_config, write_run_flags
    cfg = distill.parse_args(["--teacher", "t.pth", *TRAIN, "--distill-alpha", "0.3"])
    path = write_run_flags(resolve_config(cfg, 1), tmp_path)
    assert distill.parse_args(["--config", str(path)]) == cfg and cfg.model == "mobilenetv3_small_050"
    with pytest.raises(cli.UserError, match="'teacher' is not a flag of this script"):
        cli.parse_train_config("t", True, ["--config", str(path)])
    check = preflight.parse_args([*TRAIN, "--sample-images", "8", "--epochs", "4"])
    path = write_run_flags(resolve_config(check, 1), tmp_path / "p")
    assert preflight.parse_args(["--config", str(path)]) == check


def test_resolved_values_are_computed_once_into_a_new_frozen_config(monkeypatch):
    import dataclasses
    from amanita.training import resolve_config
    monkeypatch.delenv("CHECKPOINT_ARTIFACT_PATH", raising=False)
    monkeypatch.setenv("LOSSY_ARTIFACT_PATH", "/logs")
    cfg = cli.parse_train_config("t", True, TRAIN + ["--batch-size", "64", "--accum-steps", "2", "--save-dir", "s"])
    run = resolve_config(cfg, 4)  # 64 × 2 × 4 = 512 images per update, AdamW: sqrt scaling of 1e-4 at 256
    assert run.peak_lr == pytest.approx(1e-4 * 2 ** 0.5) and run.lr_scaling["global_batch"] == 512
    assert (run.checkpoint_dir, run.log_dir, run.eval_batch, run.world_size) == ("s", "/logs", 128, 4)
    assert cfg.lr is None and cfg.lr_scaling is None and run.lr is None  # the flags stay as given
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.lr = 1.0
    with pytest.raises(ValueError, match="not resolved"):
        cfg.peak_lr
