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
