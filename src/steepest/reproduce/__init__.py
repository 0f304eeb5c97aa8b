"""One command per reproduced figure: ``steepest reproduce NAME [--size quick|full]``.

Each experiment has a spec ``configs/NAME.yaml`` (also reachable as ``experiments/NAME.yaml``
at the repository root): the paper's claim, which values are our defaults, one or more
engine configs ("batches"), and per-size overrides. Its ``run`` function trains the batches,
runs the theorem checks, writes PNG figures, ``report.md`` and ``results.json``.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from ..devices import resolve_device
from .report import Report

__all__ = ["EXPERIMENTS", "Report", "reproduce", "experiment_names"]

#: name -> "module:function" (imported lazily; each takes (size, out, device) and returns a Report)
EXPERIMENTS: dict[str, str] = {
    "flavors-f1": "steepest.reproduce.flavors:run_f1",
    "flavors-f2": "steepest.reproduce.adam:run_f2",
    "flavors-f3": "steepest.reproduce.spectral:run_f3",
    "gronich-vardi": "steepest.reproduce.gronich_vardi:run",
    "lyu-li": "steepest.reproduce.lyu_li:run",
    "linear": "steepest.reproduce.linear:run",
}


def experiment_names() -> list[str]:
    return sorted(EXPERIMENTS)


def reproduce(
    name: str, size: str = "quick", out: str | Path | None = None, device: str | None = None
) -> Report:
    """Run a reproduction and write its report into ``out`` (default ``./reproduce/NAME``).

    ``device`` (``auto | cpu | cuda | cuda:N``; default: each batch config's, ``auto``) is where
    the engine batches train; it is checked before anything is written.
    """
    if name not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment {name!r}; valid names: {', '.join(experiment_names())}"
        )
    if device is not None:
        resolve_device(device)  # one clear line now, rather than after a first batch has run
    module, func = EXPERIMENTS[name].split(":")
    out_dir = Path(out) if out is not None else Path("reproduce") / name
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report: Report = getattr(importlib.import_module(module), func)(
        size=size, out=out_dir, device=device
    )
    report.seconds = time.perf_counter() - t0  # the whole reproduction: training, checks, figures
    report.write(out_dir)
    return report
