"""Stationarity diagnostics: the Fenchel–Young gap and the KKT residual with optimized multipliers.

The margin-maximization problem of a norm ‖·‖ (docs/theory.md §3.4) is

    (P)  minimize ½‖θ‖²  subject to  q_i(θ) = y_i f(θ; x_i) ≥ 1,  i = 1..n,

with Q(θ) = ½‖θ‖², ∂Q(θ) = {s : ‖s‖_* = ‖θ‖, ⟨s, θ⟩ = ‖θ‖²} (the primal duality map). θ is a
KKT point when it is feasible and some λ ≥ 0 gives Σ_i λ_i h_i ∈ ∂Q(θ) (h_i ∈ ∂°q_i(θ)) with
λ_i (q_i − 1) = 0.

Two diagnostics, both computable from (θ, data) alone:

* :func:`fenchel_young_gap` (docs/theory.md §3.5): D_Q(θ, v) = Q(θ) + Q*(v) − ⟨θ, v⟩ ≥ 0 with
  Q*(v) = ½‖v‖_*², zero iff v ∈ ∂Q(θ). With the loss weights as multipliers, v ∝ −∇𝓛, and θ
  scaled to unit norm, min_{c>0} D_Q(θ/‖θ‖, c·(−∇𝓛)) = ½(1 − β₊²), β the dual alignment of
  :mod:`steepest.metrics` (β₊ = max(β, 0)). The gradient is −∇log𝓛, i.e. weights
  exp(−(q_i − q_min)) after normalization, so nothing underflows.
* :func:`kkt_residual` (docs/theory.md §3.6): rescale θ̂ = θ / q_min^{1/L} (so min_i q_i(θ̂) = 1), keep
  the near-support points I_τ = {i : q_i(θ̂) ≤ 1 + τ} and solve

      r = min_{λ ≥ 0, s ∈ ∂Q(θ̂)} ‖s − Σ_{i∈I_τ} λ_i ∇q_i(θ̂)‖_* / ‖θ̂‖   ∈ [0, 1]

  (λ = 0 gives exactly 1, because ‖s‖_* = ‖θ̂‖), reported with the slackness Σ_i λ_i(q_i(θ̂) − 1).
  ℓ2: s = θ̂, NNLS. ℓ∞ and ℓ1: ∂Q is a polytope, one LP (HiGHS). ℓp (1 < p < ∞, p ≠ 2): s is
  unique, a convex program in λ (cvxpy + Clarabel). Spectral (max over layers of σ_max): s is a
  convex combination over the active layers of U₁ M V₁ᵀ on their top singular spaces
  (M ⪰ 0, tr M = 1), an SDP (cvxpy + Clarabel).

Non-smoothness (docs/theory.md §6 item 2): ∇q_i comes from autograd, which returns *one* element of the
Clarke subdifferential (PyTorch: ReLU'(0) = 0, leaky ReLU'(0) = slope, max pooling sends the
gradient to one maximal entry). The residual is therefore an upper bound on the residual
minimized over ∂°q_i; it is exact when no support point sits on a kink. ``n_kinks`` counts
the pre-activations that are exactly 0 at nn.ReLU / nn.LeakyReLU modules on the support points.

Tie tolerances [DEF, docs/theory.md §3.6]: ℓ∞ coordinates with |θ_j| ≥ (1 − tie_tol)‖θ‖_∞ count as
maximal; ℓ1 coordinates with |θ_j| ≤ zero_tol·‖θ‖_∞ count as zero; spectral layers with
σ_max ≥ (1 − tie_tol)·max_k σ_max(W_k) are active, and singular values ≥ (1 − tie_tol)σ₁ span
the top singular space. These relax ∂Q slightly (they can only lower the residual).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from .losses import margins
from .metrics import alignment_gradient, model_degree
from .norms import Norm, get_norm, inner

__all__ = [
    "KKTResult",
    "norm_kind",
    "NotSeparatedError",
    "SUBGRADIENT_NOTE",
    "KKT_NORMS",
    "fenchel_young",
    "fenchel_young_gap",
    "fenchel_young_gap_from",
    "kkt_residual",
    "kkt_residual_from",
    "optimized_alignment",
    "l2_multipliers",
    "stage2_cap",
]

#: Norm names :func:`kkt_residual` accepts (any ``l<p>``, p ≥ 1, also works).
KKT_NORMS: tuple[str, ...] = ("l1", "l2", "linf", "l<p>", "spectral", "max-spectral")

SUBGRADIENT_NOTE = (
    "autograd Clarke-subgradient selection: ReLU'(0) = 0, leaky ReLU'(0) = negative_slope, "
    "max pooling routes the gradient to one maximal entry; the residual is w.r.t. this one "
    "element of the Clarke subdifferential (an upper bound on the best element)"
)

# HiGHS's default feasibility tolerances are 1e-7; 1e-10 makes the LP residual accurate to ~1e-9.
_HIGHS_OPTS: dict[str, Any] = {
    "primal_feasibility_tolerance": 1e-10,
    "dual_feasibility_tolerance": 1e-10,
}


class NotSeparatedError(ValueError):
    """q_min ≤ 0: θ does not separate the data, so θ/q_min^{1/L} is not a feasible point of (P)."""


@dataclass(frozen=True)
class KKTResult:
    """Outcome of :func:`kkt_residual` (docs/theory.md §3.6).

    residual: relative stationarity residual min ‖s − Σλ_i∇q_i‖_* / ‖θ̂‖ ∈ [0, 1]; 0 at a KKT point.
    slackness: Σ_{i∈I_τ} λ_i (q_i(θ̂) − 1) ≥ 0 at the optimal λ (complementary slackness term).
    multipliers: λ_i on the support points (θ̂ scale), aligned with ``support``.
    support: indices of I_τ = {i : q_i(θ̂) ≤ 1 + τ} into the rows of X.
    q_support: q_i(θ̂) on the support (≥ 1; the tight points equal 1).
    norm: the norm's name; degree: L used for the rescaling; q_min: min_i q_i(θ) before rescaling.
    tau, tie_tol, zero_tol: the tolerances used; active: size of the face of ∂Q used (ℓ∞: maximal
    coordinates; ℓ1: non-zero coordinates; spectral: per active layer the dimension of its top
    singular space); solver: which solver; status: its final status.
    n_kinks: pre-activations exactly 0 at nn.ReLU/nn.LeakyReLU modules on the support points
    (0 ⇒ autograd's gradient is the only Clarke subgradient there); subgradient: the selection
    autograd used (see :data:`SUBGRADIENT_NOTE`).
    alignment: β* = max over λ ≥ 0 on the support of ⟨θ̂, Σλ_i∇q_i⟩ / (‖θ̂‖ ‖Σλ_i∇q_i‖_*), the
    optimized-multiplier dual alignment; ``alignment_gap`` = 1 − β* is zero exactly at
    stationarity and, unlike ``residual``, does not depend on the tie tolerances (it needs no
    face of ∂Q), so it still moves when ``residual`` is saturated at 1 far from a KKT point.
    """

    residual: float
    slackness: float
    multipliers: np.ndarray
    support: np.ndarray
    q_support: np.ndarray
    norm: str
    degree: float
    q_min: float
    tau: float
    tie_tol: float
    zero_tol: float
    active: Any
    solver: str
    status: str
    n_kinks: int
    alignment: float = math.nan
    subgradient: str = SUBGRADIENT_NOTE
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_support(self) -> int:
        return int(len(self.support))

    @property
    def alignment_gap(self) -> float:
        """1 − β*: the optimized-multiplier stationarity (Fenchel–Young) gap; 0 at a KKT point."""
        return 1.0 - self.alignment

    @property
    def lambda_sum(self) -> float:
        return float(np.sum(self.multipliers))


# --------------------------------------------------------------------------------------------
# Fenchel–Young (generalized Bregman) gap, docs/theory.md §3.5


def fenchel_young(theta: Sequence[Tensor], v: Sequence[Tensor], norm: Norm | str) -> Tensor:
    """D_Q(θ, v) = ½‖θ‖² + ½‖v‖_*² − ⟨θ, v⟩ ≥ 0, zero iff v ∈ ∂(½‖·‖²)(θ) (docs/theory.md §3.5).

    The Fenchel–Young inequality for Q = ½‖·‖², Q* = ½‖·‖_*²; for differentiable Q and
    v = ∇Q(θ') it is the Bregman divergence D_Q(θ, θ').
    """
    N = get_norm(norm)
    return 0.5 * N(theta) ** 2 + 0.5 * N.dual(v) ** 2 - inner(theta, v)


def fenchel_young_gap_from(
    params: Sequence[Tensor], neg_grad: Sequence[Tensor], norm: Norm | str
) -> Tensor:
    """min_{c ≥ 0} D_Q(θ/‖θ‖, c·v) with v = −∇𝓛 (any positive multiple), docs/theory.md §3.5.

    Both arguments are normalized first (θ̃ = θ/‖θ‖, v̂ = v/‖v‖_*), then
    c* = max(⟨θ̃, v̂⟩, 0) and the gap is D_Q(θ̃, c*v̂) = ½ + ½c*² − c*⟨θ̃, v̂⟩ = ½(1 − β₊²).
    0 exactly at direction-stationary points; ½ when −∇𝓛 points away from θ.
    """
    N = get_norm(norm)
    rho = N(params)
    dual = N.dual(neg_grad)
    if not bool(rho > 0) or not bool(dual > 0):
        raise ValueError("fenchel_young_gap: θ and ∇𝓛 must be non-zero (the gap is undefined at 0)")
    th = [p / rho for p in params]
    vh = [g / dual for g in neg_grad]
    c = torch.clamp(inner(th, vh), min=0.0)
    return fenchel_young(th, [c * g for g in vh], N)


def fenchel_young_gap(
    model: nn.Module, X: Tensor, y: Tensor, norm: Norm | str = "l2", loss: str = "exponential"
) -> Tensor:
    """Scale-optimized Fenchel–Young stationarity gap ½(1 − β₊²) of a model (docs/theory.md §3.5).

    The multipliers are the loss weights λ_i ∝ exp(−(q_i − q_min)) (from −∇log𝓛: no underflow).
    """
    with torch.enable_grad():
        v = alignment_gradient(model, X, y, loss)
    return fenchel_young_gap_from(
        [p.detach() for p in model.parameters()], [g.detach() for g in v], norm
    )


# --------------------------------------------------------------------------------------------
# KKT residual with optimized multipliers, docs/theory.md §3.6


def norm_kind(N: Norm) -> tuple[str, float | None]:
    """Which KKT program a norm needs, as the norm says (``Norm.kkt_program``): ("l2" | "linf"
    | "l1" | "lp" | "spectral", p or None)."""
    kind = getattr(N, "kkt_program", None)
    if kind is None:
        raise ValueError(
            f"kkt_residual: norm {N.name!r} has no KKT program (Norm.kkt_program is None); "
            f"norms with one: {', '.join(KKT_NORMS)}"
        )
    p = getattr(N, "p", None)
    return kind, (float(p) if p is not None else None)


def _count_kinks(model: nn.Module, pdict: dict[str, Tensor], X: Tensor) -> int:
    """Pre-activations exactly 0 at ReLU / leaky-ReLU modules (autograd takes ReLU'(0) = 0)."""
    counts = [0]

    def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        counts[0] += int((inputs[0] == 0).sum())

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.ReLU, nn.LeakyReLU))
    ]
    try:
        with torch.no_grad():
            functional_call(model, pdict, (X,))
    finally:
        for h in handles:
            h.remove()
    return counts[0]


