"""Linear sanity experiment: steepest descent w.r.t. N reaches the exact max-N-margin (docs/theory.md §3.7,
§4.5, A.2; Gunasekar, Lee, Soudry & Srebro 2018).

For a linear model f(θ; x) = ⟨θ, x⟩ on separable data with the exponential loss, normalized
steepest descent w.r.t. a norm N drives γ_N(θ) = min_i y_i⟨θ, x_i⟩ / ‖θ‖_N to
γ*_N = max_{‖w‖_N ≤ 1} min_i y_i⟨w, x_i⟩ (:func:`steepest.oracles.max_margin`), while every other
algorithm stays below γ*_N in norm N (the "flavor matrix"). Adam with ε = 0 follows sign descent
(ℓ∞); with a large ε its late phase is gradient descent with momentum (ℓ2).

Training uses a small loop (:func:`train_linear`) instead of the engine's runner, with no store
or checkpoints: a 60-parameter model needs ~10⁴–10⁵ steps and records a few numbers per step. Its
steps are the package's one training step (:func:`steepest.step.step`), so every late-phase
convention of the engine holds: the rules receive ∇log𝓛, unnormalized rules take
exp(log η + log 𝓛), stateful rules are rescaled by log 𝓛_prev − log 𝓛_now, a non-finite step is
rolled back with α halved (``loss_based`` also rolls back loss increases and grows α by ``up``
after a good step).

Progressive norm rescaling (Wang, Min & Wu 2023, arXiv 2311.14387, "PRGD") is the one piece the
engine's schedule formula cannot express: after each step θ is radially moved to the sphere
‖θ‖_N = R_t with R_t = R₀·e^{κt} (``Rescale``). It is labelled as such wherever it is used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..algorithms import Algorithm, algorithm
from ..implicit import IMPLICIT_TOL, implicit_flow
from ..oracles import max_margin, norm_value
from ..schedules import BatchedSchedule, Schedule, schedule
from ..step import RuleGroup, StepOutcome, StepState, initial_state, run_steps
from .report import Report

__all__ = [
    "NORMS",
    "Rescale",
    "LinearTrace",
    "make_data",
    "oracles",
    "LinearObjective",
    "train_linear",
    "run",
]

#: The norms of the experiment: name -> p (the oracle's and the metric's p).
NORMS: dict[str, float] = {"l1": 1.0, "l2": 2.0, "linf": math.inf, "l3": 3.0}
THRESHOLDS: tuple[float, ...] = (0.99, 0.999)


@dataclass(frozen=True)
class Rescale:
    """Progressive norm rescaling (PRGD-style, arXiv 2311.14387), **not** an engine schedule.

    After every step θ ← θ · R_t/‖θ‖_N if ‖θ‖_N < R_t, with R_t = r0·e^{kappa·t}: the radius (the
    inverse temperature of the softmin that the loss is) grows exponentially and independently of
    the step sizes, so the relative steps η_t/‖θ_t‖ may decay without freezing the temperature.
    """

    r0: float = 1.0
    kappa: float = 1e-3

    def radius(self, t: int) -> float:
        return self.r0 * math.exp(self.kappa * t)


@dataclass
class LinearTrace:
    """Trajectory of one linear run: margins γ_N/γ*_N at recorded steps, and first hits."""

    label: str
    own: str
    steps: np.ndarray
    ratios: dict[str, np.ndarray]
    log_loss: np.ndarray
    hit_steps: dict[float, int | None]
    hit_seconds: dict[float, float | None]
    final: dict[str, float]
    seconds: float
    theta: np.ndarray
    rollbacks: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def make_data(
    n: int = 40, d: int = 60, k: int = 3, seed: int = 0, margin: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Separable data whose ℓ1, ℓ2, ℓ∞ max-margin directions clearly differ.

    ``sparse_teacher`` of :func:`steepest.data.load_dataset`: x ~ N(0, I_d), y = sign⟨w*, x⟩ with a
    k-sparse w*, rows with |⟨w*, x⟩| < margin dropped. With d > n the ℓ1 solution is sparse and the
    ℓ∞ solution dense (pairwise cosines of the oracle directions ≈ 0.3–0.75 at the defaults).
    """
    from ..data import load_dataset

    ds = load_dataset("sparse_teacher", n_train=n, n_test=1, seed=seed, d=d, k=k, margin=margin)
    return ds.X_train.double().numpy().copy(), ds.y_train.double().numpy().copy()


