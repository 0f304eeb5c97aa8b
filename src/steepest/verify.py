"""Theorem checks over stored runs (``steepest verify``) and over a user's own checkpoints.

For every run, each check gets a verdict "pass", "fail" or "not applicable", a reason, and the
numbers it rests on (docs/theory.md §3.3–§3.6, §5 items 8–10 and 15).

Preconditions (checked first; when one is unmet every prediction is "not applicable", never a
guess: a run that never separated is not a failure of the theory; docs/theory.md §1.4):

* ``loss``: exponential → all checks; logistic (an exponential-type loss) → Theorem A only
  (margin monotonicity, norm growth, loss decay), because the KKT/alignment statements are
  proved for the exponential loss (docs/theory.md §3.4, §6 item 10); cross-entropy → none.
* ``homogeneity``: the model is L-homogeneous (the stored degree, or measured with
  :func:`steepest.models.homogeneity_degree`; docs/theory.md §1.2, §6 item 11).
* ``separation``: some recorded row has q_min > 0 and 𝓛 < ℓ(0) (docs/theory.md §1.4; ℓ(0) = 1 for the
  summed exponential loss, log 2 for the logistic). Rows from the first such row on form the
  *post-separation window*.

Predictions (the names are the ``check`` column):

* ``margin_monotone`` (Theorem A, §3.3): the own-norm smoothed margin γ̃ never falls between
  consecutive rows of the window by more than the tolerance
      tol_k = max(rtol, c · L · h_k / ρ_k),   rtol = 1e-6, c = 1,
  where ρ_k = ‖θ‖ (own norm) at row k and h_k bounds the length, in the own norm, of one step
  between rows k and k+1: h = η for normalized rules (‖Δθ‖ = η), and for unnormalized rules
  h = η·𝓛·‖∇log𝓛‖_* ≤ η·𝓛·L·q̄/(ρ·β) with q̄ = Σ_i w_i q_i ≤ min(q_max, log(1/𝓛) + log n)
  (Euler: ⟨θ, −∇log𝓛⟩ = L·q̄; w = softmax(−q); β the own-norm dual alignment). η is the
  larger of the ``lr`` values recorded at the two rows. Why this tolerance: log γ̃ = log ℓ̂ −
  L log ρ with ℓ̂ = log(1/𝓛); one step moves ρ by at most h (triangle inequality), so a step
  that does not increase the loss lowers log γ̃ by at most L·log(1 + h/ρ) ≤ L·h/ρ. A larger
  fall means the loss went up: the iteration has left the descent regime the flow describes.
  For constant-step normalized methods this is docs/theory.md §5 item 8's "≤ O(η)"; the 1e-6 relative floor
  is its bound for everything else (and rounding). Every violation is listed with its
  size.
* ``norm_grows`` and ``loss_falls`` (Theorem A): ρ at the last row exceeds ρ at the first
  window row and the least-squares slope of log ρ against log step over the late window is
  positive; likewise log(1/𝓛) rises overall and its late-window slope is positive.
* ``alignment_trend`` (§3.3, §3.5, §5 item 10): the gap g = 1 − β_own (clamped at 1e-16)
  trends down. A least-squares fit of log g against log step over the late window (rows with
  step ≥ √(first·last) of the window, at least 3) gives a slope b and its standard error se.
  Fail when b > 2·se (a significant rise) or when the late window's geometric mean of g is not
  below g at the first window row (no net progress); pass otherwise, and pass outright when the
  late median of g is ≤ 1e-10 (alignment at float precision).
* ``kkt`` (§3.6): the KKT residual (:func:`steepest.kkt.kkt_residual`, own norm, τ = 0.05) at
  the last checkpoint is at most ``kkt_ratio`` = 0.5 times its value at the earliest separated
  checkpoint (or below ``kkt_floor`` = 1e-6). For ℓ∞ and ℓ1 the residual sits at exactly 1
  (λ = 0 is optimal) until the iterate is close to a KKT point: it needs the gradient mass on
  the maximal coordinates (ℓ∞) or |v_j| equal on every non-zero coordinate (ℓ1), faces that a
  finite run matches only up to the tie tolerance. When the reference residual is saturated
  (≥ 1 − 1e-6) the verdict uses the optimized-multiplier stationarity gap 1 − β* of the same
  support instead (``KKTResult.alignment_gap``: zero exactly at stationarity, continuous in
  θ); the report says which quantity decided. The engine checkpoints when −log𝓛 passes a power
  of ten (and every ``logging.checkpoint_every`` iterations), so the reference point is the
  first checkpoint after separation, not the separation step itself; its step is reported.
* ``flavor`` (§5 item 9): among the runs of the same batch (one ``train`` call, or one sweep) and seed, the
  run's final margin in its own norm is at least (1 − 1e-3) times the largest final margin in
  that norm reached by runs whose algorithms have a different own norm. Not applicable when
  no such run exists or the own norm is not one of the engine's metric norms (l1, l2, linf,
  spectral).

Exit codes of :func:`main`: 0 every applicable prediction passed; 1 a prediction failed beyond
tolerance; 3 nothing failed but some run could not be checked (an unmet precondition).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .atomic import atomic_write_text
from .checkpoints import load_checkpoint
from .kkt import NotSeparatedError, kkt_residual, norm_kind
from .losses import log_loss as _log_loss
from .losses import margins as _margins
from .metrics import alignment_gradient, dual_alignment_from
from .models import NotHomogeneousError, homogeneity_degree
from .norms import METRIC_NORM_NAMES, Norm, get_norm
from .store import RunRecord, RunStore
from .tables import format_value, markdown_table, text_table

__all__ = [
    "CHECKS",
    "VERDICTS",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_NOT_CHECKED",
    "Tolerances",
    "CheckResult",
    "RunVerdict",
    "VerifyReport",
    "load_run",
    "trajectory_metrics",
    "check_trajectory",
    "verify_runs",
    "verify_model_trajectory",
    "resolve_runs",
    "main",
]

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
#: Which predictions each loss supports (module docstring).
_LOSS_SCOPE: dict[str, tuple[str, ...]] = {
    "exponential": _THEOREM_A + _THEOREM_B,
    "logistic": _THEOREM_A,
    "cross_entropy": (),
}
#: log ℓ(0): the separation threshold on log 𝓛 (docs/theory.md §1.4).
_LOG_LOSS_AT_ZERO = {"exponential": 0.0, "logistic": math.log(math.log(2.0))}
#: Metric-column suffix -> norm name of the margins every run logs (the flavor matrix).
_CROSS_NORMS = {get_norm(n).column: n for n in METRIC_NORM_NAMES}


def _own_column(info: Mapping[str, Any]) -> str | None:
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
    """Tolerances of the checks (module docstring gives the reasoning)."""

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


def _fmt(v: Any) -> str:
    return format_value(v)


@dataclass
class VerifyReport:
    """Verdicts for several runs; :meth:`to_markdown` renders them, :attr:`failed` sums them up."""

    runs: list[RunVerdict]

    @property
    def failed(self) -> bool:
        """A prediction failed beyond tolerance in some run."""
        return any(r.failed for r in self.runs)

    @property
    def all_checked(self) -> bool:
        return all(r.checked for r in self.runs)

    @property
    def exit_code(self) -> int:
        if self.failed:
            return EXIT_FAILED
        return EXIT_OK if self.all_checked else EXIT_NOT_CHECKED

    def verdicts(self) -> dict[tuple[int | None, str], str]:
        return {(r.run_id, c.check): c.verdict for r in self.runs for c in r.checks}

    def _rows(self) -> list[list[str]]:
        rows = []
        for r in self.runs:
            rid = "-" if r.run_id is None else str(r.run_id)
            for c in r.checks:
                rows.append([rid, r.algorithm, r.own_norm, c.check, c.verdict, c.reason])
        return rows

    def to_text(self) -> str:
        """A plain-text verdict table (what ``steepest verify`` prints)."""
        headers = ["run", "algorithm", "norm", "check", "verdict", "reason"]
        table = text_table(headers, self._rows(), fmt=str, pad_last=False)  # reason: free text
        return "\n".join([table, "", self.summary()])

    def summary(self) -> str:
        n = {v: 0 for v in VERDICTS}
        for r in self.runs:
            for c in r.checks:
                if c.check != "preconditions":
                    n[c.verdict] += 1
        word = {EXIT_OK: "PASSED", EXIT_FAILED: "FAILED", EXIT_NOT_CHECKED: "NOT CHECKED"}[
            self.exit_code
        ]
        return (
            f"{word}: {n['pass']} pass, {n['fail']} fail, {n['not applicable']} not applicable "
            f"over {len(self.runs)} run(s)"
        )

    def to_markdown(self) -> str:
        """The verdict table, then per-run numbers and every violation with its size."""

        def cell(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")

        headers = ["run", "algorithm", "own norm", "check", "verdict", "reason"]
        lines = ["# Theorem checks (`steepest verify`)", "", self.summary(), ""]
        lines += markdown_table(headers, self._rows(), fmt=str, escape=True).splitlines()
        for r in self.runs:
            lines += ["", f"## run {'-' if r.run_id is None else r.run_id}: {cell(r.name)}", ""]
            for c in r.checks:
                if c.numbers:
                    nums = ", ".join(f"{k} = {_fmt(v)}" for k, v in c.numbers.items())
                    lines.append(f"- **{c.check}** ({c.verdict}): {cell(nums)}")
                if c.violations:
                    lines.append(f"  - violations of {c.check} ({len(c.violations)}):")
                    lines.append("")
                    keys = list(c.violations[0])
                    rows = [[v[k] for k in keys] for v in c.violations]
                    table = markdown_table(keys, rows, fmt=_fmt)
                    lines += ["    " + line for line in table.splitlines()]
                    lines.append("")
        return "\n".join(lines) + "\n"


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
    """Upper bound h on one step's length in the own norm at each row (module docstring).

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


