"""Lyu & Li (LL1, reduced): the loss-based schedule keeps increasing the normalized ℓ2 margin.

docs/theory.md §4.3, A.1, §5 item 13. A bias-free CNN (L = number of weight layers) is trained by full-batch
GD from a common separated state with (i) Lyu & Li's loss-based schedule η_t = α_t·𝓛₀/𝓛(θ_t) and
(ii) the constant lr 0.01 (on the mean loss). The measured quantity is the normalized margin

    γ̄(θ) = q_min / ‖θ‖₂^L,   q_i = f_{y_i}(x_i) − max_{j≠y_i} f_j(x_i)   (code ``q_bar_min``),

against steps. Claim: under the loss-based schedule γ̄ keeps increasing, and faster than under
the constant lr.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..plots import save_figure  # noqa: E402
from ..tables import markdown_table  # noqa: E402
from .common import BatchRuns, final_value, load_spec, run_batches  # noqa: E402
from .gronich_vardi import single_thread  # noqa: E402
from .report import Report  # noqa: E402
from .verdicts import verify_markdown  # noqa: E402

__all__ = ["run", "margin_at", "increase_fraction", "LOSS_BASED", "CONSTANT", "TABLE_STEPS"]

LOSS_BASED = "loss_based"
CONSTANT = "constant"
TABLE_STEPS = (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10000)
#: the loss-based margin must rise in at least this fraction of its logged intervals (the
#: rollbacks of the schedule can leave a flat interval; a falling trend would fail it)
INCREASE_FRACTION = 0.9


def margin_at(cols: dict[str, np.ndarray], step: int, key: str = "margin_l2") -> float:
    """The value of ``key`` at the last logged row with step ≤ ``step`` (NaN if none)."""
    s = cols["step"]
    ok = (s <= step) & ~np.isnan(cols[key])
    return float(cols[key][ok][-1]) if ok.any() else float("nan")


def increase_fraction(values: Sequence[float]) -> float:
    """Fraction of consecutive pairs with values[k+1] > values[k] (1.0 for fewer than 2 values)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return 1.0
    return float(np.mean(np.diff(v) > 0))


def _schedule_runs(batch: BatchRuns) -> dict[str, int]:
    """schedule name → index of the first (seed-0) run with that schedule."""
    out: dict[str, int] = {}
    for i, info in enumerate(batch.infos):
        out.setdefault(info["schedule"]["name"], i)
    return out


