"""The theorem checks on one trajectory: verdicts, tolerances and the checks of
:mod:`steepest.verify` (its docstring states each check and its tolerance)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..kkt import NotSeparatedError
from ..norms import METRIC_NORM_NAMES, get_norm

VERDICTS: tuple[str, ...] = ("pass", "fail", "not applicable")
CHECKS: tuple[str, ...] = (
    "preconditions",
    "margin_monotone",
    "norm_grows",
    "loss_falls",
    "alignment_trend",
    "kkt",
    "flavor",
)
EXIT_OK, EXIT_FAILED, EXIT_NOT_CHECKED = 0, 1, 3

_THEOREM_A = ("margin_monotone", "norm_grows", "loss_falls")
_THEOREM_B = ("alignment_trend", "kkt", "flavor")
#: Which predictions each loss supports (the docstring of steepest.verify).
LOSS_SCOPE: dict[str, tuple[str, ...]] = {
    "exponential": _THEOREM_A + _THEOREM_B,
    "logistic": _THEOREM_A,
    "cross_entropy": (),
}
#: log ℓ(0): the separation threshold on log 𝓛 (docs/theory.md §1.4).
_LOG_LOSS_AT_ZERO = {"exponential": 0.0, "logistic": math.log(math.log(2.0))}
#: Metric-column suffix -> norm name of the margins every run logs (the flavor matrix).
CROSS_NORMS = {get_norm(n).column: n for n in METRIC_NORM_NAMES}


def own_column(info: Mapping[str, Any]) -> str | None:
    """The metric column of a run's own norm: stored with the run since 2026-12-05, else asked
    of the norm rebuilt from its name; None when the name does not rebuild one."""
    if info.get("own_norm_column"):
        return str(info["own_norm_column"])
    try:
        return get_norm(str(info.get("own_norm"))).column
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True)
class Tolerances:
    """Tolerances of the checks (the docstring of steepest.verify gives the reasoning)."""

    monotone_c: float = 1.0
    monotone_rtol: float = 1e-6
    alignment_floor: float = 1e-10
    alignment_se: float = 2.0
    kkt_ratio: float = 0.5
    kkt_floor: float = 1e-6
    kkt_saturated: float = 1e-6
    kkt_tau: float = 0.05
    flavor_rtol: float = 1e-3
    min_rows: int = 3
    # The ℓp (1 < p < ∞, p ≠ 2) and spectral residuals are conic programs (Clarabel) with one
    # variable per parameter; past this size they take minutes per checkpoint, so they are
    # reported as unavailable instead (ℓ1, ℓ2, ℓ∞ use LP/NNLS and have no limit).
    kkt_max_conic_params: int = 5000


@dataclass
class CheckResult:
    """One verdict: ``check`` (a name in :data:`CHECKS`), ``verdict`` (in :data:`VERDICTS`)."""

    check: str
    verdict: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    violations: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class RunVerdict:
    """All checks of one run (or one user trajectory)."""

    run_id: int | None
    name: str
    algorithm: str
    own_norm: str
    checks: list[CheckResult]

    def get(self, check: str) -> CheckResult:
        for c in self.checks:
            if c.check == check:
                return c
        raise KeyError(f"no check {check!r}; checks: {[c.check for c in self.checks]}")

    @property
    def failed(self) -> bool:
        return any(c.verdict == "fail" for c in self.checks)

    @property
    def checked(self) -> bool:
        """True when the preconditions hold (the predictions were actually tested)."""
        return self.get("preconditions").verdict == "pass"


# --------------------------------------------------------------------------------------------
# the checks on one trajectory (a wide metric table, as RunStore.metrics returns)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of y on x and its standard error (inf with fewer than 3 points)."""
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0, math.inf
    A = np.vstack([x, np.ones_like(x)]).T
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    if len(x) < 3:
        return float(coef[0]), math.inf
    resid = y - A @ coef
    s2 = float(resid @ resid) / (len(x) - 2)
    se = math.sqrt(s2 / float(((x - x.mean()) ** 2).sum()))
    return float(coef[0]), se


def _late(steps: np.ndarray, min_rows: int) -> np.ndarray:
    """Indices of the late window: step ≥ √(first·last) (log-time second half), ≥ min_rows rows."""
    s = np.maximum(steps.astype(np.float64), 1.0)
    mid = math.sqrt(s[0] * s[-1])
    idx = np.flatnonzero(s >= mid)
    if len(idx) < min_rows:
        idx = np.arange(max(0, len(s) - min_rows), len(s))
    return idx


