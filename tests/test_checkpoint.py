"""amanita.checkpoint.update_checkpoint: fields added atomically, plain types only."""
import pytest
import torch

from amanita.checkpoint import load_checkpoint, update_checkpoint
from amanita.io import UserError


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
