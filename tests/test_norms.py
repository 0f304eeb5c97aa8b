"""Norms: duality identities, brute-force dual norms, tie-breaks, vmap, purity.

Tolerances: rtol 1e-12 in float64 unless a comment says why. The quantities compared are sums
of at most a few hundred float64 terms (error ≲ 1e-14 relative), or SVD outputs, which are
backward-stable to a few ulps times the dimension.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from torch.func import vmap

import steepest
from steepest.norms import BlockMax, BlockSum, LpNorm, Norm, Spectral, get_norm, inner, weighted_max

RTOL = 1e-12
NAMES = ["l1", "l2", "linf", "l3", "l1.5", "l1.01", "l7", "spectral", "layer-l2", "layer-linf"]


def _rand(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def _cases():
    """Random inputs plus the hard ones: ties, exact zeros, a zero block, rank deficiency."""
    cases = {
        "random": _rand([(4, 6), (6,), (3, 2, 3, 3)], seed=1),
        "ties": [
            torch.tensor([[1.0, -2.0], [2.0, -2.0]], dtype=torch.float64),
            torch.tensor([2.0, 0.5], dtype=torch.float64),
        ],
        "zeros": [
            torch.tensor([[0.0, 3.0], [0.0, -1.0]], dtype=torch.float64),
            torch.zeros(3, dtype=torch.float64),
        ],
        "zero-block": [
            torch.zeros(3, 4, dtype=torch.float64),
            torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)),
        ],
    }
    a = torch.randn(5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    b = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cases["rank-1"] = [
        a @ b,
        torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)),
    ]
    q, _ = torch.linalg.qr(
        torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    )
    cases["repeated-sv"] = [
        q @ torch.diag(torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64)) @ q.T
    ]
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_duality_identities(name, case):
    """⟨U,g⟩ = ‖g‖_*, ‖U‖ = 1, ⟨J,g⟩ = ‖g‖_*², ‖J‖ = ‖g‖_* (docs/theory.md §2.1)."""
    N = steepest.norm(name)
    g = CASES[case]
    d = N.dual(g)
    u = N.direction(g)
    J = N.duality_map(g)
    assert [x.shape for x in u] == [x.shape for x in g]
    torch.testing.assert_close(inner(u, g), d, rtol=RTOL, atol=0)
    torch.testing.assert_close(N(u), torch.ones((), dtype=torch.float64), rtol=RTOL, atol=0)
    torch.testing.assert_close(inner(J, g), d**2, rtol=RTOL, atol=0)
    torch.testing.assert_close(N(J), d, rtol=RTOL, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradient_gives_zero_direction(name):
    N = steepest.norm(name)
    g = [torch.zeros(3, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)]
    assert float(N.dual(g)) == 0.0
    for x in N.direction(g) + N.duality_map(g):
        assert torch.equal(x, torch.zeros_like(x))
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", NAMES)
def test_inputs_not_modified(name):
    N = steepest.norm(name)
    g = _rand([(3, 5), (5,)], seed=11)
    before = [x.clone() for x in g]
    N(g), N.dual(g), N.direction(g), N.duality_map(g)
    assert all(torch.equal(a, b) for a, b in zip(g, before, strict=True))


def _lp_dual_bruteforce(g: np.ndarray, p: float) -> float:
    """sup_{‖u‖_p ≤ 1} ⟨u, g⟩ by an LP (HiGHS), for p ∈ {1, ∞}."""
    n = g.size
    if math.isinf(p):
        res = linprog(-g, bounds=[(-1, 1)] * n, method="highs")
    else:  # u = a - b, a, b ≥ 0, Σ(a + b) ≤ 1
        res = linprog(
            np.concatenate([-g, g]),
            A_ub=np.ones((1, 2 * n)),
            b_ub=[1.0],
            bounds=[(0, None)] * (2 * n),
            method="highs",
        )
    assert res.status == 0
    return -res.fun


@pytest.mark.parametrize("p", [1.0, math.inf])
@pytest.mark.parametrize("seed", range(5))
def test_dual_matches_linprog(p, seed):
    g = _rand([(4, 3), (5,)], seed=seed)
    flat = torch.cat([x.reshape(-1) for x in g]).numpy()
    # HiGHS solves to ~1e-9 relative feasibility/optimality, hence the looser rtol.
    assert float(LpNorm(p).dual(g)) == pytest.approx(_lp_dual_bruteforce(flat, p), rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_spectral_dual_is_nuclear_norm_and_value_is_max_sigma(seed):
    g = _rand([(5, 3), (2, 3, 2, 2), (4,)], seed=seed)
    mats = [g[0].numpy(), g[1].reshape(2, -1).numpy(), g[2].reshape(1, -1).numpy()]
    nuc = sum(np.linalg.svd(m, compute_uv=False).sum() for m in mats)
    top = max(np.linalg.svd(m, compute_uv=False)[0] for m in mats)
    N = steepest.norm("spectral")
    assert float(N.dual(g)) == pytest.approx(nuc, rel=RTOL)
    assert float(N(g)) == pytest.approx(top, rel=RTOL)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, 7.0, math.inf])
def test_dual_of_lp_is_lq(p):
    """‖·‖_** = ‖·‖: the dual of ℓp is ℓq with 1/p + 1/q = 1."""
    g = _rand([(7,), (2, 3)], seed=3)
    N = LpNorm(p)
    assert float(N.dual(g)) == pytest.approx(float(LpNorm(N.q)(g)), rel=RTOL)
    assert LpNorm(N.q).q == pytest.approx(p) or (math.isinf(p) and LpNorm(N.q).q == math.inf)


vec = st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=6, max_size=6)


@settings(max_examples=60, deadline=None)
@given(u=vec, g=vec, name=st.sampled_from(NAMES))
def test_holder_inequality(u, g, name):
    """⟨u, g⟩ ≤ ‖u‖ ‖g‖_* on arbitrary pairs (docs/theory.md §5 item 2)."""
    N = steepest.norm(name)
    U = [torch.tensor(u, dtype=torch.float64).reshape(2, 3)]
    G = [torch.tensor(g, dtype=torch.float64).reshape(2, 3)]
    lhs = float(inner(U, G))
    rhs = float(N(U) * N.dual(G))
    # Products of values up to 1e3 summed over 6 terms: absolute slack of 1e-9 covers rounding.
    assert lhs <= rhs * (1 + 1e-12) + 1e-9


@settings(max_examples=40, deadline=None)
@given(g=vec, name=st.sampled_from(NAMES))
def test_direction_beats_random_unit_vectors(g, name):
    """U(g) attains the sup: no unit-norm vector does better (docs/theory.md §2.1)."""
    N = steepest.norm(name)
    G = [torch.tensor(g, dtype=torch.float64).reshape(2, 3)]
    best = float(inner(N.direction(G), G))
    rng = torch.Generator().manual_seed(0)
    for _ in range(20):
        v = [torch.randn(2, 3, generator=rng, dtype=torch.float64)]
        nv = N(v)
        v = [v[0] / nv]
        assert float(inner(v, G)) <= best * (1 + 1e-12) + 1e-9


def test_l1_moves_one_coordinate_lowest_index_tie_break():
    # |g| has its max 3 at flat indices 2 (first tensor) and 4 (second tensor): index 2 wins.
    g = [
        torch.tensor([[1.0, -2.0], [-3.0, 0.5]], dtype=torch.float64),
        torch.tensor([3.0, -1.0], dtype=torch.float64),
    ]
    u = steepest.norm("l1").direction(g)
    flat = torch.cat([x.reshape(-1) for x in u])
    expected = torch.zeros(6, dtype=torch.float64)
    expected[2] = -1.0  # sign(g_2) = -1
    assert torch.equal(flat, expected)
    J = steepest.norm("l1").duality_map(g)
    assert torch.equal(torch.cat([x.reshape(-1) for x in J]), expected * 3.0)


def test_sign_of_zero_is_zero_and_linf_is_sign():
    g = [torch.tensor([0.0, -2.0, 5.0, -0.0], dtype=torch.float64)]
    assert torch.equal(
        steepest.norm("linf").direction(g)[0],
        torch.tensor([0.0, -1.0, 1.0, 0.0], dtype=torch.float64),
    )


def test_lp_direction_formula():
    """U(g)_j = sign(g_j)|g_j|^{q-1}/‖g‖_q^{q-1} (docs/theory.md §2.3), here p = 3, q = 3/2."""
    g = _rand([(10,)], seed=4)
    q = 1.5
    expected = (
        torch.sign(g[0]) * g[0].abs() ** (q - 1) / torch.linalg.vector_norm(g[0], ord=q) ** (q - 1)
    )
    torch.testing.assert_close(steepest.norm("l3").direction(g)[0], expected, rtol=RTOL, atol=0)


def test_lp_is_scale_safe():
    """Tiny and huge gradients (late-phase scales) give the same direction, never NaN."""
    g = _rand([(6,)], seed=5)
    N = steepest.norm("l3")
    base = N.direction(g)[0]
    for scale in (1e-300, 1e-200, 1e200):
        torch.testing.assert_close(N.direction([g[0] * scale])[0], base, rtol=1e-12, atol=0)
        assert torch.isfinite(N.dual([g[0] * scale]))


def test_spectral_direction_is_polar_factor():
    g = _rand([(5, 3)], seed=7)[0]
    u, s, vh = np.linalg.svd(g.numpy(), full_matrices=False)
    d = steepest.norm("spectral").direction([g])[0].numpy()
    np.testing.assert_allclose(d, u @ vh, rtol=0, atol=1e-13)
    # All singular values of the direction equal 1.
    np.testing.assert_allclose(np.linalg.svd(d, compute_uv=False), np.ones(3), atol=1e-13)


def test_spectral_rank_deficient_direction_has_rank_r():
    a = _rand([(6, 2)], seed=8)[0]
    b = _rand([(2, 5)], seed=9)[0]
    d = steepest.norm("spectral").direction([a @ b])[0]
    sv = torch.linalg.svdvals(d)
    # rank 2: two unit singular values, the rest zero up to rounding of the SVD of a @ b.
    torch.testing.assert_close(sv[:2], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert float(sv[2:].max()) < 1e-12


def test_spectral_conv_reshape_and_float32():
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1))  # float32 input
    N = Spectral()
    d = N.direction([w])[0]
    assert d.dtype == torch.float32 and d.shape == w.shape
    m = w.reshape(4, -1).double()
    assert float(N([w])) == pytest.approx(
        float(torch.linalg.matrix_norm(m, ord=2)), rel=1e-6
    )  # float32 output


def test_block_max_and_weighted_max():
    """max{a‖W‖_A, ‖u‖_B}: dual (1/a)‖G_W‖_A* + ‖g_u‖_B*, W moves by U_A/a (docs/theory.md §2.3)."""
    g = _rand([(4, 3), (3, 2), (5,)], seed=12)
    a = 0.25
    N = weighted_max(a, "spectral", "linf", groups=[[0, 1], [2]])
    S, Linf = Spectral(), LpNorm(math.inf)
    assert float(N.dual(g)) == pytest.approx(float(S.dual(g[:2]) / a + Linf.dual(g[2:])), rel=RTOL)
    u = N.direction(g)
    us = S.direction(g[:2])
    torch.testing.assert_close(u[0], us[0] / a, rtol=RTOL, atol=0)
    torch.testing.assert_close(u[1], us[1] / a, rtol=RTOL, atol=0)
    torch.testing.assert_close(u[2], torch.sign(g[2]), rtol=0, atol=0)
    x = _rand([(4, 3), (3, 2), (5,)], seed=13)
    assert float(N(x)) == pytest.approx(max(a * float(S(x[:2])), float(Linf(x[2:]))), rel=RTOL)


def test_block_sum_moves_only_the_winning_block():
    g = [torch.full((2,), 1.0, dtype=torch.float64), torch.full((3,), 1.0, dtype=torch.float64)]
    N = BlockSum(LpNorm(2))  # duals: √2 and √3 → block 1 wins
    u = N.direction(g)
    assert torch.equal(u[0], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(u[1], g[1] / math.sqrt(3), rtol=RTOL, atol=0)
    # A tie goes to the lowest block.
    g2 = [torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
    u2 = N.direction(g2)
    assert torch.count_nonzero(u2[0]) == 3 and torch.count_nonzero(u2[1]) == 0
    # A scalar-block sum of ℓ2 norms is ℓ1: same dual and same (tie-broken) direction.
    g3 = _rand([(5,)], seed=2)
    scalars = [g3[0][i : i + 1] for i in range(5)]
    assert float(N.dual(scalars)) == pytest.approx(float(LpNorm(1).dual(g3)), rel=RTOL)
    torch.testing.assert_close(
        torch.cat(N.direction(scalars)), LpNorm(1).direction(g3)[0], rtol=0, atol=0
    )


@pytest.mark.parametrize("name", ["l1", "l2", "linf", "l3", "spectral", "layer-l2"])
def test_vmap_matches_python_loop(name):
    """A leading batch of 4 parameter sets: vmap gives the loop's directions, duals, norms."""
    N = steepest.norm(name)
    G = _rand([(4, 3, 5), (4, 5), (4, 2, 2, 2, 2)], seed=21)
    out_dir = vmap(N.direction)(G)
    out_dual = vmap(N.dual)(G)
    out_norm = vmap(N.__call__)(G)
    out_J = vmap(N.duality_map)(G)
    for i in range(4):
        gi = [x[i] for x in G]
        for a, b in zip([o[i] for o in out_dir], N.direction(gi), strict=True):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-15)
        for a, b in zip([o[i] for o in out_J], N.duality_map(gi), strict=True):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-15)
        torch.testing.assert_close(out_dual[i], N.dual(gi), rtol=RTOL, atol=0)
        torch.testing.assert_close(out_norm[i], N(gi), rtol=RTOL, atol=0)


