"""export.py: ONNX export checked with onnxruntime against PyTorch on the same images."""
import json
import sys

import numpy as np
import pytest
import torch

from amanita.checkpoint import load_checkpoint
from amanita.data import FungiTasticDataset, create_transforms, to_model_input
from amanita.io import UserError
from amanita.taxonomy import Taxonomy, build_taxonomy
from tests.helpers import (TRAIN_IDS, make_image_dataset, rows, run_script, tiny_checkpoint,
                           tiny_single_head_checkpoint)

pytest.importorskip("onnxruntime", reason="optional: pip install -r requirements-test.txt")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_image_dataset(root, n_train=12, n_val=6)
    tax = build_taxonomy([rows(TRAIN_IDS)])
    model, cfg = tiny_checkpoint(root / "teacher.pth", tax)
    proc = run_script("export.py", "--checkpoint", root / "teacher.pth", "--output-dir", root / "out",
                      "--check-csv", data["val"], "--check-images", 100000, "--atol", 1e-4)  # more than its 6 rows
    return dict(root=root, data=data, tax=tax, model=model, cfg=cfg, out=root / "out", stdout=proc.stdout)


@pytest.mark.slow
def test_bundle_holds_six_outputs_data_config_and_taxonomy(exported):
    out, tax = exported["out"], exported["tax"]
    meta = json.loads((out / "model.json").read_text())
    assert list(meta["output_sizes"]) == list(tax.head_sizes())  # five coarse ranks, then the leaf head
    assert len(meta["outputs"]) == 6
    assert meta["output_sizes"] == tax.head_sizes()
    assert meta["data_config"]["input_size"] == [3, 32, 32]
    assert meta["data_config"]["mean"] == list(exported["cfg"]["mean"])
    assert meta["taxonomy_sha256"] == tax.sha256() == Taxonomy.load(out / "taxonomic_mappings.json").sha256()
    import onnx
    proto = onnx.load(str(out / "model.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["amanita_outputs"]) == meta["outputs"]
    assert "onnxruntime = PyTorch on 6 images" in exported["stdout"]  # the images checked, not the flag


@pytest.mark.slow
def test_onnxruntime_equals_pytorch_on_the_same_images_any_batch(exported):
    from amanita.export import compare_outputs, onnx_session
    ds = FungiTasticDataset(exported["data"]["val"], exported["tax"], create_transforms(exported["cfg"], False),
                            input_size=exported["cfg"]["input_size"])
    images = to_model_input(torch.stack([ds[i][0] for i in range(len(ds))]), torch.device("cpu"),
                            exported["cfg"]["mean"], exported["cfg"]["std"])
    session = onnx_session(exported["out"] / "model.onnx")
    for batch in (images[:1], images):  # the batch axis is dynamic
        diffs = compare_outputs(exported["model"], session, batch)
        assert set(diffs) == set(exported["tax"].head_sizes())
        assert max(diffs.values()) < 1e-4
    # the leaf head's ranking, not just its values, is the same
    got = session.run(["leaf" if "leaf" in diffs else "species"], {"image": images.numpy()})[0]
    with torch.no_grad():
        ref = exported["model"](images)
    key = "leaf" if "leaf" in ref else "species"
    np.testing.assert_array_equal(got.argmax(1), ref[key].argmax(1).numpy())


@pytest.mark.slow
def test_check_fails_when_the_file_is_not_the_model(exported):
    from amanita.export import check_export
    changed = _perturbed(exported["model"])  # same architecture, one head's bias moved by 1
    with pytest.raises(UserError, match="differs from PyTorch"):
        check_export(changed, exported["out"] / "model.onnx", torch.randn(2, *exported["cfg"]["input_size"]))


def _perturbed(model):
    import copy
    m = copy.deepcopy(model)
    with torch.no_grad():
        next(iter(m.heads.values())).bias.add_(1.0)
    return m


@pytest.mark.slow
def test_a_single_head_checkpoint_exports_the_leaf_output_its_timm_model_gives(tmp_path):
    """A single-head checkpoint (the old layout: a bare timm classifier's state_dict) exports one output,
    ``leaf``, equal to the timm model's logits: category_id 0..5 are the leaves, nothing is picked."""
    from amanita.checkpoint import load_for_eval
    from amanita.export import HeadTuple, export_onnx, onnx_session, output_sizes
    tax = build_taxonomy([rows(TRAIN_IDS)])
    bare, cfg = tiny_single_head_checkpoint(tmp_path / "single.pth", tax)
    model, _, _, _ = load_for_eval(tmp_path / "single.pth")
    assert export_onnx(model, cfg, tmp_path / "model.onnx") == ["leaf"]
    assert output_sizes(model, cfg["input_size"]) == {"leaf": 6}
    x = torch.randn(3, *cfg["input_size"])
    got = onnx_session(tmp_path / "model.onnx").run(["leaf"], {"image": x.numpy()})[0]
    with torch.no_grad():
        want = bare(x)
        assert torch.equal(HeadTuple(model, ["leaf"])(x)[0], want)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_missing_onnx_says_how_to_install(monkeypatch, tmp_path):
    from amanita import export
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match="pip install .*onnxruntime"):
        export.onnx_session(tmp_path / "x.onnx")


@pytest.mark.slow
def test_bad_checkpoint_is_one_line_exit_2(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    proc = run_script("export.py", "--checkpoint", tmp_path / "bad.pth", "--output-dir", tmp_path / "o", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "model.onnx").exists()


# ---------------------------------------------------------------------- stage, check, then replace (issue 17, item 10)
@pytest.fixture
def previous_export(tmp_path):
    """A checkpoint and an output folder holding a previous export's three files."""
    tax = build_taxonomy([rows(TRAIN_IDS)])
    tiny_checkpoint(tmp_path / "model.pth", tax)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model.onnx", "model.json", "taxonomic_mappings.json"):
        (out / name).write_text(f"previous {name}")
    return tmp_path / "model.pth", out


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _export(argv):
    import export
    from tests.helpers import call_main
    return call_main(export.main, argv)


def test_a_failing_check_leaves_the_previous_export_untouched(previous_export, monkeypatch):
    ckpt, out = previous_export
    before = _files(out)

    def fake_bundle(folder, *a, **k):  # the export itself is checked by the slow tests above
        for name in ("model.onnx", "model.json", "taxonomic_mappings.json"):
            (folder / name).write_text("new, unverified")
        return {"output_sizes": {}}

    def failing_check(model, onnx_path, images, atol):
        assert open(onnx_path).read() == "new, unverified"  # the check reads the staged file
        raise UserError(f"{onnx_path}: onnxruntime differs from PyTorch by more than {atol}: {{'leaf': 0.1}}")
    monkeypatch.setattr("amanita.export.write_bundle", fake_bundle)
    monkeypatch.setattr("amanita.export.check_export", failing_check)
    code, _, err = _export(["--checkpoint", ckpt, "--output-dir", out, "--atol", "1e-30"])
    assert code == 2 and f"{out} keeps its previous files" in err and "differs from PyTorch" in err
    assert _files(out) == before  # no new file, no staging folder left


def test_an_empty_check_csv_stops_before_anything_is_written(previous_export, tmp_path, monkeypatch):
    ckpt, out = previous_export
    before = _files(out)
    (tmp_path / "empty.csv").write_text("filename,category_id,phylum,class,order,family,genus,species\n")
    monkeypatch.setattr("amanita.export.write_bundle", lambda *a, **k: pytest.fail("exported before checking"))
    code, _, err = _export(["--checkpoint", ckpt, "--output-dir", out, "--check-csv", tmp_path / "empty.csv"])
    assert code == 2 and "empty.csv" in err and "no rows" in err
    assert _files(out) == before


@pytest.mark.slow
def test_a_real_export_failing_its_tolerance_replaces_nothing(exported, tmp_path):
    import shutil
    out = tmp_path / "out"
    shutil.copytree(exported["out"], out)
    before = _files(out)
    code, _, err = _export(["--checkpoint", exported["root"] / "teacher.pth", "--output-dir", out,
                            "--check-images", 2, "--atol", "1e-30"])
    assert code == 2 and "failed its check" in err
    assert _files(out) == before


def test_a_model_file_that_fails_its_check_leaves_the_previous_one_untouched(previous_export):
    """--format pth is staged like the ONNX bundle: bf16 weights checked at --atol 1e-30 fail, and the
    previous model.pth (and nothing new) stays in the folder."""
    ckpt, out = previous_export
    (out / "model.pth").write_text("previous model.pth")
    before = _files(out)
    code, _, err = _export(["--format", "pth", "--dtype", "bfloat16", "--checkpoint", ckpt, "--output-dir", out,
                            "--check-images", "2", "--atol", "1e-30"])
    assert code == 2 and f"{out} keeps its previous files" in err and "differs from its checkpoint" in err
    assert _files(out) == before
    code, _, err = _export(["--format", "pth", "--checkpoint", ckpt, "--output-dir", out, "--check-images", "2"])
    assert code == 0, err
    assert load_checkpoint(out / "model.pth")["file"] == "inference"


def test_a_model_file_export_keeps_the_onnx_bundle_beside_it(previous_export):
    """export.py does not own its folder's result set: model.pth written into a folder that holds an
    ONNX bundle leaves the bundle's files where they are."""
    ckpt, out = previous_export
    before = _files(out)
    code, _, err = _export(["--format", "pth", "--checkpoint", ckpt, "--output-dir", out, "--check-images", "0"])
    assert code == 0, err
    after = _files(out)
    assert {k: after[k] for k in before} == before and "model.pth" in after
