"""Margins, smoothed margins, dual alignment, support counts, directional cosine."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import steepest
from steepest.losses import log_loss, margins
from steepest.metrics import (
    directional_cosine,
    dual_alignment,
    dual_alignment_from,
    normalized_margin,
    smoothed_margin,
    smoothed_margin_from,
    support_counts,
)
from steepest.models import MLP, Linear

NORMS = ["l1", "l2", "linf", "l3", "spectral"]


def _separable_state(seed: int, scale: float = 1.0):
    """A bias-free ReLU MLP and labels it separates: y = sign f(x) (so q_i > 0 for all i)."""
    g = torch.Generator().manual_seed(seed)
    model = MLP(6, [8], seed=seed, init_scale=scale)
    X = torch.randn(20, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        f = model(X)
    keep = f.abs() > 1e-3 * f.abs().max()
    X, f = X[keep], f[keep]
    return model, X, torch.sign(f)


@pytest.mark.parametrize("norm", NORMS)
def test_normalized_margin_matches_definition(norm):
    model, X, y = _separable_state(0)
    N = steepest.norm(norm)
    with torch.no_grad():
        q = y * model(X)
    expected = q.min() / N(list(model.parameters())) ** 2  # MLP with one hidden layer: L = 2
    torch.testing.assert_close(
        normalized_margin(model, X, y, norm=norm), expected, rtol=1e-14, atol=0
    )
    # Given L or measured L: the same number.
    torch.testing.assert_close(
        normalized_margin(model, X, y, norm=norm, L=2), expected, rtol=1e-14, atol=0
    )


@pytest.mark.parametrize("norm", NORMS)
def test_margin_is_scale_invariant(norm):
    """γ(cθ) = γ(θ): q scales as c^L and ‖θ‖^L too (homogeneity, docs/theory.md §3.1)."""
    model, X, y = _separable_state(1)
    base = normalized_margin(model, X, y, norm=norm)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(7.5)
    torch.testing.assert_close(normalized_margin(model, X, y, norm=norm), base, rtol=1e-12, atol=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.5, 30.0), norm=st.sampled_from(NORMS))
def test_sandwich(seed, scale, norm):
    """γ − log(n)/‖θ‖^L ≤ γ̃ ≤ γ for the summed exponential loss (docs/theory.md §3.2)."""
    model, X, y = _separable_state(seed, scale)
    n = len(y)
    gamma = float(normalized_margin(model, X, y, norm=norm, L=2))
    tilde = float(smoothed_margin(model, X, y, norm=norm, L=2))
    rho_L = float(steepest.norm(norm)([p.detach() for p in model.parameters()])) ** 2
    slack = 1e-12 * max(1.0, abs(gamma))  # rounding of logsumexp and of the division
    assert tilde <= gamma + slack
    assert tilde >= gamma - math.log(n) / rho_L - slack


def test_smoothed_margin_finite_deep_in_the_late_phase():
    """At margins of 1e6 (𝓛 ≈ e^-1e6) the smoothed margin is finite and ≈ the margin."""
    model = Linear(3, seed=0)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1e6, 0.0, 0.0]], dtype=torch.float64))
    X = torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [-1.5, 0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, -1.0])
    for loss in ("exponential", "logistic"):
        sm = smoothed_margin(model, X, y, norm="l2", loss=loss)
        assert torch.isfinite(sm)
        # q = (1e6, 2e6, 1.5e6): log𝓛 ≈ -1e6 + e^{-5e5}..., so γ̃ = 1e6/1e6 = 1 to 1e-12.
        assert float(sm) == pytest.approx(1.0, rel=1e-12)


def test_smoothed_margin_from_logistic_uses_inverse_link():
    params = [torch.tensor([2.0], dtype=torch.float64)]
    ll = torch.tensor(math.log(0.1), dtype=torch.float64)  # 𝓛 = 0.1
    expected = -math.log(math.expm1(0.1)) / 2.0  # L = 1, ‖θ‖ = 2
    assert float(smoothed_margin_from(ll, params, "l2", 1, "logistic")) == pytest.approx(
        expected, rel=1e-14
    )
    assert float(smoothed_margin_from(ll, params, "l2", 1, "exponential")) == pytest.approx(
        -math.log(0.1) / 2, rel=1e-14
    )


def test_alignment_is_one_at_a_constructed_stationary_point():
    """Linear model, one point, θ ∝ x: −∇𝓛 = e^{-q} x ∝ θ, so β₂ = 1 exactly (1 − β = 0)."""
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    model = Linear(2, seed=0)
    with torch.no_grad():
        model.weight.copy_(0.5 * x)
    beta = dual_alignment(model, x, torch.tensor([1.0]), norm="l2")
    assert 1.0 - float(beta) == pytest.approx(0.0, abs=1e-15)
    # ℓ∞ geometry: θ = (1, 1) and −∇𝓛 ∝ x = (1, 1) with ‖x‖₁ = 2 = ⟨θ, x⟩ / ‖θ‖_∞: β_∞ = 1.
    x2 = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(x2)
    assert float(dual_alignment(model, x2, torch.tensor([1.0]), norm="linf")) == pytest.approx(
        1.0, abs=1e-15
    )
    # ...but not in ℓ1 geometry: θ = (2, 1), x = (1, 0.5): ⟨θ, x⟩ = 2.5 < ‖θ‖₁‖x‖_∞ = 3, β₁ = 5/6.
    x3 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 1.0]], dtype=torch.float64))
    assert float(dual_alignment(model, x3, torch.tensor([1.0]), norm="l1")) == pytest.approx(
        5 / 6, rel=1e-14
    )


@pytest.mark.parametrize("norm", NORMS)
def test_alignment_bounded_by_holder_and_scale_free(norm):
    model, X, y = _separable_state(3)
    beta = dual_alignment(model, X, y, norm=norm)
    assert -1.0 - 1e-12 <= float(beta) <= 1.0 + 1e-12
    params = [p.detach() for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]
    b1 = dual_alignment_from(params, v, norm)
    b2 = dual_alignment_from(params, [1e-200 * x for x in v], norm)
    torch.testing.assert_close(b1, b2, rtol=1e-12, atol=0)


def test_alignment_does_not_underflow_at_huge_margins():
    model, X, y = _separable_state(4)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e3)  # q ~ 1e5..1e6: e^{-q} underflows, the log-loss gradient does not
    q = margins(model(X), y)
    assert float(q.min()) > 800  # beyond float64 exp underflow
    beta = dual_alignment(model, X, y, norm="l2")
    assert torch.isfinite(beta) and 0 < float(beta) <= 1 + 1e-12
    assert torch.isfinite(log_loss(model(X), y))


def test_support_counts():
    q = torch.tensor([1.0, 1.0 + 2.0, 1.0 + 4.0, 1.0 + 100.0], dtype=torch.float64)
    # log 10 ≈ 2.303: q < 1 + 2.303 → 2 points; q < 1 + 4.605 → 3; q < 1 + 6.908 → 3.
    assert support_counts(q, ks=[1, 2, 3, 50]) == {1: 2, 2: 3, 3: 3, 50: 4}


def test_directional_cosine():
    a = [torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)]
    b = [3 * x for x in a]
    assert float(directional_cosine(a, b)) == pytest.approx(1.0, abs=1e-15)
    c = [torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([[0.0]], dtype=torch.float64)]
    assert float(directional_cosine(a, c)) == pytest.approx(0.0, abs=1e-15)