def test_registry_errors_and_names():
    with pytest.raises(ValueError, match="valid names"):
        steepest.norm("l_banana")
    with pytest.raises(ValueError, match="p must satisfy"):
        LpNorm(0.5)
    with pytest.raises(TypeError):
        steepest.norm(3)
    assert steepest.norm("l3").p == 3.0
    assert steepest.norm("LINF").name == "linf"
    assert isinstance(steepest.norm("spectral"), Spectral)
    n = LpNorm(2)
    assert steepest.norm(n) is n
    assert isinstance(n, Norm)


def test_block_groups_validation():
    with pytest.raises(ValueError, match="partition"):
        BlockMax([LpNorm(2), LpNorm(1)], groups=[[0], [0]])([torch.ones(2), torch.ones(2)])
    with pytest.raises(ValueError, match="positive"):
        BlockMax(LpNorm(2), weights=[0.0])
    with pytest.raises(ValueError, match="groups"):
        BlockMax([LpNorm(2)])


STACKED_NAMES = NAMES + ["block-sum", "weighted-max"]


def _stacked_norm(name):
    if name == "block-sum":
        return BlockSum([LpNorm(2), Spectral()], groups=[[0, 2], [1]], weights=[1.0, 0.5])
    if name == "weighted-max":
        return weighted_max(0.3, "spectral", "linf", groups=[[0, 2], [1]])
    return steepest.norm(name)


