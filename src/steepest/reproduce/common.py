"""Shared machinery of the reproductions: specs, size overrides, training, tables, figures."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from ..devices import resolve_device  # noqa: E402
from ..engine import TrainResult, train  # noqa: E402
from ..plots import save_figure  # noqa: E402
from ..store import RunStore  # noqa: E402
from ..tables import markdown_table  # noqa: E402

CONFIG_DIR = Path(__file__).parent / "configs"
SIZES = ("smoke", "quick", "full")

__all__ = [
    "load_spec",
    "batch_configs",
    "run_batches",
    "train_batches",
    "BatchRuns",
    "flavor_matrix",
    "plot_margin_panels",
    "CONFIG_DIR",
]


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (lists are replaced, not merged)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_spec(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"no experiment spec {path}")
    spec = yaml.safe_load(path.read_text())
    for key in ("name", "title", "claim", "batches", "sizes"):
        if key not in spec:
            raise ValueError(f"{path}: missing key {key!r}")
    return spec


def batch_configs(spec: dict[str, Any], size: str) -> dict[str, dict[str, Any]]:
    """Engine configs per batch at ``size``: ``sizes.<size>`` (applies to every batch) and
    ``sizes.<size>.batches.<batch>`` (one batch) are merged over the base."""
    if size not in spec["sizes"]:
        raise ValueError(
            f"unknown size {size!r} for {spec['name']}; valid: {', '.join(spec['sizes'])}"
        )
    over = dict(spec["sizes"][size] or {})
    per_batch = over.pop("batches", {}) or {}
    out = {}
    for bname, base in spec["batches"].items():
        cfg = deep_merge(base, over)
        cfg = deep_merge(cfg, per_batch.get(bname, {}))
        cfg["name"] = f"{spec['name']}/{bname}/{size}"
        out[bname] = cfg
    return out


@dataclass
class BatchRuns:
    name: str
    config: dict[str, Any]
    result: TrainResult
    metrics: list[dict[str, np.ndarray]]
    infos: list[dict[str, Any]]

    @property
    def labels(self) -> list[str]:
        return self.result.labels

    def by_label(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, lab in enumerate(self.labels):
            out.setdefault(lab, []).append(i)
        return out


def merge_batches(batches: Sequence[BatchRuns]) -> list[BatchRuns]:
    """Merge batches named "X" and "X+suffix" (same data and model, trained separately) into
    one "X" for tables and figures; run ids, labels, metrics and infos are concatenated."""
    groups: dict[str, list[BatchRuns]] = {}
    for b in batches:
        groups.setdefault(b.name.split("+")[0], []).append(b)
    merged = []
    for name, parts in groups.items():
        if len(parts) == 1:
            merged.append(
                parts[0]
                if parts[0].name == name
                else BatchRuns(
                    name, parts[0].config, parts[0].result, parts[0].metrics, parts[0].infos
                )
            )
            continue
        res = TrainResult(
            run_ids=[r for p in parts for r in p.result.run_ids],
            batch="+".join(p.result.batch for p in parts),
            db=parts[0].result.db,
            final=[f for p in parts for f in p.result.final],
            labels=[lab for p in parts for lab in p.result.labels],
            statuses=[st for p in parts for st in p.result.statuses],
        )
        merged.append(
            BatchRuns(
                name,
                parts[0].config,
                res,
                [m for p in parts for m in p.metrics],
                [i for p in parts for i in p.infos],
            )
        )
    return merged


def run_batches(
    spec: dict[str, Any], size: str, out: Path, device: str | None = None
) -> tuple[list[BatchRuns], float]:
    """Train every batch into ``out/runs.db``; return their stored trajectories and the time.

    ``device`` overrides each batch config's ``device`` (default ``auto``)."""
    db = out / "runs.db"
    t0 = time.perf_counter()
    batches = []
    cfgs = batch_configs(spec, size)
    results = train_batches(cfgs, db, device)
    for bname, cfg in cfgs.items():
        res = results[bname]
        with RunStore(db) as store:
            mets = [store.metrics(r) for r in res.run_ids]
            infos = [store.get_run(r).info for r in res.run_ids]
        batches.append(BatchRuns(bname, cfg, res, mets, infos))
    return batches, time.perf_counter() - t0


