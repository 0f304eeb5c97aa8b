"""Figures from the results store (matplotlib, Agg backend, written atomically as PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .atomic import atomic_write  # noqa: E402
from .store import RunStore  # noqa: E402

__all__ = ["plot_runs", "X_AXES", "save_figure"]

X_AXES = ("step", "flow_time", "neg_log_loss")
_LOG_FLOW_MAX = 700.0  # exp(700) is near float64's limit: past it, plot log τ on a linear axis


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write a PNG atomically (temp file + rename) and close the figure."""
    try:
        return atomic_write(
            path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        )
    finally:
        plt.close(fig)


def _x_values(cols: dict[str, np.ndarray], x: str) -> tuple[np.ndarray, str, bool]:
    if x == "step":
        return cols["step"].astype(float), "step", True
    if x == "neg_log_loss":
        return -cols["log_loss"], "−log L (summed loss)", True
    lf = cols["log_flow_time"]
    finite = lf[np.isfinite(lf)]
    if finite.size and finite.max() > _LOG_FLOW_MAX:
        return lf, "log flow time", False
    return np.exp(lf), "flow time", True


def plot_runs(
    store: RunStore,
    run_ids: Sequence[int],
    metric: str,
    x: str = "step",
    out: str | Path = "plot.png",
    title: str | None = None,
) -> Path:
    """Plot ``metric`` against ``x`` for several runs; log axes where the values allow.

    The first separated step of each run is marked (for ``x="step"``). Raises ``ValueError``
    naming the valid metrics when a run has no such metric.
    """
    if x not in X_AXES:
        raise ValueError(f"unknown x axis {x!r}; valid: {', '.join(X_AXES)}")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xlog, ylog = True, True
    any_data = False
    for rid in run_ids:
        rec = store.get_run(rid)
        cols = store.metrics(rid)
        if metric not in cols:
            valid = sorted(k for k in cols if k != "step")
            raise ValueError(
                f"run {rid} has no metric {metric!r}; valid metrics: {', '.join(valid)}"
            )
        xv, xlabel, can_log = _x_values(cols, x)
        yv = cols[metric]
        ok = np.isfinite(xv) & np.isfinite(yv)
        xv, yv = xv[ok], yv[ok]
        if not xv.size:
            continue
        any_data = True
        xlog = xlog and can_log and bool((xv > 0).any())
        ylog = ylog and bool((yv > 0).all()) and (yv.max() / max(yv.min(), 1e-300) > 100)
        label = f"{rec.id}: {rec.info.get('label', rec.algorithm)} (seed {rec.seed})"
        (line,) = ax.plot(xv, yv, label=label, lw=1.4)
        sep = rec.info.get("separated_at")
        if x == "step" and sep is not None and sep > 0:
            ax.axvline(sep, color=line.get_color(), ls=":", lw=1)
    if not any_data:
        plt.close(fig)
        raise ValueError(f"no finite values of {metric!r} to plot for runs {list(run_ids)}")
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out)
