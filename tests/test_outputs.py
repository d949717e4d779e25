"""Outputs never replace inputs, and an unusable output folder is said before any work (issue 17, items 9 and 17)."""
import copy
import errno

import pytest

import compute_class_weights
import create_taxonomic_mappings
from amanita import cli
from amanita.config import DistillConfig, MultitaskTrainConfig
from amanita.data import read_split
from amanita.demo.synthetic_predictions import synthetic_predictions, synthetic_taxonomy
from amanita.evaluate import summary_lines, validate
from amanita.identify import identify
from amanita.io import UserError
from amanita.predictions import write_predictions
from amanita.taxonomy import build_taxonomy
from tests.helpers import call_main, in_process, make_image_dataset, one_line, tiny_checkpoint

TEST_PY = in_process(lambda argv: identify(cli.parse_identify_config("test.py", argv)))
VALIDATE = in_process(lambda argv: print("\n".join(summary_lines(validate(
    cli.parse_validate_config("validate.py", argv))))))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    data = make_image_dataset(root, n_train=6, n_val=6)
    tax = build_taxonomy([read_split(data["train"])])
    tax.save(root / "m.json")
    tiny_checkpoint(root / "model.pth", tax)
    return dict(root=root, tax=tax, train=data["train"], val=data["val"], ckpt=root / "model.pth",
                mappings=root / "m.json")


def _unchanged(paths):
    return {p: p.read_bytes() for p in paths}


@pytest.mark.parametrize("target", ["ckpt", "val"])
def test_submission_onto_the_checkpoint_or_the_test_csv_is_refused(files, target):
    before = _unchanged([files["ckpt"], files["val"]])
    code, _, err = call_main(TEST_PY, ["--checkpoint", files["ckpt"], "--submission", files[target],
                                       "--test-path", files["val"]])
    flag = {"ckpt": "--checkpoint", "val": "--test-path"}[target]
    assert code == 2 and f"--submission {files[target]} is the {flag} file" in one_line(err)
    assert _unchanged([files["ckpt"], files["val"]]) == before


def test_a_link_to_an_input_is_the_input(files, tmp_path):
    from amanita.io import check_not_inputs
    (tmp_path / "sub.csv").symlink_to(files["ckpt"])
    with pytest.raises(UserError, match="is the --checkpoint file"):
        check_not_inputs({"--submission": tmp_path / "sub.csv"}, {"--checkpoint": files["ckpt"]})
    check_not_inputs({"--submission": tmp_path / "other.csv"}, {"--checkpoint": files["ckpt"], "--mappings": None})


def test_create_taxonomic_mappings_output_onto_the_training_csv_is_refused(files):
    before = _unchanged([files["train"]])
    code, _, err = call_main(create_taxonomic_mappings.main,
                             ["--train-path", files["train"], "--output", files["train"]])
    assert code == 2 and "--output" in one_line(err) and "is the --train-path file" in err
    assert _unchanged([files["train"]]) == before


@pytest.mark.parametrize("target,flag", [("train", "--train-path"), ("mappings", "--mappings")])
def test_compute_class_weights_output_onto_an_input_is_refused(files, target, flag):
    before = _unchanged([files["train"], files["mappings"]])
    code, _, err = call_main(compute_class_weights.main, ["--train-path", files["train"], "--mappings",
                                                          files["mappings"], "--output", files[target]])
    assert code == 2 and f"is the {flag} file" in one_line(err)
    assert _unchanged([files["train"], files["mappings"]]) == before


# ---------------------------------------------------------------------- validate.py's output folder
@pytest.fixture(scope="module")
def preds(tmp_path_factory):
    root = tmp_path_factory.mktemp("preds")
    tax = synthetic_taxonomy({"phylum": 2, "class": 3, "order": 4, "family": 5, "genus": 6, "species": 8, "leaf": 9})
    tax.save(root / "m.json")
    write_predictions(synthetic_predictions(tax, 40, seed=0), root / "predictions.csv", tax)
    return root, tax


