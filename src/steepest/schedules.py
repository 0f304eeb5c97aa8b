"""Learning-rate schedules, in log space so that η ∝ 1/𝓛 stays finite at 𝓛 = e^-10000.

Every schedule is one formula (docs/theory.md §2.5, A.1):

    log η_t = log lr + log α_t − decay·log t + loss_power·(log 𝓛₀ − log 𝓛_t)
              + norm_power·log ‖θ_t‖

* ``constant``:   η = lr.
* ``power``:      η = lr · t^{-a}, a ∈ (0, 1] (Gronich & Vardi use a = 0.8; the linear theory
  needs Σ η = ∞).
* ``loss_based``: Lyu & Li's ``LossBasedLRv1``: η = α_t · 𝓛₀/𝓛_t with 𝓛₀ = log 10; after a step
  whose loss did not increase α ← α·2^{1/5}; after a loss increase (or a non-finite value)
  α ← α/2^{1/10} and the step is rolled back. Meant for *unnormalized* rules (GD), where
  η·∇𝓛 = α𝓛₀·∇log𝓛 stays O(1).
* ``norm_scaled``: η = lr · t^{-a} · ‖θ_t‖ (steps proportional to the parameter norm; see
  findings: fast, but check that the smoothed margin stays monotone).

* ``flow``: error-controlled steps that follow the steepest flow dθ/dτ = −J(∇𝓛(θ)) (no lr;
  one option, the relative tolerance ``tol``, default 0.05). The step's length in the rule's
  own norm is η = α·‖θ‖ (for unnormalized rules the lr on ∇𝓛 is η/‖∇𝓛‖_*, so ``gd`` and ``ngd``
  take the same steps). After each step the engine forms the embedded Euler–Heun error estimate

      err = ‖Δ' − Δ‖₂ / (2‖θ‖₂),   Δ = θ' − θ,   Δ' = the rule's step from θ' with the same η,

  (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4: Heun's trapezoid (Δ + Δ')/2 minus
  Euler's Δ), and the same pair in the loss,

      err_loss = |drop − (s0 + s1)/2| / ((|s0| + |s1|)/2),   s0 = ⟨−∇log𝓛(θ), Δ⟩,
                                                              s1 = ⟨−∇log𝓛(θ'), Δ'⟩,

  the share of the step's drop of log 𝓛 that left the flow (large past the loss's stability
  edge, where θ barely turns but the weights of the support examples swing). It accepts the
  step iff err ≤ tol/2 (so that the global deviation stays within tol), err_loss − floor ≤
  tol/2 (floor: the part no step length removes, at kinks; sampled by the retry after a
  loss-error rollback), log 𝓛 did not increase (Lyu & Li's rollback, arXiv 1906.05890 §5),
  everything is finite, and, for rules with state (Adam, momentum, ...), log 𝓛 fell by at most
  1. Then α ← α·min(2, max(0.2, 0.9·√(tol/(2·max(err, err_loss − floor))))); a loss increase or
  a non-finite value halves α.
  The acceptance test never looks at a margin. Option ``bundle`` (default false; norms that
  offer one: ℓ1): a step rolled back across a kink is retried, with the same α, along the
  bundle direction of the gradients on both sides (``Norm.stacked_bundle_direction``), which
  is accepted iff its drop matches its own first-order model within tol/2, and reused for up
  to 4 steps (``docs/late_phase.md``, "Bundle retries").
  The first step has α = min(tol, 10⁻³). Flow time integrates dτ = ds/(𝓛‖∇log𝓛‖_*) with
  log 𝓛 linear in s over each step (see ``docs/late_phase.md``).

For every schedule the engine also rolls back a step that produces a non-finite value and
halves α ("retry with a smaller step"); ``loss_based`` and ``flow`` also roll back loss increases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "BatchedSchedule",
    "log_step_size",
    "schedule",
    "schedule_names",
    "SCHEDULES",
]

LOG_LOSS0 = math.log(math.log(10.0))  # Lyu & Li's 𝓛₀ = log 10
FLOW_TOL = 0.05


def log_step_size(
    log_lr: Tensor | float,
    log_alpha: Tensor | float,
    t: Tensor | float,
    decay: Tensor | float | None = None,
    loss_power: Tensor | float | None = None,
    log_loss0: Tensor | float = 0.0,
    log_loss: Tensor | float = 0.0,
    norm_power: Tensor | float | None = None,
    log_norm: Tensor | float = 0.0,
) -> Tensor:
    """The schedule formula of this module's docstring, elementwise in float64:

        log η_t = log lr + log α_t − decay·log t + loss_power·(log 𝓛₀ − log 𝓛_t)
                  + norm_power·log ‖θ_t‖

    A power passed as None is zero, and its term is left out (so an infinite log there does
    not make NaN). The one copy of the formula: :meth:`Schedule.log_lr` (one run) and
    :meth:`BatchedSchedule.log_eta` (K runs, the training step) both call it."""
    out = log_lr + torch.as_tensor(log_alpha, dtype=torch.float64)
    if decay is not None:
        out = out - decay * torch.log(torch.as_tensor(t, dtype=torch.float64))
    if loss_power is not None:
        out = out + loss_power * (log_loss0 - torch.as_tensor(log_loss, dtype=torch.float64))
    if norm_power is not None:
        out = out + norm_power * torch.as_tensor(log_norm, dtype=torch.float64)
    return out


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule; see the module docstring for the formula."""

    name: str
    lr: float
    decay: float = 0.0
    loss_power: float = 0.0
    norm_power: float = 0.0
    adaptive: bool = False
    up: float = 2.0 ** (1.0 / 5.0)
    down: float = 2.0 ** (1.0 / 10.0)
    log_loss0: float = LOG_LOSS0
    min_alpha: float = 1e-50
    flow: bool = False
    tol: float = 0.0
    bundle: bool = False

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(
                f"schedule {self.name!r}: lr must be positive and finite, got {self.lr}"
            )
        if self.decay < 0:
            raise ValueError(
                f"schedule {self.name!r}: the decay exponent a must be >= 0, got {self.decay}"
            )
        if not (self.up >= 1 and self.down >= 1):
            raise ValueError(f"schedule {self.name!r}: up and down factors must be >= 1")

    def log_lr(
        self,
        t: Tensor | float,
        log_loss: Tensor | float = 0.0,
        log_norm: Tensor | float = 0.0,
        log_alpha: Tensor | float = 0.0,
    ) -> Tensor:
        """log η_t for step t ≥ 1 (tensors broadcast, so K runs are handled at once)."""
        return log_step_size(
            math.log(self.lr),
            log_alpha,
            t,
            decay=self.decay,
            loss_power=self.loss_power or None,
            log_loss0=self.log_loss0,
            log_loss=log_loss,
            norm_power=self.norm_power or None,
            log_norm=log_norm,
        )

    def __call__(
        self, t: float, log_loss: float = 0.0, norm: float = 1.0, alpha: float = 1.0
    ) -> float:
        """η_t as a float, for users' own loops."""
        if self.flow:
            raise ValueError(
                "schedule 'flow' has no formula for η_t: the engine picks each step "
                "by error control (steepest.train); use another schedule in a "
                "hand-written loop"
            )
        return float(torch.exp(self.log_lr(t, log_loss, math.log(norm), math.log(alpha))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BatchedSchedule:
    """The schedules of K runs as (K,) float64 (or bool) tensors on one device: what one
    batched step (:func:`steepest.step.step`) reads. Build it with :meth:`of`.

    ``norm_floor``: ‖θ‖ in the formula is max(‖θ‖, norm_floor); a loop that starts at θ = 0
    (the linear reproduction) needs 1, or a norm-scaled step would stay 0 forever."""

    log_lr: Tensor
    decay: Tensor
    loss_power: Tensor
    log_loss0: Tensor
    norm_power: Tensor
    adaptive: Tensor
    log_up: Tensor
    log_down: Tensor
    log_min_alpha: Tensor
    flow: Tensor
    log_tol: Tensor
    bundle: Tensor | None = None
    norm_floor: float = 0.0

    @classmethod
    def of(
        cls,
        schedules: Sequence[Schedule | Mapping[str, Any]],
        device: torch.device | str = "cpu",
        norm_floor: float = 0.0,
    ) -> BatchedSchedule:
        """From one schedule (or its ``to_dict()``) per run."""
        sch = [s.to_dict() if isinstance(s, Schedule) else dict(s) for s in schedules]
        if not sch:
            raise ValueError("a batch needs at least one schedule")
        f64 = dict(dtype=torch.float64, device=device)

        def col(fn: Any, **kw: Any) -> Tensor:
            return torch.tensor([fn(s) for s in sch], **(kw or f64))

        return cls(
            log_lr=col(lambda s: math.log(s["lr"])),
            decay=col(lambda s: s["decay"]),
            loss_power=col(lambda s: s["loss_power"]),
            log_loss0=col(lambda s: s.get("log_loss0", LOG_LOSS0)),
            norm_power=col(lambda s: s["norm_power"]),
            adaptive=col(lambda s: bool(s["adaptive"]), device=device),
            log_up=col(lambda s: math.log(s["up"])),
            log_down=col(lambda s: math.log(s["down"])),
            log_min_alpha=col(lambda s: math.log(s["min_alpha"])),
            flow=col(lambda s: bool(s.get("flow", False)), device=device),
            # The local error bound is tol/2: with it the global deviation from a tight
            # solve_ivp stayed within tol in every smooth test (tests/test_flow.py); with tol
            # it did not.
            log_tol=col(lambda s: math.log(s["tol"] / 2) if s.get("flow") else 0.0),
            bundle=col(lambda s: bool(s.get("bundle", False)), device=device),
            norm_floor=float(norm_floor),
        )

    def __post_init__(self) -> None:
        # Decided once, on the host, so that a step never branches on a device tensor; a term
        # that is zero for every run is left out (x + 0 = x: the same numbers, fewer ops).
        for name, col in (
            ("any_decay", self.decay),
            ("any_loss_power", self.loss_power),
            ("any_norm_power", self.norm_power),
        ):
            object.__setattr__(self, name, bool((col != 0).any()))
        object.__setattr__(self, "any_flow", bool(self.flow.any()))
        if self.bundle is None:
            object.__setattr__(self, "bundle", torch.zeros_like(self.flow))
        object.__setattr__(self, "any_bundle", bool(self.bundle.any()))
        object.__setattr__(self, "any_adaptive", bool(self.adaptive.any()))
        # log α falls by this after a rollback: ÷down (loss-based), ÷2 (others); flow runs set
        # their own α (``steepest.step``).
        halve = torch.full_like(self.log_down, math.log(2.0))
        shrink = torch.where(self.adaptive, self.log_down, halve)
        shrink = torch.where(self.flow, torch.zeros_like(shrink), shrink)
        object.__setattr__(self, "log_shrink", shrink)

    def __len__(self) -> int:
        return int(self.log_lr.shape[0])

    def log_eta(
        self, t: Tensor, log_loss: Tensor, log_alpha: Tensor, norm: Tensor | None = None
    ) -> Tensor:
        """log η_t per run (:func:`log_step_size`); ``norm`` is ‖θ‖ in each run's own norm,
        needed only when ``any_norm_power``."""
        log_norm: Tensor | float = 0.0
        if self.any_norm_power:
            if norm is None:
                raise ValueError("a norm-scaled schedule needs the parameter norm")
            log_norm = torch.log(norm.clamp(min=self.norm_floor) if self.norm_floor > 0 else norm)
        return log_step_size(
            self.log_lr,
            log_alpha,
            t,
            decay=self.decay if self.any_decay else None,
            loss_power=self.loss_power if self.any_loss_power else None,
            log_loss0=self.log_loss0,
            log_loss=log_loss,
            norm_power=self.norm_power if self.any_norm_power else None,
            log_norm=log_norm,
        )


def _constant(lr: float) -> Schedule:
    return Schedule("constant", lr)


def _power(lr: float, a: float = 0.5) -> Schedule:
    if not (0 < a <= 1):
        raise ValueError(f"schedule 'power': a must be in (0, 1], got {a}")
    return Schedule("power", lr, decay=a)


def _loss_based(
    lr: float = 0.1, up: float = 2.0 ** (1 / 5), down: float = 2.0 ** (1 / 10)
) -> Schedule:
    return Schedule("loss_based", lr, loss_power=1.0, adaptive=True, up=up, down=down)


def _norm_scaled(lr: float, a: float = 0.0) -> Schedule:
    return Schedule("norm_scaled", lr, decay=a, norm_power=1.0)


def _flow(tol: float = FLOW_TOL, bundle: bool = False) -> Schedule:
    if not (0 < tol < 1):
        raise ValueError(f"schedule 'flow': tol must be in (0, 1), got {tol}")
    if not isinstance(bundle, bool):
        raise ValueError(f"schedule 'flow': bundle must be true or false, got {bundle!r}")
    # lr is the first step's length relative to ‖θ‖ in the rule's own norm; the controller
    # takes over from there.
    return Schedule(
        "flow", min(tol, 1e-3), norm_power=1.0, flow=True, tol=tol, min_alpha=1e-30, bundle=bundle
    )


SCHEDULES = {
    "constant": _constant,
    "power": _power,
    "loss_based": _loss_based,
    "norm_scaled": _norm_scaled,
    "flow": _flow,
}


def schedule_names() -> list[str]:
    return sorted(SCHEDULES)


def schedule(name: str, **kwargs: Any) -> Schedule:
    """Build a schedule by name: ``schedule("power", lr=0.1, a=0.8)``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(schedule_names())}")
    import inspect

    factory = SCHEDULES[name]
    params = inspect.signature(factory).parameters
    bad = [k for k in kwargs if k not in params]
    if bad:
        raise ValueError(
            f"schedule {name!r} does not take {', '.join(map(repr, bad))}; valid options: {', '.join(params)}"
        )
    return factory(**kwargs)