def _stack(sets):
    return [torch.stack([s[j] for s in sets]) for j in range(len(sets[0]))]


@pytest.mark.parametrize("name", STACKED_NAMES)
def test_stacked_maps_equal_the_single_set_maps(name):
    """The natively batched ``stacked*`` overrides (used by the engine) equal the per-set maps.

    Each row is one of the hard cases (ties, zeros, zero blocks, rank 1, repeated singular
    values) or a random set, so a batched tie-break (lowest index *per run*), rank mask or zero
    guard that mixed runs would show here. Tolerance: rtol 1e-14 — the same float64 operations
    in the same order, only reduced along a row instead of a vector (at most a few ulps).
    """
    N = _stacked_norm(name)
    shapes = [(3, 4), (5,), (2, 2, 3)]
    g = torch.Generator().manual_seed(31)
    sets = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(3)]
    ties = [torch.ones(s, dtype=torch.float64) for s in shapes]
    ties[1][2] = -1.0
    zeros = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    zero_block = [torch.zeros(shapes[0], dtype=torch.float64), sets[0][1], sets[0][2]]
    a = torch.randn(3, 1, generator=g, dtype=torch.float64)
    rank1 = [a @ torch.randn(1, 4, generator=g, dtype=torch.float64), sets[1][1], sets[1][2]]
    sets += [ties, zeros, zero_block, rank1]
    G = _stack(sets)
    dirs, duals = N.stacked_direction_and_dual(G)
    norms, duals2 = N.stacked(G), N.stacked_dual(G)
    assert duals.shape == norms.shape == duals2.shape == (len(sets),)
    for k, s in enumerate(sets):
        u, d = N.direction_and_dual(s)
        torch.testing.assert_close(duals[k], d, rtol=1e-14, atol=0)
        torch.testing.assert_close(duals2[k], N.dual(s), rtol=1e-14, atol=0)
        torch.testing.assert_close(norms[k], N(s), rtol=1e-14, atol=0)
        for x, y in zip([o[k] for o in dirs], u, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", ["l1", "l2", "linf", "l3", "spectral"])
def test_stacked_overrides_equal_the_vmap_default(name):
    """Norm's default ``stacked*`` (vmap) and the override agree on one random batch."""
    N = steepest.norm(name)
    G = _rand([(6, 3, 5), (6, 5)], seed=41)
    d1, n1 = N.stacked_direction_and_dual(G)
    d0, n0 = Norm.stacked_direction_and_dual(N, G)
    torch.testing.assert_close(n1, n0, rtol=1e-14, atol=0)
    for a, b in zip(d1, d0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(N.stacked(G), Norm.stacked(N, G), rtol=1e-14, atol=0)


def test_one_lapack_thread_restores_the_thread_count():
    from steepest.norms import one_lapack_thread

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_lapack_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with one_lapack_thread():
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_the_l1_bundle_direction_is_the_optimum_of_its_linear_program():
    """U = argmax_{‖u‖₁≤1} min(⟨g,u⟩, ⟨h,u⟩) has value min_λ ‖λg + (1−λ)h‖_∞ (LP duality).
    Oracle: that minimum on a 2001-point grid of λ, which is ≥ the true one and within 2e-3 of
    it here; U must reach the grid value up to that resolution and never exceed it (1e-12:
    rounding). Cases: independent gradients, nearby ones, and a kink that changes 3 large
    coordinates over a background of 5,000 small ones (the subset of 256 must suffice)."""
    N = get_norm("l1")
    gen = torch.Generator().manual_seed(0)
    K = 4
    for trial in range(30):
        if trial % 3 == 2:
            P = 5000
            g = 0.05 * torch.randn(K, P, generator=gen, dtype=torch.float64)
            big = torch.randint(0, P, (K, 10), generator=gen)
            g.scatter_(1, big, torch.randn(K, 10, generator=gen, dtype=torch.float64))
            h = g.clone()
            h.scatter_add_(1, big[:, :3], 2 * torch.randn(K, 3, generator=gen, dtype=torch.float64))
        else:
            P = 200
            g = torch.randn(K, P, generator=gen, dtype=torch.float64)
            noise = torch.randn(K, P, generator=gen, dtype=torch.float64)
            h = noise if trial % 3 == 0 else g + 0.3 * noise
        (U,) = N.stacked_bundle_direction([g.reshape(K, 10, -1)], [h.reshape(K, 10, -1)])
        U = U.reshape(K, -1)
        torch.testing.assert_close(U.abs().sum(-1), torch.ones(K, dtype=torch.float64))
        assert int((U != 0).sum(-1).max()) <= 2  # an LP vertex: at most two coordinates move
        val = torch.minimum((g * U).sum(-1), (h * U).sum(-1))
        lams = torch.linspace(0, 1, 2001, dtype=torch.float64)
        grid = torch.stack([(h + lam * (g - h)).abs().amax(-1) for lam in lams], 1).min(-1).values
        assert (val <= grid * (1 + 1e-12)).all()
        assert (val >= grid * (1 - 2e-3)).all(), (trial, (val / grid).tolist())


def test_only_the_l1_norm_offers_a_bundle_direction_so_far():
    g = [torch.randn(3, 5, dtype=torch.float64)]
    for name in ("l2", "linf", "l3", "max-spectral"):
        assert get_norm(name).stacked_bundle_direction(g, g) is None
