"""The Muon–Signum and Muon–Adam hybrids: Muon on hidden matrices, Signum or Adam on the rest,
steepest for the hybrid norm :class:`steepest.norms.HybridNorm` (docs/theory.md §2.3, A.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..algorithms import Algorithm, register_algorithm
from ..norms import (
    HybridNorm,
    Norm,
    check_nonneg,
)
from ..optim import optimizer_class
from .common import (
    NS_COEFFICIENTS,
    State,
    adam_moments,
    adam_ratio,
    check_betas,
    check_ns,
    check_orthogonalize,
    check_unit_interval,
    ema,
    eps_now,
    orthogonalize,
    rescale_moments,
    rescaled,
    step_counter,
)


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
        self.orthogonalize = check_orthogonalize(orthogonalize)
        self.ns_steps, self.ns_coefficients = check_ns(ns_steps, ns_coefficients)

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
        self.momentum = check_unit_interval("momentum", momentum)
        self.name = "muon-signum"

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {"momentum": self.momentum, **self._common_hp()}

    def init(self, params: Sequence[Tensor]) -> State:
        zero = step_counter(params)
        self.predicted_norm.groups(params)  # validate muon_params against the list now
        return {
            "step": zero,
            "momentum_buffer": [torch.zeros_like(p) for p in params],
            "grad_dual": zero,
        }

    def rescale_state(self, state: State, log_factor: Tensor) -> State:
        """The buffer is linear in the gradients; the directions are scale-free."""
        return {**state, "momentum_buffer": rescaled(state["momentum_buffer"], log_factor, 1.0)}

    def update(self, params, grads, state, lr):
        muon, other = self.predicted_norm.groups(params)
        ms = [
            ema(m, g, self.momentum) for m, g in zip(state["momentum_buffer"], grads, strict=True)
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
        self.momentum = check_unit_interval("momentum", momentum)
        self.betas = check_betas(betas)
        self.eps = check_nonneg("eps", eps)
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
        zero = step_counter(params)
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
        return rescale_moments(state, log_factor)

    def update(self, params, grads, state, lr):
        muon, other = self.predicted_norm.groups(params)
        b1, b2 = self.betas
        t = state["step"] + 1
        eps = eps_now(self.eps, state, dtype=params[0].dtype)
        new_p, new_m, new_v = list(params), list(state["exp_avg"]), list(state["exp_avg_sq"])
        for i in muon:
            new_m[i] = ema(state["exp_avg"][i], grads[i], self.momentum)
        polar = self._polar([new_m[i] for i in muon]) if muon else []
        for i, d in zip(muon, polar, strict=True):
            new_p[i] = params[i] - lr * d
        for i in other:
            m, v = adam_moments(state["exp_avg"][i], state["exp_avg_sq"][i], grads[i], b1, b2)
            ratio, inv_bc1 = adam_ratio(m, v, t, b1, b2, eps, self.bias_correction)
            new_p[i] = params[i] - (self.lr_ratio * lr * inv_bc1) * ratio
            new_m[i], new_v[i] = m, v
        return new_p, {
            "step": t,
            "exp_avg": new_m,
            "exp_avg_sq": new_v,
            "grad_dual": self.predicted_norm.dual(grads),
            "log_grad_scale": state["log_grad_scale"],
        }


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
    "muon-signum",
    _muon_signum,
    "Muon on hidden matrices + Signum (lr_ratio a); predicted max{a‖W‖_msp, ‖u‖_∞}",
)

register_algorithm(
    "muon-adam",
    _muon_adam,
    "Muon on hidden matrices + Adam (lr_ratio a); predicted max{a‖W‖_msp, ‖u‖_∞}",
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