def oracles(X: np.ndarray, y: np.ndarray, norms: Sequence[str] = tuple(NORMS)) -> dict[str, Any]:
    """Exact max-margin results per norm (:func:`steepest.oracles.max_margin`)."""
    return {n: max_margin(X, y, n) for n in norms}


def _norm_fn(name: str):
    p = NORMS[name]
    if math.isinf(p):
        return lambda v: v.abs().amax()
    if p == 1:
        return lambda v: v.abs().sum()
    if p == 2:
        return lambda v: torch.linalg.vector_norm(v)
    return lambda v: torch.linalg.vector_norm(v, ord=p)


def _own_name(algo: Algorithm) -> str:
    pn = getattr(algo.predicted_norm, "p", None)
    for k, p in NORMS.items():
        if pn == p:
            return k
    raise ValueError(
        f"algorithm {algo.name!r}: predicted norm {algo.predicted_norm.name} is not one of {list(NORMS)}"
    )


def _log_spaced(steps: int, per_decade: int = 20) -> set[int]:
    pts = np.unique(
        np.round(
            np.logspace(
                0,
                math.log10(max(steps, 1)),
                per_decade * max(1, math.ceil(math.log10(max(steps, 10)))),
            )
        )
    ).astype(int)
    return set(pts.tolist()) | {steps}


