"""File helpers shared by every script: atomic writes, metadata CSVs, and errors for people."""
from __future__ import annotations

import functools
import os
import sys
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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")), "wb")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_stream(path: str | os.PathLike, write: Callable[[object], None]) -> None:
    """Atomically write ``path`` with ``write(f)`` on a binary file (e.g. ``torch.save`` then a pause)."""
    _atomic_write(path, write, "wb")


def atomic_to_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    _atomic_write(path, lambda f: f.write(df.to_csv(index=False).encode("utf-8")), "wb")


def read_metadata_csv(path: str | os.PathLike, required: Iterable[str] = ()) -> pd.DataFrame:
    """Read a FungiTastic metadata CSV; a missing file or column is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read as CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{path.name} is missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(c) for c in missing)} ({path})")
    return df


def cli_main(fn: Callable[[], int | None]) -> Callable[[], None]:
    """Run a script's ``main``: user errors become one line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper() -> None:
        from amanita.taxonomy import TaxonomyError
        try:
            code = fn()
        except (UserError, TaxonomyError, FileNotFoundError) as e:
            msg = str(e).strip()
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # output piped into `head`: stop quietly
            sys.stderr.close()
            sys.exit(0)
        sys.exit(code or 0)
    return wrapper


def import_optional(module: str, feature: str, hint: str):
    """Import an optional dependency, or a :class:`UserError` saying which feature needs it and how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{feature} needs the '{module}' package, which is not installed: {hint}") from None
