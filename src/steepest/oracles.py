"""Exact max-margin oracles for linear models and diagonal linear networks (docs/theory.md §3.7, §4.5, A.2).

For a linear predictor f(w; x) = ⟨w, x⟩ (no bias, 1-homogeneous) the max-‖·‖ margin is a convex
program (Gunasekar et al. 2018, docs/theory.md §3.7):

    γ* = max_{‖w‖ ≤ 1} min_i q_i(w)   ⇔   min ‖w‖  s.t.  q_i(w) ≥ 1,   γ* = 1/‖w_min‖,

with q_i(w) = y_i ⟨w, x_i⟩ for binary labels y_i ∈ {−1, +1} and, for a multiclass linear
model W ∈ R^{k×d}, q_i(W) = (W x_i)_{y_i} − max_{j ≠ y_i} (W x_i)_j (Lyu & Li's multiclass
margin, docs/theory.md A.1).
Steepest descent w.r.t. ‖·‖ on separable data drives the normalized margin to this γ*
(docs/theory.md A.2), so these numbers are the ground truth of the linear sanity experiments (docs/theory.md §4.5).

Formulations (all solved in float64; X is first divided by s = max|X_ij|, which leaves the
direction unchanged and multiplies γ* by 1/s, to keep the solvers well scaled):

* ℓ∞: LP  min t  s.t. −t ≤ w_j ≤ t, q_i(w) ≥ 1  (scipy ``linprog``, HiGHS);
* ℓ1: LP  min Σ(w⁺ + w⁻)  s.t. q_i(w⁺ − w⁻) ≥ 1, w± ≥ 0  (HiGHS);
* ℓ2: QP  min ‖w‖₂²  (cvxpy + Clarabel), or the SOCP  min ‖w‖₂;
* ℓp, 1 < p < ∞: cvxpy ``pnorm(w, p)`` with Clarabel (cvxpy represents p by a rational number,
  exactly for p = 3, 1.5, 4/3, …; other p by a close fraction. γ is still evaluated with the exact
  p, and the self-consistency check below warns if the two disagree; p = π passed silently);
* multiclass W: vector norms act on vec(W) ("l2" = Frobenius, "linf" = entrywise max, "l1" =
  entrywise sum); matrix norms through cvxpy with Clarabel: spectral ``sigma_max`` and nuclear
  ``normNuc`` (SDPs), Frobenius, entrywise max.

HiGHS is never used for a QP (one hung for 300 s) and SCS never gives the answer (≈1e-6 accurate);
see shared/ECOSYSTEM.md.

Polish: the returned w is scaled to ‖w‖ = 1 and γ is recomputed from it as min_i q_i(w)/‖w‖ on the
original data, so the number is exactly the margin of the returned direction (a feasible point,
hence a certified lower bound on the true γ*). It is compared with 1/(optimal value); a relative
difference above 1e-6 raises :class:`OracleAccuracyWarning`.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MaxMarginResult",
    "NotSeparableError",
    "OracleAccuracyWarning",
    "canonical_norm_name",
    "diagonal_margins",
    "diagonal_max_margin",
    "margins_linear",
    "max_margin",
    "norm_value",
    "resolve_norm",
    "cvxpy_norm",
]

# Relative tolerance of the self-consistency check γ(w) vs 1/optimal value.
_CONSISTENCY_RTOL = 1e-6
# Clarabel settings, tried in turn until one ends "optimal" (each on a fresh problem: cvxpy may
# cache the solver and its settings). Clarabel's default gap tolerances are 1e-8 (ℓ1 cross-checks
# then agree only to ~1e-8); 1e-10 gaps give ~1e-10 agreement. A tighter tol_feas made SOCPs end
# "almost solved", so it stays at its default. Some nuclear/spectral SDPs stall "almost solved" at
# a 4e-8 gap with the defaults and finish with equilibration off or a smaller static
# regularization; the values differ by ~1e-9 relative between these settings.
_CLARABEL_ATTEMPTS: tuple[dict[str, Any], ...] = (
    {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10},
    {},
    {"equilibrate_enable": False},
    {"static_regularization_constant": 1e-10},
)
# HiGHS defaults are 1e-7 feasibility tolerances; a simplex vertex is usually exact anyway.
_HIGHS_OPTS: dict[str, Any] = {
    "primal_feasibility_tolerance": 1e-10,
    "dual_feasibility_tolerance": 1e-10,
}

MATRIX_NORMS = ("spectral", "nuclear", "frobenius", "max")
_ALIASES = {
    "linf": "linf",
    "l_inf": "linf",
    "inf": "linf",
    "l∞": "linf",
    "sign": "linf",
    "euclidean": "l2",
    "spectral": "spectral",
    "max-spectral": "spectral",  # steepest.norms.Spectral: max over layers = σ_max for one W
    "sp": "spectral",
    "operator": "spectral",
    "nuclear": "nuclear",
    "nuc": "nuclear",
    "trace": "nuclear",
    "frobenius": "frobenius",
    "fro": "frobenius",
    "max": "max",
    "entrywise-max": "max",
}
_LP_RE = re.compile(r"^l_?(\d+(?:\.\d*)?(?:e[+-]?\d+)?)$")
_VALID_NAMES = (
    "l1, l2, linf (aliases l_inf, inf), l<p> for any p >= 1 (e.g. l3, l1.5), "
    "spectral, nuclear, frobenius, max"
)


class NotSeparableError(ValueError):
    """The data are not linearly separable through the origin (no bias): infeasible program."""


class OracleAccuracyWarning(RuntimeWarning):
    """The recomputed margin of the returned direction disagrees with 1/optimal value by > 1e-6."""


@dataclass(frozen=True)
class MaxMarginResult:
    """Solution of a max-margin problem.

    w: optimal direction with ‖w‖ = 1 in ``norm`` (multiclass: W of shape (k, d); diagonal
       networks: θ = [u; v] of length 2d).
    gamma: γ* = max_{‖w‖≤1} min_i q_i(w), recomputed as min_i q_i(w) at the returned unit w.
    norm: canonical norm name ("l1", "l2", "linf", "l3", "l1.5", "spectral", "nuclear",
       "frobenius", "max").
    status: solver status ("optimal", or "optimal_inaccurate" with a warning).
    solver: "highs" or "clarabel".
    formulation: "lp", "qp", "socp", "pnorm", "cvxpy", "sdp" (diagonal networks: a description
       of the reduction).
    """

    w: np.ndarray
    gamma: float
    norm: str
    status: str
    solver: str
    formulation: str


# ----------------------------------------------------------------------------------------------
# input handling


def _to_numpy(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor; no torch import needed
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(
            f"{name} must be array-like (numpy or torch), got {type(a).__name__}"
        ) from exc
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got dtype object")
    return arr


def _check_X(X: Any) -> np.ndarray:
    Xn = _to_numpy(X, "X").astype(np.float64, copy=True)
    if Xn.ndim != 2:
        raise ValueError(f"X must have shape (n, d), got shape {Xn.shape}")
    if Xn.shape[0] == 0 or Xn.shape[1] == 0:
        raise ValueError(f"X must be non-empty, got shape {Xn.shape}")
    if not np.all(np.isfinite(Xn)):
        raise ValueError("X contains NaN or inf")
    return Xn


def _check_y(y: Any, n: int) -> np.ndarray:
    yn = _to_numpy(y, "y")
    if yn.ndim != 1 or yn.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) to match X, got shape {yn.shape}")
    yf = yn.astype(np.float64)
    if not np.all(np.isfinite(yf)) or not np.all(yf == np.round(yf)):
        raise ValueError(
            "y must hold integer labels: ±1 for binary, class ids 0..k-1 for multiclass"
        )
    return np.round(yf).astype(np.int64)


def _is_pm1(y: np.ndarray) -> bool:
    return bool(np.all((y == 1) | (y == -1)))


def _class_index(y: np.ndarray, k: int | None = None) -> tuple[np.ndarray, int]:
    """Rows of W for each label: class ids 0..k-1 are used as is; ±1 labels map to rows (0, 1)."""
    if _is_pm1(y) and np.any(y == -1) and (k is None or k == 2):
        return ((y + 1) // 2).astype(np.int64), 2
    if np.any(y < 0):
        raise ValueError(
            "multiclass labels must be class ids 0..k-1 (or ±1 with k = 2); got negative ids"
        )
    kk = int(y.max()) + 1
    if k is not None:
        if kk > k:
            raise ValueError(f"label {kk - 1} is out of range for W with k = {k} rows")
        kk = k
    return y, kk


# ----------------------------------------------------------------------------------------------
# norms


def _parse_p(p: float) -> tuple[str, float]:
    if math.isnan(p) or p < 1:
        raise ValueError(f"norm: p must satisfy p >= 1, got p={p}; valid norms: {_VALID_NAMES}")
    if math.isinf(p):
        return "linf", math.inf
    return f"l{p:g}", float(p)


def resolve_norm(norm: Any) -> tuple[str, float | None]:
    """(canonical name, exact p) of ``norm``; p is None for the matrix norms.

    ``norm`` is a name, a number p, or a :class:`steepest.norms.Norm`, which names its oracle
    norm itself (``Norm.oracle_norm``; a user's norm without one gets a clear error). p is kept
    separately because the name prints it with ``%g`` ("l1.33333" for p = 4/3).
    """
    if hasattr(norm, "oracle_norm") and not isinstance(norm, str):
        # a steepest.norms.Norm says which oracle norm it is; its name is not parsed
        key = norm.oracle_norm
        if key is None:
            raise ValueError(
                f"norm {getattr(norm, 'name', norm)!r} has no exact max-margin oracle (its "
                "oracle_norm is None); valid norms: " + _VALID_NAMES
            )
        return resolve_norm(key)
    if hasattr(norm, "name") and not isinstance(norm, str):
        p_attr = getattr(norm, "p", None)
        name, p = resolve_norm(norm.name)
        if (
            p is not None
            and isinstance(p_attr, (int, float))
            and _parse_p(float(p_attr))[0] == name
        ):
            p = float(p_attr)  # an ℓp-like object: its exact p behind the rounded name
        return name, p
    if isinstance(norm, (int, float, np.integer, np.floating)) and not isinstance(norm, bool):
        return _parse_p(float(norm))
    if not isinstance(norm, str):
        raise TypeError(
            f"norm must be a name, a number p or an object with .name; got {type(norm).__name__}"
        )
    key = norm.strip().lower()
    if key in _ALIASES:
        name = _ALIASES[key]
        return (name, math.inf) if name == "linf" else (name, 2.0) if name == "l2" else (name, None)
    m = _LP_RE.match(key)
    if m:
        return _parse_p(float(m.group(1)))
    raise ValueError(f"unknown norm {norm!r}; valid norms: {_VALID_NAMES}")


def canonical_norm_name(norm: Any) -> str:
    """Canonical name of ``norm``: a string, a number p, or an object with a ``.name``.

    "l1", "l2", "linf", "l<p>" (p ≥ 1, printed with ``%g``: "l3", "l1.5"), "spectral",
    "nuclear", "frobenius", "max". Aliases: "l_inf", "inf" → "linf"; "fro" → "frobenius";
    "nuc" → "nuclear"; "max-spectral" (the package's Spectral norm) → "spectral".
    """
    return resolve_norm(norm)[0]


def cvxpy_norm(w: Any, name: str, p: float | None, shape: tuple[int, ...] | None = None) -> Any:
    """The cvxpy expression ‖w‖ of a norm given by :func:`resolve_norm`'s (name, p).

    ``w`` is a cvxpy vector; a matrix norm (p is None) reads it as W of ``shape`` (k, d), row
    major. ℓ1, ℓ2 and ℓ∞ use cvxpy's LP/SOCP atoms; other p use ``pnorm`` (cvxpy represents p
    by a close rational number). Shared by the oracles and :mod:`steepest.implicit`.
    """
    import cvxpy as cp

    if p is None:
        if shape is None or len(shape) != 2:
            raise ValueError(f"the {name} norm needs a matrix shape (k, d), got {shape}")
        W = cp.reshape(w, shape, order="C")
        if name == "spectral":
            return cp.sigma_max(W)
        if name == "nuclear":
            return cp.normNuc(W)
        if name == "frobenius":
            return cp.norm(W, "fro")
        if name == "max":
            return cp.max(cp.abs(W))
        raise ValueError(f"unknown matrix norm {name!r}; valid norms: {_VALID_NAMES}")
    if p == 1:
        return cp.norm1(w)
    if p == 2:
        return cp.norm(w, 2)
    if math.isinf(p):
        return cp.norm_inf(w)
    return cp.pnorm(w, p)


def norm_value(w: Any, norm: Any) -> float:
    """‖w‖ in float64; vector norms act on vec(w) for a matrix, matrix norms need a 2-D w."""
    name, p = resolve_norm(norm)
    return _norm_value(_to_numpy(w, "w").astype(np.float64), name, p)


def _norm_value(a: np.ndarray, name: str, p: float | None) -> float:
    if p is None:
        if a.ndim != 2:
            raise ValueError(
                f"the {name} norm needs a matrix W of shape (k, d), got shape {a.shape}"
            )
        if name == "spectral":
            return float(np.linalg.norm(a, 2))
        if name == "nuclear":
            return float(np.linalg.norm(a, "nuc"))
        if name == "frobenius":
            return float(np.linalg.norm(a))
        return float(np.abs(a).max())
    v = a.ravel()
    if math.isinf(p):
        return float(np.abs(v).max())
    if p == 1:
        return float(np.abs(v).sum())
    if p == 2:
        return float(np.linalg.norm(v))
    m = np.abs(v).max()
    if m == 0:
        return 0.0
    return float(m * np.sum((np.abs(v) / m) ** p) ** (1.0 / p))  # scaled: no over/underflow


# ----------------------------------------------------------------------------------------------
# margins


def margins_linear(w: Any, X: Any, y: Any) -> np.ndarray:
    """Per-sample margins q_i of a linear model (float64).

    * w a vector (d,): binary, q_i = y_i ⟨w, x_i⟩ with y_i ∈ {−1, +1};
    * w a matrix W (k, d): multiclass, q_i = (W x_i)_{y_i} − max_{j ≠ y_i} (W x_i)_j with class
      ids y_i ∈ {0, …, k−1} (±1 labels with k = 2 use rows 0 for −1 and 1 for +1).
    """
    Xn = _check_X(X)
    yn = _check_y(y, Xn.shape[0])
    W = _to_numpy(w, "w").astype(np.float64)
    d = Xn.shape[1]
    if W.ndim == 1:
        if W.shape[0] != d:
            raise ValueError(f"w must have shape ({d},) to match X, got {W.shape}")
        if not _is_pm1(yn):
            raise ValueError(
                "binary margins need labels y in {-1, +1}; pass a matrix W for class ids"
            )
        return yn * (Xn @ W)
    if W.ndim != 2 or W.shape[1] != d:
        raise ValueError(f"w must have shape ({d},) or (k, {d}), got {W.shape}")
    k = W.shape[0]
    if k < 2:
        raise ValueError(f"a multiclass W needs k >= 2 rows, got k = {k}")
    idx, _ = _class_index(yn, k)
    scores = Xn @ W.T  # (n, k)
    n = Xn.shape[0]
    own = scores[np.arange(n), idx]
    others = scores.copy()
    others[np.arange(n), idx] = -np.inf
    return own - others.max(axis=1)


# ----------------------------------------------------------------------------------------------
# solvers


def _constraint_matrix(Xs: np.ndarray, y: np.ndarray, multiclass: bool, k: int) -> np.ndarray:
    """Rows a_r with q_r = ⟨a_r, vec(W)⟩ (row-major vec); binary: a_i = y_i x_i."""
    if not multiclass:
        return y[:, None] * Xs
    n, d = Xs.shape
    rows = []
    for i in range(n):
        for j in range(k):
            if j == y[i]:
                continue
            a = np.zeros(k * d)
            a[y[i] * d : (y[i] + 1) * d] += Xs[i]
            a[j * d : (j + 1) * d] -= Xs[i]
            rows.append(a)
    return np.asarray(rows)


def _not_separable(status: str, solver: str) -> NotSeparableError:
    return NotSeparableError(
        "the data are not linearly separable through the origin (linear model without bias): "
        f"no w has q_i(w) > 0 for every sample ({solver} status: {status})"
    )


def _solve_lp(A: np.ndarray, p: float) -> tuple[np.ndarray, float, str]:
    from scipy.optimize import linprog

    m, D = A.shape
    if math.isinf(p):
        # z = (w, t): min t s.t. w - t ≤ 0, -w - t ≤ 0, -A w ≤ -1.
        c = np.zeros(D + 1)
        c[-1] = 1.0
        eye = np.eye(D)
        ones = np.ones((D, 1))
        A_ub = np.vstack(
            [np.hstack([eye, -ones]), np.hstack([-eye, -ones]), np.hstack([-A, np.zeros((m, 1))])]
        )
        b_ub = np.concatenate([np.zeros(2 * D), -np.ones(m)])
        bounds = [(None, None)] * D + [(0, None)]
    else:
        # z = (w⁺, w⁻) ≥ 0: min Σ w⁺ + w⁻ s.t. -A (w⁺ − w⁻) ≤ -1.
        c = np.ones(2 * D)
        A_ub = np.hstack([-A, A])
        b_ub = -np.ones(m)
        bounds = [(0, None)] * (2 * D)
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs", options=_HIGHS_OPTS)
    if res.status == 2:
        raise _not_separable(f"infeasible ({res.message})", "highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the max-margin LP: status {res.status}, {res.message}")
    z = res.x
    w = z[:D] if math.isinf(p) else z[:D] - z[D:]
    return w, float(res.fun), "optimal"


def _solve_cvxpy(
    A: np.ndarray, shape: tuple[int, ...], name: str, p: float | None, method: str
) -> tuple[np.ndarray, float, str]:
    """min ‖W‖ s.t. A vec(W) ≥ 1 with Clarabel; returns (vec(W), ‖W‖ from the objective, status)."""
    import cvxpy as cp

    D = A.shape[1]
    w = cp.Variable(D)
    squared = False
    if p is not None and method == "qp":
        obj, squared = cp.sum_squares(w), True
    elif p is not None and method == "pnorm":
        obj = cp.pnorm(w, p)
    else:
        obj = cvxpy_norm(w, name, p, shape)
    prob = None
    try:
        for opts in _CLARABEL_ATTEMPTS:
            prob = cp.Problem(cp.Minimize(obj), [A @ w >= 1])
            with warnings.catch_warnings():
                # cvxpy warns "Solution may be inaccurate"; that case tries the next settings.
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver="CLARABEL", **opts)
            if prob.status != cp.OPTIMAL_INACCURATE:
                break
    except cp.error.SolverError as exc:
        raise RuntimeError(
            f"Clarabel failed on the max-margin problem ({name}, {method}): {exc}"
        ) from exc
    assert prob is not None
    status = str(prob.status)
    if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise _not_separable(status, "clarabel")
    if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or w.value is None:
        raise RuntimeError(
            f"Clarabel did not solve the max-margin problem ({name}, {method}): status {status}"
        )
    if status == cp.OPTIMAL_INACCURATE:
        warnings.warn(
            f"Clarabel returned {status} for the {name} max-margin problem",
            OracleAccuracyWarning,
            stacklevel=3,
        )
    val = float(prob.value)
    return (
        np.asarray(w.value, dtype=np.float64),
        (math.sqrt(max(val, 0.0)) if squared else val),
        status,
    )


# Valid methods per norm kind; the first entry is the default.
_METHODS = {
    "lp1": ("lp", "cvxpy", "pnorm"),
    "l2": ("qp", "socp", "pnorm", "cvxpy"),
    "lp": ("pnorm", "cvxpy"),
    "matrix": ("cvxpy",),
}


def _method_key(p: float | None) -> str:
    if p is None:
        return "matrix"
    if p == 1 or math.isinf(p):
        return "lp1"
    return "l2" if p == 2 else "lp"


def _formulation(name: str, p: float | None, method: str) -> str:
    if name in ("spectral", "nuclear"):
        return "sdp"
    if name == "frobenius" or (name == "l2" and method == "cvxpy"):
        return "socp"
    if name == "max":
        return "cvxpy"
    if method == "cvxpy" and _method_key(p) == "lp":
        return "pnorm"
    return method


def max_margin(X: Any, y: Any, norm: Any = "l2", *, method: str | None = None) -> MaxMarginResult:
    """Exact max-margin linear classifier through the origin (docs/theory.md §3.7).

    γ* = max_{‖w‖ ≤ 1} min_i q_i(w), solved as min ‖w‖ s.t. q_i(w) ≥ 1 (γ* = 1/‖w_min‖).

    Args:
        X: (n, d) inputs, numpy or torch (converted to float64 numpy; not modified).
        y: labels. ±1 → binary, w ∈ R^d, q_i = y_i⟨w, x_i⟩. Class ids 0..k−1 with k = max(y)+1 ≥ 3,
            or any labels when a matrix norm is requested → multiclass W ∈ R^{k×d},
            q_i = (W x_i)_{y_i} − max_{j≠y_i}(W x_i)_j (±1 labels then use rows 0 for −1, 1 for +1).
        norm: "l1", "l2", "linf", "l<p>" (p ≥ 1), "spectral", "nuclear", "frobenius", "max", a
            number p, a :class:`steepest.norms.Norm` (which names its oracle norm in
            ``oracle_norm``), or another object with a ``.name``. Vector norms on a multiclass W
            act on vec(W).
        method: "lp" (HiGHS; default for ℓ1/ℓ∞), "qp" (default for ℓ2), "socp" (ℓ2), "pnorm"
            (cvxpy ``pnorm(w, p)``; default for other p), "cvxpy" (the cvxpy formulation: norm1 /
            norm_inf for ℓ1/ℓ∞, SOCP for ℓ2, the only choice for matrix norms).

    Returns:
        MaxMarginResult with unit-norm w (or W) and γ* recomputed from it.

    Raises:
        NotSeparableError: no w separates the data through the origin.
        ValueError: bad shapes, labels, norm or method.
    """
    name, p = resolve_norm(norm)
    Xn = _check_X(X)
    yn = _check_y(y, Xn.shape[0])
    n, d = Xn.shape

    if name in MATRIX_NORMS:
        multiclass = True
    elif _is_pm1(yn):
        multiclass = False
    else:
        multiclass = True
    if multiclass:
        yi, k = _class_index(yn)
        if k < 3 and name not in MATRIX_NORMS:
            raise ValueError(
                "y: labels are class ids with fewer than 3 classes; use ±1 labels for a binary "
                "classifier, or request a matrix norm (spectral, nuclear, frobenius, max) "
                "for a 2-row W"
            )
    else:
        yi, k = yn, 1

    key = _method_key(p)
    valid = _METHODS[key]
    meth = valid[0] if method is None else str(method).lower()
    if meth not in valid:
        raise ValueError(
            f"method {method!r} is not available for the {name} norm; "
            f"valid methods: {', '.join(valid)}"
        )

    # Scale the data to max|X_ij| = 1 for the solver; γ*(X) = s·γ*(X/s), same direction.
    s = float(np.abs(Xn).max())
    if s == 0.0:
        raise _not_separable("X is all zeros", "input check")
    A = _constraint_matrix(Xn / s, yi, multiclass, k)
    shape: tuple[int, ...] = (k, d) if multiclass else (d,)

    if meth == "lp":
        assert p is not None
        w_vec, opt_norm, status = _solve_lp(A, p)
        solver = "highs"
    else:
        w_vec, opt_norm, status = _solve_cvxpy(A, shape, name, p, meth)
        solver = "clarabel"

    W = w_vec.reshape(shape)
    nrm = _norm_value(W, name, p)
    if not (nrm > 0 and math.isfinite(nrm)):
        raise RuntimeError(
            f"{solver} returned a zero or non-finite max-margin solution (status {status})"
        )
    W = W / nrm
    q = margins_linear(W, Xn, yn if not multiclass else yi)
    gamma = float(q.min())
    gamma_solver = s / opt_norm
    rel = abs(gamma - gamma_solver) / max(abs(gamma_solver), np.finfo(float).tiny)
    if not rel <= _CONSISTENCY_RTOL:
        warnings.warn(
            f"max-margin ({name}, {meth}): margin of the returned w {gamma:.12g} differs from "
            f"1/optimal value {gamma_solver:.12g} by a relative {rel:.2e} > {_CONSISTENCY_RTOL:g}",
            OracleAccuracyWarning,
            stacklevel=2,
        )
    return MaxMarginResult(
        w=W,
        gamma=gamma,
        norm=name,
        status=status,
        solver=solver,
        formulation=_formulation(name, p, meth),
    )


# ----------------------------------------------------------------------------------------------
# diagonal linear networks


def diagonal_margins(theta: Any, X: Any, y: Any, depth: int) -> np.ndarray:
    """q_i = y_i ⟨u^{⊙L} − v^{⊙L}, x_i⟩ for θ = [u; v] (float64)."""
    Xn = _check_X(X)
    t = _to_numpy(theta, "theta").astype(np.float64).ravel()
    d = Xn.shape[1]
    if t.shape[0] != 2 * d:
        raise ValueError(f"theta must be [u; v] of length 2d = {2 * d}, got {t.shape[0]}")
    u, v = t[:d], t[d:]
    return margins_linear(u**depth - v**depth, Xn, y)


def diagonal_max_margin(X: Any, y: Any, *, depth: int = 2, norm: Any = "l2") -> MaxMarginResult:
    """Max margin of the diagonal network f(θ; x) = ⟨u^{⊙L} − v^{⊙L}, x⟩, θ = (u, v), L = depth.

    f is L-homogeneous in θ, so the margin is γ(θ) = q_min(θ)/‖θ‖_p^L (docs/theory.md §3.1) and
    γ*_θ = max_{‖θ‖_p ≤ 1} min_i y_i⟨β(θ), x_i⟩ with β = u^L − v^L: a max margin of the *linear*
    predictor β over the image B = {β(θ): ‖θ‖_p ≤ 1}. Write r = p/L. Per coordinate, the cheapest
    θ for a given β_j costs g(β_j) = min{|u|^p + |v|^p : u^L − v^L = β_j}, and B = {Σ_j g(β_j) ≤ 1}:

    * L even: u^L, v^L ≥ 0 and for r ≥ 1 the cheapest split puts all of β_j on one of them
      (u^L = β_j⁺, v^L = β_j⁻), so g = |β_j|^r and B is the unit ℓ_r ball;
    * L odd: u^L, v^L take any sign; for r ≥ 1, min_a |a|^r + |β_j − a|^r is at a = β_j/2, so
      g = 2^{1−r}|β_j|^r and B is the ℓ_r ball of radius c = 2^{1−1/r} (c = 1 at r = 1, 2 at r = ∞;
      e.g. ℓ∞ on θ: {u^L − v^L : |u|, |v| ≤ 1} is [−1, 1]^d for even L but [−2, 2]^d for odd L).

    Hence, **whenever p ≥ L**, γ*_θ = c · γ*_{ℓ_{p/L}}(β), a convex problem solved by
    :func:`max_margin`:

    * p = L (e.g. ℓ2 on θ at depth 2, ‖u‖² + ‖v‖² ≥ ‖β‖₁): the ℓ1 max margin of β;
    * p = ∞ (any depth): the ℓ∞ max margin of β, times 2 for odd L;
    * other p > L: the ℓ_{p/L} max margin of β, times 2^{1−L/p} for odd L.

    For p < L (e.g. ℓ2 at depth ≥ 3, ℓ1 at depth ≥ 2) g = c'|β_j|^{p/L} with p/L < 1: B is the
    unit ball of the quasi-norm Σ_j |β_j|^{p/L}, which is not convex, and the max margin is a
    non-convex problem (sparse-recovery-like); a ValueError is raised.

    The returned ``w`` is θ = [u; v] (length 2d, ‖θ‖_p = 1) built from the linear optimum β*:
    even L: u = (β*⁺)^{1/L}, v = (β*⁻)^{1/L}; odd L: u = (β*/2)^{1/L} (real root), v = −u.
    ``gamma`` is q_min(θ)/‖θ‖_p^L evaluated through the network at that θ, and is checked
    against c·γ*_{ℓ_r} (relative 1e-9; the two differ only by rounding of the roots).
    Binary labels ±1 only (f is scalar-valued).
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    L = int(depth)
    name, p = resolve_norm(norm)
    if p is None:
        raise ValueError(
            f"norm {name!r}: diagonal networks take a vector norm on θ = [u; v]; "
            "valid: l<p> with p >= depth, or linf"
        )
    if p < L:
        raise ValueError(
            f"norm {name!r} at depth {L}: min ‖θ‖_p^L over θ with u^L − v^L = β is Σ_j |β_j|^(p/L) "
            f"with p/L = {p / L:g} < 1, a non-convex quasi-norm, so this max margin has no convex "
            f"reformulation; valid norms at depth {L}: l<p> with p >= {L}, or linf"
        )
    Xn = _check_X(X)
    yn = _check_y(y, Xn.shape[0])
    if not _is_pm1(yn):
        raise ValueError("y: diagonal networks are binary classifiers; labels must be ±1")
    r = math.inf if math.isinf(p) else p / L
    c = 2.0 ** (1.0 - (0.0 if math.isinf(r) else 1.0 / r)) if L % 2 == 1 else 1.0
    lin = max_margin(Xn, yn, r)  # the number r keeps p/L exact (the name rounds it)
    beta = c * lin.w  # a point of the boundary of B
    if L % 2 == 0:
        u = np.maximum(beta, 0.0) ** (1.0 / L)
        v = np.maximum(-beta, 0.0) ** (1.0 / L)
    else:
        u = np.sign(beta) * (np.abs(beta) / 2.0) ** (1.0 / L)
        v = -u
    theta = np.concatenate([u, v])
    theta = theta / _norm_value(theta, name, p)  # already 1 up to rounding
    q = diagonal_margins(theta, Xn, yn, L)
    gamma = float(q.min()) / _norm_value(theta, name, p) ** L
    expected = c * lin.gamma
    if not abs(gamma - expected) <= 1e-9 * abs(expected):
        raise RuntimeError(
            f"diagonal max margin: network margin {gamma:.15g} at the constructed θ differs from "
            f"{c:g}·γ*_{lin.norm} = {expected:.15g}"
        )
    return MaxMarginResult(
        w=theta,
        gamma=gamma,
        norm=name,
        status=lin.status,
        solver=lin.solver,
        formulation=f"diagonal depth {L}: {c:g}*gamma*_{lin.norm}(beta) via {lin.formulation}",
    )
