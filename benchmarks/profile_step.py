"""Where the time of one engine step goes (K = 16 digits runs by default; ``--mnist`` for width 784).

Three views of ``BatchRunner.step`` (log/checkpoint stubbed, as in the stepping benchmark):

1. segments: wall time inside ``Engine.evaluate`` (forward+backward), the rules'
   ``stacked_update`` / ``stacked_rescale_state``, ``Norm.stacked*`` calls, ``finite_runs`` and
   ``q_min``; the rest of ``step`` (schedule math, where-selects, event bookkeeping, Python) is
   the remainder;
2. cProfile: Python function calls per step and the top functions by own time;
3. torch.profiler: aten ops per step and the top ops by self CPU time.

Run: ``python benchmarks/profile_step.py [--quick] [--mnist] [--K 16] [--threads N]``.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections import defaultdict
from typing import Any

from _common import digits_config, header, make_runner, mnist_config, parse_args, step_rate

from steepest.engine import Engine


def main() -> None:
    def extra(p: Any) -> None:
        p.add_argument("--K", type=int, default=16)
        p.add_argument(
            "--mnist", action="store_true", help="MNIST n=1000, width 784 instead of digits"
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    K = args.K
    n = (3 if args.quick else 10) if args.mnist else (50 if args.quick else 300)
    cfg = mnist_config(K, 10**6) if args.mnist else digits_config(K, 10**6)
    header(
        f"profile_step: K={K}, {'MNIST width 784' if args.mnist else 'digits 0v1 width 64'}, {n} steps per view"
    )

    seg: dict[str, float] = defaultdict(float)

    def timed(key: str, fn: Any) -> Any:
        def w(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seg[key] += time.perf_counter() - t0

        return w

    for name, key in (
        ("evaluate", "evaluate: vmap(grad) fwd+bwd"),
        ("q_min", "q_min (vmap margins)"),
    ):
        setattr(Engine, name, timed(key, getattr(Engine, name)))
    import steepest.step as step_module

    step_module.finite_runs = timed("finite_runs (isfinite)", step_module.finite_runs)
    # The per-algorithm update and the per-step norm calls (``stacked*`` methods, vmap only as
    # their default) are timed by wrapping the classes' methods.
    from steepest.algorithms import Algorithm, SteepestDescentRule
    from steepest.norms import Norm

    patched: list[tuple[type, str, Any]] = []
    classes = {Algorithm, SteepestDescentRule, *Algorithm.__subclasses__()}
    for cls in classes:
        for meth in ("stacked_update", "stacked_rescale_state"):
            if meth in vars(cls):
                patched.append((cls, meth, vars(cls)[meth]))
                setattr(cls, meth, timed(f"algo.{meth}", vars(cls)[meth]))
    for cls in {Norm, *Norm.__subclasses__()}:
        for meth in ("stacked", "stacked_dual"):
            if meth in vars(cls):
                patched.append((cls, meth, vars(cls)[meth]))
                setattr(cls, meth, timed(f"norm.{meth} (schedule / flow time)", vars(cls)[meth]))

    r = make_runner(cfg)
    step_rate(r, 3)()
    seg.clear()
    t0 = time.perf_counter()
    step_rate(r, n)()
    total = time.perf_counter() - t0
    print(
        f"\n1. segments ({n} steps, {1e3 * total / n:.3f} ms per step, {K * n / total:.0f} run-steps/s)"
    )
    inner = sum(v for k, v in seg.items())
    for k, v in sorted(seg.items(), key=lambda kv: -kv[1]):
        print(f"   {1e3 * v / n:8.3f} ms/step {100 * v / total:5.1f}%  {k}")
    print(
        f"   {1e3 * (total - inner) / n:8.3f} ms/step {100 * (total - inner) / total:5.1f}%  rest of step "
        "(schedule math, where-selects, event bookkeeping, Python)"
    )
    for cls, meth, fn in patched:
        setattr(cls, meth, fn)

    pr = cProfile.Profile()
    pr.enable()
    step_rate(r, n)()
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    ncalls = sum(v[1] for v in st.stats.values())  # type: ignore[attr-defined]
    print(f"\n2. cProfile: {ncalls / n:.0f} Python function calls per step; top by own time:")
    st.sort_stats("tottime").print_stats(12)
    for line in s.getvalue().splitlines():
        if line.strip() and (line.lstrip()[0].isdigit() or "ncalls" in line):
            print("   " + line[:150])

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_rate(r, n)()
    ka = prof.key_averages()
    n_ops = sum(e.count for e in ka if e.key.startswith("aten::"))
    self_total = sum(e.self_cpu_time_total for e in ka)
    print(
        f"\n3. torch.profiler: {n_ops / n:.0f} aten op calls per step (incl. nested); "
        f"self CPU {self_total / 1e3 / n:.3f} ms/step; top ops by self CPU:"
    )
    for e in sorted(ka, key=lambda e: -e.self_cpu_time_total)[:14]:
        print(
            f"   {e.key:<28} {e.self_cpu_time_total / 1e3 / n:8.3f} ms/step {100 * e.self_cpu_time_total / self_total:5.1f}%"
            f"  {e.count / n:6.1f} calls/step"
        )


if __name__ == "__main__":
    main()