def _na(check: str, reason: str) -> CheckResult:
    return CheckResult(check, "not applicable", reason)


def _check_monotone(m, w: np.ndarray, L: float, h: np.ndarray, tol: Tolerances) -> CheckResult:
    steps = m["step"][w]
    g = _col(m, "smoothed_own", len(m["step"]))[w]
    rho = _col(m, "norm_own", len(m["step"]))[w]
    hw = h[w]
    if len(w) < 2:
        return _na("margin_monotone", f"only {len(w)} recorded row(s) after separation")
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
        return _na(check, f"only {len(x)} recorded row(s) after separation (need {tol.min_rows})")
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
        return _na(
            "alignment_trend",
            f"only {len(w)} recorded row(s) after separation (need {tol.min_rows})",
        )
    steps = m["step"][w].astype(np.float64)
    beta = _col(m, "beta_own", len(m["step"]))[w]
    ok = np.isfinite(beta)
    if ok.sum() < tol.min_rows:
        return _na("alignment_trend", "β_own was not recorded on enough rows")
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
        return _na(
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
    scope = _LOSS_SCOPE.get(loss)
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
        checks += [_na(c, f"precondition: {pre}") for c in CHECKS[1:] if c != "flavor"]
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
        checks.append(_na("alignment_trend", out_of_scope))
    if "kkt" not in scope:
        checks.append(_na("kkt", out_of_scope))
    elif kkt_points is None:
        checks.append(_na("kkt", kkt_unavailable or "KKT residual not computed (kkt=False)"))
    else:
        try:
            pts = kkt_points(m["step"][w]) if callable(kkt_points) else list(kkt_points)
        except NotSeparatedError as exc:
            checks.append(_na("kkt", f"the last checkpoint does not separate the data ({exc})"))
        except (FileNotFoundError, OSError, KeyError, ValueError) as exc:
            checks.append(_na("kkt", f"checkpoints unusable: {exc}"))
        else:
            checks.append(_check_kkt(pts, tol))
    return checks


# --------------------------------------------------------------------------------------------
# stored runs


def _engine_private():
    """The engine's private helpers used here, in one place (the lead may make them public)."""
    from .engine import Engine, load_experiment_data

    return Engine, load_experiment_data


class _Loader:
    """Rebuilds data and models of stored runs; caches per config hash and checkpoint file."""

    def __init__(self, store: RunStore):
        self.store = store
        self._engines: dict[str, Any] = {}
        self._files: dict[str, dict[str, Any]] = {}

    def engine(self, rec: RunRecord):
        from .config import load_config

        key = str(rec.info.get("config_hash") or rec.id)
        if key not in self._engines:
            Engine, load_data = _engine_private()
            cfg = load_config(rec.config)
            data = load_data(cfg)
            self._engines[key] = Engine(cfg, cfg.run_specs(), data)
        return self._engines[key]

    def file(self, path: str | Path) -> dict[str, Any]:
        key = str(path)
        if key not in self._files:
            self._files[key] = load_checkpoint(key, require=("params", "run_ids"))
        return self._files[key]

    def model_at(self, rec: RunRecord, path: str | Path) -> tuple[nn.Module, int]:
        eng = self.engine(rec)
        sd = self.file(path)
        run_ids = list(sd["run_ids"])
        # A run stored by a sweep's driver is named in its checkpoints by its id in the job's
        # own database (steepest.sweep).
        rid = int((rec.info.get("sweep") or {}).get("run_id_in_job", rec.id))
        if rid not in run_ids:
            raise KeyError(f"run {rid} is not in checkpoint {path} (it holds runs {run_ids})")
        i = run_ids.index(rid)
        model = eng.model_for_seed(rec.seed).to(torch.float64)
        names = [n for n, _ in model.named_parameters()]
        if list(sd["names"]) != names:
            raise ValueError(
                f"checkpoint {path} parameters {list(sd['names'])} do not match the model {names}"
            )
        with torch.no_grad():
            for (_, p), stacked in zip(model.named_parameters(), sd["params"], strict=True):
                p.copy_(stacked[i].to(torch.float64))
        return model, int(sd["t"][i])

    def data(self, rec: RunRecord) -> tuple[Tensor, Tensor]:
        eng = self.engine(rec)
        X = eng.X.to(torch.float64)
        y = eng.y.to(torch.float64) if eng.y.is_floating_point() else eng.y
        return X, y


def load_run(
    store: RunStore, run_id: int, checkpoint: int | str | Path | None = None
) -> tuple[nn.Module, Tensor, Tensor]:
    """(model, X_train, y_train) of a stored run, the model holding the run's parameters.

    ``checkpoint``: None → the run's last recorded checkpoint; an int → the recorded checkpoint
    at that step; a path → that checkpoint file. The model is rebuilt from the stored config (so
    it is the same architecture the engine trained) in float64.
    """
    rec = store.get_run(run_id)
    loader = _Loader(store)
    cks = store.checkpoints(run_id)
    if checkpoint is None or isinstance(checkpoint, (int, np.integer)):
        if not cks:
            raise ValueError(f"run {run_id} has no recorded checkpoints")
        if checkpoint is None:
            path = cks[-1]["path"]
        else:
            match = [c for c in cks if c["step"] == int(checkpoint)]
            if not match:
                raise ValueError(
                    f"run {run_id} has no checkpoint at step {checkpoint}; "
                    f"steps: {[c['step'] for c in cks]}"
                )
            path = match[0]["path"]
    else:
        path = str(checkpoint)
    model, _ = loader.model_at(rec, path)
    X, y = loader.data(rec)
    return model, X, y


def _kkt_points_for_run(loader: _Loader, rec: RunRecord, norm: str, tol: Tolerances, L: float):
    """KKT residual at the earliest separated checkpoint and at the last one."""

    def points(sep_steps: np.ndarray) -> list[tuple[int, Any]]:
        cks = [
            c
            for c in loader.store.checkpoints(rec.id)
            if len(sep_steps) and c["step"] >= int(sep_steps[0])
        ]
        if len(cks) < 2:
            return []
        X, y = loader.data(rec)
        out: list[tuple[int, Any]] = []
        for c in cks:
            model, step = loader.model_at(rec, c["path"])
            try:
                out.append((step, kkt_residual(model, X, y, norm, L=L, tau=tol.kkt_tau)))
            except NotSeparatedError:
                continue
            break
        if not out:
            return []
        model, step = loader.model_at(rec, cks[-1]["path"])
        if step == out[0][0]:
            return out
        out.append((step, kkt_residual(model, X, y, norm, L=L, tau=tol.kkt_tau)))
        return out

    return points


def _comparison_group(info: dict[str, Any]) -> str:
    """The runs a flavor check compares: one ``train`` call's batch, or one sweep (whose jobs
    are batches of the same config; steepest.sweep)."""
    sweep = info.get("sweep") or {}
    return f"sweep:{sweep['id']}" if "id" in sweep else f"batch:{info.get('batch')}"


def _flavor(
    report_runs: list[RunVerdict], records: dict[int, RunRecord], store: RunStore, tol: Tolerances
) -> None:
    """Append the ``flavor`` check to each run (compares batch mates of the same seed)."""
    batch_cache: dict[tuple[str | None, str], list[RunRecord]] = {}
    finals: dict[int, dict[str, float]] = {}

    def final(rid: int) -> dict[str, float]:
        if rid not in finals:
            finals[rid] = store.final_metrics(rid)
        return finals[rid]

    for rv in report_runs:
        rec = records[rv.run_id]  # type: ignore[index]
        if not rv.checked:
            rv.checks.append(_na("flavor", "precondition: " + rv.get("preconditions").reason))
            continue
        if "flavor" not in _LOSS_SCOPE.get(rec.info.get("loss", ""), ()):
            rv.checks.append(_na("flavor", f"not covered for the {rec.info.get('loss')} loss"))
            continue
        col = _own_column(rec.info)
        if col not in _CROSS_NORMS:
            rv.checks.append(
                _na(
                    "flavor",
                    f"own norm {rec.info.get('own_norm')!r} has no margin column in other runs "
                    f"(metric norms: {', '.join(_CROSS_NORMS)})",
                )
            )
            continue
        key = (rec.experiment, _comparison_group(rec.info))
        if key not in batch_cache:
            batch_cache[key] = [
                r
                for r in store.list_runs(experiment=rec.experiment)
                if _comparison_group(r.info) == key[1]
            ]
        rivals = [
            r
            for r in batch_cache[key]
            if r.id != rec.id and r.seed == rec.seed and _own_column(r.info) != col
        ]
        if not rivals:
            rv.checks.append(
                _na(
                    "flavor",
                    "no run with another algorithm flavor in the same batch (or sweep) and seed",
                )
            )
            continue
        mine = final(rec.id).get(f"margin_{col}", math.nan)
        theirs = {r.id: final(r.id).get(f"margin_{col}", math.nan) for r in rivals}
        best_id = max(theirs, key=lambda k: -math.inf if math.isnan(theirs[k]) else theirs[k])
        best = theirs[best_id]
        nums = {
            "norm": col,
            "own_margin": mine,
            "best_other": best,
            "best_other_run": best_id,
            "others": ", ".join(f"{k}: {_fmt(v)}" for k, v in theirs.items()),
        }
        limit = best - tol.flavor_rtol * abs(best)
        if math.isnan(mine):
            rv.checks.append(
                CheckResult(
                    "flavor", "not applicable", f"margin_{col} missing in the final row", nums
                )
            )
        elif mine >= limit:
            rv.checks.append(
                CheckResult(
                    "flavor",
                    "pass",
                    f"γ_{col} {mine:.4g} ≥ best other algorithm {best:.4g} (run {best_id})",
                    nums,
                )
            )
        else:
            rv.checks.append(
                CheckResult(
                    "flavor",
                    "fail",
                    f"γ_{col} {mine:.4g} < {best:.4g} reached by run {best_id} "
                    f"({rivals[[r.id for r in rivals].index(best_id)].algorithm})",
                    nums,
                )
            )


def _param_shapes(rec: RunRecord, cache: dict[str, list[tuple[int, ...]]]) -> list[tuple[int, ...]]:
    """Parameter shapes of a stored run, read from its latest checkpoint (stacked over runs).

    The K runs of a batch share one checkpoint file: ``cache`` loads it once per file.
    """
    path = rec.info.get("checkpoint")
    if not path:
        return []
    if path not in cache:
        sd = load_checkpoint(path, require=("params",))
        cache[path] = [tuple(p.shape[1:]) for p in sd["params"]]
    return cache[path]


def verify_runs(
    store: RunStore,
    run_ids: Sequence[int],
    *,
    kkt: bool = True,
    tolerances: Tolerances | None = None,
) -> VerifyReport:
    """Check the theory's predictions on stored runs (module docstring lists the checks)."""
    tol = tolerances or Tolerances()
    loader = _Loader(store)
    shape_cache: dict[str, list[tuple[int, ...]]] = {}
    out: list[RunVerdict] = []
    records: dict[int, RunRecord] = {}
    for rid in run_ids:
        rec = store.get_run(int(rid))
        records[rec.id] = rec
        info = rec.info
        degree = info.get("degree")
        own = str(info.get("own_norm", "?"))
        n_train = (info.get("dataset") or {}).get("n_train")
        kpts = None
        not_hom = None
        unavailable = None
        if degree is None:
            not_hom = info.get("not_homogeneous") or "no homogeneity degree stored with the run"
        if (
            kkt
            and degree is not None
            and "own_norm_kkt_program" in info
            and info["own_norm_kkt_program"] is None
        ):
            unavailable = (
                f"KKT residual unavailable: the own norm {own!r} has no KKT program "
                "(Norm.kkt_program is None); the trajectory checks need only its value, dual and direction"
            )
        elif kkt and degree is not None:
            try:
                kind, _ = norm_kind(get_norm(own))
                n_params = sum(int(math.prod(v)) for v in _param_shapes(rec, shape_cache))
                if kind in ("lp", "spectral") and n_params > tol.kkt_max_conic_params:
                    raise ValueError(
                        f"the {own} program has {n_params} variables (> kkt_max_conic_params = "
                        f"{tol.kkt_max_conic_params}); the conic solver would take minutes per checkpoint"
                    )
                kpts = _kkt_points_for_run(loader, rec, own, tol, float(degree))
            except ValueError as exc:
                unavailable = f"KKT residual unavailable: {exc}"
        checks = check_trajectory(
            store.metrics(rec.id),
            degree=degree,
            loss=str(info.get("loss", "exponential")),
            normalized=info.get("normalized"),
            n_train=n_train,
            kkt_points=kpts,
            not_homogeneous=not_hom,
            tolerances=tol,
            kkt_unavailable=unavailable,
        )
        out.append(RunVerdict(rec.id, rec.name, rec.algorithm, own, checks))
    _flavor(out, records, store, tol)
    return VerifyReport(out)


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
    from .losses import smoothed_margin_numerator

    numer = float(smoothed_margin_numerator(ll, loss))
    row = {
        "log_loss": ll,
        "q_min": float(q.min()),
        "q_max": float(q.max()),
        "train_acc": float((q > 0).double().mean()),
    }
    for suffix, nm in {**_CROSS_NORMS, "own": N}.items():
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
            _na("flavor", "a single trajectory: the flavor comparison needs several algorithms")
        )
    else:
        rv.checks.append(_na("flavor", "precondition: " + rv.get("preconditions").reason))
    return VerifyReport([rv])


