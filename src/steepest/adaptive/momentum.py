"""Normalized momentum steepest descent (Gronich & Vardi; docs/theory.md A.3): ``momentum``
(ℓ2) and ``signum`` (ℓ∞), with their ``torch.optim`` classes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..algorithms import Algorithm, register_algorithm
from ..norms import (
    LpNorm,
    Norm,
)
from ..optim import optimizer_class
from .common import (
    State,
    check_unit_interval,
    ema,
    rescaled,
    step_counter,
)


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
        self.momentum = check_unit_interval("momentum", momentum)
        self.predicted_norm = norm
        self.name = name or f"momentum-steepest[{norm.name}]"

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {"momentum": self.momentum}

    def init(self, params: Sequence[Tensor]) -> State:
        zero = step_counter(params)
        return {
            "step": zero,
            "momentum_buffer": [torch.zeros_like(p) for p in params],
            "grad_dual": zero,
        }

    def rescale_state(self, state: State, log_factor: Tensor) -> State:
        """The buffer is linear in the gradients; U(m) is scale-free, so this is exact."""
        return {**state, "momentum_buffer": rescaled(state["momentum_buffer"], log_factor, 1.0)}

    def _direction(self, ms: list[Tensor]) -> list[Tensor]:
        return self.norm.direction(ms)

    def update(self, params, grads, state, lr):
        ms = [
            ema(m, g, self.momentum) for m, g in zip(state["momentum_buffer"], grads, strict=True)
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


def _momentum(momentum: float = 0.9) -> Algorithm:
    return MomentumSteepestRule(LpNorm(2), momentum, name="momentum")


def _signum(momentum: float = 0.9) -> Algorithm:
    return MomentumSteepestRule(LpNorm(math.inf), momentum, name="signum")


register_algorithm(
    "momentum", _momentum, "normalized momentum GD, m/‖m‖₂ (momentum); predicted norm ℓ2"
)

register_algorithm("signum", _signum, "Signum, sign of the momentum (momentum); predicted norm ℓ∞")

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