class LinearObjective:
    """log 𝓛 of a linear model with the exponential loss, as :func:`steepest.step.step` needs it
    (one run, full batch): q = Aθ with A = y ⊙ X, log 𝓛 = logsumexp(−q),
    g = ∇log𝓛 = −Aᵀ softmax(−q). The outputs it returns are the margins q themselves."""

    K = 1
    device = torch.device("cpu")
    dtype = torch.float64

    def __init__(self, A: torch.Tensor):
        self.A = A

    def evaluate(
        self, params: list[torch.Tensor], batch: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        q = self.A @ params[0][0]
        ll = torch.logsumexp(-q, 0)
        p = torch.exp(-q - ll)
        return [-(self.A.T @ p)[None]], ll[None], q[None]

    def batch_q_min(self, out: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        return out.min(dim=1).values


def train_linear(
    X: np.ndarray,
    y: np.ndarray,
    algo: Algorithm | str,
    sched: Schedule,
    steps: int,
    *,
    gammas: dict[str, float],
    options: dict[str, Any] | None = None,
    rescale: Rescale | None = None,
    label: str | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    per_decade: int = 20,
    stop_at: float | None = None,
) -> LinearTrace:
    """Train θ ∈ R^d from θ₀ = 0 with ``algo`` (a package rule) and ``sched`` (a package schedule).

    The steps are the package's one training step (:func:`steepest.step.step`, one run) on
    :class:`LinearObjective`, with every late-phase convention of the engine, ``flow``
    included. The ‖θ‖ of a norm-scaled schedule is max(‖θ‖_own, 1): at θ₀ = 0 the step would
    otherwise be 0 forever. Optional ``rescale`` (PRGD, see :class:`Rescale`) moves each
    proposal before it is evaluated.

    Records γ_N/γ*_N for every N in ``gammas`` at log-spaced steps, and the first step (and
    elapsed seconds, measured without the recording overhead) at which the own-norm ratio reaches
    each threshold. ``stop_at``: stop once the own ratio reaches it.
    """
    rule = algorithm(algo, **(options or {})) if isinstance(algo, str) else algo
    own = _own_name(rule)
    Xt = torch.as_tensor(X, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    objective = LinearObjective(yt[:, None] * Xt)  # q = A θ
    d = Xt.shape[1]
    norm_fns = {n: _norm_fn(n) for n in gammas}
    own_fn = _norm_fn(own)
    g_own = gammas[own]
    groups = [RuleGroup(rule, [0], 1, rule.predicted_norm)]
    batched = BatchedSchedule.of([sched], norm_floor=1.0)
    record = _log_spaced(steps, per_decade)
    rec_steps: list[int] = []
    rec_ratios: dict[str, list[float]] = {n: [] for n in gammas}
    rec_ll: list[float] = []
    hits: dict[float, int | None] = {th: None for th in thresholds}
    hit_sec: dict[float, float | None] = {th: None for th in thresholds}
    rec_time = 0.0

    def record_row(t: int, theta: torch.Tensor, qmin: float, ll: float) -> None:
        rec_steps.append(t)
        for n, fn in norm_fns.items():
            rho = float(fn(theta))  # 0 only at θ₀ = 0, where γ_N is undefined
            rec_ratios[n].append(qmin / rho / gammas[n] if rho > 0 else math.nan)
        rec_ll.append(ll)

    def on_step(state: StepState, what: StepOutcome) -> bool:
        nonlocal rec_time
        if not bool(what.accepted[0]):
            return False
        t, theta = int(state.t[0]), state.params[0][0]
        qmin = float(state.qmin[0])
        ratio = qmin / float(own_fn(theta)) / g_own
        for th in thresholds:
            if hits[th] is None and ratio >= th:
                hits[th] = t
                hit_sec[th] = time.perf_counter() - t0 - rec_time
        if t in record:
            r0 = time.perf_counter()
            record_row(t, theta, qmin, float(state.ll[0]))
            rec_time += time.perf_counter() - r0
        return stop_at is not None and ratio >= stop_at

    def prgd(proposal: list[torch.Tensor], state: StepState) -> list[torch.Tensor]:
        assert rescale is not None
        R = rescale.radius(int(state.t[0]) + 1)
        rn = float(own_fn(proposal[0][0]))
        return [proposal[0] * (R / rn)] if 0 < rn < R else proposal

    state = initial_state(objective, groups, [torch.zeros(1, d, dtype=torch.float64)])
    t0 = time.perf_counter()
    state = run_steps(
        state,
        objective,
        groups,
        batched,
        steps,
        on_step=on_step,
        transform=prgd if rescale is not None else None,
    )
    seconds = time.perf_counter() - t0 - rec_time
    t, theta = int(state.t[0]), state.params[0][0]
    if not rec_steps or rec_steps[-1] != t:
        record_row(t, theta, float(state.qmin[0]), float(state.ll[0]))
    return LinearTrace(
        label=label or rule.name,
        own=own,
        steps=np.array(rec_steps),
        ratios={n: np.array(v) for n, v in rec_ratios.items()},
        log_loss=np.array(rec_ll),
        hit_steps=hits,
        hit_seconds=hit_sec,
        final={n: float(v[-1]) for n, v in rec_ratios.items()},
        seconds=seconds,
        theta=theta.numpy().copy(),
        rollbacks=int(state.rollbacks[0]),
    )


# ---------------------------------------------------------------------------------------------
# the experiment


def _schedule_of(entry: dict[str, Any], X: np.ndarray) -> Schedule:
    """The package schedule of a spec entry; lr "inv_sigma_max_sq" is 1/σ_max(X)² (anchors)."""
    lr = entry["lr"]
    if lr == "inv_sigma_max_sq":
        lr = 1.0 / float(np.linalg.norm(X, 2)) ** 2
    kw: dict[str, Any] = {"lr": float(lr)}
    if entry.get("a") is not None and entry["schedule"] in ("power", "norm_scaled"):
        kw["a"] = float(entry["a"])
    return schedule(entry["schedule"], **kw)


def _rescale_of(entry: dict[str, Any]) -> Rescale | None:
    r = entry.get("rescale")
    return None if r is None else Rescale(float(r.get("r0", 1.0)), float(r["kappa"]))


def _options_of(entry: dict[str, Any]) -> dict[str, Any]:
    opts = dict(entry.get("options") or {})
    if "betas" in opts:
        opts["betas"] = tuple(float(b) for b in opts["betas"])
    return opts


def run_entries(
    X: np.ndarray,
    y: np.ndarray,
    entries: Sequence[dict[str, Any]],
    steps: int,
    gammas: dict[str, float],
    stop_at: float | None = None,
) -> list[LinearTrace]:
    """Train every spec entry ({label, algorithm, options, schedule, lr, a, rescale}) from θ₀ = 0."""
    out = []
    for e in entries:
        tr = train_linear(
            X,
            y,
            e["algorithm"],
            _schedule_of(e, X),
            int(e.get("steps", steps)),
            gammas=gammas,
            options=_options_of(e),
            rescale=_rescale_of(e),
            label=e["label"],
            stop_at=stop_at,
        )
        tr.info = {
            "schedule": e["schedule"],
            "lr": e["lr"],
            "a": e.get("a"),
            "rescale": e.get("rescale"),
        }
        out.append(tr)
    return out


def flavor_table(
    traces: Sequence[LinearTrace], norms: Sequence[str]
) -> tuple[dict[str, dict[str, float]], str]:
    """Final γ_N/γ*_N per algorithm (rows) and norm (columns); the best of each column in bold."""
    from ..tables import markdown_table

    mat = {t.label: {n: t.final[n] for n in norms} for t in traces}
    best = {n: max(mat, key=lambda lab: mat[lab][n]) for n in norms}
    rows = [
        [lab]
        + [f"**{mat[lab][n]:.4f}**" if best[n] == lab else f"{mat[lab][n]:.4f}" for n in norms]
        for lab in mat
    ]
    return mat, markdown_table(["algorithm"] + [f"γ_{n}/γ*_{n}" for n in norms], rows)


def diagonal_dominates(
    mat: dict[str, dict[str, float]], diagonal: dict[str, str]
) -> dict[str, bool]:
    """For each norm N: does the N-steepest algorithm (``diagonal[N]``) have the largest γ_N among
    the diagonal algorithms?"""
    return {
        n: all(mat[lab][n] <= mat[diagonal[n]][n] for lab in diagonal.values()) for n in diagonal
    }


def cosine_to_oracle(theta: np.ndarray, w: np.ndarray) -> float:
    """cos(θ, w*) in ℓ2; meaningful where the max-margin direction is unique."""
    den = float(np.linalg.norm(theta) * np.linalg.norm(w))
    return float(theta @ w) / den if den > 0 else float("nan")


def time_to_margin_rows(traces: Sequence[LinearTrace], orc: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for t in traces:
        sched = t.info.get("schedule", "?")
        desc = f"{sched} lr={t.info.get('lr')}" + (
            f" a={t.info['a']}" if t.info.get("a") is not None else ""
        )
        if t.info.get("rescale"):
            desc += f" + PRGD rescale κ={t.info['rescale']['kappa']} (loop only)"
        hs, sec = t.hit_steps, t.hit_seconds
        rows.append(
            [
                t.label,
                t.own,
                desc,
                f"{t.final[t.own]:.5f}",
                int(t.steps[-1]),
                hs[0.99] if hs[0.99] is not None else "—",
                f"{sec[0.99]:.2f}" if sec[0.99] is not None else "—",
                hs[0.999] if hs[0.999] is not None else "—",
                f"{sec[0.999]:.2f}" if sec[0.999] is not None else "—",
                f"{cosine_to_oracle(t.theta, orc[t.own].w):.5f}" if t.own in UNIQUE else "—",
            ]
        )
    return rows


TTM_HEADERS = [
    "algorithm",
    "own N",
    "schedule",
    "final γ_N/γ*_N",
    "steps run",
    "steps to 0.99",
    "s to 0.99",
    "steps to 0.999",
    "s to 0.999",
    "cos to oracle",
]
#: Norms whose max-margin direction is unique for any separable data (strictly convex balls).
UNIQUE = ("l2", "l3")


IMPLICIT_HEADERS = [
    "flow of",
    "steps to 0.99",
    "steps to 0.999",
    "s to 0.999",
    "final γ_N/γ*_N",
    "final log 𝓛",
    "steps, rejected, convex solves",
    "smoothed margin monotone",
]


def implicit_flow_rows(
    X: np.ndarray, y: np.ndarray, orc: dict[str, Any], opts: dict[str, Any]
) -> tuple[list[list[Any]], dict[str, Any]]:
    """One row per norm of ``opts["norms"]``: :func:`steepest.implicit.implicit_flow` run until
    log 𝓛 ≤ ``until_log_loss`` (or ``steps``), read against the oracle's γ*_N. "smoothed margin
    monotone" checks −log𝓛/‖w‖_N at every accepted step (docs/theory.md §3.3: it rises along the
    flow; the integrator never looks at it)."""
    rows, numbers = [], {}
    missing = [n for n in opts["norms"] if n not in orc]
    if missing:
        raise ValueError(
            f"implicit: norms {missing} have no oracle result here; the loop's norms are "
            f"{sorted(orc)}"
        )
    for n in opts["norms"]:
        tr = implicit_flow(
            X,
            y,
            n,
            steps=int(opts.get("steps", 1000)),
            tol=float(opts.get("tol", IMPLICIT_TOL)),
            until_log_loss=opts.get("until_log_loss"),
        )
        ratio = np.asarray(tr.margin) / orc[n].gamma
        smoothed = -np.asarray(tr.log_loss) / np.array([norm_value(w, n) for w in tr.path])
        sep = int(np.argmax(np.asarray(tr.log_loss) < 0))  # first separated iterate
        mono = bool(np.all(np.diff(smoothed[sep:]) >= 0))
        hit = {th: next((k for k, r in enumerate(ratio) if r >= th), None) for th in THRESHOLDS}
        rows.append(
            [
                n,
                hit[0.99] if hit[0.99] is not None else "—",
                hit[0.999] if hit[0.999] is not None else "—",
                f"{tr.seconds[hit[0.999]]:.2f}" if hit[0.999] is not None else "—",
                f"{ratio[-1]:.6f}",
                f"{tr.log_loss[-1]:.4g}",
                f"{tr.steps}, {tr.rejected}, {tr.solves}",
                "yes" if mono else "no",
            ]
        )
        numbers[n] = {
            "steps_0.99": hit[0.99],
            "steps_0.999": hit[0.999],
            "final": float(ratio[-1]),
            "final_log_loss": tr.log_loss[-1],
            "steps": tr.steps,
            "rejected": tr.rejected,
            "solves": tr.solves,
            "smoothed_margin_monotone": mono,
            "stopped": tr.stopped,
        }
    return rows, numbers


def plot_ratios(
    traces: Sequence[LinearTrace], norms: Sequence[str], path: Path, title: str
) -> Path:
    """One panel per norm: γ_N/γ*_N against step (log x) for every algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import save_figure

    fig, axes = plt.subplots(1, len(norms), figsize=(4.3 * len(norms), 3.8), squeeze=False)
    for ax, n in zip(axes[0], norms, strict=True):
        for t in traces:
            ok = t.steps > 0
            ax.plot(t.steps[ok], t.ratios[n][ok], lw=2.0 if t.own == n else 1.0, label=t.label)
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.axhline(0.99, color="gray", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_ylim(max(-0.1, min(0.0, ax.get_ylim()[0])), 1.02)
        ax.set_title(f"γ_{n} / γ*_{n}")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title)
    return save_figure(fig, path)


def _loop_size(spec: dict[str, Any], size: str) -> dict[str, Any]:
    from .common import deep_merge

    sizes = spec.get("loop_sizes", {})
    if size not in sizes:
        raise ValueError(f"unknown size {size!r} for linear; valid: {', '.join(sizes)}")
    return deep_merge(spec["loop"], sizes[size] or {})


def run(size: str, out: Path, device: str | None = None) -> Report:
    """``steepest reproduce linear``: flavor matrix, time to margin, Adam ε drift, figures."""
    from ..tables import markdown_table
    from .common import load_spec, run_batches
    from .report import Report
    from .verdicts import verify_markdown

    spec = load_spec("linear")
    loop = _loop_size(spec, size)
    t0 = time.perf_counter()
    X, y = make_data(**loop["data"])
    norms = list(loop["norms"])
    orc = oracles(X, y, norms)
    gam = {n: orc[n].gamma for n in norms}
    steps = int(loop["steps"])
    traces = run_entries(X, y, loop["algorithms"], steps, gam)
    fast = run_entries(X, y, loop.get("fast", []), steps, gam)
    tables, notes, numbers = [], [], {}

    # Oracles: γ* and how different the three flavors are.
    W = {n: orc[n].w / np.linalg.norm(orc[n].w) for n in norms}
    tables.append(
        (
            "Exact max-margin oracles (steepest.oracles.max_margin): γ*_N and cosines between the directions",
            markdown_table(
                ["N", "γ*_N", "solver"] + [f"cos(w*_N, w*_{m})" for m in norms],
                [
                    [n, f"{gam[n]:.6g}", orc[n].solver]
                    + [f"{float(W[n] @ W[m]):.3f}" for m in norms]
                    for n in norms
                ],
            ),
        )
    )
    numbers["gamma_star"] = gam
    numbers["oracle_cosines"] = {n: {m: float(W[n] @ W[m]) for m in norms} for n in norms}

    mat, ftable = flavor_table(traces, norms)
    tables.append(
        (
            f"Flavor matrix: final γ_N/γ*_N after {steps} steps (rows: algorithms, θ₀ = 0; best per column in bold)",
            ftable,
        )
    )
    diag = {n: lab for n, lab in loop["diagonal"].items() if n in norms}
    dom = diagonal_dominates(mat, diag)
    numbers["flavor_matrix"] = mat
    numbers["diagonal_dominates"] = dom

    all_traces = traces + fast
    tables.append(
        (
            "Time to margin (own norm N): steps and seconds to 0.99 and 0.999 γ*_N, cosine to the oracle "
            "direction where it is unique",
            markdown_table(TTM_HEADERS, time_to_margin_rows(all_traces, orc)),
        )
    )
    numbers["time_to_margin"] = {
        f"{t.label}": {
            "own": t.own,
            "final": t.final[t.own],
            "steps_0.99": t.hit_steps[0.99],
            "steps_0.999": t.hit_steps[0.999],
            "seconds_0.99": t.hit_seconds[0.99],
            "seconds_0.999": t.hit_seconds[0.999],
        }
        for t in all_traces
    }

    # The flows themselves, integrated by implicit steps (steepest.implicit): how far the
    # explicit rules' step budget is from what the theorem says of the flow.
    implicit = loop.get("implicit")
    if implicit:
        flow_rows, numbers["implicit_flow"] = implicit_flow_rows(X, y, orc, implicit)
        tables.append(
            (
                "The steepest flows, integrated by implicit (minimizing-movement) steps with "
                f"step-doubling error control (steepest.implicit, tol {implicit.get('tol', IMPLICIT_TOL)}), "
                "from the mean of y_i x_i: steps and seconds to 0.99 and 0.999 γ*_N. These are the "
                "flows of the rows above, not their explicit algorithms",
                markdown_table(IMPLICIT_HEADERS, flow_rows),
            )
        )

    # Adam ε drift: ℓ∞ and ℓ2 ratios along the run.
    adam = [t for t in traces if t.label in loop["adam_labels"]]
    drift_rows = []
    for t in adam:
        for s in sorted(
            {
                int(v)
                for v in np.unique(np.round(np.logspace(1, math.log10(max(t.steps[-1], 10)), 4)))
            }
        ):
            i = int(np.searchsorted(t.steps, s, side="right")) - 1
            if i >= 0:
                drift_rows.append(
                    [
                        t.label,
                        int(t.steps[i]),
                        f"{t.ratios['linf'][i]:.4f}",
                        f"{t.ratios['l2'][i]:.4f}",
                    ]
                )
    if drift_rows:
        tables.append(
            (
                "Adam's ε: γ_∞/γ*_∞ and γ_2/γ*_2 along the run",
                markdown_table(["run", "step", "γ_∞/γ*_∞", "γ_2/γ*_2"], drift_rows),
            )
        )
    eps0, epsL = (adam + [None, None])[:2] if len(adam) >= 2 else (None, None)
    numbers["adam"] = {t.label: {"linf": t.final["linf"], "l2": t.final["l2"]} for t in adam}

    figures = [
        plot_ratios(
            all_traces,
            norms,
            out / "linear-margin-ratio-vs-step.png",
            f"linear model, n={X.shape[0]}, d={X.shape[1]}: γ_N/γ*_N vs step",
        )
    ]

    # Engine cross-check + theorem checks on the same data through steepest.engine.
    batches, _ = run_batches(spec, size, out, device=device)
    vparts = []
    for b in batches:
        rows = []
        for i, lab in enumerate(b.labels):
            cols = b.metrics[i]
            rows.append(
                [lab, int(cols["step"][-1])]
                + [
                    f"{float(cols[f'margin_{n}'][-1]) / gam[n]:.4f}"
                    for n in ("l1", "l2", "linf")
                    if n in gam
                ]
            )
        tables.append(
            (
                f"Engine cross-check ({b.name}: steepest.engine, random init, same data): final γ_N/γ*_N",
                markdown_table(
                    ["run", "steps"] + [f"γ_{n}/γ*_{n}" for n in ("l1", "l2", "linf") if n in gam],
                    rows,
                ),
            )
        )
        vparts.append(verify_markdown(out / "runs.db", b.result.run_ids, heading=b.name))
    seconds = time.perf_counter() - t0

    reasons = []
    own_ok = {}
    for n, lab in diag.items():
        t = next(t for t in traces if t.label == lab)
        own_ok[n] = t.final[n] >= 0.99
        if not own_ok[n]:
            reasons.append(f"{lab} reached only {t.final[n]:.4f} γ*_{n}")
    for n, good in dom.items():
        if not good:
            reasons.append(f"{diag[n]} does not have the largest γ_{n}")
    adam_ok = True
    if eps0 is not None and epsL is not None:
        if eps0.final["linf"] < 0.99:
            adam_ok = False
            reasons.append(f"{eps0.label} reached only {eps0.final['linf']:.4f} γ*_∞")
        if not (epsL.final["l2"] > epsL.final["linf"] and epsL.final["linf"] < eps0.final["linf"]):
            adam_ok = False
            reasons.append(f"{epsL.label} does not drift toward ℓ2")
    ok = all(own_ok.values()) and all(dom.values()) and adam_ok
    numbers["own_reaches_0.99"] = own_ok
    goal = {
        n: any(
            t.own == n and t.hit_steps[0.999] is not None and t.hit_steps[0.999] <= 10_000
            for t in all_traces
        )
        for n in norms
    }
    numbers["goal_0.999_within_10k"] = goal
    notes.append(
        "Goal of the issue, 0.999 γ*_N within 10,000 steps, by the explicit rules: "
        + ", ".join(f"{n}: {'met' if g else 'not met'}" for n, g in goal.items())
        + " (best over every algorithm/schedule row of the time-to-margin table; at this size's step budget)."
    )
    if implicit:
        flow_goal = {
            n: v["steps_0.999"] is not None and v["steps_0.999"] <= 10_000
            for n, v in numbers["implicit_flow"].items()
        }
        numbers["flow_0.999_within_10k"] = flow_goal
        notes.append(
            "By the flows themselves (implicit steps): "
            + ", ".join(
                f"{n}: {'met' if g else 'not met'}"
                + (f" in {numbers['implicit_flow'][n]['steps_0.999']} steps" if g else "")
                for n, g in flow_goal.items()
            )
            + ". Explicit steps are held back by a stability limit, not by the flow: a relative "
            "step must shrink like 1/Q deep in the late phase (docs/late_phase.md)."
        )
    notes.append(
        "Rows marked 'PRGD rescale' use progressive norm rescaling (θ ← R_t θ/‖θ‖_N, R_t = r0·e^{κt}, "
        "Wang, Min & Wu 2023), which the engine's schedules cannot express; they run in this module's loop only."
    )
    notes.append(
        "Seconds are the loop's wall time to the first hit (recording excluded), on a shared 2-core CPU."
    )
    reason = (
        (
            "every N-steepest algorithm reached ≥ 0.99 γ*_N, each diagonal entry is the largest in its column, "
            "Adam with ε = 0 reached ≥ 0.99 γ*_∞ and Adam with a large ε ends closer to the ℓ2 max margin"
        )
        if ok
        else "; ".join(reasons) + "."
    )
    return Report.for_spec(
        spec,
        size,
        ok,
        reason,
        tables=tables,
        figures=figures,
        notes=notes,
        verify=vparts,
        numbers=numbers,
        seconds=seconds,
    )
