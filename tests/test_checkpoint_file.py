"""A file that is not a whole amanita checkpoint is one line at the loading boundary, in every script
that loads one (issue 17, item 12): a published ``{"model": state_dict}``, an emptied ``data_config``."""
import pytest
import torch

from amanita import cli
from amanita.checkpoint import load_checkpoint, load_for_eval
from amanita.evaluate import summary_lines, validate
from amanita.identify import identify
from amanita.io import UserError
from amanita.training import train
from tests.helpers import SMALL_MODEL, call_main, image_dataset_and_taxonomy, in_process, one_line, tiny_checkpoint

TEST_PY = in_process(lambda argv: identify(cli.parse_identify_config("test.py", argv)))
VALIDATE = in_process(lambda argv: print("\n".join(summary_lines(validate(
    cli.parse_validate_config("validate.py", argv))))))
TRAIN = in_process(lambda argv: train(cli.parse_train_config("t", True, argv)))


def _distill(argv):
    import distill
    return train(distill.parse_args(argv))


DISTILL = in_process(_distill)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_files")
    data, tax = image_dataset_and_taxonomy(root, n_train=6, n_val=6, mappings=root / "m.json")
    model, _ = tiny_checkpoint(root / "whole.pth", tax)
    torch.save({"model": model.state_dict()}, root / "bare.pth")  # the usual layout of published checkpoints
    whole = torch.load(root / "whole.pth", weights_only=True)
    torch.save(dict(whole, data_config={}), root / "no_config.pth")
    torch.save(dict(whole, data_config={k: v for k, v in whole["data_config"].items() if k != "mean"}),
               root / "no_mean.pth")
    return dict(root=root, data=data, tax=tax)


BAD = [("bare.pth", "holds model weights without 'taxonomy', 'architecture', 'data_config'"),
       ("no_config.pth", "holds model weights without 'data_config'"),
       ("no_mean.pth", "its data_config lacks mean")]


@pytest.mark.parametrize("name,said", BAD)
def test_the_loading_boundary_says_what_the_file_is_and_what_is_expected(files, name, said):
    with pytest.raises(UserError) as e:
        load_for_eval(files["root"] / name)
    assert said in str(e.value) and "train_multitask.py" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert "model" in load_checkpoint(files["root"] / name)  # without a model to rebuild, the weights still load


def _train_flags(files, save_dir):
    d = files["data"]
    return ["--train-path", d["train"], "--val-path", d["val"], "--mappings", files["root"] / "m.json", *SMALL_MODEL,
            "--batch-size", 6, "--workers", 0, "--epochs", 1, "--auto-augment", "none", "--save-dir", save_dir]


@pytest.mark.parametrize("name,said", BAD)
@pytest.mark.parametrize("script", ["test.py", "validate.py", "export.py", "distill --teacher", "--init-from"])
def test_every_script_refuses_it_in_one_line(files, tmp_path, script, name, said):
    ckpt, d = files["root"] / name, files["data"]
    if script == "test.py":
        code, _, err = call_main(TEST_PY, ["--checkpoint", ckpt, d["val"]])
    elif script == "validate.py":
        code, _, err = call_main(VALIDATE, ["--checkpoint", ckpt, "--val-path", d["val"], "--output-dir", tmp_path])
    elif script == "export.py":
        pytest.importorskip("onnxscript", reason="export.py needs the optional ONNX packages")
        import export
        code, _, err = call_main(export.main, ["--checkpoint", ckpt, "--output-dir", tmp_path / "exp"])
    elif script == "distill --teacher":
        code, _, err = call_main(DISTILL, ["--teacher", ckpt, *_train_flags(files, tmp_path / "s")])
    else:
        code, _, err = call_main(TRAIN, ["--init-from", ckpt, *_train_flags(files, tmp_path / "s")])
    assert code == 2 and said in one_line(err) and str(ckpt) in err


def test_a_model_only_last_pth_is_not_resumed(files, tmp_path):
    save = tmp_path / "run"
    save.mkdir()
    whole = torch.load(files["root"] / "whole.pth", weights_only=True)
    torch.save(whole, save / "last.pth")  # weights, taxonomy and data config, but no optimizer or position
    code, _, err = call_main(TRAIN, _train_flags(files, save))
    assert code == 2 and "cannot be resumed" in err and "optimizer" in err and "last.pth" in err