# Second stage (lexicographic): among multipliers whose residual is within this of the optimum,
# take the ones with the least slackness Σλ_i(q_i − 1). Multipliers are not unique (e.g. on
# degenerate LP faces); without this the reported slackness would depend on the solver's vertex.
_STAGE2_RTOL, _STAGE2_ATOL = 1e-6, 1e-9


def stage2_cap(r: float) -> float:
    """The residual the least-slackness second stage may spend: r·(1 + rtol) + atol, with r
    the first stage's optimal residual (the tolerances absorb the solvers' gaps)."""
    return r * (1.0 + _STAGE2_RTOL) + _STAGE2_ATOL


def _linprog(c, A_ub, b_ub, A_eq=None, b_eq=None):
    from scipy.optimize import linprog

    res = linprog(
        c,
        A_ub=A_ub,
        b_ub=b_ub,
        A_eq=A_eq,
        b_eq=b_eq,
        bounds=(0, None),
        method="highs",
        options=_HIGHS_OPTS,
    )
    if res.status != 0:
        raise RuntimeError(f"kkt_residual: HiGHS failed ({res.message})")
    return res


def _lexicographic_lp(c, A_ub, b_ub, A_eq, b_eq, slack_c) -> tuple[float, Any]:
    """min c·z, then min slack_c·z subject to c·z ≤ cap(optimum)."""
    import scipy.sparse as sp

    res = _linprog(c, A_ub, b_ub, A_eq, b_eq)
    r = float(res.fun)
    if not np.any(slack_c > 0) or not np.any(res.x[slack_c > 0] > 0):
        return r, res.x
    A2 = sp.vstack([sp.csr_matrix(A_ub), sp.csr_matrix(c[None, :])], format="csr")
    b2 = np.concatenate([b_ub, [stage2_cap(r)]])
    try:
        res2 = _linprog(slack_c, A2, b2, A_eq, b_eq)
    except RuntimeError:  # keep the first-stage multipliers if the second stage stalls
        return r, res.x
    return r, res2.x


