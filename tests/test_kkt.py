"""KKT residual with optimized multipliers, Fenchel–Young stationarity gap (docs/theory.md §3.5–§3.6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from steepest.kkt import (
    NotSeparatedError,
    fenchel_young,
    fenchel_young_gap,
    fenchel_young_gap_from,
    kkt_residual,
)
from steepest.metrics import alignment_gradient, dual_alignment
from steepest.models import MLP, Linear, NotHomogeneousError
from steepest.norms import get_norm
from steepest.oracles import max_margin

DUAL = {"l1": "linf", "l2": "l2", "linf": "l1", "l3": "l1.5"}


def _teacher_data(seed: int = 1, n: int = 30, d: int = 50):
    """Separable through the origin; d > n so the support cone is a proper subset of R^d and a
    zero residual is informative (with d ≤ #support any θ in the cone would give 0)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    return X, torch.sign(X @ w), w


def _separable_mlp(seed: int, d: int, width: int, n: int):
    """A bias-free ReLU MLP and labels y = sign f(x) it separates (points with f ≈ 0 dropped:
    all hidden units can be off, and sign(0) = 0 is not a label)."""
    g = torch.Generator().manual_seed(seed)
    model = MLP(d, [width], seed=seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        f = model(X)
    keep = f.abs() > 1e-3 * f.abs().max()
    return model, X[keep], torch.sign(f[keep])


def _linear(w) -> Linear:
    w = torch.as_tensor(np.asarray(w), dtype=torch.float64).reshape(1, -1)
    m = Linear(w.shape[1])
    with torch.no_grad():
        m.weight.copy_(w)
    return m


@pytest.fixture(scope="module")
def oracle():
    X, y, w_teacher = _teacher_data()
    sols = {nm: max_margin(X.numpy(), y.numpy(), nm).w for nm in ("l1", "l2", "linf")}
    return X, y, w_teacher, sols


@pytest.mark.parametrize("nm", ["l1", "l2", "linf"])
def test_residual_zero_at_oracle_max_margin(oracle, nm):
    X, y, _, sols = oracle
    r = kkt_residual(_linear(sols[nm]), X, y, nm)
    # The oracle solves its LP/QP to ~1e-10 (HiGHS / Clarabel gap tolerances); the KKT program
    # is solved to the same tolerances, so 1e-6 leaves four orders of magnitude of slack.
    assert r.residual <= 1e-6
    assert r.alignment_gap <= 1e-6
    assert r.slackness <= 1e-6  # second stage: multipliers on tight points only
    assert r.n_support >= 2 and np.all(r.multipliers >= 0)
    assert np.all(r.q_support >= 1 - 1e-9) and abs(r.q_support.min() - 1) < 1e-12
    assert r.degree == 1


@pytest.mark.parametrize("nm", ["l1", "l2", "linf"])
def test_residual_clearly_positive_at_non_optimal_separating_direction(oracle, nm):
    X, y, w_teacher, sols = oracle
    other = {"l1": "l2", "l2": "linf", "linf": "l2"}[nm]
    for w in (sols[other], w_teacher.numpy()):
        m = _linear(w)
        assert float((m(X) * y).min().detach()) > 0  # still a separating direction
        r = kkt_residual(m, X, y, nm)
        # Measured 0.62–1.0 on this data; 0.1 is far above any solver error.
        assert r.residual > 0.1
        assert r.alignment_gap > 1e-3
        assert 0 <= r.residual <= 1 + 1e-9  # λ = 0 already gives exactly 1


def test_spectral_equals_l2_on_a_single_row():
    """For a 1×d weight σ_max = ℓ2 and nuclear = ℓ2, so the SDP must reproduce the NNLS value."""
    X, y, w_teacher = _teacher_data(seed=3, n=20, d=30)
    w2 = max_margin(X.numpy(), y.numpy(), "l2").w
    for w in (w2, w_teacher.numpy()):
        a = kkt_residual(_linear(w), X, y, "l2")
        b = kkt_residual(_linear(w), X, y, "spectral")
        assert abs(a.residual - b.residual) < 1e-6  # Clarabel vs NNLS accuracy
        assert abs(a.alignment - b.alignment) < 1e-6


def test_residual_is_scale_invariant_and_pure():
    """θ̂ = θ/q_min^{1/L} removes the scale: c·θ gives the same residual; the model is untouched."""
    model, X, y = _separable_mlp(0, 6, 8, 25)
    before = [p.detach().clone() for p in model.parameters()]
    r1 = kkt_residual(model, X, y, "l2", tau=0.5)
    scaled = MLP(6, [8], seed=0)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(3.0)
    r2 = kkt_residual(scaled, X, y, "l2", tau=0.5)
    # (3θ)̂ equals θ̂ up to rounding of the rescale (a few ulps), so the NNLS value agrees to ~1e-12.
    assert abs(r1.residual - r2.residual) < 1e-9
    assert np.array_equal(r1.support, r2.support)
    assert r1.degree == 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("nm", ["l2", "linf", "l1"])
def test_optimized_alignment_dominates_loss_weights(nm):
    """With every point in the support, the loss weights are feasible multipliers, so β* ≥ β."""
    model, X, y = _separable_mlp(2, 5, 6, 20)
    r = kkt_residual(model, X, y, nm, tau=math.inf)
    beta = float(dual_alignment(model, X, y, nm))
    assert r.n_support == len(X)
    assert r.alignment >= beta - 1e-7  # Clarabel's 1e-10 gaps, relative to O(1) values


def test_exactly_stationary_constructed_cases():
    """1 − β is exactly 0 (no rounding) when −∇𝓛 ∈ ∂(½‖·‖²)(θ) with exactly representable numbers.

    One point x, linear model: −∇log𝓛 = y·x exactly (softmax weight of one point is 1).
    ℓ2: θ ∥ x; ℓ∞: θ = c·sign(x); ℓ1: θ on argmax|x_j|.
    """
    cases = {
        "l2": ([3.0, 4.0], [6.0, 8.0]),
        "linf": ([1.0, -2.0, 4.0], [1.0, -1.0, 1.0]),
        "l1": ([1.0, -2.0, 4.0], [0.0, 0.0, 3.0]),
    }
    for nm, (x, theta) in cases.items():
        X = torch.tensor([x], dtype=torch.float64)
        y = torch.tensor([1.0], dtype=torch.float64)
        m = _linear(theta)
        assert float(dual_alignment(m, X, y, nm)) == 1.0
        assert float(fenchel_young_gap(m, X, y, nm)) == 0.0
        r = kkt_residual(m, X, y, nm)
        assert r.residual <= 1e-9 and r.alignment_gap <= 1e-9


def test_stationary_two_layer_relu_unit():
    """f = a·relu(w·x) at w = x, a = ‖x‖: ∇f = ‖x‖·θ, so θ is ℓ2-stationary (sqrt rounding)."""
    net = nn.Sequential(
        nn.Linear(2, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False)
    ).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
        net[2].weight.copy_(torch.tensor([[5.0]]))

    class Squeeze(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).squeeze(-1)

    model = Squeeze(net)
    X = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([1.0], dtype=torch.float64)
    assert 1.0 - float(dual_alignment(model, X, y, "l2")) < 1e-15  # two sqrt roundings
    r = kkt_residual(model, X, y, "l2")
    assert r.degree == 2 and r.residual < 1e-12 and r.n_kinks == 0


def test_kinks_are_counted():
    """A hidden unit whose pre-activation is exactly 0 on the support point is a ReLU kink."""
    net = nn.Sequential(
        nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)
    ).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))  # second unit: x1 − x2 = 0
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
    model = nn.Sequential(net, nn.Flatten(0))
    X = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1.0], dtype=torch.float64)
    r = kkt_residual(model, X, y, "l2")
    assert r.n_kinks == 1
    assert "ReLU'(0) = 0" in r.subgradient


