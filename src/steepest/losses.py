"""Margins and log-space losses: log 𝓛 = log Σ_i ℓ(q_i), never 𝓛 itself.

Margins (docs/theory.md §1.3, §A.1):

* binary, y_i ∈ {−1, +1}: q_i = y_i f(x_i);
* multiclass, y_i a class id: q_i = f_{y_i}(x_i) − max_{j≠y_i} f_j(x_i) (Lyu & Li).

Losses, summed over samples (docs/theory.md §1.3; sum, not mean, so that 𝓛 < ℓ(0) ⇔ separation):

* exponential: ℓ(q) = e^{−q}, log 𝓛 = logsumexp_i(−q_i);
* logistic: ℓ(q) = log(1 + e^{−q}) = softplus(−q), log 𝓛 = logsumexp_i(log softplus(−q_i));
* cross-entropy: ℓ_i = log Σ_j e^{f_j − f_{y_i}} = softplus(z_i) with
  z_i = logsumexp_{j≠y_i}(f_j − f_{y_i}), log 𝓛 = logsumexp_i(log softplus(z_i)).

Raw losses underflow near e^{−745} in float64 (docs/theory.md §4.2, ECOSYSTEM notes), while margins grow
without bound during training; the log-space forms stay exact for margins of 1e6 and beyond,
and their autograd gradients (∇𝓛/𝓛, which is O(1)) stay finite.

Validation of label values branches on tensor data; pass ``validate=False`` inside
``torch.func.vmap``/compiled code once the labels are known to be valid.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "LOSSES",
    "BINARY_LOSSES",
    "MULTICLASS_LOSSES",
    "margins",
    "log_softplus",
    "per_sample_log_losses",
    "log_loss",
    "smoothed_margin_numerator",
]

BINARY_LOSSES: tuple[str, ...] = ("exponential", "logistic")
MULTICLASS_LOSSES: tuple[str, ...] = ("cross_entropy",)
LOSSES: tuple[str, ...] = BINARY_LOSSES + MULTICLASS_LOSSES

# Below this argument the series forms are used. At z = −20, e^z ≈ 2e−9, so the dropped
# terms (O(e^{3z})) are ~1e−26 relative: far below float64 rounding.
_SERIES_BELOW = -20.0


def _is_binary(outputs: Tensor) -> bool:
    return outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)


def _check_outputs(outputs: Tensor) -> None:
    if not isinstance(outputs, Tensor):
        raise TypeError(f"outputs must be a torch.Tensor, got {type(outputs).__name__}")
    if not outputs.is_floating_point():
        raise TypeError(f"outputs must be a floating tensor, got dtype {outputs.dtype}")
    if outputs.ndim not in (1, 2):
        raise ValueError(
            f"outputs must have shape (n,), (n, 1) or (n, k), got {tuple(outputs.shape)}"
        )
    if outputs.shape[0] == 0:
        raise ValueError("outputs is empty (n = 0); the loss of no samples is undefined")


def _check_labels(y: Tensor, n: int) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) to match outputs, got {tuple(y.shape)}")


def margins(outputs: Tensor, y: Tensor, *, validate: bool = True) -> Tensor:
    """Per-sample margins q_i, shape (n,) (docs/theory.md §1.3; multiclass as Lyu & Li, §A.1).

    Binary (``outputs`` of shape (n,) or (n, 1), ``y`` in {−1, +1}): q_i = y_i f(x_i).
    Multiclass (``outputs`` (n, k), k ≥ 2, ``y`` integer class ids in [0, k)):
    q_i = f_{y_i} − max_{j≠y_i} f_j.
    """
    _check_outputs(outputs)
    n = outputs.shape[0]
    _check_labels(y, n)
    if _is_binary(outputs):
        if validate and not bool(((y == 1) | (y == -1)).all()):
            raise ValueError(
                "binary labels y must be -1 or +1 (for 0/1 labels pass 2*y - 1); "
                f"got values {torch.unique(y).tolist()[:10]}"
            )
        return outputs.reshape(n) * y.to(outputs.dtype)
    k = outputs.shape[1]
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(
            f"multiclass labels y must be integer class ids in [0, {k}), got dtype {y.dtype}"
        )
    if validate and not bool(((y >= 0) & (y < k)).all()):
        raise ValueError(
            f"multiclass labels y must lie in [0, {k}) for outputs with {k} columns; "
            f"got min {int(y.min())}, max {int(y.max())}"
        )
    idx = y.to(torch.long).unsqueeze(1)
    correct = outputs.gather(1, idx).squeeze(1)
    is_correct = torch.zeros_like(outputs, dtype=torch.bool).scatter(1, idx, True)
    wrong_max = outputs.masked_fill(is_correct, -math.inf).amax(dim=1)
    return correct - wrong_max


def _softplus(z: Tensor) -> Tensor:
    """softplus(z) = log(1 + e^z) to full relative precision, smooth gradient everywhere.

    z + log1p(e^{−z}) for z > 0, log1p(e^z) otherwise (double where). torch's F.softplus is
    replaced because it returns z itself above z = 20, a relative error e^{−z}/z that a
    following log passes on; a max(z, 0) + log1p(e^{−|z|}) form would get the gradient at
    z = 0 wrong (subgradients of max and abs at 0).
    """
    pos = z > 0
    z_pos = torch.where(pos, z, torch.zeros_like(z))
    z_neg = torch.where(pos, torch.zeros_like(z), z)
    return torch.where(pos, z_pos + torch.log1p(torch.exp(-z_pos)), torch.log1p(torch.exp(z_neg)))


def log_softplus(z: Tensor) -> Tensor:
    """log(softplus(z)) = log log(1 + e^z), exact for every finite z, finite gradient.

    For z < −20: with u = e^z, log log(1+u) = z + log(1 − u/2 + u²/3 − …) = z − u/2 + 5u²/24
    + O(u³). Elsewhere the direct form (torch's softplus is linear above z = 20, so log is
    safe). Each branch gets a clamped argument ("double where") so that autograd never sees
    inf/NaN from the branch that is not selected.
    """
    small = z < _SERIES_BELOW
    z_small = torch.where(small, z, torch.full_like(z, _SERIES_BELOW))
    z_large = torch.where(small, torch.full_like(z, _SERIES_BELOW), z)
    u = torch.exp(z_small)
    series = z_small - 0.5 * u + (5.0 / 24.0) * u * u
    direct = torch.log(_softplus(z_large))
    return torch.where(small, series, direct)


def _check_loss(loss: str, outputs: Tensor) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if _is_binary(outputs) and loss not in BINARY_LOSSES:
        raise ValueError(
            f"loss {loss!r} needs multiclass outputs of shape (n, k), k >= 2, but outputs have "
            f"shape {tuple(outputs.shape)}; for binary outputs use one of {BINARY_LOSSES}"
        )
    if not _is_binary(outputs) and loss not in MULTICLASS_LOSSES:
        raise ValueError(
            f"loss {loss!r} needs binary outputs of shape (n,) or (n, 1), but outputs have "
            f"shape {tuple(outputs.shape)}; for multiclass outputs use one of {MULTICLASS_LOSSES}"
        )


def per_sample_log_losses(
    outputs: Tensor, y: Tensor, loss: str = "exponential", *, validate: bool = True
) -> Tensor:
    """log ℓ_i for each sample, shape (n,) (docs/theory.md §1.3, §A.1 for cross-entropy).

    exponential: −q_i; logistic: log softplus(−q_i);
    cross_entropy: log softplus(logsumexp_{j≠y_i}(f_j − f_{y_i})).
    """
    _check_outputs(outputs)
    _check_loss(loss, outputs)
    if loss == "exponential":
        return -margins(outputs, y, validate=validate)
    if loss == "logistic":
        return log_softplus(-margins(outputs, y, validate=validate))
    # cross-entropy: validate labels via margins' checks, then the log-sum over wrong classes
    margins(outputs, y, validate=validate)
    idx = y.to(torch.long).unsqueeze(1)
    diff = outputs - outputs.gather(1, idx)
    is_correct = torch.zeros_like(outputs, dtype=torch.bool).scatter(1, idx, True)
    z = torch.logsumexp(diff.masked_fill(is_correct, -math.inf), dim=1)
    return log_softplus(z)


def log_loss(
    outputs: Tensor, y: Tensor, loss: str = "exponential", *, validate: bool = True
) -> Tensor:
    """log 𝓛 = log Σ_i ℓ_i = logsumexp_i(log ℓ_i), a 0-dim tensor (docs/theory.md §1.3, §3.8).

    ``loss`` is one of :data:`LOSSES`: "exponential" and "logistic" take binary outputs
    ((n,) or (n, 1), y ∈ {±1}); "cross_entropy" takes (n, k) logits and integer class ids.
    """
    return torch.logsumexp(per_sample_log_losses(outputs, y, loss, validate=validate), dim=0)


def smoothed_margin_numerator(log_loss_value: Tensor | float, loss: str = "exponential") -> Tensor:
    """φ^{−1}(log 1/𝓛), the numerator of the smoothed margin γ̃ = φ^{−1}(log 1/𝓛)/‖θ‖^L (docs/theory.md §3.2).

    exponential: −log 𝓛.
    logistic and cross_entropy: −log(e^𝓛 − 1), computed from ℓ = log 𝓛:
    for ℓ < −20 (𝓛 = u = e^ℓ < 2e−9), log(e^u − 1) = ℓ + log(1 + u/2 + u²/6 + …)
    = ℓ + u/2 + u²/24 + O(u³); otherwise log(e^u − 1) = u + log(−expm1(−u)), which neither
    overflows in e^u nor loses digits for small u. Double-where keeps gradients finite. For
    ℓ > log(float max) ≈ 709.78 the true value −e^ℓ is not representable and −inf is returned.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    ell = log_loss_value
    if not isinstance(ell, Tensor):
        ell = torch.as_tensor(float(ell), dtype=torch.float64)
    elif not ell.is_floating_point():
        ell = ell.to(torch.float64)
    if loss == "exponential":
        return -ell
    small = ell < _SERIES_BELOW
    ell_small = torch.where(small, ell, torch.full_like(ell, _SERIES_BELOW))
    ell_large = torch.where(small, torch.full_like(ell, _SERIES_BELOW), ell)
    u_small = torch.exp(ell_small)
    series = ell_small + 0.5 * u_small + u_small * u_small / 24.0
    u = torch.exp(ell_large)
    direct = u + torch.log(-torch.expm1(-u))
    return -torch.where(small, series, direct)
