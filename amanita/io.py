"""File helpers shared by every script: atomic writes, metadata CSVs, and errors for people."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd


class UserError(Exception):
    """A problem with the user's input: scripts print its one-line message, not a traceback."""


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
def staged_output(out: str | os.PathLike, prefix: str = ".staging-", known: Iterable[str] = ()):
    """A temporary folder inside ``out``; its files replace those in ``out`` only when the block succeeds.

    So a run that fails half-way leaves the previous results whole. Staging folders of
    processes that no longer run (killed runs) are deleted on entry. The run owns the folder's
    result set: files an earlier run wrote through here (listed in :data:`MANIFEST`; in a folder
    from before manifests, the names in ``known``) that this run did not write are removed, so
    no stale file joins the new results (see :func:`replace_result_set`).
    """
    import shutil
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{prefix}*-*"):
        pid = old.name[len(prefix):].split("-")[0]
        if old.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=out))
    try:
        yield stage
        replace_result_set(stage, out, known)
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
    new = sorted(f.name for f in stage.iterdir())
    old = _manifest(out) | {n for n in known if (out / n).is_file()}
    stale = sorted(old - set(new) - {MANIFEST})
    atomic_write_text(out / MANIFEST, json.dumps(sorted(set(new) | set(stale))))
    for name in new:
        os.replace(stage / name, out / name)
    for name in stale:
        if (out / name).is_file() and not (out / name).is_symlink():
            (out / name).unlink()
    atomic_write_text(out / MANIFEST, json.dumps(new))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def load_tensor_file(path: str | os.PathLike, what: str):
    """``torch.load(path, weights_only=True)``; a missing, pickled-code or foreign file is a :class:`UserError`.

    ``what`` says what the file should have been, for the message.
    """
    import pickle

    import torch
    if not Path(path).is_file():
        raise UserError(f"{path}: file not found (expected {what})")
    try:
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
