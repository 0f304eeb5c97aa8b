"""What the adaptive rules share: the validators of their options, the safe tensor helpers
(division, square root, moments rescaled with the gradient scale), Newton–Schulz and the
polar factor, and Adam's moment arithmetic (used by Adam and Muon–Adam)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..norms import (
    LpNorm,
    Spectral,
)

State = dict[str, Any]

#: Keller Jordan's quintic Newton–Schulz coefficients (a, b, c): X ← aX + (bA + cA²)X, A = XXᵀ.
#: They trade exactness for speed: singular values land in a band around 1, not on 1.
NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)

ORTHOGONALIZE_METHODS = ("svd", "newton_schulz")


def check_unit_interval(name: str, value: Any, *, allow_one: bool = False) -> float:
    """A coefficient in [0, 1) (or [0, 1] with ``allow_one``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number in [0, 1{']' if allow_one else ')'}; got {value!r}"
        )
    v = float(value)
    ok = 0.0 <= v <= 1.0 if allow_one else 0.0 <= v < 1.0
    if not ok:
        raise ValueError(f"{name} must lie in [0, 1{']' if allow_one else ')'}; got {value!r}")
    return v


def check_betas(betas: Any) -> tuple[float, float]:
    """Adam's (β1, β2), each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), each in [0, 1); got {betas!r}")
    return (check_unit_interval("betas[0]", betas[0]), check_unit_interval("betas[1]", betas[1]))


def check_orthogonalize(method: Any) -> str:
    """One of :data:`ORTHOGONALIZE_METHODS`."""
    if method not in ORTHOGONALIZE_METHODS:
        valid = ", ".join(map(repr, ORTHOGONALIZE_METHODS))
        raise ValueError(f"orthogonalize must be one of {valid}; got {method!r}")
    return str(method)


def check_ns(ns_steps: Any, ns_coefficients: Any) -> tuple[int, tuple[float, float, float]]:
    """Newton–Schulz's step count (≥ 0) and its three coefficients."""
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 0:
        raise ValueError(f"ns_steps must be a non-negative int; got {ns_steps!r}")
    if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
        raise ValueError(f"ns_coefficients must be three floats (a, b, c); got {ns_coefficients!r}")
    a, b, c = (float(x) for x in ns_coefficients)
    return ns_steps, (a, b, c)


def as_matrix(x: Tensor) -> Tensor:
    """The matrix view shared with :class:`steepest.norms.Spectral`: (shape[0], rest) or 1×n."""
    if x.dim() >= 2:
        return x.reshape(x.shape[0], -1)
    return x.reshape(1, -1)


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (double-where: no NaN, not even in autograd)."""
    zero = den == 0
    return torch.where(
        zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den)
    )


def safe_sqrt(v: Tensor) -> Tensor:
    """√v for v ≥ 0 whose autograd is 0 (not ∞·0 = NaN) where v == 0."""
    pos = v > 0
    return torch.where(
        pos, torch.sqrt(torch.where(pos, v, torch.ones_like(v))), torch.zeros_like(v)
    )


def ema(m: Tensor, g: Tensor, beta: float) -> Tensor:
    """m ← β m + (1 − β) g (β = 0 gives g exactly)."""
    return beta * m + (1.0 - beta) * g


def one_run(x: Any, like: Tensor) -> Any:
    """One run: a per-run scalar needs no shaping (the ``per_run`` of a single-run rule)."""
    return x


def rescaled(
    xs: Sequence[Tensor], log_factor: Tensor, power: float, per_run=one_run
) -> list[Tensor]:
    """xs · e^{power·log_factor}: moments re-expressed for gradients scaled by e^{log_factor}."""
    return [x * per_run(torch.exp(power * log_factor).to(x.dtype), x) for x in xs]


def rescale_moments(state: State, log_factor: Tensor, per_run=one_run) -> State:
    """Adam-style state for gradients scaled by e^{log_factor}: m·e^{lf}, v·e^{2lf}, s + lf.
    ``per_run`` shapes a per-run factor (K,) over stacked tensors (see ``AdamRule._apply``)."""
    return {
        **state,
        "exp_avg": rescaled(state["exp_avg"], log_factor, 1.0, per_run),
        "exp_avg_sq": rescaled(state["exp_avg_sq"], log_factor, 2.0, per_run),
        "log_grad_scale": state["log_grad_scale"] + log_factor,
    }


def eps_now(
    eps: float, state: State, power: float = 1.0, dtype: torch.dtype | None = None
) -> Tensor | float:
    """ε in the units of the gradients fed now (see ``Algorithm.rescale_state``).

    The engine feeds ∇log𝓛 = e^{s}·∇𝓛 with s = ``log_grad_scale``; Adam on ∇𝓛 with ε equals
    Adam on e^{s}∇𝓛 with e^{s}ε (Shampoo: e^{2s}ε). ε = 0 stays exactly 0 (no 0·inf).
    """
    if eps == 0:
        return 0.0
    out = eps * torch.exp(power * state["log_grad_scale"])
    return out if dtype is None else out.to(dtype)


def broadcast_per_run(x: Tensor, like: Tensor) -> Tensor:
    """A per-run vector (K,) shaped to broadcast over a stacked tensor (K, ...)."""
    return x.reshape((-1,) + (1,) * (like.dim() - 1))


def step_counter(params: Sequence[Tensor]) -> Tensor:
    """A rule state's ``step``: 0 as a 0-dim tensor on the parameters' device and dtype."""
    if len(params) == 0:
        raise ValueError("params must hold at least one tensor; got an empty list")
    p0 = params[0]
    return torch.zeros((), dtype=p0.dtype, device=p0.device)


def newton_schulz(
    matrix: Tensor, steps: int = 5, coefficients: Sequence[float] = NS_COEFFICIENTS
) -> Tensor:
    """Approximate polar factor U Vᵀ of a 2-D matrix by the quintic Newton–Schulz iteration.

    X₀ = M / ‖M‖_F (so every σ ≤ 1), then ``steps`` times X ← aX + (bA + cA²)X with A = XXᵀ, in
    float64, working on the wide orientation (fewer rows than columns) to keep A small. The
    iteration is an odd polynomial in M, so it keeps M's singular vectors and maps each
    σ_i/‖M‖_F through a scalar polynomial p: the result is U p(Σ/‖M‖_F) Vᵀ. With the default
    (Keller Jordan's) coefficients p does not converge to 1 but oscillates in a band around it;
    ``(1.875, -1.25, 0.375)`` is the convergent (slower) quintic. A zero matrix maps to zero.
    Returned in ``matrix``'s dtype.
    """
    if matrix.dim() != 2:
        raise ValueError(f"newton_schulz: matrix must be 2-D; got shape {tuple(matrix.shape)}")
    a, b, c = (float(x) for x in coefficients)
    x = matrix.to(torch.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.mT
    x = safe_div(x, torch.linalg.matrix_norm(x, ord="fro"))
    for _ in range(int(steps)):
        A = x @ x.mT
        x = a * x + (b * A + c * (A @ A)) @ x
    if tall:
        x = x.mT
    return x.to(matrix.dtype)


def orthogonalize(
    tensors: Sequence[Tensor],
    method: str = "svd",
    ns_steps: int = 5,
    ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
) -> list[Tensor]:
    """The per-layer polar factor of each tensor: the unit direction of ‖·‖_msp (docs/theory.md §2.3).

    * ``"svd"``: exact, :meth:`steepest.norms.Spectral.direction` (float64 compact SVD, rank-r
      part; vectors and scalars → x/‖x‖₂; a zero tensor stays zero).
    * ``"newton_schulz"``: :func:`newton_schulz` on the matrix view of every tensor with ndim ≥ 2;
      vectors and scalars still use the exact x/‖x‖₂ (their polar factor costs nothing exactly).
    """
    method = check_orthogonalize(method)
    if method == "svd":
        return Spectral().direction(list(tensors))
    out = []
    for t in tensors:
        if t.dim() >= 2:
            out.append(newton_schulz(as_matrix(t), ns_steps, ns_coefficients).reshape(t.shape))
        else:
            out.append(LpNorm(2).direction([t])[0])  # x/‖x‖₂, scaled against underflow
    return out


def adam_moments(m: Tensor, v: Tensor, g: Tensor, b1: float, b2: float) -> tuple[Tensor, Tensor]:
    return ema(m, g, b1), b2 * v + (1.0 - b2) * (g * g)


def adam_ratio(
    m: Tensor, v: Tensor, t: Tensor, b1: float, b2: float, eps: float, bias_correction: bool
) -> tuple[Tensor, Tensor]:
    """(m/(√v/√bc2 + ε), 1/bc1): the Adam step is θ ← θ − (η/bc1)·ratio, torch's operation order.

    Where √v/√bc2 + ε == 0 (only possible with ε = 0 and v = 0) the ratio is defined as 0.
    """
    if bias_correction:
        bc1 = 1.0 - torch.pow(b1, t)
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(b2, t))
    else:
        bc1 = torch.ones_like(t)
        bc2_sqrt = torch.ones_like(t)
    den = safe_sqrt(v) / bc2_sqrt + eps
    return safe_div(m, den), 1.0 / bc1
