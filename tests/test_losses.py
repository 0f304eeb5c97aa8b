"""Tests for steepest.losses: margins, log-space losses, smoothed margin (docs/theory.md §1.3, §3.2, §5 items 5–6)."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from steepest.losses import (
    LOSSES,
    log_loss,
    log_softplus,
    margins,
    per_sample_log_losses,
    smoothed_margin_numerator,
)

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _binary(n: int = 40, seed: int = 0, lo: float = -20.0, hi: float = 20.0):
    g = _gen(seed)
    q = lo + (hi - lo) * torch.rand(n, generator=g, dtype=DT)
    y = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(DT)
    return q * y, y, q  # outputs f with y f = q


# ---------------------------------------------------------------------------- margins


def test_binary_margins_and_shapes():
    f, y, q = _binary()
    assert torch.allclose(margins(f, y), q, rtol=0, atol=0)
    assert torch.equal(margins(f.unsqueeze(1), y), margins(f, y))  # (n, 1) same as (n,)
    assert torch.equal(margins(f, y.long()), margins(f, y))  # integer ±1 labels are fine


def test_binary_label_validation():
    f, y, _ = _binary(4)
    with pytest.raises(ValueError, match=r"-1 or \+1"):
        margins(f, torch.tensor([0, 1, 1, 0]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        margins(f, y[:3])


def test_multiclass_label_validation():
    out = torch.zeros(3, 4, dtype=DT)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        margins(out, torch.tensor([0, 4, 1]))
    with pytest.raises(TypeError, match="integer class ids"):
        margins(out, torch.tensor([0.0, 1.0, 2.0]))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 6),
    k=st.integers(2, 5),
)
def test_multiclass_margins_match_brute_force(data, n, k):
    vals = data.draw(
        st.lists(
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
            | st.sampled_from([0.0, 1.0]),
            min_size=n * k,
            max_size=n * k,
        )
    )
    labels = data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    out = torch.tensor(vals, dtype=DT).reshape(n, k)
    y = torch.tensor(labels)
    q = margins(out, y)
    for i in range(n):
        others = [vals[i * k + j] for j in range(k) if j != labels[i]]
        # identical arithmetic (one subtraction of float64 values) -> exact equality
        assert q[i].item() == vals[i * k + labels[i]] - max(others)


# ---------------------------------------------------------------------------- log losses


def test_exponential_matches_direct_where_finite():
    f, y, q = _binary(seed=1)
    # Direct float64 sum of e^{−q} (|q| ≤ 20: no under/overflow). Both sides round a sum of
    # 40 positive terms (relative error ~1e-15), so rtol 1e-12 is ample and still tight.
    direct = torch.log(torch.exp(-q).sum())
    assert torch.allclose(log_loss(f, y, "exponential"), direct, rtol=1e-12, atol=0)


def test_logistic_matches_direct_where_finite():
    f, y, q = _binary(seed=2)
    direct = torch.log(F.softplus(-q).sum())  # F.softplus is exact to 1 ulp for |q| ≤ 20
    assert torch.allclose(log_loss(f, y, "logistic"), direct, rtol=1e-12, atol=0)
    per = per_sample_log_losses(f, y, "logistic")
    assert torch.allclose(per, torch.log(F.softplus(-q)), rtol=1e-12, atol=0)


def test_cross_entropy_matches_torch_where_finite():
    g = _gen(3)
    out = 10 * torch.randn(30, 5, generator=g, dtype=DT)
    y = torch.randint(0, 5, (30,), generator=g)
    ref = torch.log(F.cross_entropy(out, y, reduction="sum"))
    assert torch.allclose(log_loss(out, y, "cross_entropy"), ref, rtol=1e-12, atol=0)
    # per sample: ℓ_i = −log softmax(f)_{y_i}
    per_ref = torch.log(F.cross_entropy(out, y, reduction="none"))
    assert torch.allclose(
        per_sample_log_losses(out, y, "cross_entropy"), per_ref, rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("big", [1e4, 1e6, 1e12])
@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_binary_losses_exact_at_huge_margins(big, loss):
    g = _gen(4)
    offsets = 5 * torch.rand(25, generator=g, dtype=DT)
    y = torch.where(torch.rand(25, generator=g) < 0.5, -1.0, 1.0).to(DT)
    q = big + offsets
    # The offsets that q actually carries (big + offset rounds to a multiple of ulp(big), e.g.
    # 1.2e-4 at 1e12); q − big is exact (Sterbenz).
    offsets = q - big
    f = (y * q).requires_grad_(True)
    # ℓ(q) = e^{−q}(1 + O(e^{−q})) for both losses, so log𝓛 = −big + log Σ e^{−offset} exactly.
    expected = -big + torch.logsumexp(-offsets, 0)
    value = log_loss(f, y, loss)
    assert torch.isfinite(value)
    # Both sides are computed from the same represented numbers; rounding only: rtol 1e-14.
    assert math.isclose(value.item(), expected.item(), rel_tol=1e-14)
    (grad,) = torch.autograd.grad(value, f)
    assert torch.isfinite(grad).all()
    # ∂log𝓛/∂f_i = −y_i softmax(−q)_i: O(1), computed from the offsets alone. Autograd forms
    # e^{−q_i − log𝓛}, and log𝓛 ≈ −big is only known to ~ulp(big) (1.2e-10 at 1e6, 1.2e-4 at
    # 1e12), so a relative gradient error of a few ulp(big) is inherent: rtol = 100 ulp(big).
    ref = -y * torch.softmax(-offsets, 0)
    assert torch.allclose(grad, ref, rtol=100 * math.ulp(big), atol=0)


@pytest.mark.parametrize("big", [1e4, 1e6])
def test_cross_entropy_exact_at_huge_margins(big):
    g = _gen(5)
    n, k = 10, 4
    wrong = -big - 5 * torch.rand(n, k, generator=g, dtype=DT)  # f_j − f_y for j ≠ y
    y = torch.randint(0, k, (n,), generator=g)
    out = wrong.clone()
    out[torch.arange(n), y] = 0.0
    out.requires_grad_(True)
    mask = torch.ones(n, k, dtype=torch.bool)
    mask[torch.arange(n), y] = False
    # log Σ_i log(1 + Σ_{j≠y} e^{f_j−f_y}) = log Σ_{i, j≠y} e^{f_j−f_y} up to e^{−big} relative.
    expected = torch.logsumexp(wrong[mask], 0)
    value = log_loss(out, y, "cross_entropy")
    assert math.isclose(value.item(), expected.item(), rel_tol=1e-14)
    (grad,) = torch.autograd.grad(value, out)
    assert torch.isfinite(grad).all() and grad.abs().max() <= 1.0 + 1e-12
    # rows sum to zero (shift invariance of each row's logits)
    assert torch.allclose(grad.sum(1), torch.zeros(n, dtype=DT), atol=1e-12)


def test_log_softplus_against_mpmath():
    mpmath.mp.dps = 50
    zs = [-1e6, -800.0, -50.0, -20.5, -20.0, -19.5, -3.0, 0.0, 3.0, 19.5, 20.5, 40.0, 1e6]
    z = torch.tensor(zs, dtype=DT, requires_grad=True)
    v = log_softplus(z)
    for zi, vi in zip(zs, v.tolist(), strict=True):
        ref = mpmath.log(mpmath.log1p(mpmath.exp(zi)))
        # float64 result of a well-conditioned function: a few ulps -> rtol 1e-14
        assert math.isclose(vi, float(ref), rel_tol=1e-14), zi
    (grad,) = torch.autograd.grad(v.sum(), z)
    assert torch.isfinite(grad).all()
    # d/dz log softplus(z) = sigmoid(z)/softplus(z); at z = 0: (1/2)/log 2
    assert math.isclose(grad[zs.index(0.0)].item(), 0.5 / math.log(2.0), rel_tol=1e-14)


def test_never_nan_or_inf_for_finite_inputs():
    out = torch.tensor([-1e300, -1e6, 0.0, 1e6, 1e300], dtype=DT, requires_grad=True)
    y = torch.ones(5, dtype=DT)
    # The q = −1e300 entry dominates: exponential ℓ = e^{1e300}, log ℓ = 1e300; logistic
    # ℓ = softplus(1e300) = 1e300, log ℓ = log(1e300). Other terms are negligible in float64.
    for loss, expected in (("exponential", 1e300), ("logistic", math.log(1e300))):
        v = log_loss(out, y, loss)
        assert torch.isfinite(v) and math.isclose(v.item(), expected, rel_tol=1e-14)
        (g,) = torch.autograd.grad(v, out)
        assert torch.isfinite(g).all()


def test_loss_shape_mismatch_errors():
    f, y, _ = _binary(6)
    with pytest.raises(ValueError, match="cross_entropy.*multiclass"):
        log_loss(f, y, "cross_entropy")
    out = torch.zeros(6, 3, dtype=DT)
    with pytest.raises(ValueError, match="exponential.*binary"):
        log_loss(out, torch.zeros(6, dtype=torch.long), "exponential")
    with pytest.raises(ValueError, match="exponential.*logistic.*cross_entropy"):
        log_loss(f, y, "hinge")
    assert LOSSES == ("exponential", "logistic", "cross_entropy")


def test_log_loss_is_logsumexp_of_per_sample():
    f, y, _ = _binary(seed=7)
    for loss in ("exponential", "logistic"):
        per = per_sample_log_losses(f, y, loss)
        assert per.shape == (40,)
        assert torch.allclose(log_loss(f, y, loss), torch.logsumexp(per, 0), rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------- smoothed margin


def test_smoothed_numerator_exponential_is_minus_log_loss():
    f, y, _ = _binary(seed=8)
    ll = log_loss(f, y, "exponential")
    assert torch.equal(smoothed_margin_numerator(ll, "exponential"), -ll)


LOG_LOSS_VALUES = [
    -1e6,
    -1e4,
    -745.5,
    -100.0,
    -30.0,
    -20.5,
    -20.0,
    -19.5,
    -10.0,
    -1.0,
    math.log(math.log(2.0)),
    -1e-3,
    0.0,
    3.0,
    6.6,
]
# (ℓ = 6.6: 𝓛 = e^6.6 ≈ 735, where a naive log(expm1(𝓛)) overflows to inf.)


@pytest.mark.parametrize("loss", ["logistic", "cross_entropy"])
def test_smoothed_numerator_logistic_against_mpmath(loss):
    mpmath.mp.dps = 50
    ell = torch.tensor(LOG_LOSS_VALUES, dtype=DT, requires_grad=True)
    num = smoothed_margin_numerator(ell, loss)
    for li, vi in zip(LOG_LOSS_VALUES, num.tolist(), strict=True):
        # −log(e^𝓛 − 1) with 𝓛 = e^ℓ. mpmath.expm1 keeps e^𝓛 − 1 exact even where 𝓛 = e^{−1e6}
        # (a plain exp(𝓛) − 1 would need ~4e5 digits there).
        ref = -mpmath.log(mpmath.expm1(mpmath.exp(li)))
        # A few ulps relative (rtol 1e-13). Near ℓ = log log 2 (𝓛 = log 2, the separation
        # threshold) the value crosses 0, and rounding ℓ itself (~1e-16, times the slope
        # 2 log 2) dominates: abs_tol 1e-15 there.
        assert math.isclose(vi, float(ref), rel_tol=1e-13, abs_tol=1e-15), li
    (grad,) = torch.autograd.grad(num.sum(), ell)
    assert torch.isfinite(grad).all()


def test_smoothed_numerator_sandwich_logistic():
    """Logistic: 𝓛 ≥ ℓ(q_min) = log(1 + e^{−q_min}) ⇒ e^𝓛 − 1 ≥ e^{−q_min} ⇒ numerator ≤ q_min."""
    f, y, q = _binary(seed=9, lo=1.0, hi=30.0)
    ll = log_loss(f, y, "logistic")
    num = smoothed_margin_numerator(ll, "logistic")
    assert num <= q.min()
    lls = torch.linspace(-50, 0, 101, dtype=DT)
    nums = smoothed_margin_numerator(lls, "logistic")
    assert torch.all(nums[1:] < nums[:-1])  # strictly decreasing in log𝓛


def test_smoothed_numerator_accepts_floats_and_validates():
    v = smoothed_margin_numerator(-3.0, "logistic")
    assert isinstance(v, torch.Tensor) and v.dtype == DT
    with pytest.raises(ValueError, match="exponential.*logistic"):
        smoothed_margin_numerator(-3.0, "square")