def _plot(batch: BatchRuns, path: Path, title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, lab in enumerate(batch.labels):
        cols = batch.metrics[i]
        s = cols["step"].astype(float)
        ok = s > 0
        axes[0].plot(s[ok], cols["margin_l2"][ok], label=lab, lw=1.4)
        axes[1].plot(s[ok], -cols["log_loss"][ok], label=lab, lw=1.4)
    axes[0].set_ylabel("γ̄ = q_min / ‖θ‖₂^L")
    axes[1].set_ylabel("−log L")
    axes[1].set_yscale("symlog")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("full-batch step (= epoch)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def _analyse(batch: BatchRuns) -> dict[str, Any]:
    idx = _schedule_runs(batch)
    if LOSS_BASED not in idx or CONSTANT not in idx:
        raise ValueError(
            f"batch {batch.name!r} needs a loss_based and a constant run; has {sorted(idx)}"
        )
    lb, cst = batch.metrics[idx[LOSS_BASED]], batch.metrics[idx[CONSTANT]]
    T = int(min(lb["step"][-1], cst["step"][-1]))
    steps = [s for s in TABLE_STEPS if s < T] + [T]
    table = {name: [margin_at(batch.metrics[i], s) for s in steps] for name, i in idx.items()}
    lls = {
        name: [margin_at(batch.metrics[i], s, "log_loss") for s in steps] for name, i in idx.items()
    }
    # "Keeps increasing" is read over the last decade of steps (t ≥ T/10): the first loss-based
    # steps jump the loss by orders of magnitude and can dip the margin before the trend sets in.
    late = (lb["q_min"] > 0) & (lb["step"] >= T / 10)
    frac = increase_fraction(lb["margin_l2"][late])
    last_half = [margin_at(lb, T // 2), margin_at(lb, T)]
    res = {
        "steps": steps,
        "margin_l2": table,
        "log_loss": lls,
        "T": T,
        "final": {name: final_value(batch.metrics[i], "margin_l2") for name, i in idx.items()},
        "final_log_loss": {
            name: final_value(batch.metrics[i], "log_loss") for name, i in idx.items()
        },
        "rollbacks": {name: final_value(batch.metrics[i], "rollbacks") for name, i in idx.items()},
        "increase_fraction_loss_based": frac,
        "increase_fraction_all": increase_fraction(lb["margin_l2"][lb["q_min"] > 0]),
        "loss_based_half_to_end": last_half,
        "gain": {
            name: final_value(batch.metrics[i], "margin_l2")
            - float(batch.metrics[i]["margin_l2"][0])
            for name, i in idx.items()
        },
    }
    res["keeps_increasing"] = bool(frac >= INCREASE_FRACTION and last_half[1] > last_half[0])
    res["faster"] = bool(
        res["final"][LOSS_BASED] > res["final"][CONSTANT]
        and res["gain"][LOSS_BASED] > res["gain"][CONSTANT]
    )
    return res


def run(size: str, out: Path, device: str | None = None) -> Report:
    """Train the LL1-reduced batch at ``size`` into ``out/runs.db`` and build the report."""
    spec = load_spec("lyu-li")
    with single_thread(size in ("smoke", "quick")):
        batches, seconds = run_batches(spec, size, out, device=device)
    tables, figures, notes, numbers, reasons, verdict_parts = [], [], [], {}, [], []
    ok_all = True
    for batch in batches:
        res = _analyse(batch)
        numbers[batch.name] = res
        idx = _schedule_runs(batch)
        labels = {name: batch.labels[i] for name, i in idx.items()}
        rows = []
        for k, s in enumerate(res["steps"]):
            rows.append(
                [s]
                + [res["margin_l2"][n][k] for n in (LOSS_BASED, CONSTANT)]
                + [res["log_loss"][n][k] for n in (LOSS_BASED, CONSTANT)]
            )
        heads = (
            ["step"]
            + [f"γ̄, {labels[n]}" for n in (LOSS_BASED, CONSTANT)]
            + [f"log 𝓛, {labels[n]}" for n in (LOSS_BASED, CONSTANT)]
        )
        L = batch.infos[0]["degree"]
        tables.append(
            (
                f"{batch.name}: normalized ℓ2 margin q_min/‖θ‖₂^L (L = {L}) against full-batch steps after the common "
                "separated start (seed 0)",
                markdown_table(heads, rows),
            )
        )
        summary = [
            [
                labels[n],
                res["final"][n],
                res["gain"][n],
                res["final_log_loss"][n],
                res["rollbacks"][n],
            ]
            for n in (LOSS_BASED, CONSTANT)
        ]
        tables.append(
            (
                f"{batch.name}: summary",
                markdown_table(
                    ["run", "final γ̄", "γ̄ gain over the run", "final log 𝓛", "rollbacks"], summary
                ),
            )
        )
        warm = batch.infos[0].get("warm_start")
        if warm:
            notes.append(
                f"{batch.name}: common start reached by {warm['algorithm']} in {warm['steps']} steps "
                f"(log 𝓛 {warm['log_loss']})."
            )
        notes.append(
            f"{batch.name}: over the last decade of steps (t ≥ T/10 = {res['T'] / 10:g}) the loss-based margin rose in "
            f"{res['increase_fraction_loss_based']:.0%} of its logged intervals (all intervals after separation: "
            f"{res['increase_fraction_all']:.0%}); from step {res['T'] // 2} to {res['T']} it went {res['loss_based_half_to_end'][0]:.4g} → "
            f"{res['loss_based_half_to_end'][1]:.4g}."
        )
        if not res["keeps_increasing"]:
            reasons.append(f"{batch.name}: the loss-based margin does not keep increasing")
        if not res["faster"]:
            reasons.append(
                f"{batch.name}: the loss-based margin does not end above (or gain more than) the constant-lr one"
            )
        ok_all = ok_all and res["keeps_increasing"] and res["faster"]
        figures.append(
            _plot(
                batch,
                out / f"{batch.name}-margin-vs-step.png",
                f"{batch.name}: normalized ℓ2 margin (L = {L}) and −log L",
            )
        )
        verdict_parts.append(
            verify_markdown(out / "runs.db", batch.result.run_ids, heading=batch.name)
        )
    if ok_all:
        reason = (
            "with the loss-based schedule the normalized ℓ2 margin rose through the run and ended above the "
            "constant-lr run's, gaining more."
        )
    else:
        reason = "; ".join(reasons) + "."
    return Report.for_spec(
        spec,
        size,
        ok_all,
        reason,
        tables=tables,
        figures=figures,
        notes=notes,
        verify=verdict_parts,
        numbers=numbers,
        seconds=seconds,
    )
