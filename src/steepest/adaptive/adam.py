"""Adam as a pure update rule (:class:`AdamRule`), its registration and its ``torch.optim``
class :class:`Adam` (docs/theory.md §2.4, A.4)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..algorithms import Algorithm, register_algorithm
from ..norms import (
    LpNorm,
    check_nonneg,
)
from ..optim import optimizer_class
from .common import (
    State,
    adam_moments,
    adam_ratio,
    broadcast_per_run,
    check_betas,
    eps_now,
    one_run,
    rescale_moments,
    step_counter,
)


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
        self.betas = check_betas(betas)
        self.eps = check_nonneg("eps", eps)
        if not isinstance(bias_correction, bool):
            raise TypeError(f"bias_correction must be a bool; got {bias_correction!r}")
        self.bias_correction = bias_correction
        self.predicted_norm = LpNorm(math.inf)
        self.name = "adam"

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {"betas": self.betas, "eps": self.eps, "bias_correction": self.bias_correction}

    def init(self, params: Sequence[Tensor]) -> State:
        zero = step_counter(params)
        return {
            "step": zero,
            "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
            "grad_dual": zero,
            "log_grad_scale": torch.zeros((), dtype=torch.float64, device=zero.device),
        }

    def rescale_state(self, state: State, log_factor: Tensor) -> State:
        """m scales with the gradient, v with its square, and ε is tracked in log space."""
        return rescale_moments(state, log_factor)

    def update(self, params, grads, state, lr):
        return self._apply(params, grads, state, lr, one_run, self.predicted_norm.dual(grads))

    def _apply(self, params, grads, state, lr, per_run, grad_dual):
        """``update``'s arithmetic, in torch.optim.Adam's order; ``per_run(x, p)`` shapes a
        per-run scalar (step, lr, ε) to broadcast over the tensor p (one run: x itself)."""
        b1, b2 = self.betas
        t = state["step"] + 1
        eps = eps_now(self.eps, state, dtype=params[0].dtype)
        new_p, new_m, new_v = [], [], []
        for p, g, m, v in zip(params, grads, state["exp_avg"], state["exp_avg_sq"], strict=True):
            m, v = adam_moments(m, v, g, b1, b2)
            eps_p = per_run(eps, p) if isinstance(eps, Tensor) else eps
            ratio, inv_bc1 = adam_ratio(m, v, per_run(t, p), b1, b2, eps_p, self.bias_correction)
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
        return rescale_moments(state, log_factor, broadcast_per_run)

    def stacked_update(self, params, grads, state, lr):
        p0 = params[0]
        lr = torch.as_tensor(lr, dtype=p0.dtype, device=p0.device).expand(p0.shape[:1])
        dual = self.predicted_norm.stacked_dual(grads)
        return self._apply(params, grads, state, lr, broadcast_per_run, dual)

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


def _adam(
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, bias_correction: bool = True
) -> Algorithm:
    return AdamRule(betas, eps, bias_correction)


register_algorithm(
    "adam",
    _adam,
    "Adam (betas, eps ≥ 0, bias_correction); predicted norm ℓ∞ (ε > 0: late drift to ℓ2)",
)

# One class per rule, its options and defaults read from the rule's factory above.
Adam = optimizer_class(
    "adam",
    "``torch.optim``-style :class:`AdamRule` (ε may be 0; see the rule for the 0/0 convention).",
    module=__name__,
)
