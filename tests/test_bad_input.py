"""Bad input, in one place (issue 10): never a crash, never a wrong result, never a lost file.

Each probe makes its own small CSV, image or file, and checks the exit code (2 for the user's
mistakes) and the one-line message that names the input. Most call the package or the
script's ``main`` in this process; the few that need a real process are marked slow.
"""
import argparse
import contextlib
import io
import json
import pickle
import resource
import signal
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
from PIL import Image

from amanita import cli
from amanita.checkpoint_writer import CheckpointWriter, remove_stale_temporaries
from amanita.data import BAD_IMAGE, FungiTasticDataset, read_split, scan_images
from amanita.demo.synthetic_predictions import synthetic_predictions, synthetic_taxonomy
from amanita.evaluate import Evaluation, summary_lines, validate
from amanita.identify import identify
from amanita.io import UserError, atomic_torch_save, load_tensor_file
from amanita.predictions import write_predictions
from amanita.taxonomy import Taxonomy, TaxonomyError, build_taxonomy
from amanita.training import train
from tests.helpers import SMALL_MODEL, make_image_dataset, rows, run_script


def one_line(text: str) -> str:
    """The message, checked to be a single line."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def parse_validate(argv: list):
    """validate.py's flags (amanita.cli)."""
    return cli.parse_validate_config("validate.py", argv)


class Script:
    """A script's main run through the package in this process (the tests import no script)."""

    def __init__(self, work):
        self.main = cli.cli_main(lambda: work(sys.argv[1:]))


VALIDATE = Script(lambda argv: print("\n".join(summary_lines(validate(parse_validate(argv))))))
TEST_PY = Script(lambda argv: identify(cli.parse_identify_config("test.py", argv)))
TRAIN_MULTITASK = Script(lambda argv: train(cli.parse_train_config("t", True, argv)))
TRAIN_MINIMAL = Script(lambda argv: train(cli.parse_train_config("t", False, argv)))


def run_main(module, argv: list) -> tuple[int, str, str]:
    """``module.main()`` with ``argv``, in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["prog", *map(str, argv)]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            module.main()
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def argparse_error(parse, argv: list) -> str:
    """Parse ``argv``; returns argparse's error line (exit 2 checked)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        parse([str(a) for a in argv])
    assert e.value.code == 2
    return err.getvalue().strip().splitlines()[-1]  # argparse prints the usage line, then the error


# ---------------------------------------------------------------------- flag values
TRAIN = ["--train-path", "t.csv", "--val-path", "v.csv"]
BAD_TRAIN_FLAGS = [
    (["--epochs", "0"], "--epochs"), (["--batch-size", "0"], "--batch-size"), (["--lr", "-1"], "--lr"),
    (["--workers", "-1"], "--workers"), (["--label-smoothing", "2"], "--label-smoothing"),
    (["--model-args", "{depth: 2"], "--model-args"), (["--model-args", "[1, 2]"], "--model-args"),
    (["--early-stopping-metric", "species/f2"], "--early-stopping-metric"), (["--accum-steps", "0"], "--accum-steps"),
    (["--max-bad-image-fraction", "1.5"], "--max-bad-image-fraction"), (["--layer-decay", "-0.5"], "--layer-decay"),
    (["--lr", "nan"], "--lr"), (["--hflip", "2"], "--hflip"), (["--scale", "0", "1"], "--scale"),
    (["--device", "gpu"], "--device"),
]


@pytest.mark.parametrize("flags,name", BAD_TRAIN_FLAGS)
def test_training_flag_values_are_checked_before_any_work(flags, name):
    parser = cli.build_train_parser("t", multitask=True)
    line = argparse_error(parser.parse_args, TRAIN + flags)
    assert f"argument {name}" in line and repr(flags[1]) in line or flags[1] in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_refused_by_every_script():
    parser = cli.build_train_parser("t", multitask=False)
    assert "CUDA is not available" in argparse_error(parser.parse_args, TRAIN + ["--device", "cuda"])
    assert "CUDA is not available" in argparse_error(parse_validate, ["--from-predictions", "p.csv",
                                                                          "--device", "cuda:0"])


def test_validate_counts_must_be_positive():
    assert "--batch-size" in argparse_error(parse_validate, ["--batch-size", "0"])


