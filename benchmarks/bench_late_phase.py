"""How deep into the late phase do runs get in 2,000 steps, and do they stay on the flow?

Setup (issue #11): MNIST 2 vs 7, n = 200, a one-hidden-layer bias-free ReLU MLP of width 64,
a warm start by normalized GD to log-loss −2, seeds 0–2, 2,000 accepted steps. GD, sign
descent and coordinate descent each run under ``schedule: flow`` (default tol) and under the
quick schedules of ``experiments/flavors-f1.yaml`` (the baseline, measured in the same run).

Printed per algorithm and schedule (mean over seeds, worst seed in brackets where it matters):

* the steps to log-loss −10², −10³ and −10⁴ (the first logged row at or below the level; rows
  are log-spaced, 50 per decade, so the count is an upper bound within 5%);
* "falls": the share of logged intervals after separation in which the own-norm smoothed margin
  falls (strictly: by more than 1e-6 relative);
* the final own-norm margin γ_own = q_min/‖θ‖_own^L and the final log-loss;
* iterations (steps tried, rolled-back ones included) and the wall time.

Targets: log-loss ≤ −10³ within 2,000 steps for all three (aim −10⁴), falls ≤ 1%, final own
margins at least the baseline's. The last block prints how far each run is from them.

Usage: ``python benchmarks/bench_late_phase.py [--steps 2000] [--seeds 0 1 2] [--json FILE]``
(about 6 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from steepest import train
from steepest.store import RunStore

QUICK = {  # experiments/flavors-f1.yaml, one-hidden-layer batches
    "gd": {"algorithm": "ngd", "schedule": "power", "lr": 0.3, "a": 0.5},
    "sign": {"algorithm": "sign", "schedule": "power", "lr": 0.015, "a": 0.5},
    "cd": {
        "algorithm": "cd",
        "options": {"normalized": False},
        "schedule": "loss_based",
        "lr": 0.1,
        "up": 2 ** (1 / 3),
        "down": 2**0.5,
    },
}
FLOW = {
    "gd": {"algorithm": "ngd", "schedule": "flow"},
    "sign": {"algorithm": "sign", "schedule": "flow"},
    "cd": {"algorithm": "cd", "schedule": "flow"},
}
LEVELS = (-1e2, -1e3, -1e4)


def config(entry: dict, seeds: list[int], steps: int) -> dict:
    return {
        "name": "bench-late-phase",
        "data": {"name": "mnist", "classes": [2, 7], "n_train": 200, "n_test": 200, "seed": 0},
        "model": {"name": "mlp", "widths": [64], "init_scale": 0.05},
        "loss": "exponential",
        "seeds": seeds,
        "warm_start": {"algorithm": "ngd", "lr": 0.05, "until_log_loss": -2.0, "max_steps": 5000},
        "algorithms": [entry],
        "stop": {"steps": steps},
        "logging": {"per_decade": 50},
    }


def falls(m: dict[str, np.ndarray]) -> tuple[int, int]:
    """After separation: (intervals in which the smoothed own margin fell by more than 1e-6
    relative, all intervals)."""
    sm, q = m["smoothed_own"], m["q_min"]
    keep = np.isfinite(sm) & (q > 0)
    s = sm[keep]
    if len(s) < 2:
        return 0, 0
    rel = np.diff(s) / np.abs(s[:-1])
    return int(np.sum(rel < -1e-6)), len(rel)


def measure(entry: dict, seeds: list[int], steps: int, folder: Path) -> dict:
    db = folder / f"{entry['algorithm']}-{entry['schedule']}.db"
    t0 = time.perf_counter()
    train(config(entry, seeds, steps), db=db, progress=False)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "runs": []}
    with RunStore(db) as st:
        for r in st.list_runs():
            m = st.metrics(r.id)
            ll, step = m["log_loss"], m["step"]
            first = {}
            for lv in LEVELS:
                hit = np.flatnonzero(ll <= lv)
                first[str(int(lv))] = int(step[hit[0]]) if len(hit) else None
            f, n = falls(m)
            fin = st.final_metrics(r.id)
            out["runs"].append(
                {
                    "seed": r.seed,
                    "steps_to": first,
                    "falls": f,
                    "intervals": n,
                    "final_log_loss": float(ll[-1]),
                    "margin_own": float(m["margin_own"][-1]),
                    "iterations": int(fin.get("iteration", step[-1])),
                    "steps": int(step[-1]),
                }
            )
    return out


def fmt_steps(runs: list[dict], lv: str) -> str:
    hits = [r["steps_to"][lv] for r in runs]
    if all(h is None for h in hits):
        return "—"
    if any(h is None for h in hits):
        return f"{sum(h is not None for h in hits)}/{len(hits)} runs"
    return f"{max(hits)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in ("gd", "sign", "cd"):
            results[algo] = {}
            for name, table in (("quick", QUICK), ("flow", FLOW)):
                res = measure(table[algo], args.seeds, args.steps, Path(tmp))
                results[algo][name] = res
    print(
        "MNIST 2 vs 7, n = 200, width 64, warm start to log-loss -2, "
        f"seeds {args.seeds}, {args.steps} steps"
    )
    print(
        "steps to a level: the slowest seed; falls: intervals after separation, summed over seeds\n"
    )
    head = (
        f"{'rule':5} {'schedule':9} {'→-1e2':>8} {'→-1e3':>8} {'→-1e4':>8} "
        f"{'final log-loss':>22} {'falls':>9} {'γ_own (mean)':>13} {'iters':>6} {'wall s':>7}"
    )
    print(head)
    print("-" * len(head))
    for algo, by in results.items():
        for name, res in by.items():
            runs = res["runs"]
            f = sum(r["falls"] for r in runs)
            n = sum(r["intervals"] for r in runs)
            lls = [r["final_log_loss"] for r in runs]
            to = [fmt_steps(runs, lv) for lv in ("-100", "-1000", "-10000")]
            gamma = np.mean([r["margin_own"] for r in runs])
            iters = int(np.mean([r["iterations"] for r in runs]))
            print(
                f"{algo:5} {name:9} {to[0]:>8} {to[1]:>8} {to[2]:>8} "
                f"{min(lls):10.4g} .. {max(lls):9.4g} {f:>4}/{n:<4} {gamma:13.4g} "
                f"{iters:6d} {res['wall_s']:7.1f}"
            )
    print(
        "\nTargets for flow (log-loss <= -1e3 in the budget; falls <= 1%; own margin >= quick's):"
    )
    for algo, by in results.items():
        flow, quick = by["flow"]["runs"], by["quick"]["runs"]
        worst = max(r["final_log_loss"] for r in flow)
        f = sum(r["falls"] for r in flow) / max(1, sum(r["intervals"] for r in flow))
        ratio = [
            a["margin_own"] / b["margin_own"]
            for a, b in zip(
                sorted(flow, key=lambda r: r["seed"]),
                sorted(quick, key=lambda r: r["seed"]),
                strict=True,
            )
        ]
        depth = (
            "met"
            if worst <= -1e3
            else f"missed: worst seed at {worst:.4g}, {math.log10(-1e3 / worst):.2f} decades short"
        )
        print(
            f"  {algo:5} depth {depth}; falls {100 * f:.1f}% ({'met' if f <= 0.01 else 'missed'}); "
            f"own margin / quick's per seed: {', '.join(f'{x:.3f}' for x in ratio)} "
            f"({'met' if min(ratio) >= 1 else 'missed'})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
