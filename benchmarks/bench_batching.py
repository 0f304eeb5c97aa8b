"""Batching: K = 16 runs stepped together vs the same 16 runs stepped one by one in a plain loop.

Overhead-bound regime (the issue): sklearn digits 0 vs 1 (n = 360 train points, d = 64), a
width-64 bias-free one-hidden-layer MLP, full batch, normalized GD with η_t = 0.05·t^-1/2, float64
on the CPU. "The same math": both sides run the engine's own code; the loop side builds one K = 1
engine per seed (seeds 0..15) and runs them one after another, the batched side one K = 16 engine.

Three measurements, all in this one process:

1. stepping only: ``BatchRunner.step`` calls with the runner's ``log``/``checkpoint`` stubbed out
   (the per-step event bookkeeping inside ``step`` still runs);
2. end to end: :func:`steepest.engine.train` at default logging (per_decade 20, SQLite store,
   checkpoints), 16 × ``train(K=1)`` vs one ``train(K=16)``; the final log-losses of the two
   sides are compared (same math ⇒ equal up to rounding);
3. reference floor (not the engine): a hand-written torch step, one run in a plain loop and 16
   runs with one shared-X matmul, started from the engine's initial parameters;
4. the anchors' loop (the baseline of the issue): the same 16 runs one after another in a plain
   PyTorch loop that logs three normalized margins every step, end to end against (2).

Targets (issues): batching speed-up ≥ 5×, aim 10×; ``steepest train`` K = 16 end to end ≥ 3× the
anchors' loop (aim 4×); the engine step within 1.2× of the hand-written batched step at K = 16
and within 1.5× at K = 1.
Run: ``python benchmarks/bench_batching.py [--quick] [--threads N] [--repeat R]``.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    Timing,
    digits_config,
    header,
    make_runner,
    parse_args,
    step_rate,
    time_interleaved,
)

from steepest.engine import train

K = 16
LR, A = 0.05, 0.5


# ------------------------------------------------------------------ hand-written reference steps
def _ref_single(W1: torch.Tensor, W2: torch.Tensor, X: torch.Tensor, y: torch.Tensor, t: int):
    """One normalized-GD step of one run: θ ← θ − η_t ∇log𝓛/‖∇log𝓛‖₂, η_t = lr·t^-a."""
    W1 = W1.detach().requires_grad_(True)
    W2 = W2.detach().requires_grad_(True)
    out = (torch.relu(X @ W1.T) @ W2.T).squeeze(1)
    ll = torch.logsumexp(-y * out, 0)  # exponential loss in log space: log Σ e^{-y f}
    g1, g2 = torch.autograd.grad(ll, (W1, W2))
    gn = torch.sqrt((g1 * g1).sum() + (g2 * g2).sum())
    eta = LR * t ** (-A)
    return (W1 - eta * g1 / gn).detach(), (W2 - eta * g2 / gn).detach(), ll.detach()


def _ref_batched(W1: torch.Tensor, W2: torch.Tensor, X: torch.Tensor, y: torch.Tensor, t: int):
    """The same step for K runs at once: one (n × d)·(d × K·m) matmul, since X is shared."""
    k, m, d = W1.shape
    W1 = W1.detach().requires_grad_(True)
    W2 = W2.detach().requires_grad_(True)
    H = torch.relu(X @ W1.reshape(k * m, d).T).reshape(-1, k, m)
    out = (H * W2.reshape(1, k, m)).sum(-1)  # (n, K)
    ll = torch.logsumexp(-y[:, None] * out, 0)  # (K,)
    g1, g2 = torch.autograd.grad(ll.sum(), (W1, W2))  # runs are independent: ∂Σ/∂θ_k = ∂ll_k/∂θ_k
    gn = torch.sqrt((g1 * g1).sum((1, 2)) + (g2 * g2).sum((1, 2)))
    eta = LR * t ** (-A)
    s = (eta / gn).reshape(k, 1, 1)
    return (W1 - s * g1).detach(), (W2 - s * g2).detach(), ll.detach()


def _anchors_run(
    W1: torch.Tensor, W2: torch.Tensor, X: torch.Tensor, y: torch.Tensor, steps: int
) -> list[list[float]]:
    """The anchors' loop for one run (the public Flavors-of-Margin code, anchors survey §1): a
    plain PyTorch loop, normalized GD, and after every step the normalized margins
    q_min/‖θ‖_p^L for p ∈ {2, 1, ∞} (L = 2), kept in a Python list. In float64 with the loss in
    log space, as the engine, so the two differ in how they are run, not in the math."""
    rows: list[list[float]] = []
    for t in range(1, steps + 1):
        W1, W2, _ = _ref_single(W1, W2, X, y, t)
        with torch.no_grad():
            q = y * (torch.relu(X @ W1.T) @ W2.T).squeeze(1)
            flat = torch.cat([W1.reshape(-1), W2.reshape(-1)])
            qmin = q.min()
            rows.append(
                [float(qmin / torch.linalg.vector_norm(flat, p) ** 2) for p in (2.0, 1.0, math.inf)]
            )
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    repeat = args.repeat or (2 if quick else 3)
    n_step = 40 if quick else 100  # steps per timed repeat (stepping only)
    e2e_steps = 100 if quick else 500  # run length for the end-to-end comparison
    header(
        f"bench_batching: K={K} together vs {K} runs in a plain loop (digits 0v1, width 64, full batch)"
    )

    # ---------------------------------------------------------------- 1. stepping only
    big = 10**6  # stop.steps far away: no run finishes while we time it
    loop_runners = [make_runner(digits_config([s], big)) for s in range(K)]
    batched = make_runner(digits_config(K, big))
    for r in loop_runners:  # warm-up (first vmap calls, allocator)
        step_rate(r, 5)()
    step_rate(batched, 5)()

    def loop() -> None:
        for r in loop_runners:  # run after run, each for n_step steps
            for _ in range(n_step):
                r.step()

    tm = time_interleaved({"loop": loop, "batched": step_rate(batched, n_step)}, repeat)
    loop_rate = K * n_step / tm["loop"].best
    bat_rate = K * n_step / tm["batched"].best
    step_ratio = tm["loop"].best / tm["batched"].best
    step_ratio_med = tm["loop"].median / tm["batched"].median

    # ---------------------------------------------------------------- 2. end to end (train)
    e2e: dict[str, Timing] = {"loop": Timing("loop"), "batched": Timing("batched")}
    ll_loop: list[float] = []
    ll_bat: list[float] = []
    e2e_repeat = 1
    with tempfile.TemporaryDirectory() as tmp:
        train(
            digits_config(1, 10), db=Path(tmp) / "warm.db", progress=False
        )  # warm caches (dataset, imports)
        for rep in range(e2e_repeat):
            t0 = time.perf_counter()
            res = [
                train(digits_config([s], e2e_steps), db=Path(tmp) / f"loop{rep}.db", progress=False)
                for s in range(K)
            ]
            e2e["loop"].samples.append(time.perf_counter() - t0)
            ll_loop = [r.final[0]["log_loss"] for r in res]
            t0 = time.perf_counter()
            rb = train(digits_config(K, e2e_steps), db=Path(tmp) / f"bat{rep}.db", progress=False)
            e2e["batched"].samples.append(time.perf_counter() - t0)
            ll_bat = [f["log_loss"] for f in rb.final]
    same_math = max(abs(a - b) for a, b in zip(ll_loop, ll_bat, strict=True))
    e2e_ratio = e2e["loop"].best / e2e["batched"].best
    # The anchors' loop end to end: 16 runs one after another from the engine's initial
    # parameters (the same seeds), three margins logged every step.
    init = make_runner(digits_config(K, e2e_steps))
    Xa, ya = init.e.X, init.e.y
    anchors = Timing("anchors")
    t0 = time.perf_counter()
    anchor_rows = [
        _anchors_run(init.params[0][k], init.params[1][k], Xa, ya, e2e_steps) for k in range(K)
    ]
    anchors.samples.append(time.perf_counter() - t0)
    assert all(len(r) == e2e_steps for r in anchor_rows)
    vs_anchors = anchors.best / e2e["batched"].best

    # ---------------------------------------------------------------- 3. hand-written reference
    X, y = batched.e.X, batched.e.y
    W1s, W2s = (p.clone() for p in batched.params)

    def ref_loop() -> None:
        for k in range(K):
            w1, w2 = W1s[k], W2s[k]
            for t in range(1, n_step + 1):
                w1, w2, _ = _ref_single(w1, w2, X, y, t)

    def ref_bat() -> None:
        w1, w2 = W1s, W2s
        for t in range(1, n_step + 1):
            w1, w2, _ = _ref_batched(w1, w2, X, y, t)

    # Same math check for the reference: K=16 batched vs the loop after a few steps.
    a1, a2 = W1s[3], W2s[3]
    b1, b2 = W1s, W2s
    for t in range(1, 21):
        a1, a2, lla = _ref_single(a1, a2, X, y, t)
        b1, b2, llb = _ref_batched(b1, b2, X, y, t)
    ref_diff = float((lla - llb[3]).abs())
    tr = time_interleaved({"ref loop": ref_loop, "ref batched": ref_bat}, repeat)
    ref_loop_rate = K * n_step / tr["ref loop"].best
    ref_bat_rate = K * n_step / tr["ref batched"].best

    # ---------------------------------------------------------------- report
    print(
        f"\n   timings: best (median) of {repeat} interleaved repeats; stepping: {n_step} steps per run per repeat;"
        f" end to end: {e2e_steps}-step runs, {e2e_repeat} repeat(s)"
    )
    print(f"   {'measurement':<44} {'loop (16 x K=1)':>22} {'together (K=16)':>22} {'ratio':>7}")

    def row(name: str, lo: Timing, ba: Timing, unit_work: float) -> None:
        print(
            f"   {name:<44} {unit_work / lo.best:>9.0f} run-steps/s ({lo.best:6.2f}s)"
            f" {unit_work / ba.best:>9.0f} run-steps/s ({ba.best:6.2f}s) {lo.best / ba.best:>6.2f}x"
        )

    row("engine, stepping only (step, log stubbed)", tm["loop"], tm["batched"], K * n_step)
    row("engine, end to end train(), per_decade 20", e2e["loop"], e2e["batched"], K * e2e_steps)
    row("reference: hand-written torch step", tr["ref loop"], tr["ref batched"], K * n_step)
    row("anchors' loop (3 margins/step) vs train K=16", anchors, e2e["batched"], K * e2e_steps)
    print(
        f"\n   engine per step: K=1 {1e3 * tm['loop'].best / (K * n_step):.3f} ms, "
        f"K=16 {1e3 * tm['batched'].best / n_step:.3f} ms "
        f"(reference: K=1 {1e3 * tr['ref loop'].best / (K * n_step):.3f} ms, K=16 {1e3 * tr['ref batched'].best / n_step:.3f} ms)"
    )
    print(
        f"   engine step vs hand-written step (same K): "
        f"K=1 {ref_loop_rate / loop_rate:.2f}x slower "
        f"(target <= 1.5x), K=16 {ref_bat_rate / bat_rate:.2f}x slower (target <= 1.2x)"
    )
    print(
        f"   same math: max |final log-loss, loop - together| over 16 runs = {same_math:.3g} "
        f"(reference: {ref_diff:.3g} after 20 steps)"
    )
    if not math.isfinite(same_math) or same_math > 1e-9:
        print("   WARNING: the loop and the batched engine disagree by more than rounding (1e-9)")
    print()
    print(
        f"batching speed-up (K=16 together vs loop, stepping only): {step_ratio:.1f}x "
        f"(median {step_ratio_med:.1f}x) (target >= 5x, aim 10x)"
    )
    print(
        f"batching speed-up (K=16 together vs loop, end to end train, default logging): {e2e_ratio:.1f}x "
        f"(target >= 5x, aim 10x)"
    )
    print(
        f"reference floor speed-up (hand-written torch, shared-X matmul): {tr['ref loop'].best / tr['ref batched'].best:.1f}x"
    )
    print(
        f"steepest train K=16 end to end vs the anchors' loop (16 runs, 3 margins/step): "
        f"{vs_anchors:.2f}x "
        f"(target >= 3x, aim 4x)"
    )


if __name__ == "__main__":
    main()