@pytest.mark.slow
def test_subset_counts_must_be_positive():
    proc = run_script("create_minimal_subset.py", "--train-path", "t", "--val-path", "v", "--n-train", "-3", check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "--n-train" in line and "'-3'" in line


def test_flag_types_accept_their_boundaries():
    assert cli.probability("0") == 0.0 and cli.probability("1") == 1.0
    assert cli.below_one("0.1") == 0.1 and cli.optional_float("none") is None and cli.optional_float("0.75") == 0.75
    assert cli.json_object('{"depth": 2}') == '{"depth": 2}' and cli.device_name("cpu") == "cpu"
    for parse, text in ((cli.below_one, "1"), (cli.positive_int, "1.5"), (cli.nonneg_float, "inf")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


# ---------------------------------------------------------------------- metadata CSVs
@pytest.mark.parametrize("value,shown", [("abc", "'abc'"), ("-5", "'-5'"), ("13.5", "'13.5'"), ("", "empty")])
def test_bad_category_id_names_the_line(tmp_path, value, shown):
    df = rows([0, 1, 2]).astype({"category_id": object})
    df.loc[1, "category_id"] = value
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError) as e:
        read_split(tmp_path / "t.csv")
    msg = one_line(str(e.value))
    assert f"t.csv line 3: category_id is {shown}" in msg and "whole number" in msg


def test_open_set_loading_accepts_minus_one_only(tmp_path):
    df = rows([0, 1, 2])
    df.loc[2, "category_id"] = -1
    df.to_csv(tmp_path / "o.csv", index=False)
    assert read_split(tmp_path / "o.csv", open_set=True)["category_id"].tolist() == [0, 1, -1]
    with pytest.raises(UserError, match="line 4: category_id is '-1'.*only with validate.py --open-set"):
        read_split(tmp_path / "o.csv")


def test_header_only_csv_is_refused(tmp_path):
    rows([0]).iloc[:0].to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(UserError, match=r"empty.csv has a header but no rows"):
        read_split(tmp_path / "empty.csv")


def test_taxonomy_conflicts_name_the_file_and_line(tmp_path):
    train, val = rows([0, 1, 2]), rows([2, 5])
    val.loc[0, "species"] = "Agaricus bisporus"  # category_id 2 now has two species
    train.to_csv(tmp_path / "Train.csv", index=False)
    val.to_csv(tmp_path / "Val.csv", index=False)
    with pytest.raises(TaxonomyError) as e:  # the scripts print it as "error: ..." with exit 2
        build_taxonomy([read_split(tmp_path / "Train.csv"), read_split(tmp_path / "Val.csv")])
    msg = str(e.value)
    assert "category_id 2" in msg and "Train.csv line 4" in msg and "Val.csv line 2" in msg


# ---------------------------------------------------------------------- files given as weights or checkpoints
class Evil:
    pass


@pytest.fixture
def foreign_files(tmp_path):
    torch.save({"model": Evil()}, tmp_path / "pickled.pth")
    (tmp_path / "text.pth").write_text("this is not a checkpoint\n")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    torch.save({"model": {"w": torch.zeros(1000)}}, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])  # a copy cut short
    return tmp_path


@pytest.mark.parametrize("name", ["pickled.pth", "text.pth", "raw.pkl", "truncated.pth"])
def test_foreign_files_are_refused_in_one_line(foreign_files, name):
    from amanita.checkpoint import load_checkpoint
    from amanita.backbone import create_timm_model
    path = foreign_files / name
    for load in (lambda: load_checkpoint(path), lambda: load_tensor_file(path, "class weights"),
                 lambda: create_timm_model(str(path))):  # --model / --baseline-model / --pretrained-file
        with pytest.raises(UserError) as e:
            load()
        msg = one_line(str(e.value))
        assert str(path) in msg and "cannot be loaded" in msg
    if name == "pickled.pth":
        assert "pickled Python objects" in msg