def test_an_output_dir_that_is_a_file_is_refused_before_any_inference(preds, tmp_path, monkeypatch):
    root, _ = preds
    (tmp_path / "out").write_text("a file")

    def no_inference(*a, **k):
        raise AssertionError("inference ran before the output folder was checked")
    monkeypatch.setattr("amanita.evaluate.load_predictions", no_inference)
    code, _, err = call_main(VALIDATE, ["--from-predictions", root / "predictions.csv", "--mappings", root / "m.json",
                                        "--output-dir", tmp_path / "out"])
    assert code == 2 and f"--output-dir {tmp_path / 'out'} is a file" in one_line(err)


def test_a_full_disk_while_writing_the_report_names_the_folder(preds, tmp_path, monkeypatch):
    root, _ = preds

    def disk_full(*a, **k):  # what matplotlib's savefig raises on a full disk: no file name
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("amanita.evaluate.make_figures", disk_full)
    out = tmp_path / "report"
    code, _, err = call_main(VALIDATE, ["--from-predictions", root / "predictions.csv", "--mappings", root / "m.json",
                                        "--output-dir", out])
    line = one_line(err)
    assert code == 2 and str(out) in line and "No space left on device" in line and "intact" in line
    assert [p.name for p in out.iterdir()] == []  # nothing half-written, no staging folder left


def test_figure_names_are_bounded_and_stay_distinct():
    from amanita.report.figures import SLUG_MAX, slug
    a, b = "Amanita " + "x" * 302, "Amanita " + "x" * 301 + "y"
    assert len(slug(a)) <= SLUG_MAX and len(slug(b)) <= SLUG_MAX and slug(a) != slug(b)
    assert slug("Amanita phalloides") == "amanita_phalloides"
    assert slug("Cortinarius orellanus é").isascii()  # 80 characters of UTF-8 could pass 255 bytes


@pytest.mark.slow
def test_a_very_long_focus_species_gets_a_bounded_file_name(preds, tmp_path, monkeypatch):
    tax = copy.deepcopy(preds[1])
    long_name = "Amanita " + "x" * 302  # 310 characters: over the 255-byte file-name limit
    tax.classes["species"][0] = long_name
    tax.save(tmp_path / "m.json")
    write_predictions(synthetic_predictions(tax, 40, seed=0), tmp_path / "predictions.csv", tax)
    out = tmp_path / "o"
    code, _, err = call_main(VALIDATE, ["--from-predictions", tmp_path / "predictions.csv", "--mappings",
                                        tmp_path / "m.json", "--output-dir", out, "--focus-species", long_name])
    assert code == 0, err
    focus = [p.name for p in out.glob("focus_*.png")]
    assert len(focus) == 1 and len(focus[0]) <= 100 and focus[0].startswith("focus_amanita_xxx")


# ---------------------------------------------------------------------- training and subsets
def test_a_training_run_never_writes_over_its_teacher_or_init_from(files, tmp_path):
    from amanita.training import train
    save = tmp_path / "run"
    save.mkdir()
    teacher = save / "best_model.pth"
    teacher.write_bytes(files["ckpt"].read_bytes())
    before = teacher.read_bytes()
    d = ["--train-path", files["train"], "--val-path", files["val"], "--mappings", files["mappings"],
         "--save-dir", save]
    for flag in ("--init-from", "--teacher"):
        parser = cli.build_train_parser("t", multitask=True)
        cls = MultitaskTrainConfig
        if flag == "--teacher":
            cli.add_distill_args(parser)
            cls = DistillConfig
        main = in_process(lambda argv, p=parser, c=cls: train(cli.parse_config(p, c, argv)))
        code, _, err = call_main(main, [*d, flag, teacher])
        assert code == 2 and f"--save-dir {teacher} is the {flag} file" in one_line(err)
    assert teacher.read_bytes() == before and sorted(p.name for p in save.iterdir()) == ["best_model.pth"]


def test_create_minimal_subset_never_writes_over_its_input(files, tmp_path):
    import create_minimal_subset
    src = tmp_path / "FungiTastic-Train-Minimal.csv"
    src.write_bytes(files["train"].read_bytes())
    code, _, err = call_main(create_minimal_subset.main, ["--train-path", src, "--val-path", files["val"],
                                                             "--n-train", 2, "--output-dir", tmp_path])
    assert code == 2 and "is the --train-path file" in one_line(err) and src.read_bytes() == files["train"].read_bytes()
