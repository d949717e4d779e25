"""Atomic writes: the old file or the new one, never half of one, and no temp file left behind."""
import os

import pytest
import torch

from amanita.io import UserError, _atomic_write, atomic_to_csv, atomic_torch_save, atomic_write_text, \
    read_metadata_csv


def test_atomic_write_replaces_the_file_with_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second ☠")
    assert path.read_text(encoding="utf-8") == "second ☠"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert os.listdir(path.parent) == ["a.txt"]


def test_a_failure_mid_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old contents")

    def half_then_fail(f):
        f.write(b"new but only ha")
        raise OSError("disk full")

    with pytest.raises(UserError, match="cannot write .*a.txt: disk full; the previous a.txt is intact"):
        _atomic_write(path, half_then_fail, "wb")
    assert path.read_text() == "old contents"
    assert os.listdir(tmp_path) == ["a.txt"]  # the temp file is gone


def test_torch_and_csv_writes_round_trip(tmp_path):
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "x.pth")
    assert torch.equal(torch.load(tmp_path / "x.pth", weights_only=True)["w"], torch.arange(3))
    import pandas as pd
    atomic_to_csv(pd.DataFrame({"filename": ["a.jpg"], "category_id": [3]}), tmp_path / "m.csv")
    assert read_metadata_csv(tmp_path / "m.csv", ["filename"]).loc[0, "category_id"] == 3
    with pytest.raises(UserError, match="m.csv is missing column 'genus'"):
        read_metadata_csv(tmp_path / "m.csv", ["filename", "genus"])


def test_provenance_digests(tmp_path):
    import hashlib
    import re
    import subprocess

    from amanita.io import file_sha256, git_sha
    (tmp_path / "f.bin").write_bytes(b"x" * 5_000_000)  # more than one 4 MiB chunk
    assert file_sha256(tmp_path / "f.bin") == hashlib.sha256(b"x" * 5_000_000).hexdigest()
    assert git_sha(tmp_path) is None  # not a git folder
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    (repo / "a.txt").write_text("1")
    for cmd in (["init", "-q"], ["add", "a.txt"], ["commit", "-qm", "one"]):
        subprocess.run(git + cmd, check=True, capture_output=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", head) and git_sha(repo) == head
    (repo / "a.txt").write_text("2")
    assert git_sha(repo) == head + "-dirty"