def test_unknown_model_and_offline_hub_model_say_what_to_do(monkeypatch):
    from amanita.backbone import create_timm_model
    with pytest.raises(UserError, match=r"--model no_such_net: timm has no such model"):
        create_timm_model("no_such_net")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    with pytest.raises(UserError) as e:
        create_timm_model("hf-hub:BVRA/not_cached_model")
    msg = one_line(str(e.value))
    assert "--model hf-hub:BVRA/not_cached_model" in msg and "Working offline" in msg


@pytest.mark.slow
def test_paths_of_the_wrong_kind_are_one_line(tmp_path):
    """A folder given as a file, a file where a folder goes: the OS's reason with the path, exit 2."""
    rows([0, 1, 2]).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    proc = run_script("compute_class_weights.py", "--train-path", tmp_path / "t.csv", "--mappings", tmp_path / "adir",
                      check=False)
    assert proc.returncode == 2 and one_line(proc.stderr) == f"error: {tmp_path / 'adir'}: Is a directory"
    proc = run_script("create_minimal_subset.py", "--train-path", tmp_path / "t.csv", "--val-path", tmp_path / "t.csv",
                      "--output-dir", tmp_path / "afile", check=False)
    assert proc.returncode == 2 and one_line(proc.stderr) == f"error: {tmp_path / 'afile'}: File exists"


def test_sparse_category_ids_do_not_make_a_giant_head():
    from amanita.model import create_single_head_model
    df = rows([0, 1, 2])
    df.loc[2, "category_id"] = 99_999_999
    with pytest.raises(UserError, match=r"category_id 99999999 would give the single-head model 100,000,000 outputs"):
        create_single_head_model("beit_base_patch16_224", build_taxonomy([df]))


def test_test_split_table_is_headed_test():
    from amanita.training import rank_table
    table = rank_table({}, {"species/acc1": 0.5, "species/f1": 0.25}, "test")
    assert "test top-1" in table.splitlines()[0] and "val" not in table and "50.00%" in table


def test_training_flag_combinations(tmp_path):
    with pytest.raises(UserError, match=r"--scale 1 0.5: give the smaller crop fraction first"):
        cli.parse_train_config("t", True, TRAIN + ["--scale", "1", "0.5"])
    with pytest.raises(UserError, match=r"--rank-weights are all 0"):
        cli.parse_train_config("t", True, TRAIN + ["--rank-weights", *["0"] * 6])


