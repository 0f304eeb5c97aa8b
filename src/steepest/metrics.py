"""Margins in any norm, smoothed margins, dual alignment, support counts, directional cosine.

One name, one meaning: the normalized margin in norm N is γ_N(θ) = q_min / ‖θ‖_N^L
(docs/theory.md §3.1); ``margin_linf`` is always q_min/‖θ‖_∞^L, the margin sign descent maximizes.

All functions come in two flavours:

* on a model: ``normalized_margin(model, X, y, norm="linf")`` (L measured when not given);
* on raw tensors: ``normalized_margin_from(q, params, norm, L)`` — what the engine uses on
  stacked runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .losses import log_loss, margins, smoothed_margin_numerator
from .models import homogeneity_degree
from .norms import Norm, get_norm, inner

__all__ = [
    "normalized_margin",
    "smoothed_margin",
    "normalized_margin_from",
    "smoothed_margin_from",
    "dual_alignment",
    "dual_alignment_from",
    "alignment_gradient",
    "support_counts",
    "directional_cosine",
    "model_degree",
]


def _params(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters()]


def model_degree(model: nn.Module, X: Tensor, L: float | None = None) -> float:
    """The declared degree if given, else L measured numerically on a few inputs."""
    if L is not None:
        return L
    return homogeneity_degree(model, X[: min(len(X), 32)])


def _pow_norm(params: Sequence[Tensor], norm: Norm, L: float) -> Tensor:
    return norm(params) ** L


def normalized_margin_from(
    q: Tensor, params: Sequence[Tensor], norm: Norm | str, L: float
) -> Tensor:
    """γ_N = min_i q_i / ‖θ‖_N^L (docs/theory.md §3.1)."""
    return q.min() / _pow_norm(params, get_norm(norm), L)


def smoothed_margin_from(
    log_loss_value: Tensor,
    params: Sequence[Tensor],
    norm: Norm | str,
    L: float,
    loss: str = "exponential",
) -> Tensor:
    """γ̃_N = φ^{-1}(log 1/𝓛) / ‖θ‖_N^L, from log 𝓛 so it stays finite at any loss (docs/theory.md §3.2).

    exponential: −log 𝓛 / ‖θ‖^L; logistic and cross-entropy: −log(e^𝓛 − 1) / ‖θ‖^L.
    Sandwich (exponential, n points): γ − log(n)/‖θ‖^L ≤ γ̃ ≤ γ.
    """
    return smoothed_margin_numerator(log_loss_value, loss) / _pow_norm(params, get_norm(norm), L)


@torch.no_grad()
def normalized_margin(
    model: nn.Module, X: Tensor, y: Tensor, norm: Norm | str = "l2", L: float | None = None
) -> Tensor:
    """γ_N(θ) = min_i y_i f(x_i; θ) / ‖θ‖_N^L for a model (multiclass: f_y − max_{j≠y} f_j)."""
    L = model_degree(model, X, L)
    return normalized_margin_from(margins(model(X), y), _params(model), norm, L)


@torch.no_grad()
def smoothed_margin(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    norm: Norm | str = "l2",
    loss: str = "exponential",
    L: float | None = None,
) -> Tensor:
    """γ̃_N(θ) = φ^{-1}(log 1/𝓛(θ)) / ‖θ‖_N^L (docs/theory.md §3.2); finite at any loss."""
    L = model_degree(model, X, L)
    return smoothed_margin_from(log_loss(model(X), y, loss), _params(model), norm, L, loss)


def alignment_gradient(
    model: nn.Module, X: Tensor, y: Tensor, loss: str = "exponential"
) -> list[Tensor]:
    """−∇ log 𝓛 = −∇𝓛/𝓛: the loss-weighted sum Σ_i w_i ∇q_i with w_i ∝ e^{−q_i}, normalized.

    Differentiating log 𝓛 (not 𝓛) is what keeps it from underflowing: the weights are
    softmax(−q), i.e. exp(−(q_i − q_min)) up to normalization (docs/theory.md §3.5 numerics).
    """
    params = _params(model)
    ll = log_loss(model(X), y, loss)
    grads = torch.autograd.grad(ll, params, allow_unused=True)
    return [
        -(g if g is not None else torch.zeros_like(p)) for g, p in zip(grads, params, strict=True)
    ]


def dual_alignment_from(
    params: Sequence[Tensor], neg_grad: Sequence[Tensor], norm: Norm | str
) -> Tensor:
    """β_N = ⟨θ, −∇𝓛⟩ / (‖θ‖_N ‖∇𝓛‖_N,*) ∈ [−1, 1] (docs/theory.md §3.3, §3.5).

    Scale-invariant in the gradient, so −∇log𝓛 gives the same β as −∇𝓛. 1 − β_N is the
    dual-alignment (generalized Bregman) gap; it vanishes at direction-stationary points.
    """
    N = get_norm(norm)
    return inner(params, neg_grad) / (N(params) * N.dual(neg_grad))


def dual_alignment(
    model: nn.Module, X: Tensor, y: Tensor, norm: Norm | str = "l2", loss: str = "exponential"
) -> Tensor:
    """β_N for a model; see :func:`dual_alignment_from`."""
    with torch.enable_grad():
        v = alignment_gradient(model, X, y, loss)
    return dual_alignment_from([p.detach() for p in _params(model)], [g.detach() for g in v], norm)


def support_counts(q: Tensor, ks: Sequence[int] = tuple(range(1, 8))) -> dict[int, int]:
    """#{i : q_i < q_min + log 10^k} for each k (Lyu & Li's ``n_supp_k``, docs/theory.md §3.6)."""
    qmin = q.min()
    ln10 = torch.log(torch.tensor(10.0, dtype=q.dtype))
    return {int(k): int((q < qmin + k * ln10).sum()) for k in ks}


def directional_cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """cos(θ_a, θ_b) = ⟨θ_a, θ_b⟩ / (‖θ_a‖₂ ‖θ_b‖₂) (directional convergence, docs/theory.md §3.8)."""
    na = torch.sqrt(inner(a, a))
    nb = torch.sqrt(inner(b, b))
    return inner(a, b) / (na * nb)
