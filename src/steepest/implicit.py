"""Implicit (minimizing-movement) integration of the steepest flow of a linear model.

Explicit steps cannot go deep into the late phase *and* stay on the flow: the flow on the sphere
ascends a soft-min of the margins whose temperature is 1/Q (Q = −log 𝓛), so a relative step r
must stay below about c/Q, and log 𝓛 falls by a bounded amount per step (docs/late_phase.md,
"Why not −10³ in 2,000 steps"). Steps beyond that bound leave the flow: sign descent on the
linear sparse teacher with a fixed relative step of 0.003 reached Q = 4·10⁹ at 0.29 of γ*_∞.
That is the stability limit of an explicit method on a stiff problem; an implicit method has
none.

The implicit step is De Giorgi's minimizing movement, in trust-region form:

    w' = argmin_{‖v − w‖ ≤ r} log 𝓛(v),    r = α‖w‖,

with ‖·‖ the algorithm's own norm. Its penalized form argmin_v log 𝓛(v) + ‖v − w‖²/(2h) is the
implicit Euler step of the steepest flow of log 𝓛 with time step h, and the two give the same
points (convex duality, with h = r/‖∇log𝓛(w')‖_*). The argmin does not change when log 𝓛 is
replaced by any increasing function of it, so this is also the implicit step of the flow of 𝓛
itself, whatever its time parametrization. Minimizing movements converge to the curve of
maximal slope as the steps shrink, for norms that are not smooth too (Ambrosio, Gigli &
Savaré, *Gradient Flows in Metric Spaces and in the Space of Probability Measures*, 2008,
Ch. 2–3): for ℓ∞ and ℓ1 that curve is the flow of sign and coordinate descent, the
differential inclusion dθ/dτ ∈ −J(∇𝓛) of docs/theory.md §2.2, its sliding motion included.

For a linear model log 𝓛(v) = logsumexp(−Av) (exponential loss, rows a_i = y_i x_i) is convex,
and each step is one convex program (cvxpy with Clarabel; the margins are shifted by min_i q_i
so that the exponents stay O(1)).

**Error control** by step doubling (Hairer, Nørsett & Wanner, *Solving Ordinary Differential
Equations I*, §II.4): one step of radius r against two of radius r/2 from the same point,
err = ‖w₁ − w₂‖₂/‖w₂‖₂. The step is accepted (as w₂) iff err ≤ tol/2, both solves ended
"optimal" and log 𝓛 did not rise; after every step α ← α·min(2, max(0.2,
0.9·√(tol/(2·err)))), as ``schedule: flow`` does (implicit Euler's local error is O(r²)), so a
step rejected on its error comes back shorter; a solver failure, or a rise of log 𝓛 within the
error bound, halves α instead. α never exceeds ``max_alpha`` (at most a doubling of ‖w‖ per
step). Depth is limited by the solver, not by the flow: Clarabel loses accuracy near
Q ≈ 10⁷, where steps start to fail and α shrinks; stop earlier with ``until_log_loss``.

**Flow time** as in :mod:`steepest.step`: dτ = ∫ ds/‖∇𝓛‖_* over each half-step's segment, with
the log of the integrand linear between its ends (:func:`steepest.step.log_expm1_ratio`).

This integrates the *flow*; it is not the explicit algorithm (sign descent, coordinate descent)
that the flow idealizes. Use it to check what the theorems say about the flow, deep in the late
phase; use the engine to see what an algorithm does.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .norms import LpNorm
from .oracles import cvxpy_norm, norm_value, resolve_norm

__all__ = ["IMPLICIT_TOL", "MAX_ALPHA", "ImplicitFlowTrace", "implicit_flow"]

#: Default tolerance of the step-doubling error (the ``flow`` schedule's default, too).
IMPLICIT_TOL = 0.05
#: Largest relative step r/‖w‖: at most a doubling of ‖w‖ per step. Clarabel loses accuracy on
#: steps that multiply Q by much more (the exponents' spread is ~Q).
MAX_ALPHA = 1.0
# A step whose α falls below this has failed for a reason other than its length.
_MIN_ALPHA = 1e-12


@dataclass
class ImplicitFlowTrace:
    """The accepted steps of :func:`implicit_flow`, one entry per step (index 0: the start).

    log_loss: log 𝓛 = logsumexp(−q); margin: γ_N = min_i q_i/‖w‖_N of the own norm;
    path: the iterates w; log_tau: log of the flow time since the start (−inf at the start); alpha: r/‖w‖ of the step;
    err: its step-doubling error. ``rejected`` counts rolled-back steps, ``solves`` the convex
    programs, ``stopped`` says why the loop ended ("steps", "log_loss", "margin", "alpha").
    """

    norm: str
    w: np.ndarray
    path: list[np.ndarray] = field(default_factory=list)
    log_loss: list[float] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)
    log_tau: list[float] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    err: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    rejected: int = 0
    solves: int = 0
    stopped: str = ""

    @property
    def steps(self) -> int:
        return len(self.log_loss) - 1


def _log_loss(q: np.ndarray) -> float:
    """log 𝓛 = logsumexp(−q) of the exponential loss."""
    from scipy.special import logsumexp

    return float(logsumexp(-q))


class _TrustRegionStep:
    """argmin_{‖v − w‖ ≤ r} logsumexp(−Av + c) as one parametrized cvxpy problem."""

    def __init__(self, A: np.ndarray, name: str, p: float) -> None:
        import cvxpy as cp

        n, d = A.shape
        self.A = A
        self.v = cp.Variable(d)
        self.w = cp.Parameter(d)
        self.r = cp.Parameter(nonneg=True)
        self.shift = cp.Parameter(n)
        self.problem = cp.Problem(
            cp.Minimize(cp.log_sum_exp(-A @ self.v + self.shift)),
            [cvxpy_norm(self.v - self.w, name, p) <= self.r],
        )

    def __call__(self, w: np.ndarray, r: float) -> np.ndarray | None:
        import cvxpy as cp

        self.w.value, self.r.value = w, r
        self.shift.value = np.full(self.A.shape[0], float((self.A @ w).min()))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "may be inaccurate": rejected below
                self.problem.solve(solver="CLARABEL")
        except cp.error.SolverError:
            return None
        if self.problem.status != cp.OPTIMAL or self.v.value is None:
            return None
        return np.asarray(self.v.value, dtype=np.float64).copy()


def implicit_flow(
    X: Any,
    y: Any,
    norm: Any,
    *,
    w0: Any = None,
    steps: int = 200,
    tol: float = IMPLICIT_TOL,
    alpha0: float = 0.01,
    max_alpha: float = MAX_ALPHA,
    until_log_loss: float | None = None,
    until_margin: float | None = None,
) -> ImplicitFlowTrace:
    """Integrate the steepest flow of ``norm`` for a linear model by implicit steps.

    X: (n, d) inputs; y: labels ±1; norm: "l1", "l2", "linf", "l<p>" (p ≥ 1), a number p or a
    :class:`steepest.norms.LpNorm`. w0: the start (default: the mean of y_i x_i, which is
    separating on most separable data; any w0 ≠ 0 works). Stops after ``steps`` accepted steps,
    or once log 𝓛 ≤ ``until_log_loss``, or once γ_N ≥ ``until_margin``.

    Returns an :class:`ImplicitFlowTrace`. Raises ValueError for a matrix norm, labels other than
    ±1, or w0 = 0.
    """
    name, p = resolve_norm(norm)
    if p is None:
        raise ValueError(
            f"implicit_flow: a binary linear model has a vector w; the {name} norm is a matrix "
            "norm. Use l1, l2, linf or l<p>."
        )
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("implicit_flow: X and y must be finite (found NaN or inf)")
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"implicit_flow: X must be (n, d) with n = len(y); got {X.shape}, {y.shape}"
        )
    if not np.all(np.isin(y, (-1.0, 1.0))):
        raise ValueError("implicit_flow: labels must be ±1 (a binary linear model)")
    if not (tol > 0 and 0 < alpha0 <= max_alpha and steps >= 0):
        raise ValueError(
            f"implicit_flow: need tol > 0, 0 < alpha0 <= max_alpha, steps >= 0; got tol={tol}, "
            f"alpha0={alpha0}, max_alpha={max_alpha}, steps={steps}"
        )
    A = y[:, None] * X
    if w0 is None:
        w = A.mean(axis=0)
        if not np.any(w):
            raise ValueError(
                "implicit_flow: the default start, the mean of y_i x_i, is 0 for these data; "
                "pass a nonzero w0"
            )
    else:
        w = np.asarray(w0, dtype=np.float64).reshape(-1).copy()
        if w.shape != (A.shape[1],) or not np.any(w) or not np.all(np.isfinite(w)):
            raise ValueError(
                f"implicit_flow: w0 must be a finite nonzero vector of length {A.shape[1]}"
            )
    solve = _TrustRegionStep(A, name, p)
    dual = LpNorm(p).q  # the dual exponent, 1/p + 1/q = 1

    def own(v: np.ndarray) -> float:
        return norm_value(v, p)

    def log_integrand(v: np.ndarray) -> tuple[float, float]:
        """(log 𝓛, log of 1/‖∇𝓛‖_*) at v, with ∇log𝓛 = −Σ softmax(−q)_i a_i."""
        q = A @ v
        ll = _log_loss(q)
        pw = np.exp(-(q - q.min()))
        pw /= pw.sum()
        return ll, -ll - math.log(norm_value(pw @ A, dual))

    import torch

    from .step import log_expm1_ratio

    def log_dtau(a: float, b: float, ds: float) -> float:
        x = torch.tensor(b - a, dtype=torch.float64)
        return math.log(ds) + a + float(log_expm1_ratio(x))

    trace = ImplicitFlowTrace(norm=name, w=w)
    ll, lint = log_integrand(w)
    t0 = time.perf_counter()
    log_tau = -math.inf

    def record(v: np.ndarray, ll: float, alpha: float, err: float) -> None:
        trace.path.append(v)
        trace.log_loss.append(ll)
        trace.margin.append(float((A @ v).min()) / own(v))
        trace.log_tau.append(log_tau)
        trace.alpha.append(alpha)
        trace.err.append(err)
        trace.seconds.append(time.perf_counter() - t0)

    record(w, ll, 0.0, 0.0)
    alpha = alpha0
    while True:
        if trace.steps >= steps:
            trace.stopped = "steps"
            break
        if until_log_loss is not None and trace.log_loss[-1] <= until_log_loss:
            trace.stopped = "log_loss"
            break
        if until_margin is not None and trace.margin[-1] >= until_margin:
            trace.stopped = "margin"
            break
        if alpha < _MIN_ALPHA:
            trace.stopped = "alpha"
            break
        r = alpha * own(w)
        w_full = solve(w, r)
        w_half = solve(w, r / 2) if w_full is not None else None
        w_two = solve(w_half, r / 2) if w_half is not None else None
        trace.solves += 1 + (w_full is not None) + (w_half is not None)
        if w_two is None or w_full is None or w_half is None:
            trace.rejected += 1
            alpha *= 0.5
            continue
        err = float(np.linalg.norm(w_full - w_two) / np.linalg.norm(w_two))
        _, lint_half = log_integrand(w_half)
        ll_two, lint_two = log_integrand(w_two)
        if err <= tol / 2 and ll_two <= ll and np.isfinite(ll_two):
            for (a, b), seg in (
                ((lint, lint_half), w_half - w),
                ((lint_half, lint_two), w_two - w_half),
            ):
                ds = own(seg)
                if ds > 0:
                    log_tau = float(np.logaddexp(log_tau, log_dtau(a, b, ds)))
            w, ll, lint = w_two, ll_two, lint_two
            trace.w = w
            record(w, ll, alpha, err)
        else:
            trace.rejected += 1
            if err <= tol / 2:  # the loss rose (or is not finite): the length failed, not the error
                alpha *= 0.5
                continue
        alpha = min(
            max_alpha, alpha * min(2.0, max(0.2, 0.9 * math.sqrt(tol / 2 / max(err, 1e-300))))
        )
    return trace
