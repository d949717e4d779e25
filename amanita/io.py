"""File helpers shared by every script: atomic writes, metadata CSVs, and errors for people."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd


from amanita.config import UserError  # noqa: F401  (defined with the contract; raised everywhere)


def _atomic_write(path: str | os.PathLike, write: Callable[[object], None], mode: str) -> None:
    """Write through a temp file in the same folder, fsync, then rename over ``path``.

    A kill at any instant leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_write_failure(e):
            raise UserError(f"cannot write {path}: {_write_reason(e)}; the previous "
                            f"{path.name} is {'intact' if path.exists() else 'absent'}") from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _is_write_failure(e: BaseException) -> bool:
    """An OS write error, or torch.save's C++ writer failing (it reports a full disk as an "enforce fail")."""
    if isinstance(e, OSError):
        return True
    return isinstance(e, RuntimeError) and ("enforce fail" in str(e) or "PytorchStreamWriter" in str(e))


def _write_reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return e.strerror or str(e)
    reason = e.strerror if isinstance(e, OSError) and e.strerror else "the writer failed part-way"
    return f"{reason} (is the disk full?)"


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, prefix: str = ".staging-", inputs: dict | None = None,
                  known: Iterable[str] = (), owns: bool = True):
    """A temporary folder inside ``out``; its files replace those in ``out`` only when the block succeeds.

    So a run that fails half-way leaves the previous results whole. A run holds an ``fcntl``
    lock on ``.lock`` in its staging folder for as long as it lives; folders whose lock nobody
    holds (killed runs, on any host or PID namespace sharing the file system) are deleted on
    entry. ``inputs`` (``{flag: path}``): files the staged ones must not replace (see
    :func:`check_not_inputs`). A write that fails (disk full, read-only) names ``out``.
    The run owns the folder's result set: files an earlier run wrote through here (listed in
    :data:`MANIFEST`; in a folder from before manifests, the names in ``known``) that this run
    did not write are removed, so no stale file joins the new results (see :func:`replace_result_set`).
    ``owns=False`` (a folder several kinds of output share, e.g. export.py's ONNX bundle and
    model.pth): only the staged files are replaced, nothing else is removed.
    """
    import shutil
    out = check_output_dir(out, create=True)
    for old in out.glob(f"{prefix}*-*"):
        if old.is_dir() and not old.is_symlink():
            _remove_if_abandoned(old)
    stage = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=out))
    try:
        with _held_lock(stage):
            try:
                yield stage
            except OSError as e:
                if e.errno in _FULL or e.errno == errno.EROFS or (e.filename and str(stage) in str(e.filename)):
                    raise UserError(f"cannot write into {out}: {_write_reason(e)}; "
                                    "the previous results there are intact") from None
                raise
            staged = sorted(f for f in stage.iterdir() if f.name != _LOCK)
            for f in staged:
                check_not_inputs({"output": out / f.name}, inputs or {})
            if owns:
                replace_result_set(stage, out, known)
            else:
                for f in staged:
                    os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


MANIFEST = ".amanita-results.json"  # in an output folder: the names of the result files a run wrote there


def _manifest(out: Path) -> set[str]:
    """The names a manifest lists (plain file names only: nothing outside ``out`` is ever named)."""
    import json
    try:
        names = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {n for n in names if isinstance(n, str) and n == Path(n).name and n not in ("", ".", "..")} \
        if isinstance(names, list) else set()


def replace_result_set(stage: Path, out: Path, known: Iterable[str] = ()) -> None:
    """Move the files of ``stage`` into ``out``, then remove the earlier result files this run did not write.

    Each file is replaced atomically. The manifest lists, at every instant, every result file in
    ``out`` (first the union of old and new, at the end the new set), so a run killed between
    two steps leaves the next one what it needs to finish the clean-up.
    """
    import json
    new = sorted(f.name for f in stage.iterdir() if f.name != _LOCK)
    old = _manifest(out) | {n for n in known if (out / n).is_file()}
    stale = sorted(old - set(new) - {MANIFEST})
    atomic_write_text(out / MANIFEST, json.dumps(sorted(set(new) | set(stale))))
    for name in new:
        os.replace(stage / name, out / name)
    for name in stale:
        if (out / name).is_file() and not (out / name).is_symlink():
            (out / name).unlink()
    atomic_write_text(out / MANIFEST, json.dumps(new))


