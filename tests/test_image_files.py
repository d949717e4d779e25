"""Only regular files are opened as images (issue 17, item 16): a named pipe listed as an image is a
bad image at once, in training/validation reads and in create_taxonomic_mappings.py --check-images,
never a process blocked forever on ``open``."""
import os
import threading

import pytest
from PIL import Image

from amanita.data import read_image, scan_images


def _in_thread(fn, timeout=20.0):
    """``fn()``'s result or exception, or a failure if it does not return within ``timeout`` seconds (a hang)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)  # a hung open stays in a daemon thread, the test goes on
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"blocked for over {timeout:.0f} s")
    return box


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "0-100.JPG"
    os.mkfifo(path)
    yield path
    try:  # release a reader blocked in open() on the old code, so the daemon thread can end
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_reading_a_named_pipe_as_an_image_is_an_oserror_not_a_hang(fifo):
    box = _in_thread(lambda: read_image(fifo))
    assert isinstance(box.get("error"), OSError) and "named pipe" in str(box["error"])


def test_check_images_reports_a_named_pipe_as_bad(fifo, tmp_path):
    Image.new("RGB", (8, 8), (30, 30, 200)).save(tmp_path / "1-101.JPG")
    box = _in_thread(lambda: scan_images([str(fifo), str(tmp_path / "1-101.JPG")], workers=1))
    assert list(box["value"]) == [str(fifo)] and "not a regular file (a named pipe)" in box["value"][str(fifo)]


def test_open_regular_reads_a_regular_file_and_refuses_a_folder(tmp_path):
    from amanita.io import open_regular
    (tmp_path / "a.bin").write_bytes(b"abc")
    with open_regular(tmp_path / "a.bin") as f:
        assert f.read() == b"abc"
    with pytest.raises(OSError, match="a folder"):
        open_regular(tmp_path)
