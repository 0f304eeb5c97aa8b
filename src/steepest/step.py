"""One batched training step of K runs: the late-phase numerics, written once.

    state', outcome = step(state, objective, groups, schedule, batch)

is a pure function: it reads a :class:`StepState` (parameters stacked along a leading run
axis, their gradient of log 𝓛, the step-size controller's state, flow time, ...) and returns a
new one and a :class:`StepOutcome` (which runs accepted, which rolled back, the lr used). It
never edits its inputs, so a caller may keep the old state (a snapshot) at no cost. Every loop
of the package steps through it: the engine's :class:`steepest.engine.BatchRunner` (which adds
logging, checkpoints and the store), the linear reproduction and Adam's ε-drift trace
(:func:`run_steps`, with a per-step hook for their records).

Late-phase numerics (docs/theory.md §2.5, §3.8, §6 item 3):

* The loss is only ever handled as log 𝓛. Rules receive ∇log𝓛 = ∇𝓛/𝓛, which is O(1) at
  𝓛 = e^-10000. Normalized directions are scale-free; an unnormalized step
  η·J(∇𝓛) = (η𝓛)·J(∇log𝓛) is taken with the learning rate exp(log η + log 𝓛), so
  constant-step GD is faithful (it really does stall) and the loss-based schedule
  η = α𝓛₀/𝓛 gives an O(1) step. Stateful rules are kept exact by ``rescale_state`` (their
  state is expressed in the frame of the log 𝓛 it last saw).
* A step that produces a non-finite value is rolled back and retried with a smaller step
  (α halves). The ``loss_based`` schedule also rolls back a loss increase (Lyu & Li,
  arXiv 1906.05890 §5); ``flow`` controls the step's local error (``steepest.schedules``)
  and, with ``bundle``, retries a step rolled back across a kink along the bundle direction
  of the gradients on both sides (``Norm.stacked_bundle_direction``).
* Flow time is accumulated in log space: log τ += log η for unnormalized steps and
  log(η/‖∇𝓛‖_*) = log η − log 𝓛 − log ‖∇log𝓛‖_* for normalized ones (docs/theory.md §3.8); under
  ``flow`` with the log-integrand taken linear over the step (:func:`log_expm1_ratio`).

No host-device synchronization happens inside :func:`step`: acceptance, rollback and the step
size stay on the device (the engine reads them one step later on a GPU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .algorithms import Algorithm, SteepestDescentRule
from .norms import Norm
from .schedules import BatchedSchedule
from .stacked import (
    dot_runs,
    finite_or_zero,
    gather_runs,
    scatter_runs,
    select_runs,
    tree_map,
    where_runs,
)

__all__ = [
    "RuleGroup",
    "StepState",
    "StepOutcome",
    "Objective",
    "step",
    "initial_state",
    "run_steps",
    "log_expm1_ratio",
    "MAX_FLOW_DROP",
    "MAX_FLOW_DROP_STATEFUL",
]

MAX_FLOW_DROP = 50.0  # the largest drop of log 𝓛 in one accepted flow step (stateless rules)
MAX_FLOW_DROP_STATEFUL = 1.0  # ... and for rules with state (see ``_flow_errors``)
BUNDLE_STEPS = 4  # accepted steps along one bundle direction before U(g) is tried again


class Objective(Protocol):
    """What :func:`step` needs to know about the model and the data (the engine's
    :class:`steepest.engine.Engine` is one; the linear reproduction has a small one)."""

    K: int
    device: torch.device
    dtype: torch.dtype

    def evaluate(
        self, params: list[Tensor], batch: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """(∇log𝓛 per run, log 𝓛 (K,) in float64, outputs (K, n, ...)) at stacked params,
        on the minibatch ``batch`` (indices; None: the full training set)."""
        ...

    def batch_q_min(self, out: Tensor, batch: Tensor | None = None) -> Tensor:
        """min_i y_i f(x_i) per run (K,) from the outputs of :meth:`evaluate` on ``batch``."""
        ...


@dataclass(frozen=True, eq=False)
class RuleGroup:
    """Runs that share one algorithm (same name and options); their lrs and schedules may
    differ. ``own`` is the norm whose margin the rule maximizes (docs/theory.md §3.1)."""

    algo: Algorithm
    indices: list[int]
    K: int
    own: Norm
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        idx = (
            None
            if list(self.indices) == list(range(self.K))
            else torch.tensor(self.indices, device=self.device)
        )
        object.__setattr__(self, "idx", idx)
        object.__setattr__(self, "k", len(self.indices))
        # rules whose state lives in the frame of log 𝓛 (moments, momentum)
        object.__setattr__(
            self, "rescales", type(self.algo).rescale_state is not Algorithm.rescale_state
        )
        # no state, direction U(g) in the own norm: the flow schedule reuses its directions
        object.__setattr__(
            self, "plain", isinstance(self.algo, SteepestDescentRule) and self.algo.norm is self.own
        )
        # plain, and the norm has a bundle direction for retries across kinks
        object.__setattr__(self, "bundles", self.plain and self.own.offers_bundle)


@dataclass(frozen=True, eq=False)
class StepState:
    """The state of K runs between two steps (every tensor has the run axis first).

    ``g``, ``ll``, ``out``, ``qmin``: ∇log𝓛, log 𝓛, outputs and q_min at ``params`` (on the
    minibatch of the last accepted step). ``algo_states``: one per :class:`RuleGroup`.
    ``frame``: the log 𝓛 each rule's state is expressed in. ``log_alpha``: the step-size
    controller's log α. ``rej_log_alpha``, ``log_floor``: the flow schedule's last α rolled
    back for its loss error (+inf: none) and its kink floor (−inf: none). ``dir_cache``: the
    flow schedule's (direction, ‖g‖_*) at θ per group, computed one step early (None: not yet).
    ``sliding``: per run, 0, or how many steps along the bundle direction in ``dir_cache``
    were tried (a retry across a kink; None: none yet); no function of θ, so checkpoints keep
    it and the directions.
    ``t``: accepted steps; ``iteration``: proposals (accepted or not). ``done``: runs that
    take no more steps."""

    params: list[Tensor]
    g: list[Tensor]
    ll: Tensor
    out: Tensor
    qmin: Tensor
    algo_states: list[Any]
    frame: Tensor
    log_alpha: Tensor
    rej_log_alpha: Tensor
    log_floor: Tensor
    log_flow: Tensor
    last_log_lr: Tensor
    rollbacks: Tensor
    t: Tensor
    done: Tensor
    iteration: int = 0
    dir_cache: list[Any] | None = None
    sliding: Tensor | None = None

    def replace(self, **changes: Any) -> StepState:
        return dataclasses.replace(self, **changes)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StepState))


@dataclass(frozen=True, eq=False)
class StepOutcome:
    """What one step did, per run (device tensors, (K,)).

    ``accepted``: the step was kept. ``rolled_back``: an active run's step was not kept.
    ``gave_up``: α fell below the schedule's ``min_alpha`` (the run cannot make a step).
    ``log_lr``: log η of the proposal (the schedule's step size). ``active``: runs that were
    not done before the step. ``batch``: the minibatch the new point was evaluated on."""

    accepted: Tensor
    rolled_back: Tensor
    gave_up: Tensor
    log_lr: Tensor
    active: Tensor
    batch: Tensor | None


def initial_state(
    objective: Objective,
    groups: Sequence[RuleGroup],
    params: list[Tensor],
    batch: Tensor | None = None,
) -> StepState:
    """The state at ``params`` before any step: evaluated there, α = 1, no flow time yet."""
    K, dev = objective.K, objective.device
    g, ll, out = objective.evaluate(params, batch)
    f64 = dict(dtype=torch.float64, device=dev)
    return StepState(
        params=list(params),
        g=list(g),
        ll=ll,
        out=out,
        qmin=objective.batch_q_min(out, batch),
        algo_states=[grp.algo.stacked_init(gather_runs(params, grp.idx)) for grp in groups],
        frame=torch.zeros(K, **f64),
        log_alpha=torch.zeros(K, **f64),
        rej_log_alpha=torch.full((K,), math.inf, **f64),
        log_floor=torch.full((K,), -math.inf, **f64),
        log_flow=torch.full((K,), -math.inf, **f64),
        last_log_lr=torch.full((K,), -math.inf, **f64),
        rollbacks=torch.zeros(K, dtype=torch.long, device=dev),
        t=torch.zeros(K, dtype=torch.long, device=dev),
        done=torch.zeros(K, dtype=torch.bool, device=dev),
    )


def finite_runs(K: int, tensors: Sequence[Tensor]) -> Tensor:
    """(K,) bool: every entry of the run is finite. A per-run sum is non-finite whenever an
    entry is (one reduction pass instead of isfinite + all); it can also overflow with finite
    entries near 1e308, which only rolls the step back: the safe side."""
    ok = torch.isfinite(tensors[0].reshape(K, -1).sum(dim=1))
    for x in tensors[1:]:
        ok = ok & torch.isfinite(x.reshape(K, -1).sum(dim=1))
    return ok


def log_expm1_ratio(x: Tensor) -> Tensor:
    """log((e^x − 1)/x), for any real x (the limit 0 at x = 0).

    One step's flow time: dτ = ∫ ds/‖∇𝓛‖_* = ∫ e^{−log𝓛}/‖∇log𝓛‖_* ds. With the log of the
    integrand linear in s over the step, from a (at θ) to b (at θ'), the integral is
    ds·e^a·(e^x − 1)/x with x = b − a. The left Riemann sum (factor 1) undercounts by about
    e^x/x, which compounds when every step drops the loss by O(1)."""
    small = x.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(x), x)
    pos_x = safe.clamp(min=1e-300)
    pos = pos_x + torch.log(-torch.expm1(-pos_x)) - torch.log(pos_x)
    neg_x = safe.clamp(max=-1e-300)
    neg = torch.log(-torch.expm1(neg_x)) - torch.log(-neg_x)
    return torch.where(small, x / 2, torch.where(safe > 0, pos, neg))


def step(
    state: StepState,
    objective: Objective,
    groups: Sequence[RuleGroup],
    schedule: BatchedSchedule,
    batch: Tensor | None = None,
    *,
    transform: Callable[[list[Tensor], StepState], list[Tensor]] | None = None,
) -> tuple[StepState, StepOutcome]:
    """One step of every run that is not done: propose, evaluate, accept or roll back.

    ``groups`` partition the K runs; ``schedule`` holds their step sizes; ``batch`` is the
    minibatch the proposal is evaluated on (None: full batch). ``transform(proposal, state)``
    may move the proposed parameters before they are evaluated (the linear reproduction's
    progressive rescaling). Returns the new state (a rolled-back run keeps its parameters,
    gradient and rule state, with α lowered) and what happened."""
    K, dev = objective.K, objective.device
    sch = schedule
    active = ~state.done
    ll = state.ll
    t_next = state.t + 1
    own_norm = None
    if sch.any_norm_power:
        own_norm = torch.empty(K, dtype=torch.float64, device=dev)
        for grp in groups:
            own_norm = scatter_runs(
                own_norm,
                grp.idx,
                grp.own.stacked(gather_runs(state.params, grp.idx)).to(torch.float64),
            )
    log_eta = sch.log_eta(t_next, ll, state.log_alpha, own_norm)
    # Groups partition the runs: with several groups, fill fresh tensors in place (one
    # out-of-place index_copy per group would copy every parameter once per group).
    new_params = (
        list(state.params) if len(groups) == 1 else [torch.empty_like(p) for p in state.params]
    )
    new_states = []
    log_dtau = torch.empty(K, dtype=torch.float64, device=dev)
    flow_parts = []
    for gi, grp in enumerate(groups):
        algo = grp.algo
        pg, gg = gather_runs(state.params, grp.idx), gather_runs(state.g, grp.idx)
        ll_g = gather_runs(ll, grp.idx)
        st = state.algo_states[gi]
        if grp.rescales:  # stateless-in-scale rules (plain steepest descent) skip the call
            st = algo.stacked_rescale_state(st, gather_runs(state.frame, grp.idx) - ll_g)
        eta_g = gather_runs(log_eta, grp.idx)
        plain = sch.any_flow and grp.plain
        if sch.any_flow:
            # (U(g) for plain rules, else None; ‖g‖_* in the own norm) at this θ: computed one
            # step ago, when it was θ', by the error estimate.
            # With bundle retries: (direction taken, ‖g‖_*, U(g)).
            here = state.dir_cache[gi] if state.dir_cache is not None else None
            if here is None:
                here = (
                    algo.norm.stacked_direction_and_dual(gg)
                    if plain
                    else (None, grp.own.stacked_dual(gg))
                )
                if grp.bundles and sch.any_bundle:
                    here = (here[0], here[1], here[0])
            u0, dual0 = here[0], here[1]
        if sch.any_flow and not algo.normalized:
            # flow: η is the step's length in the own norm, so the lr on ∇𝓛 is η/‖∇𝓛‖_*.
            d0 = dual0.to(torch.float64)
            d0 = torch.where(d0 > 0, d0, torch.ones_like(d0))
            eta_g = torch.where(gather_runs(sch.flow, grp.idx), eta_g - ll_g - torch.log(d0), eta_g)
            log_eta = scatter_runs(log_eta, grp.idx, eta_g)
        log_lr_eff = eta_g if algo.normalized else eta_g + ll_g
        lr_eff = torch.exp(log_lr_eff).to(pg[0].dtype)
        if plain:
            upd, st_new = algo.stacked_step(pg, u0, dual0, st, lr_eff)
        else:
            upd, st_new = algo.stacked_update(pg, gg, st, lr_eff)
        for j in range(len(new_params)):
            if grp.idx is None:
                new_params[j] = upd[j]
            else:
                new_params[j].index_copy_(0, grp.idx, upd[j])
        new_states.append(st_new)
        if sch.any_flow:
            flow_parts.append((pg, gg, st_new, lr_eff, here))
        if algo.normalized:
            dual = (
                st_new["grad_dual"]
                if isinstance(st_new, dict) and "grad_dual" in st_new
                else grp.own.stacked_dual(gg)
            )
            dual = dual.to(torch.float64)
            # g = 0 (e.g. every ReLU dead): the step moves nowhere, so no flow time passes.
            safe = torch.where(dual > 0, dual, torch.ones_like(dual))
            dt = torch.where(
                dual > 0, eta_g - ll_g - torch.log(safe), torch.full_like(dual, -math.inf)
            )
        else:
            dt = eta_g
        log_dtau = scatter_runs(log_dtau, grp.idx, dt)
    if transform is not None:
        new_params = transform(new_params, state)
    g2, ll2, out2 = objective.evaluate(new_params, batch)
    # Overflowing parameters show up in the outputs, so outputs, loss and gradients suffice.
    finite = finite_runs(K, g2) & finite_runs(K, [out2]) & torch.isfinite(ll2)
    no_increase = ll2 <= ll
    accept = active & finite & (~sch.adaptive | no_increase)
    log_alpha, rej_log_alpha, log_floor = state.log_alpha, state.rej_log_alpha, state.log_floor
    if sch.any_flow:
        # a step too small to change log 𝓛 beyond rounding is no increase
        slack = 64 * torch.finfo(objective.dtype).eps * ll.abs().clamp(min=1.0)
        no_increase_flow = ll2 <= ll + slack
        (
            log_err,
            log_err_loss,
            log_err_model,
            log_dual0,
            log_dual1,
            next_dirs,
            retry_dirs,
            slide_next,
        ) = _flow_errors(state, groups, flow_parts, new_params, g2, ll2, sch.any_bundle)
        if sch.any_bundle:  # (decided on the host: batches without bundle retries skip this)
            sliding = state.sliding if state.sliding is not None else torch.zeros_like(state.t)
            on_bundle = sliding > 0
            # A bundle step is tangent to the kink (⟨g, Δ⟩ = ⟨h, Δ⟩ for the gradients on both
            # sides): its loss error is the drop's deviation from ⟨−g, Δ⟩ alone, with no floor.
            log_err_loss = torch.where(on_bundle, log_err_model, log_err_loss)
        log_err = torch.nan_to_num(log_err, nan=math.inf)
        log_err_loss = torch.nan_to_num(log_err_loss, nan=math.inf)
        ok_dir = log_err <= sch.log_tol
        # The loss error of a step is f + c·h: c·h from the step (first order), f a floor
        # from kinks (a ReLU switching on a support example, sign descent's coordinates
        # chattering where their gradient crosses 0), which no step length removes: on
        # MNIST it stayed at 2-4% for sign descent from α = 1e-1 down to 1e-13. The retry
        # after a loss-error rollback is at most half as long; its error is a sample of the
        # floor. The floor is the largest such sample, shrunk by 1% per accepted step, and
        # only the error above it is held to tol/2. (Fitting the line through the two
        # errors instead, or keeping only the last sample, let the noise of the floor
        # ratchet α down to 1e-14: docs/late_phase.md.)
        # (a retry that raised the loss overshot: its error is not a floor)
        probe = (
            torch.isfinite(rej_log_alpha)
            & (log_alpha <= rej_log_alpha - math.log(2.0))
            & torch.isfinite(log_err_loss)
            & finite
            & no_increase_flow
        )
        if sch.any_bundle:
            probe = probe & ~on_bundle
        log_floor = torch.where(probe, torch.maximum(log_floor, log_err_loss), log_floor)
        rej_log_alpha = torch.where(probe, torch.full_like(rej_log_alpha, math.inf), rej_log_alpha)
        excess = (torch.exp(log_err_loss) - torch.exp(log_floor)).clamp(min=0.0)
        log_err_loss = (
            torch.where(on_bundle, log_err_loss, torch.log(excess))
            if sch.any_bundle
            else torch.log(excess)
        )
        ok_loss = log_err_loss <= sch.log_tol
        within = finite & no_increase_flow & ok_dir & ok_loss
        accept = torch.where(sch.flow, active & within, accept)
    rejected = active & ~accept
    # α: ×up after a good loss-based step; ÷down (loss-based) or ÷2 (others) after a rollback.
    if sch.any_adaptive:
        log_alpha = log_alpha + torch.where(
            accept & sch.adaptive, sch.log_up, torch.zeros_like(log_alpha)
        )
    if sch.any_flow:
        # Error control (Hairer, Nørsett & Wanner, Solving ODEs I, §II.4): a local error
        # estimate of order O(h²) gives the next step h·min(2, max(0.2, 0.9·√(tol/err))).
        log_err_ctl = torch.maximum(log_err, log_err_loss)
        fac = (math.log(0.9) + 0.5 * (sch.log_tol - log_err_ctl)).clamp(
            math.log(0.2), math.log(2.0)
        )
        # A loss increase (or a non-finite value) halves α. (A ceiling learned from such
        # rollbacks cut them from ~50% to 5% of the steps, but rode the edge: the smoothed
        # margin fell more often for GD and coordinate descent stalled; docs/late_phase.md.)
        bad = active & ~(finite & no_increase_flow)
        fac = torch.where(bad, torch.full_like(fac, -math.log(2.0)), fac)
        # After a loss-error rollback the retry is at most half as long (a first-order
        # error halves with it; a floor does not).
        loss_rejected = sch.flow & active & finite & no_increase_flow & ok_dir & ~ok_loss
        fac = torch.where(loss_rejected, fac.clamp(max=-math.log(2.0)), fac)
        # A plain step rolled back where the bundle of g and g' points elsewhere: the retry
        # goes along the bundle direction with the same α (the step length was not the
        # problem, the kink between θ and θ' was), and is no floor sample.
        if sch.any_bundle:
            slide = sch.bundle & active & ~accept & finite & ~on_bundle & slide_next
            fac = torch.where(slide, torch.zeros_like(fac), fac)
            loss_rejected = loss_rejected & ~slide
            # An accepted bundle step is taken again, up to BUNDLE_STEPS times in all: while
            # the run slides along the kink the tangent barely turns, and each try is checked
            # against its own first-order model as the first was. Then U(g') is tried again.
            reuse = accept & on_bundle & (sliding < BUNDLE_STEPS)
            sliding = torch.where(
                slide,
                torch.ones_like(sliding),
                torch.where(reuse, sliding + 1, torch.zeros_like(sliding)),
            )
        rej_log_alpha = torch.where(loss_rejected, log_alpha, rej_log_alpha)
        log_floor = torch.where(accept, log_floor + math.log(0.99), log_floor)
        log_alpha = torch.where(sch.flow & active, log_alpha + fac, log_alpha)
    log_alpha = log_alpha - torch.where(rejected, sch.log_shrink, torch.zeros_like(sch.log_shrink))
    qmin2 = objective.batch_q_min(out2, batch)
    # A rejected run keeps its state as it was before the rescale (and its frame). A new
    # list, never an edit of the old one: snapshots of earlier states still hold that one.
    algo_states = [
        select_runs(gather_runs(accept, grp.idx), new_states[gi], state.algo_states[gi])
        for gi, grp in enumerate(groups)
    ]
    dir_cache = None
    if sch.any_flow:
        # Each run's direction for its next step: U(g') at θ' if accepted. After a rollback the
        # retry starts at θ again, along U(g), or, where the norm has one, along the bundle
        # direction of g and g' (tangent to a kink between θ and θ': greedy coordinate descent
        # stalled at ReLU kinks without it; ``Norm.stacked_bundle_direction``).
        dir_cache = []
        for gi, grp in enumerate(groups):
            here, nxt = flow_parts[gi][4], next_dirs[gi]
            if grp.bundles and sch.any_bundle:
                taken, d0, plain_u = here
                u1, d1 = nxt
                bundle = retry_dirs[gi] if retry_dirs[gi] is not None else plain_u
                # rolled back: retry along the bundle, or (a bundle step rolled back) along U(g)
                here = select_runs(
                    gather_runs(slide, grp.idx), (bundle, d0, plain_u), (plain_u, d0, plain_u)
                )
                nxt = select_runs(gather_runs(reuse, grp.idx), (taken, d1, u1), (u1, d1, u1))
            dir_cache.append(select_runs(gather_runs(accept, grp.idx), nxt, here))
        x = (ll - ll2) + (log_dual0 - log_dual1)  # log-integrand change over the step
        quad = log_dtau + log_expm1_ratio(torch.nan_to_num(x))
        log_dtau = torch.where(sch.flow & torch.isfinite(x), quad, log_dtau)
    new = StepState(
        params=[where_runs(accept, n, o) for n, o in zip(new_params, state.params, strict=True)],
        g=[where_runs(accept, n, o) for n, o in zip(g2, state.g, strict=True)],
        ll=torch.where(accept, ll2, ll),
        out=where_runs(accept, out2, state.out) if batch is None else out2,
        qmin=torch.where(accept, qmin2, state.qmin),
        algo_states=algo_states,
        frame=torch.where(accept, ll, state.frame),
        log_alpha=log_alpha,
        rej_log_alpha=rej_log_alpha,
        log_floor=log_floor,
        log_flow=torch.where(accept, torch.logaddexp(state.log_flow, log_dtau), state.log_flow),
        last_log_lr=torch.where(accept, log_eta, state.last_log_lr),
        rollbacks=state.rollbacks + rejected.to(torch.long),
        t=state.t + accept.to(torch.long),
        done=state.done,
        iteration=state.iteration + 1,
        dir_cache=dir_cache,
        sliding=sliding if sch.any_bundle else state.sliding,
    )
    gave_up = active & (log_alpha < sch.log_min_alpha)
    return new, StepOutcome(
        accepted=accept,
        rolled_back=rejected,
        gave_up=gave_up,
        log_lr=log_eta,
        active=active,
        batch=batch,
    )


def _flow_errors(
    state: StepState,
    groups: Sequence[RuleGroup],
    parts: list[Any],
    new_params: list[Tensor],
    g2: list[Tensor],
    ll2: Tensor,
    any_bundle: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, list[Any], Any, Tensor]:
    """log of each flow run's two local error estimates for the step just taken, in
    direction and in the loss (−inf elsewhere), log ‖g‖_* at θ and at θ' in the own norm
    (for the step's flow time), per group the (direction or None, ‖g‖_*) at θ', which
    the next step starts from if this one is kept; the loss error against the step's own
    first-order model; per group the bundle direction of g and g' and U(g) (or None), for a
    retry if the step is rolled back; and the runs whose bundle differs from the step taken.

    Embedded Euler–Heun pair: the step Δ = θ' − θ is explicit Euler; Heun's trapezoid would
    take (Δ + Δ')/2, where Δ' is the step the rule takes from θ' with the same length. Their
    difference, ‖Δ' − Δ‖₂/2, estimates Euler's local error (Hairer, Nørsett & Wanner,
    Solving ODEs I, §II.4); it is divided by max(‖θ‖₂, ‖Δ‖₂) to be relative. No extra
    gradient: g(θ') is the next step's gradient anyway."""
    K, dev = state.ll.shape[0], state.ll.device
    # A non-finite step is rejected anyway; zeros keep the SVDs of spectral rules defined.
    new_params = [finite_or_zero(x) for x in new_params]
    g2 = [finite_or_zero(x) for x in g2]
    log_err = torch.full((K,), -math.inf, dtype=torch.float64, device=dev)
    log_err_loss = torch.full_like(log_err, -math.inf)
    log_d0, log_d1 = torch.zeros_like(log_err), torch.zeros_like(log_err)
    next_dirs: list[Any] = []
    retry_dirs: list[Any] = []
    slide_next = torch.zeros(K, dtype=torch.bool, device=dev)
    log_err_model = (
        torch.full((K,), -math.inf, dtype=torch.float64, device=dev) if any_bundle else None
    )
    for gi, grp in enumerate(groups):
        pg, gg, st_new, lr_eff, here = parts[gi]
        dual0 = here[1]
        algo = grp.algo
        N = grp.own
        pn, gn = gather_runs(new_params, grp.idx), gather_runs(g2, grp.idx)
        drop = gather_runs(finite_or_zero(state.ll - ll2), grp.idx)
        d0 = dual0.to(torch.float64)
        if grp.plain:
            # Plain steepest descent: Δ' = η·U(g') with η the step's length in the norm
            # (for unnormalized rules lr·‖g‖_*); one direction at θ', no state.
            u1, dual1 = N.stacked_direction_and_dual(gn)
            eta = lr_eff if algo.normalized else lr_eff * dual0
            nxt = [
                b - eta.reshape((-1,) + (1,) * (b.dim() - 1)) * u
                for b, u in zip(pn, u1, strict=True)
            ]
            next_dirs.append((u1, dual1))
            bundle = N.stacked_bundle_direction(gg, gn) if grp.bundles and any_bundle else None
            retry_dirs.append(bundle)
            if bundle is not None:
                # A retry along it is new only if it is less steep for g than U(g), which was
                # just tried (or was a retry already: then ``step`` does not retry again).
                slide_next = scatter_runs(slide_next, grp.idx, dot_runs(gg, bundle, grp.k) < d0)
            max_drop = MAX_FLOW_DROP
        else:
            dual1 = N.stacked_dual(gn)
            next_dirs.append((None, dual1))
            retry_dirs.append(None)
            # A rule with state (moments, momentum) averages past gradients of 𝓛: a step that
            # drops log 𝓛 by more than 1 makes the last gradient outweigh the new one e-fold
            # in that average, so the rule no longer follows its own flow; such steps are
            # rejected (and the state rescaled by e^{drop} could overflow). Plain rules: 50.
            # (Only plain steepest rules are unnormalized, so lr_eff is the step length here.)
            max_drop = MAX_FLOW_DROP_STATEFUL if grp.rescales else MAX_FLOW_DROP
            st2 = st_new
            if grp.rescales:
                st2 = algo.stacked_rescale_state(st_new, drop.clamp(max=max_drop))
            st2 = tree_map(finite_or_zero, st2)
            nxt, _ = algo.stacked_update(pn, gn, st2, lr_eff)
        d1 = dual1.to(torch.float64)
        log_d0 = scatter_runs(log_d0, grp.idx, torch.log(d0))
        log_d1 = scatter_runs(log_d1, grp.idx, torch.log(d1))
        k = grp.k
        step_now = [b - a for a, b in zip(pg, pn, strict=True)]  # Δ = θ' − θ
        step_next = [c - b for b, c in zip(pn, nxt, strict=True)]  # Δ' = θ'' − θ'
        diff = torch.cat(
            [(d - d1).reshape(k, -1) for d, d1 in zip(step_now, step_next, strict=True)], 1
        )
        # Relative to ‖θ‖₂, or to the step itself where that is longer: at θ = 0 (the linear
        # reproduction's start) ‖θ‖₂ = 0 would reject every step.
        size = torch.cat([a.reshape(k, -1) for a in pg], 1).norm(dim=1)
        size = torch.maximum(size, torch.cat([d.reshape(k, -1) for d in step_now], 1).norm(dim=1))
        err = diff.norm(dim=1).to(torch.float64) / (2 * size.to(torch.float64))
        # The same pair in the loss. The flow lowers log 𝓛 by ∫⟨−∇log𝓛, dθ⟩; over the
        # step its trapezoid is (s0 + s1)/2, s0 = ⟨−g, Δ⟩ and s1 = ⟨−g', Δ'⟩ (η‖g‖_* and
        # η‖g'‖_* for plain rules). The actual drop differs from it by a share O(h) on
        # the flow, and by O(1) past the loss's stability edge, where θ still moves little
        # in direction (the error above stays small) while the weights e^{−q_i}/𝓛 that
        # set the margins swing. Without this term, sign descent on the linear sparse
        # teacher ran at that edge and ended at 0.50 of the ℓ∞ max margin
        # (docs/late_phase.md).
        s0 = -dot_runs(gg, step_now, k)
        s1 = -dot_runs(gn, step_next, k)
        scale = 0.5 * (s0.abs() + s1.abs())
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        err_loss = (drop - 0.5 * (s0 + s1)).abs() / scale
        if any_bundle:  # against the step's own first-order model only (bundle steps: ``step``)
            err_model = (drop - s0).abs() / torch.where(s0.abs() > 0, s0.abs(), torch.ones_like(s0))
            log_err_model = scatter_runs(log_err_model, grp.idx, torch.log(err_model))
        err = torch.where(drop > max_drop, torch.full_like(err, math.inf), err)
        log_err = scatter_runs(log_err, grp.idx, torch.log(err))
        log_err_loss = scatter_runs(log_err_loss, grp.idx, torch.log(err_loss))
    return (log_err, log_err_loss, log_err_model, log_d0, log_d1, next_dirs, retry_dirs, slide_next)


def run_steps(
    state: StepState,
    objective: Objective,
    groups: Sequence[RuleGroup],
    schedule: BatchedSchedule,
    steps: int,
    *,
    on_step: Callable[[StepState, StepOutcome], bool | None] | None = None,
    transform: Callable[[list[Tensor], StepState], list[Tensor]] | None = None,
    max_iterations: int | None = None,
) -> StepState:
    """Full-batch :func:`step` until every run has ``steps`` accepted steps or gives up (α
    below the schedule's ``min_alpha``); a plain loop for callers that keep their own records.

    ``on_step(state, outcome)`` is called after every step (accepted or not); returning True
    ends the loop there. ``max_iterations`` bounds the proposals (default: 100·steps + 1000).
    The state returned has ``done`` set for the runs that ended."""
    limit = 100 * steps + 1000 if max_iterations is None else max_iterations
    state = state.replace(done=state.done | (state.t >= steps))
    for _ in range(limit):
        if bool(state.done.all()):
            break
        state, outcome = step(state, objective, groups, schedule, transform=transform)
        state = dataclasses.replace(state, done=state.done | (state.t >= steps) | outcome.gave_up)
        if on_step is not None and on_step(state, outcome):
            break
    return state
