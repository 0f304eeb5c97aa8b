"""Explore: prox-linear implicit steps of the ℓ2 steepest flow of a ReLU network.

A measurement, not a shipped integrator (docs/late_phase.md, "Implicit steps on a network").
Setup of ``bench_late_phase.py``: MNIST 2 vs 7, n = 200, a bias-free ReLU MLP of width 64
(L = 2), warm start by normalized GD (lr 0.05) to log-loss −2.

Each step is the minimizing movement of :mod:`steepest.implicit` with the network linearized
at the current point: θ' = θ + d, d = argmin_{‖d‖₂ ≤ α‖θ‖₂} logsumexp(−q − J d), J the n×P
Jacobian of the margins q_i = y_i f(x_i; θ). For ℓ2 the minimizer lies in the row space of J,
d = Jᵀc, so the program has n variables and needs only K = JJᵀ (cvxpy, Clarabel). Step doubling
as in ``implicit_flow`` (one step of radius r against two of r/2, accept iff the relative
difference ≤ tol/2 and log 𝓛 did not rise).

Printed: log-loss, the ℓ2 margin γ = q_min/‖θ‖², the smoothed margin −log𝓛/‖θ‖² at every
accepted step, then the number of steps in which the smoothed margin fell (by more than 1e-6
relative), the largest such fall, and the wall time.

Usage: ``python benchmarks/explore_implicit_network.py [--tol 0.01] [--steps 150]``
(tol 0.01, 150 steps: about 6.5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import cvxpy as cp
import numpy as np
import torch
from torch.func import functional_call, jacrev, vmap

from steepest.data import load_dataset
from steepest.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--until-log-loss", type=float, default=-1e4)
    args = ap.parse_args()

    ds = load_dataset("mnist", classes=[2, 7], n_train=200, n_test=200, seed=0)
    X, y = ds.X_train, ds.y_train
    model = build_model("mlp", d=X.shape[1], widths=[64], init_scale=0.05, seed=args.seed)
    degree = 2
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def unflat(v: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for k, s, m in zip(names, shapes, sizes, strict=True):
            out[k] = v[i : i + m].view(s)
            i += m
        return out

    def margins(v: torch.Tensor) -> torch.Tensor:
        return y * functional_call(model, unflat(v), (X,)).reshape(-1)

    def log_loss(v: torch.Tensor) -> float:
        return float(torch.logsumexp(-margins(v), 0))

    def one(v: torch.Tensor, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return label * functional_call(model, unflat(v), (x[None],)).reshape(())

    jacobian = vmap(jacrev(one), in_dims=(None, 0, 0))

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for _ in range(5000):  # the benchmark's warm start
        v = theta.clone().requires_grad_(True)
        loss = torch.logsumexp(-margins(v), 0)
        if loss.item() <= -2:
            break
        (g,) = torch.autograd.grad(loss, v)
        theta = theta - 0.05 * g / g.norm()

    n = X.shape[0]
    c = cp.Variable(n)
    K, R = cp.Parameter((n, n)), cp.Parameter((n, n))
    shift, radius = cp.Parameter(n), cp.Parameter(nonneg=True)
    problem = cp.Problem(cp.Minimize(cp.log_sum_exp(-shift - K @ c)), [cp.norm(R @ c, 2) <= radius])

    def step(v: torch.Tensor, r: float) -> torch.Tensor | None:
        q, J = margins(v).detach(), jacobian(v, X, y).detach()
        gram = (J @ J.T).numpy()
        lam, U = np.linalg.eigh(gram)
        K.value, R.value = gram, np.sqrt(np.clip(lam, 0, None))[:, None] * U.T
        shift.value, radius.value = (q - q.min()).numpy(), r
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                problem.solve(solver="CLARABEL")
            except cp.error.SolverError:
                return None
        if problem.status != cp.OPTIMAL:
            return None
        return v + J.T @ torch.from_numpy(np.asarray(c.value))

    def row(v: torch.Tensor) -> tuple[float, float, float]:
        ll, size = log_loss(v), float(v.norm()) ** degree
        return ll, float(margins(v).min()) / size, -ll / size

    t0 = time.perf_counter()
    alpha, rejected = 0.01, 0
    rows = [row(theta)]
    print(f"warm start: log-loss {rows[0][0]:.3f}")
    while len(rows) <= args.steps and rows[-1][0] > args.until_log_loss and alpha > 1e-12:
        r = alpha * float(theta.norm())
        full = step(theta, r)
        half = step(theta, r / 2) if full is not None else None
        two = step(half, r / 2) if half is not None else None
        if full is None or two is None:
            rejected, alpha = rejected + 1, alpha / 2
            continue
        err = float((full - two).norm() / two.norm())
        if err <= args.tol / 2 and log_loss(two) <= rows[-1][0]:
            theta = two
            rows.append(row(theta))
            ll, gamma, smoothed = rows[-1]
            print(
                f"{len(rows) - 1:4d} log-loss {ll:11.2f}  gamma {gamma:.5f}  smoothed "
                f"{smoothed:.5f}  alpha {alpha:.3g}  err {err:.2g}  "
                f"{time.perf_counter() - t0:5.0f} s",
                flush=True,
            )
        else:
            rejected += 1
            if err <= args.tol / 2:  # the loss rose: the length failed, not the error
                alpha /= 2
                continue
        alpha = min(
            1.0, alpha * min(2.0, max(0.2, 0.9 * math.sqrt(args.tol / 2 / max(err, 1e-300))))
        )
    smoothed = np.array([r[2] for r in rows])
    rel = np.diff(smoothed) / np.abs(smoothed[:-1])
    falls = rel < -1e-6
    print(
        f"tol {args.tol}: {len(rows) - 1} steps ({rejected} rejected), log-loss "
        f"{rows[-1][0]:.1f}, gamma {rows[-1][1]:.5f}; smoothed margin fell in {int(falls.sum())} "
        f"of {len(rel)} steps, largest fall {(-rel.min() if falls.any() else 0):.2e} "
        f"(relative); {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
