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

from .checks import (
    CHECKS,
    EXIT_FAILED,
    EXIT_NOT_CHECKED,
    EXIT_OK,
    VERDICTS,
    CheckResult,
    RunVerdict,
    Tolerances,
    check_trajectory,
)
from .report import VerifyReport
from .stored import load_run, main, resolve_runs, verify_runs
from .user import trajectory_metrics, verify_model_trajectory

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
