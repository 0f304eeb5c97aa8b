"""Checkpoint files: written atomically, read safely.

A checkpoint is a ``torch.save`` of a dict of CPU tensors and plain values (the engine's batch
state, ``steepest.engine``). Writing goes through a temp file beside the target, ``fsync`` and
``os.replace``, so a crash or a full disk never leaves a half-written checkpoint under the real
name, nor a temp file behind. Reading uses ``weights_only=True`` (no arbitrary pickles), and
every way a file can be bad (missing, truncated, corrupt, malicious, not ours) is one
``ValueError`` that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write

__all__ = ["atomic_torch_save", "load_checkpoint", "remove_stale_temps"]


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically; a failed write leaves no temp file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    require: tuple[str, ...] = ("version", "params"),
) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` onto ``device``; ``ValueError`` naming the
    file if it is missing, unreadable, or lacks the keys in ``require``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        sd = torch.load(path, weights_only=True, map_location=device)
    except Exception as exc:  # torch raises several types for truncated, corrupt or unsafe files
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {first}); "
            "it is truncated, corrupt, unsafe or not a steepest checkpoint"
        ) from None
    if not isinstance(sd, dict) or any(k not in sd for k in require):
        raise ValueError(
            f"checkpoint {path} is not a steepest engine checkpoint (missing {', '.join(require)})"
        )
    return sd


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files that writers killed mid-write (SIGKILL cannot be caught) left in
    ``folder``: ``.NAME.PID.tmp`` of any process but this one. Call it only while owning the
    batch whose folder it is. Returns what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) != os.getpid():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
