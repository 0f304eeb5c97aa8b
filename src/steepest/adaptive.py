"""Adaptive and momentum methods as pure update rules: Adam, MomentumGD, Signum, Muon, Shampoo,
and the Muon–Signum / Muon–Adam hybrids (docs/theory.md §2.4, §4.4, A.3–A.6).

Every rule is an :class:`~steepest.algorithms.Algorithm`: ``state = rule.init(params)`` and
``params, state = rule.update(params, grads, state, lr)``, pure torch (no in-place edits, no
``.item()``, no Python branching on tensor values; only on shapes and hyperparameters), and
declares the norm whose margin it is predicted to maximize (``predicted_norm``). Importing this
module registers the names below with :func:`steepest.algorithms.register_algorithm`, so
``steepest.optimizer("adam", params, lr=1e-3, betas=(0.9, 0.999), eps=0.0)`` works; each rule
also has a thin ``torch.optim.Optimizer`` wrapper (:class:`Adam`, :class:`MomentumGD`, …).

=============  ========================================================  =======================
name           update (g = gradient, m = momentum, η = lr)                predicted norm
=============  ========================================================  =======================
adam           Kingma–Ba Adam, θ ← θ − η m̂/(√v̂ + ε)                      ℓ∞ (ε > 0: drifts to ℓ2)
momentum       m ← βm + (1−β)g, θ ← θ − η m/‖m‖₂                          ℓ2
signum         m ← βm + (1−β)g, θ ← θ − η sign(m)                         ℓ∞
muon           m ← βm + (1−β)g, θ ← θ − η polar(m) per layer              max-spectral
shampoo        θ ← θ − η (L+εI)^{−1/r} G (R+εI)^{−1/r}                     max-spectral
muon-signum    Muon on hidden matrices (η), Signum on the rest (aη)       max{a‖W‖_msp, ‖u‖_∞}
muon-adam      Muon on hidden matrices (η), Adam on the rest (aη)         max{a‖W‖_msp, ‖u‖_∞}
=============  ========================================================  =======================

a = ``lr_ratio`` = η_A/η_M for the hybrids.

Momentum methods use Gronich & Vardi's normalized momentum steepest descent (docs/theory.md A.3):
m_t = β m_{t−1} + (1 − β) g_t, θ_{t+1} = θ_t − η_t U(m_t) with U the unit steepest direction
of the norm (:meth:`steepest.norms.Norm.direction`). Because U is scale-invariant, the
dampening (1 − β) does not change the trajectory: torch's SGD-style m ← βm + g gives the same
steps.

Shapes (shared with :class:`steepest.norms.Spectral`): a tensor of ndim ≥ 2 is the matrix
(shape[0], rest) (a conv kernel (out, in, k, k) becomes (out, in·k·k)); a vector or scalar is a
1×n matrix, whose polar factor is x/‖x‖₂ (ℓ2 normalization).

Every state holds ``step`` (updates taken, a 0-dim tensor) and ``grad_dual`` (‖g‖_* of the raw
gradient in the predicted norm, the quantity the engine's flow-time clock uses, as in
:class:`~steepest.algorithms.SteepestDescentRule`); per-parameter buffers are lists with one
tensor per parameter, in the parameters' dtype (so ``torch.optim`` checkpoints reload them
bit-exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .algorithms import Algorithm, register_algorithm
from .norms import BlockMax, LpNorm, Norm, Spectral, weighted_max
from .optim import optimizer_class

__all__ = [
    "NS_COEFFICIENTS",
    "ORTHOGONALIZE_METHODS",
    "AdamRule",
    "MomentumSteepestRule",
    "MuonRule",
    "ShampooRule",
    "MuonSignumRule",
    "MuonAdamRule",
    "HybridNorm",
    "Adam",
    "MomentumGD",
    "Signum",
    "Muon",
    "Shampoo",
    "MuonSignum",
    "MuonAdam",
    "newton_schulz",
    "orthogonalize",
    "default_muon_indices",
]

State = dict[str, Any]

#: Keller Jordan's quintic Newton–Schulz coefficients (a, b, c): X ← aX + (bA + cA²)X, A = XXᵀ.
#: They trade exactness for speed: singular values land in a band around 1, not on 1.
NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
ORTHOGONALIZE_METHODS = ("svd", "newton_schulz")


# ----------------------------------------------------------------------------- validation


def _check_unit_interval(name: str, value: Any, *, allow_one: bool = False) -> float:
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


def _check_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), each in [0, 1); got {betas!r}")
    return (_check_unit_interval("betas[0]", betas[0]), _check_unit_interval("betas[1]", betas[1]))


def _check_nonneg(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a {'positive' if positive else 'non-negative'} number; got {value!r}"
        )
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a finite {kind} number; got {value!r}")
    return v


def _check_orthogonalize(method: Any) -> str:
    if method not in ORTHOGONALIZE_METHODS:
        valid = ", ".join(map(repr, ORTHOGONALIZE_METHODS))
        raise ValueError(f"orthogonalize must be one of {valid}; got {method!r}")
    return str(method)


def _check_ns(ns_steps: Any, ns_coefficients: Any) -> tuple[int, tuple[float, float, float]]:
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 0:
        raise ValueError(f"ns_steps must be a non-negative int; got {ns_steps!r}")
    if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
        raise ValueError(f"ns_coefficients must be three floats (a, b, c); got {ns_coefficients!r}")
    a, b, c = (float(x) for x in ns_coefficients)
    return ns_steps, (a, b, c)


def _check_muon_params(muon_params: Any) -> tuple[int, ...] | None:
    if muon_params is None:
        return None
    if isinstance(muon_params, (str, bytes)) or not isinstance(muon_params, Sequence):
        raise TypeError(
            f"muon_params must be None or a sequence of parameter indices; got {muon_params!r}"
        )
    out = []
    for i in muon_params:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"muon_params must hold non-negative int indices; got {muon_params!r}")
        out.append(int(i))
    if len(set(out)) != len(out):
        raise ValueError(f"muon_params has repeated indices: {muon_params!r}")
    return tuple(sorted(out))


# ----------------------------------------------------------------------------- helpers


def _as_matrix(x: Tensor) -> Tensor:
    """The matrix view shared with :class:`steepest.norms.Spectral`: (shape[0], rest) or 1×n."""
    if x.dim() >= 2:
        return x.reshape(x.shape[0], -1)
    return x.reshape(1, -1)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (double-where: no NaN, not even in autograd)."""
    zero = den == 0
    return torch.where(
        zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den)
    )


