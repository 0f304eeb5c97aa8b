"""Metrics overhead: the share of a training run spent logging, at default settings.

Runs :func:`steepest.engine.train` unchanged (per_decade 20, SQLite store on disk, checkpoints) on
the overhead-bound digits setting (0 vs 1, width 64, normalized GD) and wraps timers around

* ``BatchRunner.log``       — everything logging costs: the metric computation, ``.tolist()`` and the
                          store writes (it is called every step and returns at once when no run
                          is at a log event; that check is counted too);
* ``Engine.metrics``    — the metric computation alone (inside ``log``);
* ``RunStore.log_metrics_many`` — the SQLite writes alone (inside ``log``; one transaction per event);
* ``BatchRunner.checkpoint`` — checkpoints (not logging; shown for completeness);
* ``BatchRunner.run``       — the whole training loop (the denominator).

Log events grow like per_decade·log10(steps) (steps 1–10 are all logged), so the share is
reported for several run lengths: the config default (``stop.steps`` = 1000), a shorter and a
longer one.
Because other processes share the cores, one slow log call can be an outlier; the script also
prints a robust share: (number of log events × median cost of a logging call) / loop time.

Target (issue): logging ≤ 10% of the run.
Run: ``python benchmarks/bench_metrics_overhead.py [--quick] [--threads N] [--repeat R]``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import digits_config, header, parse_args

from steepest.engine import BatchRunner, Engine, train
from steepest.store import RunStore


class _Timers:
    """Accumulates wall time spent inside wrapped methods (per call, so medians are available)."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        self.events = 0  # log calls that logged something

    def wrap(
        self, cls: type, name: str, key: str, on_call: Callable[..., None] | None = None
    ) -> None:
        orig = getattr(cls, name)
        calls = self.calls.setdefault(key, [])

        def timed(*a: Any, **k: Any) -> Any:
            if on_call is not None:
                on_call(*a, **k)
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                calls.append(time.perf_counter() - t0)

        timed.__wrapped__ = orig  # type: ignore[attr-defined]
        setattr(cls, name, timed)

    def reset(self) -> None:
        for v in self.calls.values():
            v.clear()
        self.events = 0

    def total(self, key: str) -> float:
        return sum(self.calls[key])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if args.quick:
        cases = [(16, 1000), (1, 1000), (1, 300)]
    else:
        cases = [(16, 1000), (1, 1000), (16, 300), (1, 300), (1, 20000)]
    repeat = args.repeat or 1
    header(
        "bench_metrics_overhead: time inside BatchRunner.log as a share of the run (digits 0v1, width 64, per_decade 20)"
    )

    timers = _Timers()

    def count_event(self: BatchRunner, which: Any, *a: Any, **k: Any) -> None:
        if any(which):  # a host-side list of bools (BatchRunner.log)
            timers.events += 1

    timers.wrap(BatchRunner, "log", "log", on_call=count_event)
    timers.wrap(Engine, "metrics", "metrics")
    timers.wrap(RunStore, "log_metrics_many", "store")
    timers.wrap(BatchRunner, "checkpoint", "checkpoint")
    timers.wrap(BatchRunner, "run", "run")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train(
            digits_config(1, 10), db=Path(tmp) / "warm.db", progress=False
        )  # warm caches (dataset, imports)
        for K, steps in cases:
            best: dict[str, Any] | None = None
            for rep in range(repeat):
                timers.reset()
                t0 = time.perf_counter()
                train(
                    digits_config(K, steps), db=Path(tmp) / f"K{K}-{steps}-{rep}.db", progress=False
                )
                total = time.perf_counter() - t0
                run = timers.total("run")
                log_calls = timers.calls["log"]
                # A log call that logs something costs far more than the per-step early return;
                # the median over the event calls is the typical cost of one log event.
                event_costs = sorted(log_calls)[-timers.events :] if timers.events else [0.0]
                res = {
                    "K": K,
                    "steps": steps,
                    "total": total,
                    "run": run,
                    "log": timers.total("log"),
                    "metrics": timers.total("metrics"),
                    "store": timers.total("store"),
                    "checkpoint": timers.total("checkpoint"),
                    "events": timers.events,
                    "event_median": statistics.median(event_costs),
                    "store_calls": len(timers.calls["store"]),
                }
                if best is None or res["log"] / res["run"] < best["log"] / best["run"]:
                    best = res
            assert best is not None
            rows.append(best)

    print(
        f"\n   {repeat} repeat(s) per case, the one with the smallest share shown; times in seconds"
    )
    print(
        f"   {'K':>3} {'steps':>6} {'train()':>8} {'loop':>8} {'log':>7} {'metrics':>8} {'store':>7} {'ckpt':>6}"
        f" {'events':>6} {'ms/event':>9} {'log share':>10} {'robust':>7}"
    )
    for r in rows:
        share = r["log"] / r["run"]
        robust = r["events"] * r["event_median"] / r["run"]
        print(
            f"   {r['K']:>3} {r['steps']:>6} {r['total']:>8.2f} {r['run']:>8.2f} {r['log']:>7.2f} {r['metrics']:>8.2f}"
            f" {r['store']:>7.2f} {r['checkpoint']:>6.2f} {r['events']:>6} {1e3 * r['event_median']:>9.2f}"
            f" {100 * share:>9.1f}% {100 * robust:>6.1f}%"
        )
    print(
        "   (log = all of BatchRunner.log; metrics and store are parts of it; loop = BatchRunner.run; "
        "robust = events x median ms/event / loop)"
    )
    print()
    for r in rows:
        share = r["log"] / r["run"]
        print(
            f"metrics overhead (K={r['K']}, {r['steps']} steps, per_decade 20): {100 * share:.1f}% of the run "
            f"(metric computation {100 * r['metrics'] / r['run']:.1f}%, store writes {100 * r['store'] / r['run']:.1f}%)"
            f" (target <= 10%)"
        )


if __name__ == "__main__":
    main()