def _solve_linf(H: np.ndarray, theta: np.ndarray, gap: np.ndarray, tie_tol: float):
    """min Σ_j t_j s.t. |Dμ − Hᵀλ| ≤ t, Σμ = 1, λ, μ, t ≥ 0 (θ scaled to ‖θ‖_∞ = 1).

    ∂(½‖·‖_∞²)(θ)/‖θ‖_∞ = conv{sign(θ_j) e_j : j maximal}; the dual norm is ℓ1.
    """
    import scipy.sparse as sp

    m, p = H.shape
    top = np.abs(theta).max()
    maximal = np.flatnonzero(np.abs(theta) >= (1.0 - tie_tol) * top)
    a = len(maximal)
    D = sp.csr_matrix((np.sign(theta[maximal]), (maximal, np.arange(a))), shape=(p, a))
    Ht = sp.csr_matrix(H.T)
    eye = sp.identity(p, format="csr")
    A_ub = sp.vstack([sp.hstack([-Ht, D, -eye]), sp.hstack([Ht, -D, -eye])], format="csr")
    b_ub = np.zeros(2 * p)
    A_eq = sp.csr_matrix(np.concatenate([np.zeros(m), np.ones(a), np.zeros(p)])[None, :])
    c = np.concatenate([np.zeros(m + a), np.ones(p)])
    slack_c = np.concatenate([gap, np.zeros(a + p)])
    r, z = _lexicographic_lp(c, A_ub, b_ub, A_eq, np.ones(1), slack_c)
    return r, z[:m], "highs-lp", "optimal", a


