"""Theorem checks on a user's own training loop: metric rows from their checkpoints, then the
same checks as on stored runs (``verify_model_trajectory``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..kkt import kkt_residual
from ..losses import log_loss as _log_loss
from ..losses import margins as _margins
from ..metrics import alignment_gradient, dual_alignment_from
from ..models import NotHomogeneousError, homogeneity_degree
from ..norms import Norm, get_norm
from .checks import CROSS_NORMS, RunVerdict, Tolerances, check_trajectory, not_applicable
from .report import VerifyReport

# --------------------------------------------------------------------------------------------
# user models


def _load_state(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    m = copy.deepcopy(model)
    m.load_state_dict(dict(state))
    return m.to(torch.float64)


@torch.no_grad()
def _row(model: nn.Module, X: Tensor, y: Tensor, N: Norm, L: float, loss: str) -> dict[str, float]:
    params = [p.detach() for p in model.parameters()]
    out = model(X)
    q = _margins(out, y)
    ll = float(_log_loss(out, y, loss))
    with torch.enable_grad():
        v = [g.detach() for g in alignment_gradient(model, X, y, loss)]
    from ..losses import smoothed_margin_numerator

    numer = float(smoothed_margin_numerator(ll, loss))
    row = {
        "log_loss": ll,
        "q_min": float(q.min()),
        "q_max": float(q.max()),
        "train_acc": float((q > 0).double().mean()),
    }
    for suffix, nm in {**CROSS_NORMS, "own": N}.items():
        Nn = get_norm(nm)
        rho = float(Nn(params))
        row[f"norm_{suffix}"] = rho
        row[f"margin_{suffix}"] = row["q_min"] / rho**L
        row[f"smoothed_{suffix}"] = numer / rho**L
        row[f"beta_{suffix}"] = float(dual_alignment_from(params, v, Nn))
    return row


def _user_inputs(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: Sequence[tuple[int, Mapping[str, Tensor]]],
    X: Tensor,
    y: Tensor,
) -> tuple[nn.Module, list[tuple[int, Mapping[str, Tensor]]], Tensor, Tensor]:
    """Checked user inputs: the module (built if ``model`` is a factory), the checkpoints in step
    order, and X, y in float64 (class-id labels stay integers)."""
    base = model() if callable(model) and not isinstance(model, nn.Module) else model
    if not isinstance(base, nn.Module):
        raise TypeError(
            f"model must be an nn.Module or a factory returning one, got {type(base).__name__}"
        )
    if not checkpoints:
        raise ValueError("checkpoints must be a non-empty list of (step, state_dict)")
    y64 = y.to(torch.float64) if y.is_floating_point() else y
    return base, sorted(checkpoints, key=lambda c: c[0]), X.to(torch.float64), y64


def trajectory_metrics(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: Sequence[tuple[int, Mapping[str, Tensor]]],
    X: Tensor,
    y: Tensor,
    norm: Norm | str,
    *,
    loss: str = "exponential",
    L: float | None = None,
    lr: float | Sequence[float] | None = None,
) -> dict[str, np.ndarray]:
    """The engine's metric columns, computed from a user's saved (step, state_dict) pairs.

    Columns: step, log_loss, q_min, q_max, train_acc, and norm_/margin_/smoothed_/beta_ for
    l1, l2, linf, spectral and "own" (= ``norm``); ``lr`` when given (a number or one per
    checkpoint). ``model`` is a module or a zero-argument factory; it is never modified.
    """
    base, ordered, X64, y64 = _user_inputs(model, checkpoints, X, y)
    N = get_norm(norm)
    if L is None:
        L = float(homogeneity_degree(_load_state(base, ordered[-1][1]), X64[:64]))
    rows = []
    for step, state in ordered:
        r = _row(_load_state(base, state), X64, y64, N, float(L), loss)
        r["step"] = int(step)
        rows.append(r)
    cols: dict[str, np.ndarray] = {"step": np.array([r["step"] for r in rows], dtype=np.int64)}
    for k in rows[0]:
        if k != "step":
            cols[k] = np.array([r[k] for r in rows], dtype=np.float64)
    if lr is not None:
        lrs = np.broadcast_to(np.asarray(lr, dtype=np.float64), (len(rows),))
        cols["lr"] = np.array(lrs)
    return cols


def verify_model_trajectory(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: Sequence[tuple[int, Mapping[str, Tensor]]],
    X: Tensor,
    y: Tensor,
    norm: Norm | str,
    *,
    loss: str = "exponential",
    lr: float | Sequence[float] | None = None,
    normalized: bool | None = None,
    kkt: bool = True,
    name: str = "user model",
    tolerances: Tolerances | None = None,
) -> VerifyReport:
    """The same checks as ``steepest verify``, for a user's own training loop.

    ``checkpoints`` are (step, state_dict) pairs saved along training (e.g. ``model.state_dict()``
    copies). ``norm`` is the algorithm's own norm (e.g. "linf" for sign descent / Adam-like
    updates). ``lr`` (a number or one per checkpoint) and ``normalized`` (whether steps were
    normalized, ‖Δθ‖ = η) set the margin-monotonicity tolerance; without them only the 1e-6
    relative floor applies. The homogeneity degree is measured; a non-homogeneous model makes
    every prediction "not applicable" (preconditions names the reason). ``flavor`` needs several
    algorithms and is "not applicable" here.
    """
    tol = tolerances or Tolerances()
    base, ordered, X64, y64 = _user_inputs(model, checkpoints, X, y)
    N = get_norm(norm)
    try:
        L: float | None = float(homogeneity_degree(_load_state(base, ordered[-1][1]), X64[:64]))
        not_hom = None
    except NotHomogeneousError as exc:
        L, not_hom = None, str(exc)
    if L is None:
        cols = {"step": np.array([int(s) for s, _ in ordered], dtype=np.int64)}
    else:
        cols = trajectory_metrics(base, ordered, X64, y64, N, loss=loss, L=L, lr=lr)

    def points(sep_steps: np.ndarray) -> list[tuple[int, Any]]:
        sep = [(s, st) for s, st in ordered if len(sep_steps) and s >= int(sep_steps[0])]
        if len(sep) < 2:
            return []
        pts = []
        for s, st in (sep[0], sep[-1]):
            pts.append(
                (int(s), kkt_residual(_load_state(base, st), X64, y64, N, L=L, tau=tol.kkt_tau))
            )
        return pts

    checks = check_trajectory(
        cols,
        degree=L,
        loss=loss,
        normalized=normalized,
        n_train=len(X64),
        kkt_points=points if (kkt and L is not None) else None,
        not_homogeneous=not_hom,
        tolerances=tol,
    )
    rv = RunVerdict(None, name, "user", N.name, checks)
    if rv.checked:
        rv.checks.append(
            not_applicable(
                "flavor", "a single trajectory: the flavor comparison needs several algorithms"
            )
        )
    else:
        rv.checks.append(
            not_applicable("flavor", "precondition: " + rv.get("preconditions").reason)
        )
    return VerifyReport([rv])
