"""Batching on a GPU: run-steps/s of the engine at K = 1, 16, 256 and 1,024, and syncs per step.

Setup (the overhead-bound regime of ``bench_batching.py``): sklearn digits 0 vs 1 (n = 360),
a width-64 one-hidden-layer MLP, normalized GD, full batch, float64. For each K the engine's
``BatchRunner.step`` is timed with logging and checkpoints stubbed (``_common.make_runner``) after a
warm-up, with ``torch.cuda.synchronize()`` around the timed block; run-steps/s = K × steps / s,
and the ratio is against K = 1 measured in the same process.

Host syncs per step: one step at K = 16 under ``torch.profiler`` (CPU + CUDA activities),
counting the CUDA runtime calls that block the host: ``cudaStreamSynchronize``,
``cudaDeviceSynchronize``, ``cudaEventSynchronize`` and device-to-host ``cudaMemcpy*``.

Run: ``python benchmarks/gpu/bench_gpu_batching.py [--device cuda] [--steps N]
[--ks 1,16,256,1024]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _common import digits_config, header, make_runner, parse_args, seconds_per_step  # noqa: E402

SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def syncs_per_step(device: str, K: int = 16, steps: int = 10) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    r = make_runner(digits_config(K, 100_000), device=device)
    for _ in range(5):
        r.step()
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            r.step()
        _sync(device)
    counts: dict[str, float] = {}
    for ev in prof.key_averages():
        if any(ev.key.startswith(s) for s in SYNC_CALLS):
            counts[ev.key] = ev.count / steps
    launches = sum(
        ev.count
        for ev in prof.key_averages()
        if ev.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
    )
    counts["kernel launches"] = launches / steps
    return counts


def main() -> None:
    def extra(p):
        p.add_argument("--device", default="cuda")
        p.add_argument("--steps", type=int, default=200, help="timed steps per K")
        p.add_argument("--ks", default="1,16,256,1024")

    args = parse_args(__doc__.splitlines()[0], extra)
    header(f"bench_gpu_batching on {args.device}: digits 0v1, width 64, ngd, float64")
    if args.device.startswith("cuda"):
        print(f"   GPU: {torch.cuda.get_device_name()}")
    ks = [int(k) for k in args.ks.split(",")]
    rates: dict[int, float] = {}
    print(f"   {'K':>6} {'ms/step':>9} {'run-steps/s':>12} {'vs K=1':>7}")
    for K in ks:
        t_build = time.perf_counter()
        r = make_runner(digits_config(K, 100_000), device=args.device)
        build = time.perf_counter() - t_build
        dt = seconds_per_step(r, args.steps, warmup=10)
        rates[K] = K / dt
        base = rates.get(ks[0])
        print(
            f"   {K:>6} {dt * 1e3:>9.3f} {rates[K]:>12.0f} {rates[K] / base:>6.1f}x"
            f"   (set-up {build:.1f} s)"
        )
        del r
    print("   host-blocking CUDA runtime calls per step at K = 16 (torch.profiler):")
    for k, v in syncs_per_step(args.device).items():
        print(f"     {k}: {v:.2f}")


if __name__ == "__main__":
    main()
