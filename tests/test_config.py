"""The frozen configs validate.py and test.py build from their flags (amanita.config, amanita.cli)."""
import contextlib
import dataclasses
import io

import pytest

from amanita import cli
from amanita.config import (DecisionConfig, EvalConfig, IdentifyConfig, InferenceConfig, PriorsConfig, ReadoutConfig,
                            TrackingConfig, UserError)

MODEL = ["--checkpoint", "c.pth", "--val-path", "v.csv"]


def test_validate_config_has_a_field_for_every_flag_and_is_frozen():
    parser = cli.build_validate_parser("validate.py")
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == set(EvalConfig.field_names())
    cfg = cli.parse_validate_config("validate.py", MODEL + ["--aggregate", "image", "--focus-species", "A b"])
    assert cfg.aggregate == ("image",) and cfg.focus_species == ("A b",) and cfg.batch_size == 64
    for group in (TrackingConfig, InferenceConfig, ReadoutConfig, PriorsConfig, DecisionConfig):
        assert isinstance(cfg, group)  # a function that reads one flag group takes the group's type
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 1
    assert cfg.to_dict()["aggregate"] == ["image"] and cfg.replace(batch_size=8).batch_size == 8


def test_a_flag_without_a_field_is_refused():
    flags = cli.parse_validate_config("validate.py", MODEL).to_dict()
    with pytest.raises(ValueError, match="EvalConfig has no field for typo_flag"):
        EvalConfig.from_flags(flags | {"typo_flag": 1})


@pytest.mark.parametrize("argv,message", [
    ([], "give --checkpoint (with --val-path) or --from-predictions"),
    (["--from-predictions", "p.csv"], "--from-predictions needs --mappings"),
    (["--checkpoint", "c.pth"], "--checkpoint needs --val-path"),
    (["--from-predictions", "p.csv", "--mappings", "m.json", "--baseline-model", "x"],
     "give the baseline as --baseline-predictions"),
    (MODEL + ["--calibrate", "--no-temperatures"], "--calibrate needs --checkpoint"),
    (MODEL + ["--store-threshold"], "--store-threshold needs --open-set and --checkpoint"),
    (MODEL + ["--fit-prior-weight"], "--fit-prior-weight needs --priors"),
])
def test_validate_flag_combinations_are_refused_when_the_config_is_built(argv, message):
    with pytest.raises(UserError) as e:
        cli.parse_validate_config("validate.py", argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_identify_config_holds_every_flag_and_moves_images_given_after_metadata():
    cfg = cli.parse_identify_config("test.py", ["--checkpoint", "c.pth", "--metadata", "habitat=wood", "a.jpg",
                                                "b.jpg"])
    assert isinstance(cfg, IdentifyConfig) and cfg.inputs == ("a.jpg", "b.jpg") and cfg.metadata == ("habitat=wood",)
    assert cfg.top_k == 5 and cfg.unknown_threshold is None and cfg.submission is None


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint", "c.pth"], "give images or folders, or --submission"),
    (["--checkpoint", "c.pth", "--submission", "s.csv"], "--submission needs --test-path"),
])
def test_identify_flag_combinations_are_argparse_errors(argv, message):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        cli.parse_identify_config("test.py", argv)
    assert e.value.code == 2 and message in err.getvalue()