# --------------------------------------------------------------------------------------------
# command line


def resolve_runs(store: RunStore, selectors: Iterable[str | int]) -> list[int]:
    """Run ids from selectors: an id ("12"), an experiment name (all its runs), or "all"."""
    ids: list[int] = []
    sels = list(selectors)
    if not sels:
        raise ValueError("no runs given: pass run ids, experiment names, or 'all'")
    for s in sels:
        if isinstance(s, (int, np.integer)) or (isinstance(s, str) and s.strip().isdigit()):
            rid = int(s)
            store.get_run(rid)  # RunNotFoundError names the id
            ids.append(rid)
        elif str(s) == "all":
            ids += [r.id for r in store.list_runs()]
        else:
            runs = store.list_runs(experiment=str(s))
            if not runs:
                names = sorted({r.experiment for r in store.list_runs() if r.experiment})
                raise ValueError(
                    f"{s!r} is neither a run id nor an experiment in {store.path}; "
                    f"experiments: {', '.join(names) or '(none)'}"
                )
            ids += [r.id for r in runs]
    seen: set[int] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]


def main(
    run_ids: Sequence[str | int],
    db: str | Path | None = None,
    out_markdown: str | Path | None = None,
    *,
    kkt: bool = True,
    echo: Callable[[str], Any] | None = None,
) -> int:
    """``steepest verify RUN... [--db] [--out FILE]``: print the verdict table, write markdown.

    Selectors: run ids, experiment names, or "all". Returns the exit code: 0 all applicable
    predictions passed, 1 a prediction failed beyond tolerance, 3 nothing failed but some run
    could not be checked (never separated, not homogeneous, loss outside the theorem).
    """
    echo = echo or (lambda s: print(s, file=sys.stdout))
    with RunStore(db, create=False) as store:
        ids = resolve_runs(store, run_ids)
        report = verify_runs(store, ids, kkt=kkt)
    echo(report.to_text())
    if out_markdown is not None:
        atomic_write_text(Path(out_markdown), report.to_markdown())
    return report.exit_code