def _safe_sqrt(v: Tensor) -> Tensor:
    """√v for v ≥ 0 whose autograd is 0 (not ∞·0 = NaN) where v == 0."""
    pos = v > 0
    return torch.where(
        pos, torch.sqrt(torch.where(pos, v, torch.ones_like(v))), torch.zeros_like(v)
    )


def _ema(m: Tensor, g: Tensor, beta: float) -> Tensor:
    """m ← β m + (1 − β) g (β = 0 gives g exactly)."""
    return beta * m + (1.0 - beta) * g


def _same(x: Any, like: Tensor) -> Any:
    """One run: a per-run scalar needs no shaping (the ``per_run`` of a single-run rule)."""
    return x


def _rescaled(
    xs: Sequence[Tensor], log_factor: Tensor, power: float, per_run=_same
) -> list[Tensor]:
    """xs · e^{power·log_factor}: moments re-expressed for gradients scaled by e^{log_factor}."""
    return [x * per_run(torch.exp(power * log_factor).to(x.dtype), x) for x in xs]


def _rescale_moments(state: State, log_factor: Tensor, per_run=_same) -> State:
    """Adam-style state for gradients scaled by e^{log_factor}: m·e^{lf}, v·e^{2lf}, s + lf.
    ``per_run`` shapes a per-run factor (K,) over stacked tensors (see ``AdamRule._apply``)."""
    return {
        **state,
        "exp_avg": _rescaled(state["exp_avg"], log_factor, 1.0, per_run),
        "exp_avg_sq": _rescaled(state["exp_avg_sq"], log_factor, 2.0, per_run),
        "log_grad_scale": state["log_grad_scale"] + log_factor,
    }


