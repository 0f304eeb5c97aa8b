"""Shampoo: (L+εI)^{−1/r} G (R+εI)^{−1/r}, spectral descent without accumulation
(docs/theory.md A.6), with its ``torch.optim`` class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..algorithms import Algorithm, register_algorithm
from ..norms import (
    Spectral,
    check_nonneg,
)
from ..optim import optimizer_class
from .common import (
    State,
    as_matrix,
    check_unit_interval,
    eps_now,
    rescaled,
    step_counter,
)


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
        self.accumulation = check_unit_interval("accumulation", accumulation, allow_one=True)
        self.eps = check_nonneg("eps", eps, positive=True)
        self.root = check_nonneg("root", root, positive=True)
        self.predicted_norm = Spectral()
        self.name = "shampoo"

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {"accumulation": self.accumulation, "eps": self.eps, "root": self.root}

    def init(self, params: Sequence[Tensor]) -> State:
        zero = step_counter(params)
        left, right = [], []
        for p in params:
            m, n = as_matrix(p).shape
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
            "left": rescaled(state["left"], log_factor, 2.0),
            "right": rescaled(state["right"], log_factor, 2.0),
            "log_grad_scale": state["log_grad_scale"] + log_factor,
        }

    def update(self, params, grads, state, lr):
        beta = self.accumulation
        eps = eps_now(self.eps, state, power=2.0)
        new_p, new_L, new_R = [], [], []
        for p, g, L, R in zip(params, grads, state["left"], state["right"], strict=True):
            G = as_matrix(g).to(torch.float64)
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


def _shampoo(accumulation: float = 0.0, eps: float = 1e-20, root: float = 4.0) -> Algorithm:
    return ShampooRule(accumulation, eps, root)


register_algorithm(
    "shampoo",
    _shampoo,
    "Shampoo (accumulation, eps, root); without accumulation = spectral descent; max-spectral",
)

Shampoo = optimizer_class(
    "shampoo",
    "Shampoo: θ ← θ − lr·(L+εI)^{−1/r} G (R+εI)^{−1/r} (:class:`ShampooRule`).",
    module=__name__,
)