def _solve_l1(H: np.ndarray, theta: np.ndarray, gap: np.ndarray, zero_tol: float):
    """min t s.t. |sign θ_j − (Hᵀλ)_j| ≤ t on supp θ, |(Hᵀλ)_j| ≤ 1 + t off it (‖θ‖₁ = 1).

    ∂(½‖·‖₁²)(θ)/‖θ‖₁ = {s : s_j = sign θ_j on the support, |s_j| ≤ 1 off it}; dual norm ℓ∞.
    """
    m, p = H.shape
    zero = np.abs(theta) <= zero_tol * np.abs(theta).max()
    b = np.where(zero, 1.0, np.sign(theta))
    b_minus = np.where(zero, 1.0, -np.sign(theta))
    ones = np.ones((p, 1))
    A_ub = np.vstack([np.hstack([H.T, -ones]), np.hstack([-H.T, -ones])])
    b_ub = np.concatenate([b, b_minus])
    c = np.concatenate([np.zeros(m), [1.0]])
    slack_c = np.concatenate([gap, [0.0]])
    r, z = _lexicographic_lp(c, A_ub, b_ub, None, None, slack_c)
    return r, z[:m], "highs-lp", "optimal", int((~zero).sum())


def _cvx_solve(prob) -> str:
    import warnings

    import cvxpy as cp

    inaccurate = False
    for opts in ({"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10}, {}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "solution may be inaccurate": handled below
                prob.solve(solver=cp.CLARABEL, **opts)
        except cp.error.SolverError:
            continue
        if prob.status == cp.OPTIMAL:
            return "optimal"
        inaccurate = inaccurate or prob.status == cp.OPTIMAL_INACCURATE
    if inaccurate:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prob.solve(solver=cp.CLARABEL)
        if prob.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
            return str(prob.status)
    raise RuntimeError(f"kkt_residual: Clarabel failed (status {prob.status})")


def _lexicographic_cvx(
    lam, objective, constraints, gap: np.ndarray
) -> tuple[float, np.ndarray, str]:
    """min objective(λ), then min Σλ_i gap_i subject to objective ≤ cap(optimum) (cvxpy)."""
    import cvxpy as cp

    prob = cp.Problem(cp.Minimize(objective), constraints)
    status = _cvx_solve(prob)
    r, lam1 = float(prob.value), np.maximum(lam.value, 0.0)
    if not np.any(gap > 0) or not np.any(lam1[gap > 0] > 1e-12):
        return r, lam1, status
    prob2 = cp.Problem(cp.Minimize(gap @ lam), [*constraints, objective <= stage2_cap(r)])
    try:
        _cvx_solve(prob2)
    except RuntimeError:
        return r, lam1, status
    return r, np.maximum(lam.value, 0.0), status


def l2_multipliers(H: np.ndarray, theta: np.ndarray, gap: np.ndarray):
    """min_{λ≥0} ‖θ − Hᵀλ‖₂ (NNLS; θ scaled to ‖θ‖₂ = 1), then the least-slackness λ."""
    import cvxpy as cp
    from scipy.optimize import nnls

    lam, rnorm = nnls(H.T, theta, maxiter=50 * max(H.shape))
    r = float(rnorm)
    if not np.any(gap > 0) or not np.any(lam[gap > 0] > 1e-12):
        return r, lam, "scipy-nnls", "optimal"
    # ‖θ − Hᵀλ‖₂ in the m-dimensional row space of H: with Hᵀ = QR (reduced),
    # ‖θ − Hᵀλ‖² = ‖Qᵀθ − Rλ‖² + ‖θ − QQᵀθ‖², so the cone has m entries instead of p
    # (measured with the ℓ2 alignment from NNLS: verify of 15 runs of a 50k-parameter net,
    # 33 s → 23 s).
    Q, R = np.linalg.qr(H.T)
    qt = Q.T @ theta
    perp = theta - Q @ qt  # computed directly: ‖θ‖² − ‖Qᵀθ‖² would cancel when r is tiny
    perp2 = float(perp @ perp)
    var = cp.Variable(H.shape[0], nonneg=True)
    prob = cp.Problem(
        cp.Minimize(gap @ var),
        [cp.norm(qt - R @ var, 2) <= float(np.sqrt(max(stage2_cap(r) ** 2 - perp2, 0.0)))],
    )
    try:
        _cvx_solve(prob)
    except RuntimeError:
        return r, lam, "scipy-nnls", "optimal"
    return r, np.maximum(var.value, 0.0), "scipy-nnls+clarabel", "optimal"


def _solve_lp_norm(H: np.ndarray, theta: np.ndarray, gap: np.ndarray, p: float):
    """min_{λ≥0} ‖J_p(θ) − Hᵀλ‖_q with θ scaled to ‖θ‖_p = 1 (J_p(θ)_j = sign θ_j |θ_j|^{p−1})."""
    import cvxpy as cp

    m, _ = H.shape
    q = p / (p - 1.0)
    s = np.sign(theta) * np.abs(theta) ** (p - 1.0)
    lam = cp.Variable(m, nonneg=True)
    r, lam_v, status = _lexicographic_cvx(lam, cp.pnorm(s - H.T @ lam, q), [], gap)
    return r, lam_v, "cvxpy-clarabel", status


def _solve_spectral(H: np.ndarray, blocks: list[np.ndarray], gap: np.ndarray, tie_tol: float):
    """SDP over the top singular spaces (θ scaled to max_k σ_max(W_k) = 1), dual Σ_k ‖·‖_nuc."""
    import cvxpy as cp

    m, _ = H.shape
    svds = [np.linalg.svd(W, full_matrices=False) for W in blocks]
    top = max(float(s[0]) for _, s, _ in svds)
    lam = cp.Variable(m, nonneg=True)
    traces, terms, active = [], [], []
    start = 0
    for (U, s, Vt), W in zip(svds, blocks, strict=True):
        a, b = W.shape
        size = a * b
        Hk = H[:, start : start + size]
        start += size
        G = cp.reshape(Hk.T @ lam, (a, b), order="C")
        if s[0] >= (1.0 - tie_tol) * top:
            r = int(np.sum(s >= (1.0 - tie_tol) * s[0]))
            active.append(r)
            if r == 1:
                mk = cp.Variable(nonneg=True)
                S = mk * np.outer(U[:, 0], Vt[0])
                traces.append(mk)
            else:
                Mk = cp.Variable((r, r), PSD=True)
                S = U[:, :r] @ Mk @ Vt[:r]
                traces.append(cp.trace(Mk))
            R = S - G
        else:
            active.append(0)
            R = -G
        terms.append(
            cp.norm(cp.reshape(R, (size,), order="C"), 2) if min(a, b) == 1 else cp.normNuc(R)
        )
    r_opt, lam_v, status = _lexicographic_cvx(lam, sum(terms), [sum(traces) == 1], gap)
    return r_opt, lam_v, "cvxpy-clarabel", status, active


def optimized_alignment(
    H: np.ndarray, blocks: list[np.ndarray], N: Norm, rho: float
) -> tuple[float, str]:
    """β* = max_{λ ≥ 0, ‖Hᵀλ‖_* ≤ 1} ⟨θ/‖θ‖, Hᵀλ⟩ ∈ [0, 1].

    ℓ2: from NNLS (Moreau decomposition); other norms: cvxpy + Clarabel (for ℓ1/ℓ∞ a HiGHS LP
    was tried: verify of 15 runs of a 50k-parameter net took 206 s with it, 33 s with Clarabel).

    1 − β* is zero exactly when some Σλ_i∇q_i lies in the cone of ∂Q(θ) (stationarity), and it
    varies continuously with θ, unlike the residual on a face of ∂Q fixed by a tie tolerance.
    Scale-optimized Fenchel–Young form: min_{λ≥0} D_Q(θ̂, Σλ_i∇q_i)/Q(θ̂) = 1 − β*².
    """
    import cvxpy as cp

    kind, p = norm_kind(N)
    theta = np.concatenate([b.reshape(-1) for b in blocks]) / rho
    m = H.shape[0]
    if kind == "l2":
        # Moreau: with C = {Hᵀλ : λ ≥ 0}, max_{v∈C, ‖v‖₂≤1} ⟨θ, v⟩ = ‖Π_C θ‖₂ and
        # ‖Π_C θ‖² = ‖θ‖² − min_{λ≥0} ‖θ − Hᵀλ‖² (NNLS), so no conic solve is needed.
        from scipy.optimize import nnls

        _, rnorm = nnls(H.T, theta, maxiter=50 * max(H.shape))
        return float(np.sqrt(max(1.0 - rnorm**2, 0.0))), "optimal"
    lam = cp.Variable(m, nonneg=True)
    v = H.T @ lam
    if kind == "l2":
        dual = cp.norm(v, 2)
    elif kind == "linf":
        dual = cp.norm1(v)
    elif kind == "l1":
        dual = cp.norm_inf(v)
    elif kind == "lp":
        assert p is not None
        dual = cp.pnorm(v, p / (p - 1.0))
    else:
        terms, start = [], 0
        for b in blocks:
            a = b.shape[0] if b.ndim >= 2 else 1  # Spectral's blocks: (out, rest), vectors 1×n
            cols = b.size // a
            Hk = H[:, start : start + b.size]
            start += b.size
            G = cp.reshape(Hk.T @ lam, (a, cols), order="C")
            terms.append(
                cp.norm(cp.reshape(G, (b.size,), order="C"), 2)
                if min(a, cols) == 1
                else cp.normNuc(G)
            )
        dual = sum(terms)
    prob = cp.Problem(cp.Maximize((H @ theta) @ lam), [dual <= 1])
    status = _cvx_solve(prob)
    return float(min(max(prob.value, 0.0), 1.0)), status


def kkt_residual_from(
    H: np.ndarray,
    theta_blocks: Sequence[np.ndarray],
    norm: Norm | str,
    *,
    q_support: np.ndarray | None = None,
    tie_tol: float = 1e-3,
    zero_tol: float = 1e-3,
) -> tuple[float, np.ndarray, dict[str, Any]]:
    """The convex program of §3.6 on raw arrays: rows of H are ∇q_i(θ̂) (flattened, i ∈ I_τ).

    ``theta_blocks`` are the parameter tensors of θ̂ (numpy, in the order of H's columns);
    ``q_support`` the margins q_i(θ̂) of H's rows (default all 1). Stage 1 minimizes the
    relative residual; stage 2 picks, among multipliers within (1 + 1e-6)·r + 1e-9 of it, the
    ones with the least slackness Σλ_i(q_i − 1) (multipliers are not unique).
    Returns (relative residual, λ on θ̂'s scale, info dict with solver/status/active).
    """
    N = get_norm(norm)
    kind, p = norm_kind(N)
    blocks = [np.asarray(b, dtype=np.float64) for b in theta_blocks]
    theta = np.concatenate([b.reshape(-1) for b in blocks])
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2 or H.shape[1] != theta.size:
        raise ValueError(f"H must have shape (m, {theta.size}), got {H.shape}")
    rho = float(N([torch.from_numpy(b) for b in blocks]))
    if not rho > 0:
        raise ValueError("kkt_residual: θ = 0 has no direction")
    # Solve at θ/ρ (unit norm, s of unit dual norm) and λ/ρ: the residual is then relative.
    th = theta / rho
    gap = (
        np.zeros(H.shape[0])
        if q_support is None
        else np.maximum(np.asarray(q_support, dtype=np.float64) - 1.0, 0.0)
    )
    if gap.shape != (H.shape[0],):
        raise ValueError(f"q_support must have shape ({H.shape[0]},), got {gap.shape}")
    active: Any = None
    if kind == "l2":
        r, lam, solver, status = l2_multipliers(H, th, gap)
    elif kind == "linf":
        r, lam, solver, status, active = _solve_linf(H, th, gap, tie_tol)
    elif kind == "l1":
        r, lam, solver, status, active = _solve_l1(H, th, gap, zero_tol)
    elif kind == "lp":
        assert p is not None
        r, lam, solver, status = _solve_lp_norm(H, th, gap, p)
    else:
        mats = [
            b.reshape(b.shape[0], -1) / rho if b.ndim >= 2 else b.reshape(1, -1) / rho
            for b in blocks
        ]
        r, lam, solver, status, active = _solve_spectral(H, mats, gap, tie_tol)
    return (
        max(float(r), 0.0),
        rho * np.asarray(lam, dtype=np.float64),
        {"solver": solver, "status": status, "active": active},
    )


def kkt_residual(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    norm: Norm | str = "l2",
    *,
    L: float | None = None,
    tau: float = 0.05,
    tie_tol: float = 1e-3,
    zero_tol: float = 1e-3,
) -> KKTResult:
    """KKT residual of (P) with optimized multipliers at the model's θ (docs/theory.md §3.6).

    θ̂ = θ / q_min^{1/L}; I_τ = {i : q_i(θ̂) ≤ 1 + τ};
    residual = min_{λ ≥ 0, s ∈ ∂Q(θ̂)} ‖s − Σ_{i∈I_τ} λ_i ∇q_i(θ̂)‖_* / ‖θ̂‖ (0 at a KKT point,
    at most 1), slackness = Σ λ_i (q_i(θ̂) − 1) at the optimal λ.

    Args:
        model: any nn.Module whose outputs give margins with :func:`steepest.losses.margins`
            (binary (n,) outputs with y ∈ {±1}, or multiclass logits with class ids). Not modified:
            a float64 copy is evaluated.
        norm: "l1", "l2", "linf", "l<p>", "spectral"/"max-spectral" (or such a Norm object).
        L: homogeneity degree; measured with :func:`steepest.models.homogeneity_degree` if None.
        tau: support tolerance (default 0.05, docs/theory.md §3.6 [DEF]); tie_tol, zero_tol: see module doc.

    Raises:
        NotSeparatedError: q_min ≤ 0 (θ does not separate the data).
        steepest.models.NotHomogeneousError: L was not given and the model is not homogeneous.
        ValueError: an unsupported norm or bad tolerances.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (tau >= 0):
        raise ValueError(f"tau must be >= 0 (math.inf keeps every point), got {tau!r}")
    for name, val in (("tie_tol", tie_tol), ("zero_tol", zero_tol)):
        if not (0 <= val < 1):
            raise ValueError(f"{name} must lie in [0, 1), got {val!r}")
    N = get_norm(norm)
    norm_kind(N)  # reject unsupported norms before any work
    m64 = copy.deepcopy(model).to(torch.float64).eval()
    X64 = X.to(torch.float64)
    y64 = y.to(torch.float64) if y.is_floating_point() else y
    L = float(model_degree(m64, X64, L))
    names = [n for n, _ in m64.named_parameters()]
    base = {n: p.detach() for n, p in m64.named_parameters()}

    def q_of(pd: dict[str, Tensor]) -> Tensor:
        return margins(functional_call(m64, pd, (X64,)), y64, validate=False)

    with torch.no_grad():
        q = q_of(base)
    q_min = float(q.min())
    if not q_min > 0:
        raise NotSeparatedError(
            f"kkt_residual: q_min = {q_min:.6g} ≤ 0; θ does not separate the data"
        )
    scale = q_min ** (-1.0 / L)
    hat = {n: p * scale for n, p in base.items()}
    q_hat = (q / q_min).numpy()
    support = np.flatnonzero(q_hat <= 1.0 + tau)
    idx = torch.from_numpy(support)

    def q_support(pd: dict[str, Tensor]) -> Tensor:
        return margins(functional_call(m64, pd, (X64[idx],)), y64[idx], validate=False)

    jac = jacrev(q_support)(hat)
    H = torch.cat([jac[n].reshape(len(support), -1) for n in names], dim=1).numpy()
    kinks = _count_kinks(m64, hat, X64[idx])
    r, lam, info = kkt_residual_from(
        H,
        [hat[n].numpy() for n in names],
        N,
        q_support=q_hat[support],
        tie_tol=tie_tol,
        zero_tol=zero_tol,
    )
    slack = float(np.sum(lam * (q_hat[support] - 1.0)))
    beta_star, _ = optimized_alignment(
        H, [hat[n].numpy() for n in names], N, float(N(list(hat.values())))
    )
    return KKTResult(
        residual=r,
        slackness=slack,
        multipliers=lam,
        support=support,
        q_support=q_hat[support],
        norm=N.name,
        degree=L,
        q_min=q_min,
        tau=tau,
        tie_tol=tie_tol,
        zero_tol=zero_tol,
        active=info["active"],
        solver=info["solver"],
        status=info["status"],
        n_kinks=kinks,
        alignment=beta_star,
    )
