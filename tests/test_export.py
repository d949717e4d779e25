"""export.py: ONNX export checked with onnxruntime against PyTorch on the same images."""
import json
import sys

import numpy as np
import pytest
import torch

from amanita.data import FungiTasticDataset, create_transforms, to_model_input
from amanita.io import UserError
from amanita.taxonomy import Taxonomy, build_taxonomy
from tests.helpers import TRAIN_IDS, make_image_dataset, rows, run_script, tiny_checkpoint

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
