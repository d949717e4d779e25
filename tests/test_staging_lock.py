"""Staging folders (amanita.io.staged_output): a live run's folder is never deleted, whatever PID namespace it runs in.

Liveness is an ``fcntl`` lock on ``.lock`` inside the folder, held for the life of the run; the
PID in the folder's name means nothing on another host or in another container (issue 17, item 8).
"""
import fcntl
import os
import time

from amanita.io import MANIFEST, staged_output


def _run_folder(parent, name: str):
    folder = parent / name
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    return folder


def _hold_lock(folder):
    """Lock ``folder/.lock`` as the run that owns it does; returns the descriptor (closing it releases)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_live_run_from_another_pid_namespace_keeps_its_staging_folder(tmp_path):
    # PID 999999999 exists in no namespace here: the old PID-table test called this run dead
    live = _run_folder(tmp_path, ".staging-999999999-ab12")
    fd = _hold_lock(live)
    try:
        with staged_output(tmp_path) as stage:
            (stage / "predictions.csv").write_text("new")
        assert live.is_dir() and (live / "metrics.json").read_text() == "{}"
    finally:
        os.close(fd)
    assert (tmp_path / "predictions.csv").read_text() == "new" and not stage.exists()


def test_a_staging_folder_whose_lock_nobody_holds_is_removed_even_if_its_pid_is_alive(tmp_path):
    # the name's PID is a live process here (PID reuse, or a host where the number means another process)
    dead = _run_folder(tmp_path, f".staging-{os.getppid()}-cd34")
    os.close(_hold_lock(dead))  # the run died: the kernel dropped its lock
    with staged_output(tmp_path) as stage:
        (stage / "a.csv").write_text("x")
    assert not dead.exists()


def test_the_running_stage_holds_its_lock_and_the_lock_file_stays_behind(tmp_path):
    with staged_output(tmp_path) as stage:
        (stage / "report.html").write_text("<p>")
        fd = os.open(stage / ".lock", os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
        finally:
            os.close(fd)
        assert held
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "report.html"]  # no .lock, no staging folder


def test_a_folder_without_a_lock_file_is_left_alone_while_young(tmp_path):
    young = _run_folder(tmp_path, ".staging-1-young")  # a run between mkdtemp and taking its lock
    old = _run_folder(tmp_path, ".staging-2-old")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    with staged_output(tmp_path):
        pass
    assert young.is_dir() and not old.exists()