def test_fenchel_young_identities():
    g = torch.Generator().manual_seed(5)
    for nm in ("l1", "l2", "linf", "l3", "spectral"):
        N = get_norm(nm)
        theta = [
            torch.randn(4, 3, generator=g, dtype=torch.float64),
            torch.randn(3, generator=g, dtype=torch.float64),
        ]
        v = [torch.randn_like(t) for t in theta]
        # Fenchel–Young inequality: D ≥ 0 (up to rounding of O(1) quantities).
        assert float(fenchel_young(theta, v, N)) >= -1e-12
        if nm in DUAL:
            # The dual norm's duality map J_*(θ) = ‖θ‖·U_*(θ) lies in ∂(½‖·‖²)(θ): D = 0.
            s = get_norm(DUAL[nm]).duality_map(theta)
            assert abs(float(fenchel_young(theta, s, N))) < 1e-12 * float(N(theta)) ** 2
        # Scale-optimized gap equals ½(1 − β₊²) (docs/theory.md §3.5).
        beta = float(
            sum((a * b).sum() for a, b in zip(theta, v, strict=True)) / (N(theta) * N.dual(v))
        )
        gap = float(fenchel_young_gap_from(theta, v, N))
        assert gap == pytest.approx(0.5 * (1 - max(beta, 0.0) ** 2), abs=1e-12)


def test_fenchel_young_gap_matches_alignment_on_mlp():
    model, X, y = _separable_mlp(7, 5, 6, 15)
    for nm in ("l2", "linf", "l1", "spectral"):
        beta = float(dual_alignment(model, X, y, nm))
        assert float(fenchel_young_gap(model, X, y, nm)) == pytest.approx(
            0.5 * (1 - max(beta, 0) ** 2), abs=1e-12
        )
    v = alignment_gradient(model, X, y)
    assert all(torch.isfinite(t).all() for t in v)


def test_errors():
    X, y, w = _teacher_data(seed=4, n=10, d=12)
    with pytest.raises(NotSeparatedError, match="q_min"):
        kkt_residual(_linear(-w), X, y, "l2")
    with pytest.raises(ValueError, match="has no KKT program.*norms with one: l1, l2"):
        kkt_residual(_linear(w), X, y, "layer-l2")
    with pytest.raises(ValueError, match="tau"):
        kkt_residual(_linear(w), X, y, "l2", tau=-1)
    biased = nn.Sequential(nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 1), nn.Flatten(0)).double()
    with pytest.raises(NotHomogeneousError):
        kkt_residual(biased, X, y, "l2")


@pytest.mark.parametrize("kind", ["l1", "l2", "linf"])
@pytest.mark.parametrize("seed", range(3))
def test_alignment_equals_the_conic_program(kind, seed):
    """β* (NNLS via Moreau for ℓ2; Clarabel with tight gaps otherwise) equals the plain
    cvxpy + Clarabel program max ⟨θ, Hᵀλ⟩ s.t. ‖Hᵀλ‖_* ≤ 1, λ ≥ 0. Tolerance 1e-7: Clarabel's
    default gaps are 1e-8 relative on O(1) values."""
    import cvxpy as cp

    from steepest.kkt import optimized_alignment

    rng = np.random.default_rng(seed)
    H = rng.standard_normal((6, 40))
    theta = rng.standard_normal(40) + 0.5 * H[0] + 0.3 * H[2]  # partly inside the cone
    N = get_norm(kind)
    rho = float(N([torch.from_numpy(theta)]))
    fast, _ = optimized_alignment(H, [theta], N, rho)
    lam = cp.Variable(6, nonneg=True)
    v = H.T @ lam
    dual = {"l1": cp.norm_inf(v), "l2": cp.norm(v, 2), "linf": cp.norm1(v)}[kind]
    prob = cp.Problem(cp.Maximize((H @ (theta / rho)) @ lam), [dual <= 1])
    prob.solve(solver=cp.CLARABEL)
    assert 0.0 < fast < 1.0
    assert abs(fast - prob.value) < 1e-7


@pytest.mark.parametrize("seed", range(3))
def test_l2_least_slackness_stage_in_row_space_equals_full_space(seed):
    """The ℓ2 second stage runs in H's m-dimensional row space (Hᵀ = QR); it must pick the same
    multipliers as the p-dimensional program min gap·λ s.t. ‖θ − Hᵀλ‖₂ ≤ cap(r). Tolerance
    1e-6 on λ: both are Clarabel solutions (gaps 1e-8 relative) of the same convex program."""
    import cvxpy as cp

    from steepest.kkt import l2_multipliers, stage2_cap

    rng = np.random.default_rng(seed)
    H = rng.standard_normal((8, 300))
    theta = H.T @ np.abs(rng.standard_normal(8)) + 0.05 * rng.standard_normal(300)
    theta /= np.linalg.norm(theta)
    gap = np.abs(rng.standard_normal(8)) * (np.arange(8) % 2)
    r, lam, solver, _ = l2_multipliers(H, theta, gap)
    assert solver == "scipy-nnls+clarabel"  # the second stage ran (no silent fallback)
    var = cp.Variable(8, nonneg=True)
    cp.Problem(cp.Minimize(gap @ var), [cp.norm(theta - H.T @ var, 2) <= stage2_cap(r)]).solve(
        solver=cp.CLARABEL
    )
    assert np.abs(lam - np.maximum(var.value, 0.0)).max() < 1e-6
    assert np.linalg.norm(theta - H.T @ lam) <= stage2_cap(r) * (1 + 1e-6)