def train_batches(
    cfgs: dict[str, dict[str, Any]],
    db: Path,
    device: str | None = None,
    parallel: bool | None = None,
) -> dict[str, TrainResult]:
    """Train every batch into ``db``; results in the order of ``cfgs``.

    ``parallel=None`` trains the batches concurrently, one process each, when they run on a
    GPU: a batch of a few small runs is bound by kernel launches on one CPU thread, not by the
    GPU (measured on an H200: 2-8 TFLOP/s of float64 per batch, far below the chip's rate), so
    separate processes overlap on it. On a CPU with at least two cores the same holds for the
    small batches of the reproductions: their steps are bound by per-operation overhead on one
    thread, so one process per batch with cores/batches threads each beats one after another
    (measured on 2 cores, flavors-f1's two quick batches, 300 steps: 37 s against 57 s). The
    numbers do not depend on the choice (tested).
    """
    if parallel is None:
        dev = resolve_device(
            device if device is not None else next(iter(cfgs.values())).get("device", "auto")
        )
        parallel = dev.type == "cuda" or (os.cpu_count() or 1) >= 2
    if not parallel or len(cfgs) < 2:
        return {b: train(c, db=db, progress=False, device=device) for b, c in cfgs.items()}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    RunStore(db).close()  # create the schema once, before the writers start

    # spawn: CUDA cannot be re-initialized in a forked child. SQLite (WAL, busy timeout)
    # takes the concurrent writers; each run's rows are written by its own process only.
    threads = max(1, (os.cpu_count() or 1) // len(cfgs))
    with ProcessPoolExecutor(max_workers=len(cfgs), mp_context=mp.get_context("spawn")) as pool:
        futures = {b: pool.submit(_train_one, c, str(db), device, threads) for b, c in cfgs.items()}
        return {b: f.result() for b, f in futures.items()}


def _train_one(cfg: dict[str, Any], db: str, device: str | None, threads: int) -> TrainResult:
    torch.set_num_threads(threads)  # the workers share the machine's cores
    return train(cfg, db=db, progress=False, device=device)


def final_value(cols: dict[str, np.ndarray], key: str) -> float:
    col = cols.get(key)
    if col is None:
        return float("nan")
    ok = ~np.isnan(col)
    return float(col[ok][-1]) if ok.any() else float("nan")


def flavor_matrix(
    batch: BatchRuns, norms: Sequence[str], labels: Sequence[str] | None = None
) -> tuple[dict[str, dict[str, tuple[float, float]]], str]:
    """Final normalized margins (mean, std over seeds) per algorithm label and norm."""
    groups = batch.by_label()
    labels = list(labels) if labels is not None else list(groups)
    mat: dict[str, dict[str, tuple[float, float]]] = {}
    for lab in labels:
        mat[lab] = {}
        for n in norms:
            vals = np.array([final_value(batch.metrics[i], f"margin_{n}") for i in groups[lab]])
            mat[lab][n] = (float(vals.mean()), float(vals.std()))
    best = {n: max(labels, key=lambda lab: mat[lab][n][0]) for n in norms}
    rows = []
    for lab in labels:
        row: list[Any] = [lab]
        for n in norms:
            m, s = mat[lab][n]
            cell = f"{m:.4g} ± {s:.2g}"
            row.append(f"**{cell}**" if best[n] == lab else cell)
        rows.append(row)
    return mat, markdown_table(["algorithm"] + [f"γ_{n}" for n in norms], rows)


def plot_margin_panels(
    batch: BatchRuns, norms: Sequence[str], x: str, path: Path, title: str
) -> Path:
    """One panel per norm: margin_<norm> against ``x`` ("step" or "neg_log_loss"), seed-0 runs."""
    fig, axes = plt.subplots(1, len(norms), figsize=(4.2 * len(norms), 3.6), squeeze=False)
    groups = batch.by_label()
    for ax, n in zip(axes[0], norms, strict=True):
        for lab, idx in groups.items():
            cols = batch.metrics[idx[0]]
            xv = cols["step"].astype(float) if x == "step" else -cols["log_loss"]
            yv = cols[f"margin_{n}"]
            ok = np.isfinite(xv) & np.isfinite(yv) & (xv > 0)
            ax.plot(xv[ok], yv[ok], label=lab, lw=1.3)
        ax.set_xscale("log")
        ax.set_title(f"γ_{n} = q_min / ‖θ‖_{n}^L")
        ax.set_xlabel("step" if x == "step" else "−log L")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_own_smoothed(batch: BatchRuns, path: Path, title: str) -> Path:
    """Own-norm smoothed margin against step, normalized by its final value, separation marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for lab, idx in batch.by_label().items():
        cols, info = batch.metrics[idx[0]], batch.infos[idx[0]]
        y = cols["smoothed_own"]
        s = cols["step"].astype(float)
        ok = np.isfinite(y) & (s > 0)
        last = y[ok][-1] if ok.any() else 1.0
        (line,) = ax.plot(
            s[ok], y[ok] / abs(last), label=f"{lab} (own: {info.get('own_norm')})", lw=1.3
        )
        sep = info.get("separated_at")
        if sep:
            ax.axvline(sep, color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("smoothed own-norm margin / final value")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def late_phase_ok(batch: BatchRuns, threshold: float) -> tuple[bool, float]:
    """Whether every run ended with log 𝓛 ≤ threshold; returns the largest final log-loss."""
    worst = max(final_value(m, "log_loss") for m in batch.metrics)
    return worst <= threshold, worst
