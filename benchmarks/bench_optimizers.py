"""Step overhead of ``steepest.optimizer`` in a user's own loop, against peers with the same math.

The overhead of an optimizer is the time of ``optimizer.step()``: everything a training step
costs beyond the forward and backward pass. It is timed here directly, with fixed gradients in
``.grad`` (the cost of these rules does not depend on the gradient's values; Muon's SVD barely
does), so no forward/backward noise enters the difference. Each timing is ``--steps`` calls of
``step()``; the optimizers are timed round-robin (A, B, C, …, A, B, C, …) ``--repeat`` times and
the **median** is reported, with the best beside it.

Pairs with the same math (the ratio's target, issue 19: ≤ 1.2× the peer):

* ``steepest gd``      vs ``torch.optim.SGD(foreach=True)``          θ ← θ − η g
* ``steepest sign``    vs ``pytorch_optimizer.SignSGD(momentum=0)``   θ ← θ − η sign(g)
* ``steepest signum``  vs ``pytorch_optimizer.SignSGD(momentum=β)``   m ← βm + (1−β)g,
                                                                     θ ← θ − η sign(m)
* ``steepest adam``    vs ``torch.optim.Adam(foreach=True)``          Adam with bias correction

and ``cd`` and ``lp`` (p = 3) against ``steepest sign`` (target ≤ 1.5×). Muon with exact SVD and
with Newton–Schulz, and ``pytorch_optimizer.Lion``, are printed for reference.

Two models: the bias-free MLP 784→256→1 (201k parameters) and a bias-free CNN of about 1M
parameters; float64 and float32.
Run: ``python benchmarks/bench_optimizers.py [--quick] [--threads N] [--repeat R] [--steps S]``.
"""

# _common before torch: it sets OMP_WAIT_POLICY, which libgomp reads when torch loads it.
from __future__ import annotations  # noqa: I001

from collections.abc import Callable
from typing import Any

from _common import header, parse_args, time_interleaved
import torch
from torch import nn

import steepest

PAIRS = [
    ("gd", "torch SGD"),
    ("sign", "po SignSGD(0)"),
    ("signum", "po SignSGD(0.9)"),
    ("adam", "torch Adam"),
]
VS_SIGN = ["cd", "lp(3)"]
TARGET_PEER, TARGET_SIGN = 1.2, 1.5


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256, bias=False), nn.ReLU(), nn.Linear(256, 1, bias=False))


def cnn() -> nn.Module:
    """Bias-free CNN for 28×28 inputs: conv 1→32 (5×5), conv 32→64 (5×5, stride 2),
    FC 6400→150, FC 150→1 (1,012,150 parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, bias=False),
        nn.ReLU(),
        nn.Conv2d(32, 64, 5, stride=2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 10 * 10, 150, bias=False),
        nn.ReLU(),
        nn.Linear(150, 1, bias=False),
    )


def factories(lr: float = 1e-4) -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    import pytorch_optimizer as po

    out: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        "gd": lambda ps: steepest.optimizer("gd", ps, lr=lr),
        "torch SGD": lambda ps: torch.optim.SGD(ps, lr=lr, foreach=True),
        "sign": lambda ps: steepest.optimizer("sign", ps, lr=lr),
        "po SignSGD(0)": lambda ps: po.SignSGD(ps, lr=lr, momentum=0.0, foreach=True),
        "signum": lambda ps: steepest.optimizer("signum", ps, lr=lr, momentum=0.9),
        "po SignSGD(0.9)": lambda ps: po.SignSGD(ps, lr=lr, momentum=0.9, foreach=True),
        "adam": lambda ps: steepest.optimizer("adam", ps, lr=lr),
        "torch Adam": lambda ps: torch.optim.Adam(ps, lr=lr, foreach=True),
        "cd": lambda ps: steepest.optimizer("cd", ps, lr=lr),
        "lp(3)": lambda ps: steepest.optimizer("lp", ps, lr=lr, p=3),
        "po Lion": lambda ps: po.Lion(ps, lr=lr),
        "muon (svd)": lambda ps: steepest.optimizer("muon", ps, lr=lr, orthogonalize="svd"),
        "muon (newton-schulz)": lambda ps: steepest.optimizer(
            "muon", ps, lr=lr, orthogonalize="newton_schulz"
        ),
    }
    return out


def measure(
    make_model: Callable[[], nn.Module],
    dtype: torch.dtype,
    names: list[str],
    steps: int,
    repeat: int,
) -> dict[str, Any]:
    """Median and best seconds per ``step()`` for each optimizer (own copy of the model each)."""
    torch.manual_seed(0)
    base = make_model().to(dtype)
    grads = [torch.randn_like(p) * 1e-3 for p in base.parameters()]
    facts = factories()
    fns = {}
    for name in names:
        model = make_model().to(dtype)
        model.load_state_dict(base.state_dict())
        params = list(model.parameters())
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt = facts[name](params)
        opt.step()  # state allocation happens once, outside the timing

        def run(opt=opt) -> None:
            for _ in range(steps):
                opt.step()

        fns[name] = run
    timings = time_interleaved(fns, repeat)
    return {k: (t.median / steps, t.best / steps) for k, t in timings.items()}


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0], lambda p: p.add_argument("--steps", type=int, default=None)
    )
    steps = args.steps or (10 if args.quick else 20)
    repeat = args.repeat or (3 if args.quick else 7)
    header("optimizer step overhead: steepest.optimizer vs peers with the same math")
    names = [n for pair in PAIRS for n in pair] + VS_SIGN
    names += ["po Lion", "muon (svd)", "muon (newton-schulz)"]
    models = [("MLP 784-256-1", mlp)] if args.quick else [("MLP 784-256-1", mlp), ("CNN", cnn)]
    dtypes = [torch.float64] if args.quick else [torch.float64, torch.float32]
    misses = []
    for mname, make in models:
        n_params = sum(p.numel() for p in make().parameters())
        for dtype in dtypes:
            res = measure(make, dtype, names, steps, repeat)
            print(
                f"\n-- {mname} ({n_params:,} parameters), {str(dtype).replace('torch.', '')}, "
                f"{steps} steps × {repeat} repeats; ms per step(): median (best)"
            )
            for name in names:
                med, best = res[name]
                print(f"   {name:<22} {med * 1e3:8.3f} ({best * 1e3:.3f})")
            print("   ratios of medians:")
            for ours, peer in PAIRS:
                r = res[ours][0] / res[peer][0]
                ok = r <= TARGET_PEER
                misses += [] if ok else [f"{mname} {dtype}: {ours} {r:.2f}× {peer}"]
                verdict = "met" if ok else "MISSED"
                print(f"   {ours:>8} / {peer:<16} {r:6.2f}×  (target ≤ {TARGET_PEER}×: {verdict})")
            for ours in VS_SIGN:
                r = res[ours][0] / res["sign"][0]
                ok = r <= TARGET_SIGN
                misses += [] if ok else [f"{mname} {dtype}: {ours} {r:.2f}× sign"]
                verdict = "met" if ok else "MISSED"
                print(
                    f"   {ours:>8} / {'sign':<16} {r:6.2f}×  (target ≤ {TARGET_SIGN}×: {verdict})"
                )
            svd_ns = res["muon (svd)"][0] / res["muon (newton-schulz)"][0]
            print(f"   muon svd / newton-schulz: {svd_ns:.2f}×")
    print("\nall targets met" if not misses else "\nmissed: " + "; ".join(misses))


if __name__ == "__main__":
    main()