def _col(m: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    v = m.get(name)
    return np.full(n, np.nan) if v is None else np.asarray(v, dtype=np.float64)


def _step_lengths(
    m: Mapping[str, np.ndarray], n: int, L: float, normalized: bool | None, n_train: int | None
) -> np.ndarray:
    """Upper bound h on one step's length in the own norm at each row (the docstring of steepest.verify).

    Computed in log space from ``log_lr`` (η can be 1e300 under the loss-based schedule while
    η·𝓛 stays O(1), and 𝓛 itself underflows).
    """
    log_lr = _col(m, "log_lr", n)
    if np.all(np.isnan(log_lr)):
        with np.errstate(divide="ignore"):
            log_lr = np.log(_col(m, "lr", n))
    if normalized is None or np.all(np.isnan(log_lr)):
        return np.zeros(n)  # unknown step size: only the 1e-6 relative floor applies
    log_lr = np.where(np.isnan(log_lr), -np.inf, log_lr)
    if normalized:
        return np.exp(log_lr)
    ll = _col(m, "log_loss", n)
    rho = _col(m, "norm_own", n)
    beta = _col(m, "beta_own", n)
    qbar = _col(m, "q_max", n)
    if n_train:
        qbar = np.minimum(qbar, -ll + math.log(n_train))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        h = np.exp(log_lr + ll + np.log(L * qbar / (rho * beta)))
    return np.where((beta > 0) & (qbar > 0) & ~np.isnan(h), h, np.inf)


def not_applicable(check: str, reason: str) -> CheckResult:
    """A "not applicable" verdict for ``check``, with the reason."""
    return CheckResult(check, "not applicable", reason)


def _check_monotone(m, w: np.ndarray, L: float, h: np.ndarray, tol: Tolerances) -> CheckResult:
    steps = m["step"][w]
    g = _col(m, "smoothed_own", len(m["step"]))[w]
    rho = _col(m, "norm_own", len(m["step"]))[w]
    hw = h[w]
    if len(w) < 2:
        return not_applicable("margin_monotone", f"only {len(w)} recorded row(s) after separation")
    violations, decreases, worst = [], 0, 0.0
    for k in range(len(w) - 1):
        d = g[k + 1] - g[k]
        rel = d / abs(g[k]) if g[k] != 0 else (-math.inf if d < 0 else 0.0)
        t = max(tol.monotone_rtol, tol.monotone_c * L * max(hw[k], hw[k + 1]) / rho[k])
        if d < 0:
            decreases += 1
            worst = min(worst, rel)
        if rel < -t:
            violations.append(
                {
                    "from_step": int(steps[k]),
                    "to_step": int(steps[k + 1]),
                    "delta": float(d),
                    "relative": float(rel),
                    "tolerance": float(t),
                    "excess": float(-rel / t),
                }
            )
    nums = {
        "rows": len(w),
        "first_step": int(steps[0]),
        "decreases": decreases,
        "largest_relative_drop": float(max(0.0, -worst)),
        "smoothed_first": float(g[0]),
        "smoothed_last": float(g[-1]),
    }
    if violations:
        big = max(violations, key=lambda v: v["excess"])
        return CheckResult(
            "margin_monotone",
            "fail",
            f"{len(violations)} drop(s) beyond tolerance; worst {big['relative']:.3g} relative "
            f"(steps {big['from_step']}→{big['to_step']}, tolerance {big['tolerance']:.3g})",
            nums,
            violations,
        )
    return CheckResult(
        "margin_monotone",
        "pass",
        f"γ̃ {g[0]:.4g} → {g[-1]:.4g}; {decreases} drop(s), all within tolerance",
        nums,
    )


def _check_growth(
    check: str, x: np.ndarray, steps: np.ndarray, tol: Tolerances, what: str
) -> CheckResult:
    if len(x) < tol.min_rows:
        return not_applicable(
            check, f"only {len(x)} recorded row(s) after separation (need {tol.min_rows})"
        )
    late = _late(steps, tol.min_rows)
    ok = np.isfinite(x[late]) & (x[late] > 0)
    slope, se = (
        _fit(np.log(np.maximum(steps[late][ok], 1.0)), np.log(x[late][ok]))
        if ok.sum() >= 2
        else (math.nan, math.inf)
    )
    nums = {
        "first": float(x[0]),
        "last": float(x[-1]),
        "late_slope": slope,
        "late_slope_se": se,
        "late_rows": len(late),
    }
    if not (x[-1] > x[0]):
        return CheckResult(check, "fail", f"{what} did not grow: {x[0]:.4g} → {x[-1]:.4g}", nums)
    if not (slope > 0):
        return CheckResult(
            check, "fail", f"{what} stalls in the late window (log-log slope {slope:.3g})", nums
        )
    return CheckResult(
        check, "pass", f"{what} {x[0]:.4g} → {x[-1]:.4g}, late log-log slope {slope:.3g}", nums
    )


def _check_alignment(m, w: np.ndarray, tol: Tolerances) -> CheckResult:
    if len(w) < tol.min_rows:
        return not_applicable(
            "alignment_trend",
            f"only {len(w)} recorded row(s) after separation (need {tol.min_rows})",
        )
    steps = m["step"][w].astype(np.float64)
    beta = _col(m, "beta_own", len(m["step"]))[w]
    ok = np.isfinite(beta)
    if ok.sum() < tol.min_rows:
        return not_applicable("alignment_trend", "β_own was not recorded on enough rows")
    steps, beta = steps[ok], beta[ok]
    gap = np.maximum(1.0 - beta, 1e-16)
    late = _late(steps, tol.min_rows)
    slope, se = _fit(np.log(np.maximum(steps[late], 1.0)), np.log(gap[late]))
    late_geo = float(np.exp(np.mean(np.log(gap[late]))))
    nums = {
        "gap_first": float(gap[0]),
        "gap_last": float(gap[-1]),
        "late_geomean": late_geo,
        "late_slope": slope,
        "late_slope_se": se,
        "late_rows": len(late),
    }
    if float(np.median(gap[late])) <= tol.alignment_floor:
        return CheckResult(
            "alignment_trend",
            "pass",
            f"1 − β at float precision (late median ≤ {tol.alignment_floor:g})",
            nums,
        )
    if slope > tol.alignment_se * se:
        return CheckResult(
            "alignment_trend",
            "fail",
            f"1 − β rises over the late window "
            f"(slope {slope:.3g} > {tol.alignment_se:g}·se {se:.2g})",
            nums,
        )
    if not late_geo < gap[0]:
        return CheckResult(
            "alignment_trend",
            "fail",
            f"no net decrease of 1 − β: {gap[0]:.3g} at separation, "
            f"late geometric mean {late_geo:.3g}",
            nums,
        )
    return CheckResult(
        "alignment_trend",
        "pass",
        f"1 − β {gap[0]:.3g} → {gap[-1]:.3g} (late slope {slope:.3g} ± {se:.2g})",
        nums,
    )


def _check_kkt(points: Sequence[tuple[int, Any]], tol: Tolerances) -> CheckResult:
    """points: (step, KKTResult) at the reference (first separated) and last checkpoints."""
    if len(points) < 2:
        return not_applicable(
            "kkt",
            f"{len(points)} separated checkpoint(s); need one near separation and a later one",
        )
    (s0, r0), (s1, r1) = points[0], points[-1]
    saturated = r0.residual >= 1.0 - tol.kkt_saturated
    if saturated:
        what, a, b = "stationarity gap 1 − β*", r0.alignment_gap, r1.alignment_gap
    else:
        what, a, b = "KKT residual", r0.residual, r1.residual
    nums = {
        "ref_step": s0,
        "last_step": s1,
        "ref_residual": r0.residual,
        "last_residual": r1.residual,
        "ref_gap": r0.alignment_gap,
        "last_gap": r1.alignment_gap,
        "verdict_on": what,
        "ratio": b / a if a > 0 else (0.0 if b == 0 else math.inf),
        "last_slackness": r1.slackness,
        "last_support": r1.n_support,
        "last_kinks": r1.n_kinks,
        "tau": r1.tau,
        "solver": r1.solver,
        "subgradient": "autograd (ReLU'(0) = 0)",
    }
    note = " (residual saturated at 1 at the reference: verdict on 1 − β*)" if saturated else ""
    limit = max(tol.kkt_ratio * a, tol.kkt_floor)
    msg = f"{what} {a:.3g} (step {s0}) → {b:.3g} (step {s1}){note}"
    if b <= limit:
        return CheckResult("kkt", "pass", msg, nums)
    return CheckResult("kkt", "fail", f"{msg}; needs ≤ {tol.kkt_ratio:g}× the reference", nums)


def check_trajectory(
    metrics: Mapping[str, np.ndarray],
    *,
    degree: float | None,
    loss: str,
    normalized: bool | None = None,
    n_train: int | None = None,
    kkt_points: Callable[[np.ndarray], Sequence[tuple[int, Any]]]
    | Sequence[tuple[int, Any]]
    | None = None,
    not_homogeneous: str | None = None,
    tolerances: Tolerances | None = None,
    kkt_unavailable: str | None = None,
) -> list[CheckResult]:
    """Preconditions and the per-run predictions on a wide metric table (no ``flavor`` check).

    ``metrics`` has the columns of :meth:`steepest.store.RunStore.metrics` ("step", "log_loss",
    "q_min", "q_max", "norm_own", "smoothed_own", "beta_own", "lr", ...). ``kkt_points`` is a
    list of (step, KKTResult) or a callable that gets the post-separation steps and returns one;
    None makes the KKT check "not applicable" (with ``kkt_unavailable`` as the reason, if given).
    ``not_homogeneous`` is a reason string when the model failed the homogeneity test.
    """
    tol = tolerances or Tolerances()
    steps = np.asarray(metrics.get("step", np.zeros(0)))
    n = len(steps)
    order = np.argsort(steps, kind="stable")
    m = {k: np.asarray(v)[order] for k, v in metrics.items()}
    checks: list[CheckResult] = []
    scope = LOSS_SCOPE.get(loss)
    pre: str | None = None
    nums: dict[str, Any] = {"rows": n, "loss": loss, "degree": degree}
    if scope is None or not scope:
        pre = (
            f"loss {loss!r} is outside the theorems "
            "(exponential: all checks; logistic: Theorem A only)"
        )
    elif not_homogeneous is not None or degree is None:
        pre = f"model is not homogeneous: {not_homogeneous or 'degree unknown'}"
    else:
        ll = _col(m, "log_loss", n)
        qmin = _col(m, "q_min", n)
        sep = np.flatnonzero((qmin > 0) & (ll < _LOG_LOSS_AT_ZERO[loss]))
        if len(sep) == 0:
            last = f"{ll[-1]:.4g}" if n else "none"
            pre = (
                f"never separated (no row with q_min > 0 and log 𝓛 < log ℓ(0); last log 𝓛 {last}, "
                f"last q_min {qmin[-1]:.4g})"
                if n
                else "no metric rows recorded"
            )
    if pre is not None:
        checks.append(CheckResult("preconditions", "not applicable", pre, nums))
        checks += [not_applicable(c, f"precondition: {pre}") for c in CHECKS[1:] if c != "flavor"]
        return checks
    first = int(sep[0])
    w = np.arange(first, n)
    nums["first_separated_step"] = int(m["step"][first])
    checks.append(
        CheckResult(
            "preconditions",
            "pass",
            f"{loss} loss, L = {degree:g}, separated from step {int(m['step'][first])}",
            nums,
        )
    )
    L = float(degree)  # type: ignore[arg-type]
    out_of_scope = f"not covered for the {loss} loss (Theorem B is proved for the exponential loss)"
    h = _step_lengths(m, n, L, normalized, n_train)
    checks.append(_check_monotone(m, w, L, h, tol))
    checks.append(_check_growth("norm_grows", _col(m, "norm_own", n)[w], m["step"][w], tol, "‖θ‖"))
    checks.append(
        _check_growth("loss_falls", -_col(m, "log_loss", n)[w], m["step"][w], tol, "log(1/𝓛)")
    )
    if "alignment_trend" in scope:
        checks.append(_check_alignment(m, w, tol))
    else:
        checks.append(not_applicable("alignment_trend", out_of_scope))
    if "kkt" not in scope:
        checks.append(not_applicable("kkt", out_of_scope))
    elif kkt_points is None:
        checks.append(
            not_applicable("kkt", kkt_unavailable or "KKT residual not computed (kkt=False)")
        )
    else:
        try:
            pts = kkt_points(m["step"][w]) if callable(kkt_points) else list(kkt_points)
        except NotSeparatedError as exc:
            checks.append(
                not_applicable("kkt", f"the last checkpoint does not separate the data ({exc})")
            )
        except (FileNotFoundError, OSError, KeyError, ValueError) as exc:
            checks.append(not_applicable("kkt", f"checkpoints unusable: {exc}"))
        else:
            checks.append(_check_kkt(pts, tol))
    return checks