def _eps_now(
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


def _per_run(x: Tensor, like: Tensor) -> Tensor:
    """A per-run vector (K,) shaped to broadcast over a stacked tensor (K, ...)."""
    return x.reshape((-1,) + (1,) * (like.dim() - 1))


def _step0(params: Sequence[Tensor]) -> Tensor:
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
    x = _safe_div(x, torch.linalg.matrix_norm(x, ord="fro"))
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
    method = _check_orthogonalize(method)
    if method == "svd":
        return Spectral().direction(list(tensors))
    out = []
    for t in tensors:
        if t.dim() >= 2:
            out.append(newton_schulz(_as_matrix(t), ns_steps, ns_coefficients).reshape(t.shape))
        else:
            out.append(LpNorm(2).direction([t])[0])  # x/‖x‖₂, scaled against underflow
    return out


def default_muon_indices(params: Sequence[Tensor]) -> list[int]:
    """Indices of the "hidden matrices" Muon takes in a hybrid by default.

    A tensor goes to Muon when ndim ≥ 2 and shape[0] > 1; vectors, scalars and 1×m output rows
    (whose spectral norm is their ℓ2 norm) go to the Signum/Adam part.
    """
    return [i for i, p in enumerate(params) if p.dim() >= 2 and p.shape[0] > 1]


# ----------------------------------------------------------------------------- Adam


def _adam_moments(m: Tensor, v: Tensor, g: Tensor, b1: float, b2: float) -> tuple[Tensor, Tensor]:
    return _ema(m, g, b1), b2 * v + (1.0 - b2) * (g * g)


def _adam_ratio(
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
    den = _safe_sqrt(v) / bc2_sqrt + eps
    return _safe_div(m, den), 1.0 / bc1


class AdamRule(Algorithm):
    """Adam in its textbook form (Kingma & Ba 2015; docs/theory.md §2.4, A.3, A.4, A.6).

    m_t = β1 m_{t−1} + (1 − β1) g_t,  v_t = β2 v_{t−1} + (1 − β2) g_t²,
    m̂_t = m_t/(1 − β1^t), v̂_t = v_t/(1 − β2^t) (``bias_correction``; off: m̂ = m, v̂ = v),
    θ_t = θ_{t−1} − η m̂_t / (√v̂_t + ε),
    evaluated in ``torch.optim.Adam``'s order: θ − (η/(1−β1^t)) · m / (√v/√(1−β2^t) + ε).

    * ε = 0 is allowed. On coordinates where √v̂ + ε = 0 (ε = 0 and v = 0: every gradient so
      far was 0 there, or β2 = 0 and the current one is) the step is **defined as 0**: those
      coordinates stay. It is computed with a double ``where`` (also around √v), so no NaN
      appears, not even in autograd through the update.
    * β1 = β2 = 0, ε = 0 gives m̂/√v̂ = g/|g| = sign(g): sign descent (docs/theory.md §2.4).
    * Predicted norm ℓ∞: with ε = 0 (or ε negligible against √v̂) Adam's small-step flow is sign
      flow and it maximizes the ℓ∞ margin (Gronich & Vardi Thm 3.6; Zhang, Zou & Cao 2024 for
      linear models). With ε > 0, as the loss → 0 the gradients vanish, √v̂ + ε → ε and the
      update becomes η m̂/ε: gradient descent with momentum, so the **late phase drifts toward
      the ℓ2 margin** (Wang et al. 2021/2022, docs/theory.md A.6). Use ε = 0 (or ε ≪ |g| for the whole
      run, e.g. Gronich & Vardi's 1e-20) to study the ℓ∞ bias.

    State: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v), ``grad_dual`` (‖g‖₁).
    """

    normalized = True

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        bias_correction: bool = True,
    ):
        self.betas = _check_betas(betas)
        self.eps = _check_nonneg("eps", eps)
        if not isinstance(bias_correction, bool):
            raise TypeError(f"bias_correction must be a bool; got {bias_correction!r}")
        self.bias_correction = bias_correction
        self.predicted_norm = LpNorm(math.inf)
        self.name = "adam"

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {"betas": self.betas, "eps": self.eps, "bias_correction": self.bias_correction}

    def init(self, params: Sequence[Tensor]) -> State:
        zero = _step0(params)
        return {
            "step": zero,
            "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
            "grad_dual": zero,
            "log_grad_scale": torch.zeros((), dtype=torch.float64, device=zero.device),
        }

    def rescale_state(self, state: State, log_factor: Tensor) -> State:
        """m scales with the gradient, v with its square, and ε is tracked in log space."""
        return _rescale_moments(state, log_factor)

    def update(self, params, grads, state, lr):
        return self._apply(params, grads, state, lr, _same, self.predicted_norm.dual(grads))

    def _apply(self, params, grads, state, lr, per_run, grad_dual):
        """``update``'s arithmetic, in torch.optim.Adam's order; ``per_run(x, p)`` shapes a
        per-run scalar (step, lr, ε) to broadcast over the tensor p (one run: x itself)."""
        b1, b2 = self.betas
        t = state["step"] + 1
        eps = _eps_now(self.eps, state, dtype=params[0].dtype)
        new_p, new_m, new_v = [], [], []
        for p, g, m, v in zip(params, grads, state["exp_avg"], state["exp_avg_sq"], strict=True):
            m, v = _adam_moments(m, v, g, b1, b2)
            eps_p = per_run(eps, p) if isinstance(eps, Tensor) else eps
            ratio, inv_bc1 = _adam_ratio(m, v, per_run(t, p), b1, b2, eps_p, self.bias_correction)
            new_p.append(p - (per_run(lr, p) * inv_bc1) * ratio)
            new_m.append(m)
            new_v.append(v)
        return new_p, {
            "step": t,
            "exp_avg": new_m,
            "exp_avg_sq": new_v,
            "grad_dual": grad_dual,
            "log_grad_scale": state["log_grad_scale"],
        }

    # K runs on a leading axis without vmap: the elementwise operations of ``init``,
    # ``rescale_state`` and ``update`` in the same order, each per-run scalar (step, lr, ε in
    # the frame, the rescale factor) broadcast over its run. vmap's per-op dispatch made a
    # one-run step several times slower than this (the linear reproduction's Adam rows).
    def stacked_init(self, params: Sequence[Tensor]) -> State:
        p0 = params[0]
        zero = torch.zeros(p0.shape[0], dtype=p0.dtype, device=p0.device)
        return {
            "step": zero,
            "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
            "grad_dual": zero,
            "log_grad_scale": torch.zeros(p0.shape[0], dtype=torch.float64, device=p0.device),
        }

    def stacked_rescale_state(self, state: State, log_factor: Tensor) -> State:
        return _rescale_moments(state, log_factor, _per_run)

    def stacked_update(self, params, grads, state, lr):
        p0 = params[0]
        lr = torch.as_tensor(lr, dtype=p0.dtype, device=p0.device).expand(p0.shape[:1])
        dual = self.predicted_norm.stacked_dual(grads)
        return self._apply(params, grads, state, lr, _per_run, dual)

    engine_only_state = ("grad_dual", "log_grad_scale")
    in_place_of = ("update", "_apply")

    def apply_(self, params, grads, state, lr):
        """``update`` in place, in ``torch.optim.Adam``'s multi-tensor order (lerp for m,
        mul + addcmul for v, √v/√bc2 + ε), with ε = 0 where √v̂ = 0 giving a 0 step (m/∞) as
        in ``update``; the last step is θ ← θ − (η/bc1)·(m/den) (not addcdiv: with β1 = β2 = 0,
        ε = 0 the ratio is ±1 exactly, so Adam equals sign descent bit for bit). The gradients
        are the raw ones (no log-space frame), so ε is used as given."""
        if not self.in_place:
            return super().apply_(params, grads, state, lr)
        b1, b2 = self.betas
        ps, ms, vs = list(params), state["exp_avg"], state["exp_avg_sq"]
        t = state["step"] + 1
        n = float(t)
        bc1 = 1.0 - b1**n if self.bias_correction else 1.0
        bc2_sqrt = math.sqrt(1.0 - b2**n) if self.bias_correction else 1.0
        torch._foreach_lerp_(ms, grads, 1.0 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
        den = torch._foreach_sqrt(vs)
        if bc2_sqrt != 1.0:
            torch._foreach_div_(den, bc2_sqrt)
        if self.eps > 0:
            torch._foreach_add_(den, self.eps)
        else:
            for d in den:
                d.masked_fill_(d == 0, math.inf)
        for m, d in zip(ms, den, strict=True):
            torch.div(m, d, out=d)  # m/den into den's memory: one fresh buffer per step, as torch
        torch._foreach_add_(ps, den, alpha=-float(lr) / bc1)
        return {"step": t, "exp_avg": ms, "exp_avg_sq": vs}


# ----------------------------------------------------------------------------- momentum methods


class MomentumSteepestRule(Algorithm):
    """Normalized momentum steepest descent w.r.t. ``norm`` (Gronich & Vardi, docs/theory.md A.3).

    m_t = β m_{t−1} + (1 − β) g_t (m_0 = 0),  θ_t = θ_{t−1} − η_t U(m_t),
    U = ``norm.direction`` (ℓ2: m/‖m‖₂ over the whole parameter vector — MomentumGD;
    ℓ∞: sign(m) — Signum; max-spectral: every layer's polar factor — Muon). β = 0 is normalized
    steepest descent. State: ``step``, ``momentum_buffer`` (m), ``grad_dual`` (‖g‖_*).
    """

    normalized = True

    def __init__(self, norm: Norm, momentum: float = 0.9, name: str | None = None):
        if not isinstance(norm, Norm):
            raise TypeError(f"norm must be a steepest.norms.Norm; got {type(norm).__name__}")
        self.norm = norm
        self.momentum = _check_unit_interval("momentum", momentum)
        self.predicted_norm = norm
        self.name = name or f"momentum-steepest[{norm.name}]"

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {"momentum": self.momentum}

    def init(self, params: Sequence[Tensor]) -> State:
        zero = _step0(params)
        return {
            "step": zero,
            "momentum_buffer": [torch.zeros_like(p) for p in params],
            "grad_dual": zero,
        }

    def rescale_state(self, state: State, log_factor: Tensor) -> State:
        """The buffer is linear in the gradients; U(m) is scale-free, so this is exact."""
        return {**state, "momentum_buffer": _rescaled(state["momentum_buffer"], log_factor, 1.0)}

    def _direction(self, ms: list[Tensor]) -> list[Tensor]:
        return self.norm.direction(ms)

    def update(self, params, grads, state, lr):
        ms = [
            _ema(m, g, self.momentum) for m, g in zip(state["momentum_buffer"], grads, strict=True)
        ]
        u = self._direction(ms)
        new_p = [p - lr * d for p, d in zip(params, u, strict=True)]
        return new_p, {
            "step": state["step"] + 1,
            "momentum_buffer": ms,
            "grad_dual": self.predicted_norm.dual(grads),
        }

    engine_only_state = ("grad_dual",)
    in_place_of = ("update",)

    def apply_(self, params, grads, state, lr):
        """``update`` in place: m ← lerp(m, g, 1 − β) (= βm + (1 − β)g, as pytorch-optimizer's
        SignSGD), θ ← θ − η·U(m), U the norm's multi-tensor map, or the rule's own
        ``_direction`` where a subclass gives one (Muon's polar factors)."""
        if not self.in_place:
            return super().apply_(params, grads, state, lr)
        ms = state["momentum_buffer"]
        torch._foreach_lerp_(ms, list(grads), 1.0 - self.momentum)
        if type(self)._direction is MomentumSteepestRule._direction:
            u = self.norm.update_direction(ms, True)
        else:
            u = self._direction(ms)
        torch._foreach_add_(list(params), list(u), alpha=-float(lr))
        return {"step": state["step"] + 1, "momentum_buffer": ms}


class MuonRule(MomentumSteepestRule):
    """Muon: momentum, then every tensor moves by the polar factor of its momentum (docs/theory.md §2.4, A.3).

    m_t = β m_{t−1} + (1 − β) g_t; W ← W − η polar(m_t) per tensor, where polar(M) = U_r V_rᵀ
    from the compact SVD M = U Σ Vᵀ (exact, float64; ``orthogonalize="svd"``, default) or the
    quintic Newton–Schulz approximation (``"newton_schulz"``, ``ns_steps`` iterations with
    ``ns_coefficients``; see :func:`newton_schulz`). This is normalized momentum steepest descent
    for ‖θ‖_msp = max_k σ_max(W_k): its unit direction moves every layer by its own polar factor.

    Non-matrix rule (shared with :class:`steepest.norms.Spectral`): a conv kernel is the matrix
    (out, in·k·k); a vector or scalar is a 1×n matrix, whose polar factor is m/‖m‖₂, so biases
    move by ℓ2-normalized momentum (exactly, also with Newton–Schulz). Predicted norm:
    max over layers of the spectral norm (Gronich & Vardi Cor. 3.4). Plain Muon (Keller Jordan)
    adds Nesterov momentum and shape-dependent scale factors; this is the form the theory uses.

    Cost of the exact default: one float64 SVD per tensor per step, O(mn·min(m, n)) for an
    m × n matrix. Measured on a 2-core CPU (benchmarks/bench_optimizers.py): 42 ms per step for
    a 256 × 784 layer and a 1 × 256 row, against 23–27 ms with Newton–Schulz (5 steps). Exact
    stays the default because Newton–Schulz with these coefficients is not the steepest
    direction of the spectral norm: it leaves the singular values of the step anywhere in
    [0.68, 1.13] (worse for ill-conditioned momenta; tests/test_adaptive.py), so ⟨U, m⟩ is not
    ‖m‖_nuc and the max-spectral-margin prediction is not the one proved, for a speed-up of
    under 2×.
    """

    def __init__(
        self,
        momentum: float = 0.9,
        orthogonalize: str = "svd",
        ns_steps: int = 5,
        ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
    ):
        super().__init__(Spectral(), momentum, name="muon")
        self.orthogonalize = _check_orthogonalize(orthogonalize)
        self.ns_steps, self.ns_coefficients = _check_ns(ns_steps, ns_coefficients)

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {
            "momentum": self.momentum,
            "orthogonalize": self.orthogonalize,
            "ns_steps": self.ns_steps,
            "ns_coefficients": self.ns_coefficients,
        }

    def _direction(self, ms: list[Tensor]) -> list[Tensor]:
        return orthogonalize(ms, self.orthogonalize, self.ns_steps, self.ns_coefficients)


# ----------------------------------------------------------------------------- Shampoo


def _inv_root(S: Tensor, eps: float, root: float) -> Tensor:
    """(S + εI)^{−1/root} on the numerical range of a symmetric PSD float64 matrix S.

    S = Q diag(λ) Qᵀ by ``eigh``; tiny negative λ are clamped to 0, and eigenvalues at or below
    eigh's rounding floor n·eps_machine·λ_max are treated as the null space, where the root is
    set to 0 (a pseudo-inverse root). In exact arithmetic this changes nothing in the Shampoo
    step, because the gradient never has a component there (range(G) ⊆ range(L_t), since
    L_t ⪰ GGᵀ); in floating point it stops rounding noise of size eps_machine·‖G‖ in those
    directions from being amplified by ε^{−1/r} (≈ 3·10⁷ at ε = 1e-30, r = 4).
    """
    lam, Q = torch.linalg.eigh(S)
    lam = torch.clamp(lam, min=0.0)
    floor = S.shape[-1] * torch.finfo(torch.float64).eps * lam.amax(dim=-1, keepdim=True)
    keep = lam > floor
    roots = torch.where(
        keep,
        (torch.where(keep, lam, torch.ones_like(lam)) + eps).pow(-1.0 / root),
        torch.zeros_like(lam),
    )
    return (Q * roots) @ Q.mT


class ShampooRule(Algorithm):
    """Shampoo with optional accumulation (Gupta, Koren & Singer 2018; docs/theory.md §2.4).

    Per tensor, with G its matrix view (m×n; a vector or scalar is a 1×n matrix):
    L_t = β L_{t−1} + G Gᵀ,  R_t = β R_{t−1} + GᵀG  (β = ``accumulation``; 0: L_t = G Gᵀ,
    1: classical sums),  step = (L_t + εI)^{−1/r} G (R_t + εI)^{−1/r}  (r = ``root``, 4 by
    default), θ ← θ − η·step. The inverse roots use a float64 symmetric eigendecomposition with
    eigenvalues clamped at 0.

    Without accumulation, G = UΣVᵀ gives (GGᵀ)^{−1/4} G (GᵀG)^{−1/4} = U Vᵀ on the range of G:
    spectral descent (Bernstein & Newhouse 2024). With ε > 0 the step is U f(Σ) Vᵀ with
    f(σ) = σ/(σ² + ε)^{1/2} → 1 as ε/σ² → 0, so ε must be negligible against σ²; like Adam's ε,
    a fixed ε eventually dominates the vanishing gradients of late training (f(σ) ≈ σ/√ε:
    unnormalized GD-like steps). Hence ε must be > 0 and its default is tiny. Predicted norm:
    max over layers of the spectral norm. Memory: a vector of length n keeps an n×n R.
    State: ``step``, ``left`` (L), ``right`` (R), ``grad_dual`` (Σ nuclear norms).
    """

    normalized = True

    def __init__(self, accumulation: float = 0.0, eps: float = 1e-20, root: float = 4.0):
        self.accumulation = _check_unit_interval("accumulation", accumulation, allow_one=True)
        self.eps = _check_nonneg("eps", eps, positive=True)
        self.root = _check_nonneg("root", root, positive=True)
        self.predicted_norm = Spectral()
        self.name = "shampoo"

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {"accumulation": self.accumulation, "eps": self.eps, "root": self.root}

    def init(self, params: Sequence[Tensor]) -> State:
        zero = _step0(params)
        left, right = [], []
        for p in params:
            m, n = _as_matrix(p).shape
            left.append(torch.zeros(m, m, dtype=p.dtype, device=p.device))
            right.append(torch.zeros(n, n, dtype=p.dtype, device=p.device))
        return {
            "step": zero,
            "left": left,
            "right": right,
            "grad_dual": zero,
            "log_grad_scale": torch.zeros((), dtype=torch.float64, device=zero.device),
        }

    def rescale_state(self, state: State, log_factor: Tensor) -> State:
        """L and R are quadratic in the gradients; ε is tracked in log space."""
        return {
            **state,
            "left": _rescaled(state["left"], log_factor, 2.0),
            "right": _rescaled(state["right"], log_factor, 2.0),
            "log_grad_scale": state["log_grad_scale"] + log_factor,
        }

    def update(self, params, grads, state, lr):
        beta = self.accumulation
        eps = _eps_now(self.eps, state, power=2.0)
        new_p, new_L, new_R = [], [], []
        for p, g, L, R in zip(params, grads, state["left"], state["right"], strict=True):
            G = _as_matrix(g).to(torch.float64)
            L64 = beta * L.to(torch.float64) + G @ G.mT
            R64 = beta * R.to(torch.float64) + G.mT @ G
            step = _inv_root(L64, eps, self.root) @ G @ _inv_root(R64, eps, self.root)
            new_p.append(p - lr * step.reshape(p.shape).to(p.dtype))
            new_L.append(L64.to(L.dtype))
            new_R.append(R64.to(R.dtype))
        return new_p, {
            "step": state["step"] + 1,
            "left": new_L,
            "right": new_R,
            "grad_dual": self.predicted_norm.dual(grads),
            "log_grad_scale": state["log_grad_scale"],
        }


# ----------------------------------------------------------------------------- hybrids


class HybridNorm(Norm):
    """max{a·‖W‖_msp, ‖u‖_∞}, with W/u split by shape at call time (docs/theory.md §2.3, A.3).

    Muon tensors W are ``muon_params`` if given, else :func:`default_muon_indices`; the rest is
    u. Every method builds :func:`steepest.norms.weighted_max` for the given list (see
    :meth:`for_params`) and delegates to it, so this norm applies to any parameter list of the
    model it was declared for. If one side is empty, the norm is the other side alone.
    """

    def __init__(self, a: float, muon_params: Sequence[int] | None = None):
        self.a = _check_nonneg("lr_ratio", a, positive=True)
        self.muon_params = _check_muon_params(muon_params)
        self.name = f"max({self.a:g}*max-spectral,linf)"

    def groups(self, xs: Sequence[Tensor]) -> tuple[list[int], list[int]]:
        """(Muon indices, Signum/Adam indices) for this list of tensors."""
        n = len(xs)
        if self.muon_params is None:
            muon = default_muon_indices(xs)
        else:
            bad = [i for i in self.muon_params if i >= n]
            if bad:
                raise ValueError(
                    f"muon_params {list(bad)} out of range for {n} parameters (valid: 0..{n - 1})"
                )
            muon = list(self.muon_params)
        mset = set(muon)
        return muon, [i for i in range(n) if i not in mset]

    def for_params(self, xs: Sequence[Tensor]) -> Norm:
        """The concrete :func:`~steepest.norms.weighted_max` norm for this parameter list."""
        if len(xs) == 0:
            raise ValueError("a Norm needs at least one tensor; got an empty list")
        muon, other = self.groups(xs)
        if not other:
            return BlockMax([Spectral()], groups=[muon], weights=[self.a], name=self.name)
        if not muon:
            return BlockMax([LpNorm(math.inf)], groups=[other], weights=[1.0], name=self.name)
        return weighted_max(self.a, "spectral", "linf", groups=[muon, other])

    def __call__(self, xs: Sequence[Tensor]) -> Tensor:
        return self.for_params(xs)(xs)

    def dual(self, gs: Sequence[Tensor]) -> Tensor:
        return self.for_params(gs).dual(gs)

    def direction_and_dual(self, gs: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        return self.for_params(gs).direction_and_dual(gs)

    def direction(self, gs: Sequence[Tensor]) -> list[Tensor]:
        return self.for_params(gs).direction(gs)

    def duality_map(self, gs: Sequence[Tensor]) -> list[Tensor]:
        return self.for_params(gs).duality_map(gs)


class _HybridBase(Algorithm):
    normalized = True

    def __init__(
        self,
        lr_ratio: float,
        muon_params: Sequence[int] | None,
        orthogonalize: str,
        ns_steps: int,
        ns_coefficients: Sequence[float],
    ):
        self.predicted_norm = HybridNorm(lr_ratio, muon_params)
        self.lr_ratio = self.predicted_norm.a
        self.muon_params = self.predicted_norm.muon_params
        self.orthogonalize = _check_orthogonalize(orthogonalize)
        self.ns_steps, self.ns_coefficients = _check_ns(ns_steps, ns_coefficients)

    def _common_hp(self) -> dict[str, Any]:
        return {
            "lr_ratio": self.lr_ratio,
            "muon_params": self.muon_params,
            "orthogonalize": self.orthogonalize,
            "ns_steps": self.ns_steps,
            "ns_coefficients": self.ns_coefficients,
        }

    def predicted_norm_for(self, params: Sequence[Tensor]) -> Norm:
        """weighted_max(a, "spectral", "linf", groups=[muon_idx, other_idx]) for ``params``."""
        return self.predicted_norm.for_params(params)

    def _polar(self, ms: list[Tensor]) -> list[Tensor]:
        return orthogonalize(ms, self.orthogonalize, self.ns_steps, self.ns_coefficients)


class MuonSignumRule(_HybridBase):
    """Muon on the hidden matrices (lr η_M = η), Signum on the rest (lr η_A = a·η) (docs/theory.md A.3).

    Both parts share m_t = β m_{t−1} + (1 − β) g_t. W ← W − η polar(m_W), u ← u − aη sign(m_u),
    a = ``lr_ratio`` = η_A/η_M. Exact correspondence (with ``orthogonalize="svd"``): for
    N = max{a‖W‖_msp, ‖u‖_∞} (:class:`HybridNorm`, the foundation's ``weighted_max``), whose
    unit direction is U_N(m) = ((1/a) polar(m_W), sign(m_u)),

        Δθ = −(a·η) · U_N(m_t) = −(a·η / ‖m_t‖_{N,*}) · J_N(m_t),

    so the hybrid is normalized momentum steepest descent w.r.t. N with step a·η; with β = 0 it
    is normalized steepest descent on g. Predicted norm: N (Gronich & Vardi Cor. 3.5 for a = 1).
    Which tensors are W: ``muon_params`` (indices into the parameter list, i.e. the param group),
    else ndim ≥ 2 with shape[0] > 1 (:func:`default_muon_indices`).
    State: ``step``, ``momentum_buffer``, ``grad_dual`` (‖g‖_{N,*}).
    """

    def __init__(
        self,
        momentum: float = 0.9,
        lr_ratio: float = 1.0,
        muon_params: Sequence[int] | None = None,
        orthogonalize: str = "svd",
        ns_steps: int = 5,
        ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
    ):
        super().__init__(lr_ratio, muon_params, orthogonalize, ns_steps, ns_coefficients)
        self.momentum = _check_unit_interval("momentum", momentum)
        self.name = "muon-signum"

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {"momentum": self.momentum, **self._common_hp()}

    def init(self, params: Sequence[Tensor]) -> State:
        zero = _step0(params)
        self.predicted_norm.groups(params)  # validate muon_params against the list now
        return {
            "step": zero,
            "momentum_buffer": [torch.zeros_like(p) for p in params],
            "grad_dual": zero,
        }

    def rescale_state(self, state: State, log_factor: Tensor) -> State:
        """The buffer is linear in the gradients; the directions are scale-free."""
        return {**state, "momentum_buffer": _rescaled(state["momentum_buffer"], log_factor, 1.0)}

    def update(self, params, grads, state, lr):
        muon, other = self.predicted_norm.groups(params)
        ms = [
            _ema(m, g, self.momentum) for m, g in zip(state["momentum_buffer"], grads, strict=True)
        ]
        new_p = list(params)
        polar = self._polar([ms[i] for i in muon]) if muon else []
        for i, d in zip(muon, polar, strict=True):
            new_p[i] = params[i] - lr * d
        for i in other:
            new_p[i] = params[i] - (self.lr_ratio * lr) * torch.sign(ms[i])
        return new_p, {
            "step": state["step"] + 1,
            "momentum_buffer": ms,
            "grad_dual": self.predicted_norm.dual(grads),
        }


class MuonAdamRule(_HybridBase):
    """Muon on the hidden matrices (lr η_M = η), Adam on the rest (lr η_A = a·η) (docs/theory.md A.3, §4.4).

    W: m ← β m + (1 − β) g, W ← W − η polar(m) (β = ``momentum``). u: Adam with ``betas``,
    ``eps``, ``bias_correction`` exactly as :class:`AdamRule`, with lr a·η. Predicted norm:
    N = max{a‖W‖_msp, ‖u‖_∞} with a = ``lr_ratio`` = η_A/η_M (Gronich & Vardi's Muon–Adam
    theorem). Exact correspondence: with momentum = 0, betas = (0, 0), ε = 0 and an SVD polar
    factor, Adam's step is sign(g) (0 where g = 0) and Δθ = −(a·η)·U_N(g) =
    −(a·η/‖g‖_{N,*})·J_N(g), normalized steepest descent w.r.t. N.
    State: ``step``, ``exp_avg`` (Muon's momentum on W, Adam's m on u), ``exp_avg_sq`` (Adam's
    v on u; a 0-dim zero placeholder on W), ``grad_dual`` (‖g‖_{N,*}).
    """

    def __init__(
        self,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        bias_correction: bool = True,
        lr_ratio: float = 1.0,
        muon_params: Sequence[int] | None = None,
        orthogonalize: str = "svd",
        ns_steps: int = 5,
        ns_coefficients: Sequence[float] = NS_COEFFICIENTS,
    ):
        super().__init__(lr_ratio, muon_params, orthogonalize, ns_steps, ns_coefficients)
        self.momentum = _check_unit_interval("momentum", momentum)
        self.betas = _check_betas(betas)
        self.eps = _check_nonneg("eps", eps)
        if not isinstance(bias_correction, bool):
            raise TypeError(f"bias_correction must be a bool; got {bias_correction!r}")
        self.bias_correction = bias_correction
        self.name = "muon-adam"

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {
            "momentum": self.momentum,
            "betas": self.betas,
            "eps": self.eps,
            "bias_correction": self.bias_correction,
            **self._common_hp(),
        }

    def init(self, params: Sequence[Tensor]) -> State:
        zero = _step0(params)
        muon, _ = self.predicted_norm.groups(params)
        mset = set(muon)
        v = [
            torch.zeros((), dtype=p.dtype, device=p.device) if i in mset else torch.zeros_like(p)
            for i, p in enumerate(params)
        ]
        return {
            "step": zero,
            "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": v,
            "grad_dual": zero,
            "log_grad_scale": torch.zeros((), dtype=torch.float64, device=zero.device),
        }

    def rescale_state(self, state: State, log_factor: Tensor) -> State:
        """Momentum and m scale with the gradients, v with their square; ε in log space."""
        return _rescale_moments(state, log_factor)

    def update(self, params, grads, state, lr):
        muon, other = self.predicted_norm.groups(params)
        b1, b2 = self.betas
        t = state["step"] + 1
        eps = _eps_now(self.eps, state, dtype=params[0].dtype)
        new_p, new_m, new_v = list(params), list(state["exp_avg"]), list(state["exp_avg_sq"])
        for i in muon:
            new_m[i] = _ema(state["exp_avg"][i], grads[i], self.momentum)
        polar = self._polar([new_m[i] for i in muon]) if muon else []
        for i, d in zip(muon, polar, strict=True):
            new_p[i] = params[i] - lr * d
        for i in other:
            m, v = _adam_moments(state["exp_avg"][i], state["exp_avg_sq"][i], grads[i], b1, b2)
            ratio, inv_bc1 = _adam_ratio(m, v, t, b1, b2, eps, self.bias_correction)
            new_p[i] = params[i] - (self.lr_ratio * lr * inv_bc1) * ratio
            new_m[i], new_v[i] = m, v
        return new_p, {
            "step": t,
            "exp_avg": new_m,
            "exp_avg_sq": new_v,
            "grad_dual": self.predicted_norm.dual(grads),
            "log_grad_scale": state["log_grad_scale"],
        }


# ----------------------------------------------------------------------------- factories


def _adam(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, bias_correction: bool = True
) -> Algorithm:
    return AdamRule(betas, eps, bias_correction)


def _momentum(momentum: float = 0.9) -> Algorithm:
    return MomentumSteepestRule(LpNorm(2), momentum, name="momentum")


def _signum(momentum: float = 0.9) -> Algorithm:
    return MomentumSteepestRule(LpNorm(math.inf), momentum, name="signum")


def _muon(
    momentum: float = 0.9,
    orthogonalize: str = "svd",
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
) -> Algorithm:
    return MuonRule(momentum, orthogonalize, ns_steps, ns_coefficients)


def _shampoo(accumulation: float = 0.0, eps: float = 1e-20, root: float = 4.0) -> Algorithm:
    return ShampooRule(accumulation, eps, root)


def _muon_signum(
    momentum: float = 0.9,
    lr_ratio: float = 1.0,
    muon_params: tuple[int, ...] | None = None,
    orthogonalize: str = "svd",
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
) -> Algorithm:
    return MuonSignumRule(momentum, lr_ratio, muon_params, orthogonalize, ns_steps, ns_coefficients)


def _muon_adam(
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    bias_correction: bool = True,
    lr_ratio: float = 1.0,
    muon_params: tuple[int, ...] | None = None,
    orthogonalize: str = "svd",
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
) -> Algorithm:
    return MuonAdamRule(
        momentum,
        betas,
        eps,
        bias_correction,
        lr_ratio,
        muon_params,
        orthogonalize,
        ns_steps,
        ns_coefficients,
    )


register_algorithm(
    "adam",
    _adam,
    "Adam (betas, eps ≥ 0, bias_correction); predicted norm ℓ∞ (ε > 0: late drift to ℓ2)",
)
register_algorithm(
    "momentum", _momentum, "normalized momentum GD, m/‖m‖₂ (momentum); predicted norm ℓ2"
)
register_algorithm("signum", _signum, "Signum, sign of the momentum (momentum); predicted norm ℓ∞")
register_algorithm(
    "muon",
    _muon,
    "Muon, polar factor of each layer's momentum (momentum, orthogonalize); predicted max-spectral",
)
register_algorithm(
    "shampoo",
    _shampoo,
    "Shampoo (accumulation, eps, root); without accumulation = spectral descent; max-spectral",
)
register_algorithm(
    "muon-signum",
    _muon_signum,
    "Muon on hidden matrices + Signum (lr_ratio a); predicted max{a‖W‖_msp, ‖u‖_∞}",
)
register_algorithm(
    "muon-adam",
    _muon_adam,
    "Muon on hidden matrices + Adam (lr_ratio a); predicted max{a‖W‖_msp, ‖u‖_∞}",
)


# ----------------------------------------------------------------------------- torch.optim wrappers


# One class per rule, its options and defaults read from the rule's factory above.
Adam = optimizer_class(
    "adam",
    "``torch.optim``-style :class:`AdamRule` (ε may be 0; see the rule for the 0/0 convention).",
    module=__name__,
)
MomentumGD = optimizer_class(
    "momentum",
    "Normalized momentum gradient descent: θ ← θ − lr·m/‖m‖₂ (:class:`MomentumSteepestRule`).",
    class_name="MomentumGD",
    module=__name__,
)
Signum = optimizer_class(
    "signum",
    "Signum: θ ← θ − lr·sign(m) (:class:`MomentumSteepestRule` with ℓ∞).",
    module=__name__,
)
Muon = optimizer_class(
    "muon", "Muon: θ ← θ − lr·polar(m) per tensor (:class:`MuonRule`).", module=__name__
)
Shampoo = optimizer_class(
    "shampoo",
    "Shampoo: θ ← θ − lr·(L+εI)^{−1/r} G (R+εI)^{−1/r} (:class:`ShampooRule`).",
    module=__name__,
)
MuonSignum = optimizer_class(
    "muon-signum",
    "Muon on hidden matrices (lr), Signum on the rest (lr_ratio·lr) (:class:`MuonSignumRule`).",
    module=__name__,
)
MuonAdam = optimizer_class(
    "muon-adam",
    "Muon on hidden matrices (lr), Adam on the rest (lr_ratio·lr) (:class:`MuonAdamRule`).",
    module=__name__,
)