_LOCK = ".lock"  # in a staging folder: locked (fcntl) by the run that writes there, for its whole life
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def _held_lock(folder: Path):
    """An exclusive ``fcntl`` lock on ``folder/.lock`` for the block; the kernel drops it when the process dies."""
    import fcntl
    fd = os.open(folder / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:  # a file system without locks: no one else can lock it either, so it is kept
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_if_abandoned(folder: Path, grace_s: float = 60.0) -> bool:
    """Delete a staging folder whose lock no process holds; returns whether it was deleted.

    A live run's lock fails our non-blocking attempt, whatever host or PID namespace it runs in
    (the PID in the name is only informative). A folder without a lock file is a run between
    ``mkdtemp`` and taking its lock, unless it is older than ``grace_s`` seconds.
    """
    import fcntl
    import shutil
    import time
    try:
        fd = os.open(folder / _LOCK, os.O_RDWR)
    except FileNotFoundError:
        try:
            young = time.time() - folder.stat().st_mtime < grace_s
        except OSError:
            return False
        if not young:
            shutil.rmtree(folder, ignore_errors=True)
        return not young
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: the run is alive
        return False
    else:
        shutil.rmtree(folder, ignore_errors=True)  # still holding the lock, so no one revives it meanwhile
        return True
    finally:
        os.close(fd)


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def check_not_inputs(outputs: dict, inputs: dict) -> None:
    """Refuse an output that is one of the inputs, before anything is written.

    ``outputs`` and ``inputs`` map a flag (``--submission``) to its path (None: not given).
    Hard links and symbolic links to an input count as the input.
    """
    for out_flag, out_path in outputs.items():
        if out_path is None:
            continue
        for in_flag, in_path in inputs.items():
            if in_path is not None and _same_file(out_path, in_path):
                raise UserError(f"{out_flag} {out_path} is the {in_flag} file {in_path}: refusing to overwrite "
                                "an input; choose another output path")


def check_output_dir(folder: str | os.PathLike, flag: str = "output folder", create: bool = False) -> Path:
    """``folder`` checked writable before any work (created with ``create``); a :class:`UserError` otherwise.

    So a file in its place, a read-only or a full disk stops the script at once, not after an hour
    of inference. Without ``create`` a missing folder is not made: its nearest existing parent is probed.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file, not a folder")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {folder} cannot be made: {probe} is a file, not a folder")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder
        with tempfile.TemporaryFile(prefix=".probe-", dir=probe) as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"cannot write into {flag} {folder}: {_write_reason(e)}") from None
    return folder


def check_output_file(path: str | os.PathLike, flag: str, inputs: dict | None = None) -> Path:
    """An output file's path checked before any work: not a folder, not an input, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    check_not_inputs({flag: path}, inputs or {})
    check_output_dir(path.parent, f"the folder of {flag}")
    return path


def open_regular(path: str | os.PathLike):
    """``open(path, "rb")`` for a regular file only: a named pipe, device or socket is an ``OSError``, never a hang.

    Opened non-blocking first (a FIFO without a writer would block ``open`` itself), then checked with ``fstat``.
    """
    import stat
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode)
                    else "a device or socket")
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")), "wb")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_stream(path: str | os.PathLike, write: Callable[[object], None]) -> None:
    """Atomically write ``path`` with ``write(f)`` on a binary file (e.g. ``torch.save`` then a pause)."""
    _atomic_write(path, write, "wb")


def atomic_to_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    _atomic_write(path, lambda f: f.write(df.to_csv(index=False).encode("utf-8")), "wb")


def load_tensor_file(path: str | os.PathLike, what: str, mmap: bool = False):
    """``torch.load(path, weights_only=True)``; a missing, pickled-code or foreign file is a :class:`UserError`.

    ``what`` says what the file should have been, for the message. ``mmap=True`` maps the file
    instead of reading it: tensors that are never used (an optimizer's state) cost nothing.
    """
    import pickle

    import torch
    if not Path(path).is_file():
        raise UserError(f"{path}: file not found (expected {what})")
    try:
        if mmap and zipfile.is_zipfile(path):  # torch.save's format since 1.6; older files are read whole
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        why = ("it holds pickled Python objects, which are not loaded for safety"
               if "weights_only" in str(e) or "Unsupported global" in str(e) else f"not a PyTorch file: {first[:120]}")
        raise UserError(f"{path} cannot be loaded as {what} ({why})") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} cannot be loaded as {what} (not a torch.save file: "
                        f"{type(e).__name__}: {first[:120]})") from None


def read_metadata_csv(path: str | os.PathLike, required: Iterable[str] = (), columns: Iterable[str] | None = None,
                      rows: Iterable[int] | None = None) -> pd.DataFrame:
    """Read a FungiTastic metadata CSV; a missing file or column is a :class:`UserError`.

    ``columns``: only these (those present; the required ones are added), so unused text such
    as ``captions`` is never turned into Python objects. ``rows``: only these data rows
    (0-based), indexed by their position in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    wanted = None if columns is None else set(columns) | set(required)
    rows = None if rows is None else sorted({int(r) for r in rows})
    lines = None if rows is None else {r + 1 for r in rows} | {0}  # line 0 is the header
    try:
        df = pd.read_csv(path, low_memory=False, usecols=None if wanted is None else wanted.__contains__,
                         skiprows=None if lines is None else (lambda line: line not in lines))
        if rows is not None:
            df.index = pd.Index(rows[: len(df)])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read as CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{path.name} is missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(c) for c in missing)} ({path})")
    return df


def import_optional(module: str, feature: str, hint: str):
    """Import an optional dependency, or a :class:`UserError` saying which feature needs it and how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{feature} needs the '{module}' package, which is not installed: {hint}") from None


# ---------------------------------------------------------------------- provenance
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_sha(repo: str | os.PathLike | None = None) -> str | None:
    """The checked-out commit (with ``-dirty`` for local changes), or None outside git."""
    cwd = repo or Path(__file__).resolve().parent  # the package's checkout, wherever the script runs
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")
