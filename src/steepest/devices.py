"""Where the engine's tensors live: ``device: auto | cpu | cuda | cuda:N``.

``auto`` (the default) picks CUDA when ``torch.cuda.is_available()`` and the CPU otherwise, so a
config written on a laptop runs unchanged on a GPU machine. Asking for CUDA where there is none
is a :class:`DeviceError` (a ``ValueError``) with one line that says so, raised before anything
is written to a results database.

Numerics on CUDA: TF32 is switched off for matmuls and convolutions (it would silently turn
float32 products into 10-bit-mantissa ones; float64 is unaffected either way).
"""

from __future__ import annotations

import re

import torch

__all__ = ["DeviceError", "DEVICE_PATTERN", "check_device_name", "resolve_device"]

#: The accepted spellings of a device in a config or on the command line.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class DeviceError(ValueError):
    """A device that is misspelled or not present on this machine."""


def check_device_name(name: str) -> str:
    """Validate the spelling only (no CUDA probe): ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name.strip()):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name.strip()


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``name``; raises :class:`DeviceError` if it is not available here."""
    if isinstance(name, torch.device):
        name = str(name)
    name = check_device_name("auto" if name is None else name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {name!r} was asked for, but CUDA is not available on this machine "
            f"(torch {torch.__version__}); use device: cpu or auto"
        )
    dev = torch.device(name)
    index = 0 if dev.index is None else dev.index
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"device {name!r} was asked for, but this machine has {count} CUDA device(s)"
            f" (cuda:0..cuda:{count - 1})"
        )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda", index)
