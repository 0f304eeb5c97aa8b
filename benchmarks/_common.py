"""Shared helpers for the benchmark scripts (not part of the package).

Every script measures its ratios inside one process, in float64 on the CPU, so the numerator and
the denominator see the same machine state. Timings are repeated and interleaved (A, B, A, B, ...)
and the *best* repeat is reported (the least disturbed by other processes on the shared cores);
the median is printed next to it so that noise is visible.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Import the package from the source tree when it is not installed.
_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

# On shared cores, OpenMP worker threads that spin-wait for a descheduled sibling make a 2-thread
# step up to 7x slower (measured: 16-21 ms vs 2.4-3.1 ms per K=1 digits step with other processes
# running). PASSIVE makes waiting threads sleep. It must be set before torch loads libgomp, so it
# is decided here from the command line: ``--omp-active`` keeps the library default.
if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from steepest.config import load_config  # noqa: E402
from steepest.devices import resolve_device  # noqa: E402
from steepest.engine import BatchRunner, Engine, load_experiment_data  # noqa: E402
from steepest.store import RunStore  # noqa: E402

__all__ = [
    "parse_args",
    "digits_config",
    "mnist_config",
    "Timing",
    "time_interleaved",
    "make_runner",
    "step_rate",
    "seconds_per_step",
    "header",
]


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """Common flags: ``--quick`` (a smaller version in under ~20 s), ``--threads``, ``--repeat``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smaller version (under ~20 s)")
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch.set_num_threads (default 2: the machine's cores)",
    )
    p.add_argument(
        "--repeat", type=int, default=None, help="repeats per timing (best and median are printed)"
    )
    p.add_argument(
        "--omp-active",
        action="store_true",
        help="keep OpenMP's default (spinning) wait policy instead of OMP_WAIT_POLICY=PASSIVE",
    )
    if extra is not None:
        extra(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    return args


def header(title: str) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"== {title}")
    print(
        f"   torch {torch.__version__}, float64, threads={torch.get_num_threads()}, "
        f"cores={os.cpu_count()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, load average at start {load[0]:.2f} (other processes share the cores)"
    )


def digits_config(K: int, steps: int, per_decade: int = 20, name: str = "bench") -> dict[str, Any]:
    """The overhead-bound regime: sklearn digits 0 vs 1, width-64 one-hidden-layer MLP, full batch."""
    return {
        "name": name,
        "data": {"name": "digits", "classes": [0, 1]},
        "model": {"name": "mlp", "widths": [64], "init_scale": 0.5},
        "seeds": list(range(K)) if isinstance(K, int) else list(K),
        "algorithms": [{"algorithm": "ngd", "schedule": "power", "lr": 0.05, "a": 0.5}],
        "stop": {"steps": steps},
        "logging": {"per_decade": per_decade},
    }


def mnist_config(
    K: int, steps: int, n_train: int = 1000, width: int = 784, per_decade: int = 20
) -> dict[str, Any]:
    """The compute-bound regime: n = 1000 MNIST digits (all ten, odd vs even), width 784."""
    return {
        "name": "bench-mnist",
        "data": {"name": "mnist", "binarize": "odd_even", "n_train": n_train, "n_test": 0},
        "model": {"name": "mlp", "widths": [width], "init_scale": 0.5},
        "seeds": list(range(K)),
        "algorithms": [{"algorithm": "ngd", "schedule": "power", "lr": 0.05, "a": 0.5}],
        "stop": {"steps": steps},
        "logging": {"per_decade": per_decade},
    }


class Timing:
    """Repeated wall-clock measurements of one thing (seconds)."""

    def __init__(self, label: str):
        self.label = label
        self.samples: list[float] = []

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def __repr__(self) -> str:
        return f"Timing({self.label!r}, best={self.best:.4g}s, median={self.median:.4g}s, n={len(self.samples)})"


def time_interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, Timing]:
    """Time each fn ``repeat`` times, interleaved (round-robin) so that load bursts hit all alike."""
    out = {k: Timing(k) for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[k].samples.append(time.perf_counter() - t0)
    return out


def make_runner(
    cfg_dict: dict[str, Any],
    *,
    steps_cap: int | None = None,
    stub_logging: bool = True,
    dataset: Any = None,
    device: str = "cpu",
) -> BatchRunner:
    """An engine runner on an in-memory store, ready for ``step()`` calls.

    Does what :func:`steepest.engine.train` and ``BatchRunner.run`` do before the loop (build the
    engine, fresh state, first evaluation). With ``stub_logging`` the runner's ``log`` and
    ``checkpoint`` are replaced by no-ops on the instance, so that timing ``step`` measures the
    stepping alone (the milestone/event bookkeeping in ``step`` still runs). ``device`` is
    where the batch lives (``auto | cpu | cuda | cuda:N``).
    """
    cfg = load_config(cfg_dict)
    if steps_cap is not None:
        cfg = cfg.model_copy(update={"stop": cfg.stop.model_copy(update={"steps": steps_cap})})
    specs = cfg.run_specs()
    ds = dataset if dataset is not None else load_experiment_data(cfg)
    eng = Engine(cfg, specs, ds, resolve_device(device))
    store = RunStore(":memory:")
    ids = [
        store.create_run(name=f"b/{sp.seed}", algorithm=sp.algorithm, seed=sp.seed, config={})
        for sp in specs
    ]
    r = BatchRunner(eng, store, ids, Path(os.devnull), progress=False)
    r.fresh_state(eng.init_params())
    r.start(resumed=True)  # the first evaluation; resumed: no step-0 row or checkpoint
    if stub_logging:
        r.log = lambda *a, **k: None  # type: ignore[method-assign]
        r.checkpoint = lambda *a, **k: Path(os.devnull)  # type: ignore[method-assign]
    return r


def step_rate(runner: BatchRunner, n: int) -> Callable[[], None]:
    """A closure that takes ``n`` engine steps on ``runner`` (for :func:`time_interleaved`)."""

    def go() -> None:
        for _ in range(n):
            runner.step()

    return go


def seconds_per_step(runner: BatchRunner, steps: int, warmup: int = 1) -> float:
    """Wall seconds per ``step()`` after ``warmup`` untimed steps; on CUDA the timed block is
    fenced by ``torch.cuda.synchronize()`` so that queued kernels are counted."""
    cuda = runner.e.device.type == "cuda"
    for _ in range(warmup):
        runner.step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps
