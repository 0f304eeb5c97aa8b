"""Exact max-margin oracles (docs/theory.md §3.7, §4.5, A.2): hand-solved cases, cross-formulation
agreement, duality, norm inequalities, non-separable data, diagonal networks, multiclass."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from steepest.oracles import (
    MaxMarginResult,
    NotSeparableError,
    OracleAccuracyWarning,
    canonical_norm_name,
    diagonal_margins,
    diagonal_max_margin,
    margins_linear,
    max_margin,
    norm_value,
)

# Every solve in this file must pass the oracle's own self-consistency check (γ(w) vs
# 1/optimal value within 1e-6): turn its warning into a failure.
pytestmark = pytest.mark.filterwarnings("error::steepest.oracles.OracleAccuracyWarning")

# Hand-solved values are exact; the solvers stop at ~1e-10 relative gaps (HiGHS vertices are
# exact up to rounding), so 1e-8 leaves a 100x margin and still catches any formula slip.
HAND_RTOL = 1e-8
# The cross-formulation requirement.
CROSS_RTOL = 1e-7


def _w_atol(res: MaxMarginResult) -> float:
    """Direction tolerance. A HiGHS vertex is exact up to rounding. Near a unique optimum the
    margin is flat to second order along the sphere, so an interior-point w with a ~1e-10
    relative gap is only ~sqrt(1e-10) = 1e-5 accurate (measured 7e-6 for ℓ3): allow 1e-4."""
    return 1e-9 if res.solver == "highs" else 1e-4


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b))


def _separable(seed: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs labelled by a random teacher through the origin: separable, no bias."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.sign(X @ rng.standard_normal(d))
    return X, y


def _multiclass(seed: int, n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.argmax(X @ rng.standard_normal((k, d)).T, axis=1)
    return X, y


def _check_result(res: MaxMarginResult, X, y) -> None:
    """Invariants of every result: unit norm and γ equal to the margin of the returned w."""
    assert res.status == "optimal"
    assert abs(norm_value(res.w, res.norm) - 1.0) <= 1e-12  # w / ‖w‖ in float64
    assert res.gamma == pytest.approx(margins_linear(res.w, X, y).min(), rel=1e-13, abs=0)


# ----------------------------------------------------------------------------------------------
# hand-solvable cases


def test_single_point_all_norms():
    # One point x = (3, 4), y = +1: γ*_p = max_{‖w‖_p ≤ 1} ⟨w, x⟩ = ‖x‖_q (dual norm, Hölder).
    # ℓ2: 5 at w = (0.6, 0.8).  ℓ1 ball: ‖x‖∞ = 4 at w = e2.  ℓ∞ ball: ‖x‖₁ = 7 at w = (1, 1).
    # ℓ3: ‖x‖_{3/2} at w_j ∝ x_j^{1/2} (equality in Hölder: |w_j|^3 ∝ |x_j|^{3/2}).
    X = np.array([[3.0, 4.0]])
    y = np.array([1])
    cases = {
        "l2": (5.0, np.array([0.6, 0.8])),
        "l1": (4.0, np.array([0.0, 1.0])),
        "linf": (7.0, np.array([1.0, 1.0])),
        "l3": ((3**1.5 + 4**1.5) ** (2 / 3), np.sqrt([3.0, 4.0]) / (3**1.5 + 4**1.5) ** (1 / 3)),
    }
    for name, (gamma, w) in cases.items():
        res = max_margin(X, y, name)
        _check_result(res, X, y)
        assert res.norm == name
        assert res.gamma == pytest.approx(gamma, rel=HAND_RTOL)
        # Each optimum is unique (strictly convex ball, or a unique vertex/face point shown above).
        np.testing.assert_allclose(res.w, w, rtol=0, atol=_w_atol(res))


def test_two_points():
    # x1 = e1 (y = +1), x2 = e2 (y = −1): q = (w1, −w2), so γ = max min(w1, −w2).
    # ℓ2: w = (1, −1)/√2, γ = 1/√2.  ℓ∞: w = (1, −1), γ = 1.  ℓ1: min ≤ (w1 − w2)/2 ≤ ‖w‖₁/2,
    # so γ = 1/2 at w = (1/2, −1/2).  All optima unique.
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([1, -1])
    cases = {
        "l2": (1 / math.sqrt(2), np.array([1.0, -1.0]) / math.sqrt(2)),
        "linf": (1.0, np.array([1.0, -1.0])),
        "l1": (0.5, np.array([0.5, -0.5])),
    }
    for name, (gamma, w) in cases.items():
        res = max_margin(X, y, name)
        _check_result(res, X, y)
        assert res.gamma == pytest.approx(gamma, rel=HAND_RTOL)
        np.testing.assert_allclose(res.w, w, rtol=0, atol=_w_atol(res))


@pytest.mark.parametrize("name", ["l1", "l1.5", "l2", "l3", "linf"])
def test_symmetric_square(name):
    # Corners (±1, ±1) labelled by sign(x1): y_i x_i ∈ {(1, 1), (1, −1)}, so q_min = w1 − |w2|.
    # For every p: w1 − |w2| ≤ |w1| ≤ ‖w‖_p ≤ 1 with equality iff w = e1, so γ* = 1 and w* = e1.
    X = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    y = np.sign(X[:, 0])
    res = max_margin(X, y, name)
    _check_result(res, X, y)
    assert res.gamma == pytest.approx(1.0, rel=HAND_RTOL)
    np.testing.assert_allclose(res.w, [1.0, 0.0], rtol=0, atol=_w_atol(res))


def test_multiclass_simplex_hand_solution():
    # x_i = e_i with label i (3 classes, d = 3). The problem is invariant under W → P W Pᵀ, so an
    # optimum of the form W = aI + bJ exists (average over permutations; margins concave, norms
    # convex). Then every q_i = a and the best b gives ‖W‖ per unit a:
    #   Frobenius: eigenvalues a+3b, a, a → √2 at b = −a/3     → γ = 1/√2, W* = (I − J/3)/√2
    #   spectral: max(|a+3b|, |a|) → 1                          → γ = 1
    #   nuclear:  |a+3b| + 2|a| → 2                              → γ = 1/2
    #   entrywise max: max(|a+b|, |b|) → 1/2 at b = −a/2         → γ = 2
    #   entrywise ℓ1: 3|a+b| + 6|b| → 3 at b = 0                 → γ = 1/3
    X = np.eye(3)
    y = np.array([0, 1, 2])
    expected = {
        "frobenius": 1 / math.sqrt(2),
        "spectral": 1.0,
        "nuclear": 0.5,
        "max": 2.0,
        "l1": 1 / 3,
        "l2": 1 / math.sqrt(2),
    }
    for name, gamma in expected.items():
        res = max_margin(X, y, name)
        assert res.w.shape == (3, 3)
        _check_result(res, X, y)
        # SDP solutions (spectral/nuclear) stall around 1e-8 relative gaps; 1e-7 covers that.
        assert res.gamma == pytest.approx(gamma, rel=1e-7), name
    # Frobenius is strictly convex: the optimum is unique.
    res = max_margin(X, y, "frobenius")
    np.testing.assert_allclose(res.w, (np.eye(3) - 1 / 3) / math.sqrt(2), rtol=0, atol=_w_atol(res))


def test_binary_labels_with_matrix_norms():
    # ±1 labels with a matrix norm give a 2×d W with q_i = y_i⟨w₊ − w₋, x_i⟩. For β = w₊ − w₋:
    # min ‖W‖_F = min σ_max(W) = min ‖W‖_nuc = ‖β‖₂/√2 (W = [−β/2; β/2], and σ_max(W) ≥
    # ‖(e₊ − e₋)ᵀW‖/√2) and min max|W_ij| = ‖β‖∞/2. So γ_F = γ_sp = γ_nuc = √2·γ*_2 and
    # γ_max = 2·γ*_∞.
    X, y = _separable(3, 15, 4)
    g2 = max_margin(X, y, "l2").gamma
    ginf = max_margin(X, y, "linf").gamma
    for name in ("frobenius", "spectral", "nuclear"):
        res = max_margin(X, y, name)
        assert res.w.shape == (2, 4)
        assert res.gamma == pytest.approx(math.sqrt(2) * g2, rel=1e-7), name  # SDP accuracy ~1e-8
    assert max_margin(X, y, "max").gamma == pytest.approx(2 * ginf, rel=CROSS_RTOL)


# ----------------------------------------------------------------------------------------------
# cross-formulation agreement (the 1e-7 requirement)


@pytest.mark.parametrize("seed,n,d", [(0, 40, 50), (1, 60, 30), (2, 30, 5), (3, 20, 200)])
def test_cross_formulations_agree(seed, n, d):
    X, y = _separable(seed, n, d)
    pairs = {
        "linf": [("lp", "lp"), ("cvxpy", "cvxpy"), ("pnorm", "pnorm")],
        "l1": [("lp", "lp"), ("cvxpy", "cvxpy"), ("pnorm", "pnorm")],
        "l2": [("qp", "qp"), ("socp", "socp"), ("pnorm", "pnorm")],
    }
    for name, methods in pairs.items():
        gammas = []
        for method, formulation in methods:
            res = max_margin(X, y, name, method=method)
            assert res.formulation == formulation
            assert res.solver == ("highs" if method == "lp" else "clarabel")
            _check_result(res, X, y)
            gammas.append(res.gamma)
        assert max(gammas) - min(gammas) <= CROSS_RTOL * max(gammas), (name, gammas)
    # ℓp with p = 2 written as a number and as "l2.0" is the same problem as the QP.
    assert (
        _rel(max_margin(X, y, 2.0, method="pnorm").gamma, max_margin(X, y, "l2").gamma)
        <= CROSS_RTOL
    )


def test_multiclass_matrix_vs_vector_formulations():
    # Frobenius (cvxpy SOCP on W) = ℓ2 QP on vec(W); entrywise max (cvxpy) = ℓ∞ LP on vec(W).
    X, y = _multiclass(4, 40, 6, 4)
    assert _rel(max_margin(X, y, "frobenius").gamma, max_margin(X, y, "l2").gamma) <= CROSS_RTOL
    assert _rel(max_margin(X, y, "max").gamma, max_margin(X, y, "linf").gamma) <= CROSS_RTOL
    assert (
        _rel(max_margin(X, y, "l1").gamma, max_margin(X, y, "l1", method="cvxpy").gamma)
        <= CROSS_RTOL
    )


@pytest.mark.parametrize("name,q", [("l1", math.inf), ("l2", 2.0), ("linf", 1.0), ("l3", 1.5)])
def test_strong_duality(name, q):
    # Minimax over compact convex sets: γ* = max_{‖w‖≤1} min_{λ∈Δ} λᵀZw = min_{λ∈Δ} ‖Zᵀλ‖_*
    # (Z rows y_i x_i, ‖·‖_* the dual norm). An independent program, solved here with cvxpy.
    import cvxpy as cp

    X, y = _separable(5, 30, 8)
    Z = y[:, None] * X
    lam = cp.Variable(len(y), nonneg=True)
    prob = cp.Problem(
        cp.Minimize(cp.pnorm(Z.T @ lam, q) if q != 1.0 else cp.norm1(Z.T @ lam)), [cp.sum(lam) == 1]
    )
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10)
    assert prob.status == "optimal"
    assert _rel(max_margin(X, y, name).gamma, prob.value) <= CROSS_RTOL


# ----------------------------------------------------------------------------------------------
# optimality and norm inequalities


def _unit(w: np.ndarray, p: float) -> np.ndarray:
    return w / np.linalg.norm(w, ord=p)


@pytest.mark.parametrize("name,p", [("l1", 1.0), ("l2", 2.0), ("linf", math.inf), ("l3", 3.0)])
def test_no_direction_beats_gamma(name, p):
    X, y = _separable(6, 25, 6)
    res = max_margin(X, y, name)
    rng = np.random.default_rng(7)
    # 2000 random unit directions (Gaussian, plus sparse/sign ones that hit ℓ1/ℓ∞ vertices).
    dirs = np.vstack(
        [
            rng.standard_normal((1000, 6)),
            rng.standard_normal((500, 6)) * (rng.random((500, 6)) < 0.3),
            np.sign(rng.standard_normal((500, 6))),
        ]
    )
    dirs = dirs[np.linalg.norm(dirs, axis=1) > 0]
    q = (y[:, None] * X) @ (dirs / np.linalg.norm(dirs, ord=p, axis=1, keepdims=True)).T
    # True γ* exceeds the returned (feasible) margin by at most the solver gap (~1e-10·γ).
    assert q.min(axis=0).max() <= res.gamma + 1e-9
    # Local optimality: perturbations of w* at three scales, renormalized, never do better.
    for eps in (1e-4, 1e-2, 1e-1):
        pert = res.w[None, :] + eps * rng.standard_normal((300, 6))
        qp = (y[:, None] * X) @ np.array([_unit(v, p) for v in pert]).T
        assert qp.min(axis=0).max() <= res.gamma + 1e-9


def test_norm_ordering_of_margins():
    # ‖w‖∞ ≤ ‖w‖_p ≤ ‖w‖_r ≤ ‖w‖₁ for r ≤ p, so the unit balls nest B₁ ⊂ B_r ⊂ B_p ⊂ B∞ and the
    # max margin over a larger ball is larger: γ*_1 ≤ γ*_1.5 ≤ γ*_2 ≤ γ*_3 ≤ γ*_∞.
    # Reverse bounds: ‖w‖₂ ≤ √d‖w‖∞ and ‖w‖₁ ≤ √d‖w‖₂ give γ*_∞ ≤ √d γ*_2 and γ*_2 ≤ √d γ*_1.
    for seed in range(3):
        X, y = _separable(10 + seed, 30, 10)
        g = [max_margin(X, y, name).gamma for name in ("l1", "l1.5", "l2", "l3", "linf")]
        assert all(a < b for a, b in zip(g, g[1:], strict=False)), g  # strict for generic data
        assert g[-1] <= math.sqrt(10) * g[2] and g[2] <= math.sqrt(10) * g[0]


def test_multiclass_norm_ordering():
    # ‖W‖_max ≤ ‖W‖_sp ≤ ‖W‖_F ≤ ‖W‖_nuc (|W_ij| = |e_iᵀWe_j| ≤ σ_max; σ_max² ≤ Σσ² ≤ (Σσ)²),
    # so the balls nest and γ*_nuc ≤ γ*_F ≤ γ*_sp ≤ γ*_max. Also ‖W‖_F ≤ √r‖W‖_sp (r = min(k, d))
    # gives γ*_sp ≤ √r γ*_F. Strict inequalities for generic data; SDP accuracy ~1e-8.
    X, y = _multiclass(8, 30, 5, 3)
    g = {name: max_margin(X, y, name) for name in ("nuclear", "frobenius", "spectral", "max")}
    for res in g.values():
        _check_result(res, X, y)
        assert res.w.shape == (3, 5)
    assert g["nuclear"].gamma < g["frobenius"].gamma < g["spectral"].gamma < g["max"].gamma
    assert g["spectral"].gamma <= math.sqrt(3) * g["frobenius"].gamma
    assert g["spectral"].formulation == "sdp" and g["nuclear"].formulation == "sdp"


# ----------------------------------------------------------------------------------------------
# invariances and inputs


def test_scaling_sign_and_permutation_invariance():
    # γ*(cX) = c γ*(X) (margins are linear in X); (X, y) → (−X, −y) and row permutations leave
    # every q_i unchanged. Relative 1e-7: different solver paths after rescaling.
    X, y = _separable(11, 30, 7)
    perm = np.random.default_rng(0).permutation(30)
    for name in ("l1", "l2", "linf"):
        g = max_margin(X, y, name).gamma
        assert _rel(max_margin(1000.0 * X, y, name).gamma, 1000.0 * g) <= CROSS_RTOL
        assert _rel(max_margin(-X, -y, name).gamma, g) <= CROSS_RTOL
        assert _rel(max_margin(X[perm], y[perm], name).gamma, g) <= CROSS_RTOL


def test_torch_inputs_and_purity():
    X, y = _separable(12, 20, 5)
    X0, y0 = X.copy(), y.copy()
    a = max_margin(X, y, "l2")
    b = max_margin(torch.from_numpy(X), torch.from_numpy(y), "l2")
    assert a.gamma == pytest.approx(b.gamma, rel=1e-12)  # same float64 data, same solver
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    assert isinstance(b.w, np.ndarray) and b.w.dtype == np.float64


def test_norm_names_and_objects():
    from steepest.norms import LpNorm, Spectral, norm

    assert canonical_norm_name("L_inf") == "linf"
    assert canonical_norm_name("inf") == "linf"
    assert canonical_norm_name(math.inf) == "linf"
    assert canonical_norm_name("l1.0") == "l1"
    assert canonical_norm_name(1.5) == "l1.5"
    assert canonical_norm_name("fro") == "frobenius"
    assert canonical_norm_name(norm("l3")) == "l3"
    assert canonical_norm_name(Spectral()) == "spectral"
    X, y = _separable(13, 20, 5)
    # An LpNorm(4/3) object keeps its exact p (its name prints "l1.33333"): no accuracy warning
    # (the module-level filter would fail the test) and the same γ as the number 4/3.
    assert max_margin(X, y, LpNorm(4 / 3)).gamma == pytest.approx(
        max_margin(X, y, 4 / 3).gamma, rel=1e-12
    )
    for bad in ("l0.5", "l-inf2", "hinge"):
        with pytest.raises(ValueError, match="valid norms"):
            max_margin(X, y, bad)


def test_a_norm_object_names_its_oracle_and_its_name_is_not_parsed():
    """A user's norm says which oracle norm it is (Norm.oracle_norm); its name is free."""
    from steepest.norms import LpNorm, Norm

    class Cube(LpNorm):  # ℓ∞ under another name
        def __init__(self) -> None:
            super().__init__(math.inf)
            self.name = "my-cube"

    class Opaque(Norm):
        name = "l2"  # a misleading name must not buy an oracle

    X, y = _separable(15, 12, 4)
    assert canonical_norm_name(Cube()) == "linf"
    assert max_margin(X, y, Cube()).gamma == pytest.approx(
        max_margin(X, y, "linf").gamma, rel=1e-12
    )
    with pytest.raises(ValueError, match="has no exact max-margin oracle"):
        max_margin(X, y, Opaque())


def test_bad_arguments():
    X, y = _separable(14, 10, 3)
    with pytest.raises(ValueError, match="method"):
        max_margin(X, y, "l2", method="lp")
    with pytest.raises(ValueError, match="method"):
        max_margin(X, y, "spectral", method="lp")
    with pytest.raises(ValueError, match="X must have shape"):
        max_margin(X[0], y, "l2")
    with pytest.raises(ValueError, match="y must have shape"):
        max_margin(X, y[:-1], "l2")
    with pytest.raises(ValueError, match="fewer than 3 classes"):
        max_margin(X, (y > 0).astype(int), "l2")  # 0/1 labels are ambiguous for a vector norm


# ----------------------------------------------------------------------------------------------
# non-separable data


@pytest.mark.parametrize("name", ["l1", "l2", "linf", "l3", "spectral"])
def test_xor_is_not_separable(name):
    X = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    y = np.array([1, 1, -1, -1])  # x and −x share a label: q_i(w) = −q_j(w), never both > 0
    with pytest.raises(
        NotSeparableError, match="not linearly separable through the origin"
    ) as info:
        max_margin(X, y, name)
    assert "status" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_duplicated_points_with_flipped_labels_are_not_separable():
    X, y = _separable(15, 10, 4)
    X2, y2 = np.vstack([X, X[:1]]), np.concatenate([y, -y[:1]])
    for name in ("l1", "l2", "linf"):
        with pytest.raises(NotSeparableError, match="infeasible"):
            max_margin(X2, y2, name)
    # Multiclass: the same point with two different labels.
    Xm, ym = _multiclass(16, 12, 3, 3)
    with pytest.raises(NotSeparableError):
        max_margin(np.vstack([Xm, Xm[:1]]), np.concatenate([ym, [(ym[0] + 1) % 3]]), "frobenius")


# ----------------------------------------------------------------------------------------------
# diagonal linear networks


def test_diagonal_depth2_l2_equals_l1_linear_margin():
    # min ‖u‖² + ‖v‖² s.t. u² − v² = β is ‖β‖₁, so γ*_θ,ℓ2 (depth 2) = γ*_ℓ1 of the linear model.
    X, y = _separable(20, 30, 8)
    res = diagonal_max_margin(X, y, depth=2, norm="l2")
    assert res.w.shape == (16,)
    assert res.gamma == pytest.approx(
        max_margin(X, y, "l1").gamma, rel=1e-12
    )  # same LP, exact roots
    # Recompute through the network: q_min(θ)/‖θ‖₂² at the returned θ.
    theta = res.w
    q = diagonal_margins(theta, X, y, 2)
    assert q.min() / np.linalg.norm(theta) ** 2 == pytest.approx(res.gamma, rel=1e-13)
    assert np.linalg.norm(theta) == pytest.approx(1.0, abs=1e-13)


def test_diagonal_single_point_hand_values():
    # x = (3, 4), y = +1.  Depth 2, ℓ2: put all of ‖θ‖² on u₂ → ⟨β, x⟩ = 4 (= ‖x‖∞, ℓ1 ball).
    # ℓ∞, depth 2: β ∈ [0, 1]² − [0, 1]² = [−1, 1]² → 7.  ℓ∞, depth 3: u = 1, v = −1 gives β_j = 2,
    # so [−2, 2]² → 14.  ℓ3 at depth 3: ℓ1 ball → 4.  ℓ2 at depth 1: β = u − v with
    # ‖(u, v)‖₂ ≤ 1 is the ball of radius √2 → 5√2.
    X = np.array([[3.0, 4.0]])
    y = np.array([1])
    cases = [
        (2, "l2", 4.0),
        (2, "linf", 7.0),
        (3, "linf", 14.0),
        (4, "linf", 7.0),
        (3, "l3", 4.0),
        (1, "l2", 5 * math.sqrt(2)),
    ]
    for depth, name, gamma in cases:
        res = diagonal_max_margin(X, y, depth=depth, norm=name)
        assert res.gamma == pytest.approx(gamma, rel=HAND_RTOL), (depth, name)
        assert norm_value(res.w, name) == pytest.approx(1.0, abs=1e-13)


@pytest.mark.parametrize(
    "depth,name", [(2, "l2"), (2, "l3"), (2, "linf"), (3, "l3"), (3, "l6"), (3, "linf"), (4, "l6")]
)
def test_diagonal_no_random_theta_beats_gamma(depth, name):
    # γ*_θ is a global max over θ: random θ on the unit sphere and perturbations of θ* never
    # exceed it (tolerance: solver gap ~1e-10 relative, γ ~ 0.1–1).
    X, y = _separable(21, 12, 3)
    res = diagonal_max_margin(X, y, depth=depth, norm=name)
    p = math.inf if name == "linf" else float(name[1:])
    rng = np.random.default_rng(22)
    thetas = np.vstack(
        [
            rng.standard_normal((1500, 6)),
            np.sign(rng.standard_normal((300, 6))),
            res.w + 0.01 * rng.standard_normal((200, 6)),
        ]
    )
    best = -np.inf
    for t in thetas:
        t = t / np.linalg.norm(t, ord=p)
        best = max(best, diagonal_margins(t, X, y, depth).min())
    assert best <= res.gamma + 1e-9
    # θ* itself attains γ through the network.
    assert diagonal_margins(res.w, X, y, depth).min() / norm_value(
        res.w, name
    ) ** depth == pytest.approx(res.gamma, rel=1e-13)


def test_diagonal_nonconvex_cases_raise():
    X, y = _separable(23, 10, 3)
    with pytest.raises(ValueError, match="non-convex"):
        diagonal_max_margin(X, y, depth=3, norm="l2")
    with pytest.raises(ValueError, match="non-convex"):
        diagonal_max_margin(X, y, depth=2, norm="l1")
    with pytest.raises(ValueError, match="depth"):
        diagonal_max_margin(X, y, depth=0, norm="l2")
    with pytest.raises(ValueError, match="vector norm"):
        diagonal_max_margin(X, y, depth=2, norm="spectral")


def test_diagonal_odd_depth_factor():
    # Odd L: the image of the ℓ_p ball (p ≥ L) is the ℓ_{p/L} ball of radius 2^{1−L/p}.
    X, y = _separable(24, 20, 5)
    g15 = max_margin(X, y, 1.5).gamma  # p = 3 at depth 2 → r = 1.5, factor 1
    assert diagonal_max_margin(X, y, depth=2, norm="l3").gamma == pytest.approx(g15, rel=1e-12)
    g2 = max_margin(X, y, "l2").gamma  # p = 6 at depth 3 → r = 2, factor 2^{1/2}
    assert diagonal_max_margin(X, y, depth=3, norm="l6").gamma == pytest.approx(
        math.sqrt(2) * g2, rel=1e-12
    )


def test_no_accuracy_warnings_on_a_larger_problem():
    # The self-consistency check (γ(w) vs 1/optimal value, 1e-6) stays silent on n = 200, d = 20.
    X, y = _separable(25, 200, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OracleAccuracyWarning)
        for name in ("l1", "l2", "linf", "l3", "l1.5"):
            _check_result(max_margin(X, y, name), X, y)
