"""Files written atomically: a temp file beside the target, fsync, then ``os.replace``.

A crash, a kill or a full disk leaves the old file or the new one, never half of one, and a
write that fails removes its temp file. Temp files are named ``.NAME.PID.tmp``, so that
:func:`steepest.checkpoints.remove_stale_temps` can tell those that dead writers left. Every
file the package writes goes through :func:`atomic_write`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "temp_path"]


def temp_path(path: Path) -> Path:
    """The temp file beside ``path`` that this process writes before the rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` the content into a temp file beside ``path`` (created with its folder),
    fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