# ---------------------------------------------------------------------- writes
def test_full_disk_keeps_the_old_file_and_says_so(tmp_path):
    path = tmp_path / "last.pth"
    atomic_torch_save({"x": torch.ones(3)}, path)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, hard))  # writes past 50 kB fail, as on a full disk
    try:
        with pytest.raises(UserError) as e:
            atomic_torch_save({"x": torch.zeros(100_000)}, path)
        writer = CheckpointWriter(background=True)  # the training loop's path
        writer.save({"x": torch.zeros(100_000)}, path)
        with pytest.raises(UserError) as e_writer:
            writer.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    msg = one_line(str(e.value))
    assert f"cannot write {path}" in msg and "disk full" in msg and "previous last.pth is intact" in msg
    msg = one_line(str(e_writer.value))
    assert f"writing checkpoint {path} failed: cannot write {path}" in msg and "disk full" in msg
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_stale_temporaries_of_this_run_only_are_removed(tmp_path):
    stale = [".last.pth.a1b2c3d4.tmp", ".best_model.pth.zz_9yy8x.tmp"]
    kept = ["last.pth", ".last.pth.tmp", ".other.pth.a1b2c3d4.tmp", "notes.tmp", ".last.pth.a1b2c3d4.tmp.bak"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    removed = remove_stale_temporaries(tmp_path, ["last.pth", "best_model.pth"])
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


# ---------------------------------------------------------------------- images
def test_decompression_bomb_is_a_bad_image_in_training_and_check_images(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "0-100.JPG")
    Image.new("RGB", (8, 8), (30, 30, 200)).save(tmp_path / "1-101.JPG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64×64 is over twice this: a "bomb"
    df = rows([0, 1]).assign(filename=["0-100.JPG", "1-101.JPG"])
    tax = build_taxonomy([df])
    ds = FungiTasticDataset(df, tax, image_root=tmp_path, input_size=(3, 32, 32))
    image, labels, _ = ds[0]
    assert labels[0] == BAD_IMAGE and image.shape == (3, 32, 32)
    assert ds[1][1][0] == tax.leaf_index()[1]
    bad = scan_images([str(tmp_path / "0-100.JPG"), str(tmp_path / "1-101.JPG")], workers=1)
    assert list(bad) == [str(tmp_path / "0-100.JPG")] and "DecompressionBombError" in bad[str(tmp_path / "0-100.JPG")]


# ---------------------------------------------------------------------- validate.py without a model
@pytest.fixture(scope="module")
def preds_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("preds")
    tax = synthetic_taxonomy({"phylum": 2, "class": 3, "order": 4, "family": 5, "genus": 6, "species": 8, "leaf": 9})
    tax.save(root / "m.json")
    preds = synthetic_predictions(tax, 60, seed=0)
    write_predictions(preds, root / "predictions.csv", tax)
    return root, tax, preds


@pytest.mark.slow  # a whole report with figures: seconds
def test_focus_species_without_images_does_not_crash(preds_dir, tmp_path):
    root, tax, preds = preds_dir
    name = tax.classes["species"][int(preds["species_true"].max()) + 1 if preds["species_true"].max() + 1 < 8 else 0]
    kept = preds[preds["species_true"] != tax.index("species")[name]]
    write_predictions(kept, tmp_path / "p.csv", tax)
    code, out, err = run_main(VALIDATE, ["--from-predictions", tmp_path / "p.csv", "--mappings", root / "m.json",
                                         "--output-dir", tmp_path / "o", "--focus-species", name, "Nonexistent us"])
    assert code == 0, err
    assert f"{name}: no validation images" in out and "Nonexistent us: not in the taxonomy" in out
    assert (tmp_path / "o" / "validation_report.html").is_file()


def test_predictions_from_another_taxonomy_are_refused(preds_dir, tmp_path):
    root, tax, _ = preds_dir
    other = Taxonomy.from_dict(json.loads((root / "m.json").read_text()))
    other.classes["species"][0] = "Renamed species"
    other.save(tmp_path / "other.json")
    code, _, err = run_main(VALIDATE, ["--from-predictions", root / "predictions.csv", "--mappings",
                                       tmp_path / "other.json", "--output-dir", tmp_path / "o"])
    msg = one_line(err)
    assert code == 2 and "predictions.csv was made with another taxonomy" in msg and "--mappings" in msg
    assert not (tmp_path / "o").exists()


@pytest.fixture
def no_figures(monkeypatch):
    """Skip drawing the report's figures (tests/test_report.py checks them): these probes are about inputs."""
    monkeypatch.setattr("amanita.evaluate.make_figures", lambda *a, **k: ([], []))


def test_failing_validate_leaves_the_previous_results_whole(preds_dir, tmp_path, monkeypatch, no_figures):
    root, tax, _ = preds_dir
    out = tmp_path / "o"
    args = ["--from-predictions", root / "predictions.csv", "--mappings", root / "m.json", "--output-dir", out]
    assert run_main(VALIDATE, args)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = synthetic_predictions(tax, 40, seed=5)
    write_predictions(other, tmp_path / "new.csv", tax)

    def broken(*a, **k):
        raise UserError("figure failed")
    monkeypatch.setattr("amanita.evaluate.make_figures", broken)
    code, _, err = run_main(VALIDATE, ["--from-predictions", tmp_path / "new.csv", *args[2:]])
    assert code == 2 and "figure failed" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced, no staging left


def test_summary_lines_survive_missing_numbers(tmp_path):
    m = {"model": {"keys": {"species": {"top1": 0.5, "top5": 0.9, "macro_f1_present": 0.4, "ece": 0.1}},
                   "hierarchy": {"hierarchical_accuracy": None, "consistency_rate": 1.0, "mistake_severity": None},
                   "poison": {"psc": 0, "esc": 0, "cost": None},
                   "focus": [{"name": "Amanita phalloides", "found": True, "support": 0,
                              "accuracy": {"species": None, "genus": None}}]}}
    lines = summary_lines(Evaluation(m, tmp_path / "validation_report.html", {}))
    assert "Amanita phalloides: no validation images" in lines and any("n/a" in x for x in lines)


# ---------------------------------------------------------------------- with a tiny trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny multi-task checkpoint (32 px input, one epoch) trained in this process."""
    root = tmp_path_factory.mktemp("badinput")
    data = make_image_dataset(root, n_train=24, n_val=12)
    base = ["--train-path", data["train"], "--val-path", data["val"], "--mappings", root / "m.json", *SMALL_MODEL,
            "--batch-size", 12, "--workers", 0, "--auto-augment", "none", "--epochs", 1, "--lr", 1e-3]
    cfg = cli.parse_train_config("t", True, [str(a) for a in base + ["--save-dir", root / "run"]])
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert train(cfg) == 0
    return {"root": root, "data": data, "base": [str(a) for a in base], "ckpt": root / "run" / "best_model.pth",
            "log": log.getvalue()}


def train_in_process(trained, *extra) -> tuple[int, str]:
    """Train with the fixture's flags plus ``extra``, through the script's main: (exit code, stderr)."""
    code, _, err = run_main(TRAIN_MULTITASK, trained["base"] + [str(a) for a in extra])
    return code, err


def test_resume_into_another_architecture_or_layer_decay_is_one_line(trained, tmp_path):
    import shutil
    save = tmp_path / "run"
    save.mkdir()
    shutil.copy(trained["root"] / "run" / "last.pth", save / "last.pth")
    deeper = '{"depth": 3, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 8}'
    code, err = train_in_process(trained, "--save-dir", save, "--model-args", deeper, "--epochs", 2)
    assert code == 2 and "last.pth holds a beit_base_patch16_224" in one_line(err) and "--model-args" in err
    code, err = train_in_process(trained, "--save-dir", save, "--layer-decay", "none", "--epochs", 2)
    assert code == 2 and "--layer-decay 0.75, this run asks for None" in one_line(err)


def test_init_from_refuses_another_taxonomy_or_kind(trained, tmp_path):
    other = rows([0, 1, 2, 5])
    other.to_csv(tmp_path / "o.csv", index=False)
    code, err = train_in_process(trained, "--save-dir", tmp_path / "a", "--init-from", trained["ckpt"],
                                 "--mappings", tmp_path / "other.json", "--train-path", tmp_path / "o.csv",
                                 "--val-path", tmp_path / "o.csv")
    assert code == 2 and "best_model.pth was trained with another taxonomy" in one_line(err)
    code, _, err = run_main(TRAIN_MINIMAL, trained["base"] + ["--save-dir", tmp_path / "b", "--init-from", trained["ckpt"]])
    assert code == 2 and "holds a multi-task model; train_minimal.py starts from a single-head one" in one_line(err)


def test_stale_checkpoint_temporaries_are_cleaned_at_start(trained, tmp_path):
    save = tmp_path / "run"
    save.mkdir()
    (save / ".last.pth.k1ll3d00.tmp").write_bytes(b"half a checkpoint")
    (save / "mine.tmp").write_text("not ours")
    code, err = train_in_process(trained, "--save-dir", save, "--epochs", 1)
    assert code == 0, err
    assert sorted(p.name for p in save.iterdir() if p.name.endswith(".tmp")) == ["mine.tmp"]


def test_header_only_train_csv_stops_before_training(trained, tmp_path):
    rows([0]).iloc[:0].to_csv(tmp_path / "empty.csv", index=False)
    code, err = train_in_process(trained, "--save-dir", tmp_path / "run", "--train-path", tmp_path / "empty.csv")
    assert code == 2 and "empty.csv has a header but no rows" in one_line(err)
    assert not (tmp_path / "run" / "best_model.pth").exists()


def _val_copy(trained, tmp_path, edit) -> Path:
    df = pd.read_csv(trained["data"]["val"])
    df = edit(df)
    path = tmp_path / "metadata" / "FungiTastic" / "FungiTastic-ClosedSet-Val.csv"
    path.parent.mkdir(parents=True)
    df.to_csv(path, index=False)
    return path


def test_validate_with_a_bad_image_and_a_small_model(trained, tmp_path, caplog, no_figures):
    """A 32 px model with one unreadable validation image: left out and said, not a stack error."""
    val = trained["data"]["val"]
    images = Path(val).parents[2] / "FungiTastic" / "val" / "300p"
    bad = images / pd.read_csv(val)["filename"].iloc[0]
    original = bad.read_bytes()
    try:
        bad.write_bytes(b"not a jpeg")
        code, out, err = run_main(VALIDATE, ["--checkpoint", trained["ckpt"], "--val-path", val, "--workers", 0,
                                             "--output-dir", tmp_path / "o", "--max-bad-image-fraction", 0.1])
        assert code == 0, err
        assert "1 of 12 validation images could not be read" in caplog.text
        assert len(pd.read_csv(tmp_path / "o" / "predictions.csv")) == 11
        code, out, err = run_main(VALIDATE, ["--checkpoint", trained["ckpt"], "--val-path", val, "--workers", 0,
                                             "--output-dir", tmp_path / "o2"])
        assert code == 2 and "--max-bad-image-fraction 0.001" in err.strip().splitlines()[-1]
    finally:
        bad.write_bytes(original)


def test_validation_rows_outside_the_mappings_are_counted(trained, tmp_path, caplog, no_figures):
    def edit(df):
        df.loc[:1, "category_id"] = 77  # not in the mappings
        return df
    val = _val_copy(trained, tmp_path, edit)
    images = Path(trained["data"]["val"]).parents[2] / "FungiTastic" / "val" / "300p"
    code, _, err = run_main(VALIDATE, ["--checkpoint", trained["ckpt"], "--val-path", val, "--image-root", images,
                                       "--workers", 0, "--output-dir", tmp_path / "o"])
    msg = one_line(err)
    assert code == 2 and "2 of 12 rows have a category_id not in the mappings (77)" in msg
    code, _, err = run_main(VALIDATE, ["--checkpoint", trained["ckpt"], "--val-path", val, "--image-root", images,
                                       "--workers", 0, "--output-dir", tmp_path / "o", "--max-bad-image-fraction", 0.2])
    assert code == 0 and "2 of 12 rows have a category_id not in the mappings" in caplog.text


def test_json_output_is_valid_utf8_for_any_file_name(trained, tmp_path):
    import os
    image = next((Path(trained["data"]["val"]).parents[2] / "FungiTastic" / "val" / "300p").iterdir())
    odd = os.fsencode(tmp_path) + b"/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        f.write(image.read_bytes())
    code, out, err = run_main(TEST_PY, ["--checkpoint", trained["ckpt"], "--json", "--workers", 0, tmp_path])
    assert code == 0, err
    out.encode("utf-8")  # no lone surrogates: the bytes written are valid UTF-8
    assert json.loads(out)["path"].endswith("caf\\xe9.jpg")
    assert "epoch 1," in err and "epoch 1/1:" in trained["log"]  # one numbering, from 1


def test_open_set_validation_csv_reads_minus_one_only_with_open_set(trained, tmp_path, no_figures):
    def edit(df):
        df.loc[:2, "category_id"] = -1  # unknown species, as in FungiTastic-OpenSet-Val.csv
        return df
    val = _val_copy(trained, tmp_path, edit)
    images = Path(trained["data"]["val"]).parents[2] / "FungiTastic" / "val" / "300p"
    common = ["--checkpoint", trained["ckpt"], "--val-path", val, "--image-root", images, "--workers", 0]
    code, _, err = run_main(VALIDATE, common + ["--output-dir", tmp_path / "o"])
    assert code == 2 and "line 2: category_id is '-1'" in one_line(err) and "--open-set" in err
    code, out, err = run_main(VALIDATE, common + ["--output-dir", tmp_path / "o", "--open-set"])
    assert code == 0, err
    assert "open set (3 unknown of 12 images" in out


# ---------------------------------------------------------------------- as real processes
@pytest.mark.slow
def test_scripts_exit_2_with_one_line(tmp_path):
    proc = run_script("train_multitask.py", *TRAIN, "--epochs", "0", check=False)
    assert proc.returncode == 2 and "argument --epochs: expected an integer ≥ 1, got '0'" in proc.stderr
    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    proc = run_script("validate.py", "--checkpoint", tmp_path / "evil.pth", "--val-path", "v.csv", check=False)
    assert proc.returncode == 2 and one_line(proc.stderr).startswith("error: ") and "pickled" in proc.stderr
