"""The training engine: K runs stepped together, far past zero training error.

Runs share the architecture and the data; they differ in seed, algorithm and learning rate.
Parameters are stacked along a leading run axis and every step is one batched
``torch.func.vmap(grad(log 𝓛))`` (or plain autograd through a model's ``batched_forward``) over
all K runs plus one ``Algorithm.stacked_update`` per algorithm.

Each step is :func:`steepest.step.step`, the package's one batched step: it owns the late-phase
numerics (log-space learning rates, the 𝓛 factor of unnormalized steps, rollbacks, flow time;
see that module). The runner here adds what a long run needs around it.

Metrics are recorded at log-spaced steps (``per_decade`` per decade), at the first step where
every training point is classified, and at the end. Checkpoints are written atomically, only
between whole steps: at step 0, every time −log 𝓛 of a run passes a power of ten, when a run
first separates, every ``checkpoint_every`` iterations, at a SIGINT/SIGTERM, and at the end;
``resume=True`` continues an interrupted batch bit-for-bit (CPU, float64, same threads). One
process owns a batch at a time (a lease with a heartbeat in the store).

Queuing a step makes no host-device synchronization (``BatchRunner.advance``); on a GPU the loop
reads step t's event flags while step t+1 runs (``BatchRunner.run``, ``BatchRunner.settle``).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from .algorithms import Algorithm, algorithm
from .checkpoints import atomic_torch_save, load_checkpoint, remove_stale_temps
from .config import ConfigError, ExperimentConfig, RunSpec, load_config, read_config_mapping
from .data import USER_DATA, Dataset, as_dataset, load_dataset
from .devices import resolve_device
from .losses import log_loss as _log_loss
from .losses import margins as _margins
from .losses import per_sample_log_losses, smoothed_margin_numerator
from .models import USER_MODEL, NotHomogeneousError, build_model, homogeneity_degree
from .norms import METRIC_NORM_NAMES, LpNorm, Norm, Spectral, flat_params, get_norm
from .schedules import BatchedSchedule
from .stacked import gather_runs, scatter_runs, tree_map
from .step import FIELDS as STEP_FIELDS
from .step import RuleGroup, StepState, step
from .store import HEARTBEAT_EVERY_S, BatchBusyError, RunStore, default_db_path

__all__ = [
    "train",
    "TrainResult",
    "METRIC_NORMS",
    "Engine",
    "BatchRunner",
    "Interrupted",
    "load_experiment_data",
    "warm_start_params",
    "log_milestones",
]

#: Norms every run's margins are measured in (column suffixes of the metric names).
#: Metric-column suffix -> norm name of the margins every run logs (from the norms themselves).
METRIC_NORMS: dict[str, str] = {get_norm(n).column: n for n in METRIC_NORM_NAMES}
CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """What :func:`train` returns: the store's run ids and each run's final metrics."""

    run_ids: list[int]
    batch: str
    db: Path
    final: list[dict[str, float]]
    labels: list[str]
    checkpoint: Path | None = None
    statuses: list[str] = field(default_factory=list)


class Interrupted(KeyboardInterrupt):
    """Training stopped at a step boundary by SIGINT or SIGTERM; the batch was checkpointed
    there and ``--resume`` continues it exactly."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} after step {step}; "
            "the batch is checkpointed there and --resume continues it exactly"
        )


class _StopFlag:
    """The signal that asked training to stop (None: none yet)."""

    signum: int | None = None


@contextmanager
def _deferred_signals(stop: _StopFlag):
    """SIGINT and SIGTERM set ``stop.signum``; the training loop stops between two whole steps.
    A second SIGINT interrupts at once (no checkpoint is then written mid-step)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signum = signum

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


class Engine:
    """Steps K runs of one experiment together. Use :func:`train` unless you need the parts."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        specs: Sequence[RunSpec],
        dataset: Dataset,
        device: str | torch.device = "cpu",
        *,
        model_factory: Callable[[int], torch.nn.Module] | None = None,
        allow_inhomogeneous: bool = False,
    ):
        """``model_factory(seed) -> nn.Module`` builds the model when the config's model is
        ``"user"`` (see :func:`train`); ``allow_inhomogeneous`` trains a model that fails the
        homogeneity test, without margins (``self.L`` is None, the reason in
        ``self.not_homogeneous``)."""
        self.cfg = cfg
        self.model_factory = model_factory
        self.allow_inhomogeneous = allow_inhomogeneous
        self.not_homogeneous: str | None = None
        self.specs = list(specs)
        self.K = len(self.specs)
        self.device = torch.device(device)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.loss = cfg.loss
        self.data = dataset
        self.X = dataset.X_train.to(self.device, self.dtype)
        self.y = dataset.y_train.to(self.device)
        self.Xt = dataset.X_test.to(self.device, self.dtype)
        self.yt = dataset.y_test.to(self.device)
        if self.y.is_floating_point():
            self.y = self.y.to(self.dtype)
            self.yt = self.yt.to(self.dtype)
        self.template = self.model_for_seed(self.specs[0].seed)
        self.names = [n for n, _ in self.template.named_parameters()]
        self.L = self._check_degree()
        self.metric_norms: dict[str, Norm] = {k: get_norm(v) for k, v in METRIC_NORMS.items()}
        for name in cfg.logging.extra_norms:
            N = get_norm(name)
            self.metric_norms.setdefault(N.column, N)
        self._build_groups()
        self.schedule = BatchedSchedule.of([sp.schedule for sp in self.specs], self.device)
        self._grad = vmap(grad_and_value(self._loss_fn, has_aux=True), in_dims=(0, None, None))
        # Models with a batched_forward (MLP, linear, diagonal) skip functorch: plain batched
        # matmuls + autograd are about twice as fast for small nets; others use vmap.
        self.batched = callable(getattr(self.template, "batched_forward", None))

    # ------------------------------------------------------------------ set-up
    def model_for_seed(self, seed: int) -> torch.nn.Module:
        """The config's model with the initialization of ``seed``, on the engine's device and dtype."""
        if self.cfg.model.name == USER_MODEL:
            return self._user_model(seed)
        kw = self.cfg.model.kwargs()
        d = self.data.input_dim
        out = 1 if self.data.binary else self.data.num_classes
        name = self.cfg.model.name
        if name == "cnn":
            if self.data.image_shape is None:
                raise ValueError(
                    f"model 'cnn' needs image data; dataset {self.data.name!r} has no image_shape"
                )
            kw.setdefault("image_shape", self.data.image_shape)
        elif name == "diagonal":
            kw.setdefault("d", d)
        else:
            kw.setdefault("d", d)
        if name in ("linear", "mlp", "cnn"):
            kw.setdefault("out", out)
        elif out != 1:
            raise ValueError(f"model {name!r} has a single output but the data have {out} classes")
        try:
            # Drawn in float64 and rounded: a float32 run starts from the float64 run's
            # initialization, so the two differ only by the precision of the steps.
            model = build_model(name, seed=seed, dtype=torch.float64, **kw)
        except TypeError as exc:
            raise ValueError(f"model: {exc}") from None
        return model.to(self.device, self.dtype)

    def _user_model(self, seed: int) -> torch.nn.Module:
        if self.model_factory is None:
            raise ValueError(
                f"the config's model is {USER_MODEL!r}: pass the model to "
                "steepest.train(config, model=lambda seed: MyNet(...))"
            )
        model = self.model_factory(seed)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"model(seed) must return a torch.nn.Module, got {type(model).__name__}"
            )
        if not any(True for _ in model.parameters()):
            raise ValueError("model(seed) returned a module without parameters")
        bad = [n for n, p in model.named_parameters() if not p.is_floating_point()]
        if bad:
            raise ValueError(f"model(seed): parameters {bad} are not floating point")
        return model.to(self.device, self.dtype)

    def _check_degree(self) -> int | float | None:
        declared = getattr(self.template, "homogeneity_degree", None)
        if self.model_factory is not None:  # a user's module: say what it was given if it fails
            try:
                with torch.no_grad():
                    self.template(self.X[:2])
            except Exception as exc:
                hint = (
                    f"; image data arrive flattened, reshape them in the model "
                    f"(x.view(-1, {', '.join(map(str, self.data.image_shape))}))"
                    if self.data.image_shape
                    else ""
                )
                raise ValueError(
                    f"model(seed) fails on the training inputs, a {tuple(self.X.shape)} "
                    f"{str(self.dtype).replace('torch.', '')} tensor (n, d){hint}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        try:
            measured = homogeneity_degree(self.template.double(), self.X[:64].double())
        except NotHomogeneousError as exc:
            if not self.allow_inhomogeneous:
                raise NotHomogeneousError(
                    f"{exc}; the theorems (margins, verify) need a homogeneous model. To train it "
                    "anyway, without margins: steepest.train(..., allow_inhomogeneous=True)"
                ) from None
            self.not_homogeneous = str(exc)
            return None
        finally:
            self.template.to(self.dtype)
        if declared is not None and abs(measured - declared) > 1e-6 * max(1, declared):
            raise ValueError(f"model declares degree L={declared} but measures L={measured}")
        return declared if declared is not None else measured

    def init_params(self) -> list[Tensor]:
        """Stacked parameters (K, *shape) from each run's seed."""
        per_seed: dict[int, list[Tensor]] = {}
        for s in {sp.seed for sp in self.specs}:
            per_seed[s] = [p.detach() for p in self.model_for_seed(s).parameters()]
        return [
            torch.stack([per_seed[sp.seed][j] for sp in self.specs]) for j in range(len(self.names))
        ]

    def _build_groups(self) -> None:
        keys: dict[str, list[int]] = {}
        for sp in self.specs:
            keys.setdefault(json.dumps([sp.algorithm, sp.options], sort_keys=True), []).append(
                sp.index
            )
        self.groups: list[RuleGroup] = []
        self.own_norms: list[Norm] = [None] * self.K  # type: ignore[list-item]
        for key, idx in keys.items():
            name, options = json.loads(key)
            algo = algorithm(name, **options)
            grp = RuleGroup(algo, idx, self.K, self._own_norm(algo), self.device)
            self.groups.append(grp)
            for i in idx:
                self.own_norms[i] = grp.own

    def _own_norm(self, algo: Algorithm) -> Norm:
        pn = getattr(algo, "predicted_norm_for", None)
        if callable(pn):
            return pn([p for p in self.template.parameters()])
        return algo.predicted_norm

    # ------------------------------------------------------------------ math
    def _out_fn(self, pdict: dict[str, Tensor], X: Tensor) -> Tensor:
        return functional_call(self.template, pdict, (X,))

    def _loss_fn(self, pdict: dict[str, Tensor], X: Tensor, y: Tensor):
        out = functional_call(self.template, pdict, (X,))
        return _log_loss(out, y, self.loss, validate=False), out

    def batched_log_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """log 𝓛 per run from stacked outputs (K, n) or (K, n, k)."""
        K = out.shape[0]
        flat = out.reshape(K * out.shape[1], *out.shape[2:])
        per = per_sample_log_losses(flat, y.repeat(K), self.loss, validate=False)
        return torch.logsumexp(per.reshape(K, -1), dim=1)

    def batched_margins(self, out: Tensor, y: Tensor) -> Tensor:
        """q per run and sample, (K, n), from stacked outputs."""
        K = out.shape[0]
        flat = out.reshape(K * out.shape[1], *out.shape[2:])
        return _margins(flat, y.repeat(K), validate=False).reshape(K, -1)

    def evaluate(
        self,
        params: list[Tensor],
        batch: Tensor | None = None,
        X: Tensor | None = None,
        y: Tensor | None = None,
    ):
        """(∇log𝓛 per run, log 𝓛 (K,), outputs (K, n, ...)) at stacked params."""
        if X is None:
            X, y = (self.X, self.y) if batch is None else (self.X[batch], self.y[batch])
        if self.batched:
            ps = [p.detach().requires_grad_(True) for p in params]
            with torch.enable_grad():
                out = self.template.batched_forward(ps, X)
                ll = self.batched_log_loss(out, y)
                grads = torch.autograd.grad(ll.sum(), ps)  # runs are independent: per-run grads
            return list(grads), ll.detach().to(torch.float64), out.detach()
        pdict = dict(zip(self.names, params, strict=True))
        grads, (ll, out) = self._grad(pdict, X, y)
        return [grads[n] for n in self.names], ll.to(torch.float64), out

    def forward(self, params: list[Tensor], X: Tensor) -> Tensor:
        if self.batched:
            return self.template.batched_forward(params, X)
        return vmap(self._out_fn, in_dims=(0, None))(dict(zip(self.names, params, strict=True)), X)

    def q_min(self, out: Tensor, y: Tensor) -> Tensor:
        return self.batched_margins(out, y).min(dim=1).values

    def batch_q_min(self, out: Tensor, batch: Tensor | None = None) -> Tensor:
        """q_min per run from the outputs of :meth:`evaluate` on ``batch`` (None: full batch)."""
        return self.q_min(out, self.y if batch is None else self.y[batch])

    # ------------------------------------------------------------------ metrics
    @torch.no_grad()
    def metrics(
        self,
        params: list[Tensor],
        grads: list[Tensor] | None = None,
        log_loss: Tensor | None = None,
        out: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """All per-run metrics (K,) at stacked params, in float64.

        ``grads``/``log_loss``/``out`` (the step's own evaluation) are reused when the run is in
        float64 and full-batch; otherwise the full training set is re-evaluated in float64.
        """
        p64 = [p.to(torch.float64) for p in params]
        if self.dtype != torch.float64:
            self.template.double()
        try:
            y64 = self.y.double() if self.y.is_floating_point() else self.y
            yt64 = self.yt.double() if self.yt.is_floating_point() else self.yt
            if grads is None or log_loss is None or out is None or self.dtype != torch.float64:
                grads, log_loss, out = self.evaluate(p64, X=self.X.double(), y=y64)
            q = self.batched_margins(out, y64)
            res: dict[str, Tensor] = {
                "log_loss": log_loss.to(torch.float64),
                "q_min": q.min(1).values,
                "q_max": q.max(1).values,
            }
            res["train_acc"] = (q > 0).to(torch.float64).mean(1)
            if len(self.yt):
                qt = self.batched_margins(self.forward(p64, self.Xt.double()), yt64)
                res["test_acc"] = (qt > 0).to(torch.float64).mean(1)
        finally:
            if self.dtype != torch.float64:
                self.template.to(self.dtype)
        g64 = [g.to(torch.float64) for g in grads]
        neg_inner = -sum((p * g).reshape(self.K, -1).sum(1) for p, g in zip(p64, g64, strict=True))
        numer = smoothed_margin_numerator(res["log_loss"], self.loss)
        L = None if self.L is None else float(self.L)

        def add(suffix: str, rho: Tensor, dual: Tensor) -> None:
            res[f"norm_{suffix}"] = rho
            if L is not None:  # margins q_min/‖θ‖^L exist only for an L-homogeneous model
                res[f"margin_{suffix}"] = res["q_min"] / rho**L
                res[f"smoothed_{suffix}"] = numer / rho**L
            res[f"beta_{suffix}"] = neg_inner / (rho * dual)

        # ℓp norms of θ and g share one flattening per event; each norm is computed once per
        # event and reused for the own-norm columns.
        abs_p, abs_g = flat_params(p64, stacked=True).abs(), flat_params(g64, stacked=True).abs()
        cache: dict[object, tuple[Tensor, Tensor]] = {}

        def rho_and_dual(
            N: Norm, pg: list[Tensor], gg: list[Tensor], idx: Tensor | None
        ) -> tuple[Tensor, Tensor]:
            key = (
                ("lp", N.p)
                if isinstance(N, LpNorm)
                else ("spectral",)
                if type(N) is Spectral
                else id(N)
            )
            if idx is None and key in cache:
                return cache[key]
            if isinstance(N, LpNorm):
                ap, ag = (
                    (abs_p, abs_g)
                    if idx is None
                    else (abs_p.index_select(0, idx), abs_g.index_select(0, idx))
                )
                val = (LpNorm.vec_norm(ap, N.p, nonneg=True), LpNorm.vec_norm(ag, N.q, nonneg=True))
            else:
                val = (N.stacked(pg), N.stacked_dual(gg))
            if idx is None:
                cache[key] = val
            return val

        for suffix, N in self.metric_norms.items():
            add(suffix, *rho_and_dual(N, p64, g64, None))
        own_rho = torch.empty(self.K, dtype=torch.float64, device=self.device)
        own_dual = torch.empty_like(own_rho)
        for g in self.groups:
            N = self.own_norms[g.indices[0]]
            rho, dual = rho_and_dual(N, gather_runs(p64, g.idx), gather_runs(g64, g.idx), g.idx)
            own_rho = scatter_runs(own_rho, g.idx, rho)
            own_dual = scatter_runs(own_dual, g.idx, dual)
        add("own", own_rho, own_dual)
        ln10 = math.log(10.0)
        for k in (1, 2, 3, 5, 7):
            res[f"n_supp_{k}"] = (q < res["q_min"][:, None] + k * ln10).sum(1).to(torch.float64)
        return res


# ---------------------------------------------------------------------- the training loop


def log_milestones(steps: int, per_decade: int) -> set[int]:
    """The log-spaced steps at which metrics are recorded: round(10^(k/per_decade)) for
    k = 0, 1, … up to ``steps``, plus 1 and ``steps`` (docs/theory.md §3.8). Shared by the
    engine's logging, the ε-drift traces and the fingerprints' trajectories."""
    out = {1, steps}
    k = 0
    while (s := int(round(10 ** (k / per_decade)))) <= steps:
        out.add(s)
        k += 1
    return out


class BatchRunner:
    """Holds the state of one batch and steps it: :meth:`advance` queues a step
    (:func:`steepest.step.step`) and :meth:`settle` acts on its events (metrics, statuses,
    checkpoints); serialisable to a checkpoint. Benchmarks build one directly: ``fresh_state``,
    ``start``, then ``step`` (or ``run``)."""

    def __init__(
        self,
        engine: Engine,
        store: RunStore,
        run_ids: list[int],
        ckpt_dir: Path | None,
        progress: bool,
    ):
        self.e = engine
        self.store = store
        self.run_ids = run_ids
        self.ckpt_dir = ckpt_dir
        self.progress = progress
        cfg = engine.cfg
        self.steps = cfg.stop.steps
        self.target = cfg.stop.log_loss
        self.wall_limit = cfg.stop.wall_time
        self.per_decade = cfg.logging.per_decade
        self.ckpt_every = cfg.logging.checkpoint_every
        self.batch_size = cfg.batch_size
        milestones = log_milestones(self.steps, self.per_decade)
        # Sorted milestone steps, looked up by binary search: O(per_decade·log10 steps) memory
        # (a dense per-step table would be 1 TB at steps = 1e12).
        self.milestones = torch.tensor(sorted(milestones), dtype=torch.long, device=engine.device)
        self.stop = _StopFlag()
        # On a GPU the host reads step t's events while step t+1 runs (see ``run``).
        self.pipelined = engine.device.type == "cuda"
        self.consistent = True  # False while a step is half-done: no checkpoint may be taken then
        self.batch_id: str | None = None
        self._last_beat = time.monotonic()

    # -------------------------------------------------------------- state
    def fresh_state(self, params: list[Tensor]) -> None:
        e, K, dev = self.e, self.e.K, self.e.device
        self.params = params
        self.algo_states = [g.algo.stacked_init(gather_runs(params, g.idx)) for g in e.groups]
        self.t = torch.zeros(K, dtype=torch.long, device=dev)
        self.iteration = 0
        self.log_alpha = torch.zeros(K, dtype=torch.float64, device=dev)
        # flow: α of the last step rolled back for its loss error (+inf: none), and the floor
        self.rej_log_alpha = torch.full((K,), math.inf, dtype=torch.float64, device=dev)
        self.log_floor = torch.full((K,), -math.inf, dtype=torch.float64, device=dev)
        self.dir_cache: list[Any] | None = None  # flow: directions at the current θ, per group
        self.sliding: Tensor | None = None  # flow: runs whose next step is a bundle retry
        self.frame = torch.zeros(K, dtype=torch.float64, device=dev)
        self.log_flow = torch.full((K,), -math.inf, dtype=torch.float64, device=dev)
        self.last_log_lr = torch.full((K,), -math.inf, dtype=torch.float64, device=dev)
        self.done = torch.zeros(K, dtype=torch.bool, device=dev)
        self.done_host = [False] * K
        self.t_host_max = 0
        self.separated_at = torch.full((K,), -1, dtype=torch.long, device=dev)
        self.rollbacks = torch.zeros(K, dtype=torch.long, device=dev)
        self.decade = torch.zeros(K, dtype=torch.long, device=dev)
        self.status = ["running"] * K
        self.elapsed = 0.0

    def state_dict(self) -> dict[str, Any]:
        """The batch's state with every tensor on the CPU, so a checkpoint written on a GPU
        machine loads on any machine (``torch.load(..., map_location=...)`` moves it back).

        With minibatches it also holds the gradient, loss and outputs each run last accepted:
        a run whose last step was rolled back keeps those of an older minibatch, which a
        resume could not recompute (full batch recomputes them exactly)."""
        running = getattr(self, "_t0", None)
        extra = {}
        if self.batch_size is not None and hasattr(self, "g"):
            extra = {"g": self.g, "ll": self.ll, "out": self.out, "qmin": self.qmin}
        return tree_map(
            lambda x: x.detach().cpu(),
            {
                **extra,
                "version": CHECKPOINT_VERSION,
                "params": self.params,
                "algo_states": self.algo_states,
                "t": self.t,
                "iteration": self.iteration,
                "log_alpha": self.log_alpha,
                "rej_log_alpha": self.rej_log_alpha,
                "log_floor": self.log_floor,
                # flow: a retry's bundle direction is no function of θ, so the directions are kept
                "dir_cache": self.dir_cache,
                "sliding": self.sliding,
                "frame": self.frame,
                "log_flow": self.log_flow,
                "last_log_lr": self.last_log_lr,
                "done": self.done,
                "separated_at": self.separated_at,
                "rollbacks": self.rollbacks,
                "decade": self.decade,
                "status": list(self.status),
                "elapsed": self.elapsed
                + (time.perf_counter() - running if running is not None else 0.0),
                "run_ids": list(self.run_ids),
                "names": list(self.e.names),
            },
        )

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {sd.get('version')} is not {CHECKPOINT_VERSION}")
        if list(sd["names"]) != list(self.e.names):
            raise ValueError("checkpoint parameters do not match the model in the config")
        for k in (
            "params",
            "algo_states",
            "t",
            "iteration",
            "log_alpha",
            "frame",
            "log_flow",
            "last_log_lr",
            "done",
            "separated_at",
            "rollbacks",
            "decade",
            "status",
            "elapsed",
        ):
            v = sd[k]
            setattr(
                self,
                k,
                tree_map(lambda x: x.to(self.e.device), v)
                if k not in ("status", "iteration", "elapsed")
                else v,
            )
        K, dev = self.e.K, self.e.device
        # absent from checkpoints written before bundle retries: recomputed from the gradient
        self.dir_cache = tree_map(lambda x: x.to(dev), sd.get("dir_cache"))
        self.sliding = tree_map(lambda x: x.to(dev), sd.get("sliding"))
        for k, empty in (("rej_log_alpha", math.inf), ("log_floor", -math.inf)):
            v = sd.get(k)  # absent from checkpoints written before the loss error
            fill = torch.full((K,), empty, dtype=torch.float64, device=dev)
            setattr(self, k, v.to(dev) if v is not None else fill)
        self.status = list(self.status)
        self.done_host = [bool(d) for d in self.done.tolist()]
        self.t_host_max = max(self.t.tolist())
        self._resume_eval = None
        if all(k in sd for k in ("g", "ll", "out", "qmin")):
            self._resume_eval = tuple(
                tree_map(lambda x: x.to(self.e.device), sd[k]) for k in ("g", "ll", "out", "qmin")
            )

    def checkpoint(self, final: bool = False) -> Path | None:
        if self.ckpt_dir is None:  # a warm-start phase keeps no checkpoints
            return None
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / ("final.pt" if final else f"iter-{self.iteration:09d}.pt")
        state = self.state_dict()  # one device-to-host copy for both files
        atomic_torch_save(state, path)
        latest = self.ckpt_dir / "latest.pt"
        atomic_torch_save(state, latest)
        ts, lls = self.t.tolist(), self.ll.tolist()
        for i, rid in enumerate(self.run_ids):
            self.store.add_checkpoint(rid, step=ts[i], path=str(path), log_loss=lls[i])
            self.store.update_run(rid, info={"checkpoint": str(latest)})
        return path

    # -------------------------------------------------------------- metrics
    def log(
        self,
        which: Sequence[bool],
        full_batch: bool,
        extra: dict[int, dict[str, float]] | None = None,
    ) -> None:
        """Store one metric row for every run ``i`` with ``which[i]`` (a host-side list)."""
        if not any(which):
            return
        if full_batch:
            m = self.e.metrics(self.params, self.g, self.ll, self.out)
        else:
            m = self.e.metrics(self.params)
        # Flow time and lr are stored by their logs only: exp overflows to inf in long runs
        # while the logs stay finite (``steepest plot --x flow_time`` exponentiates the log).
        m["log_flow_time"] = self.log_flow
        m["log_lr"] = self.last_log_lr
        m["rollbacks"] = self.rollbacks.to(torch.float64)
        # One device-to-host transfer for the whole event: every column and the step counter.
        names = list(m)
        block = torch.stack(
            [m[k].to(torch.float64) for k in names] + [self.t.to(torch.float64)]
        ).tolist()
        cols = dict(zip(names, block[:-1], strict=True))
        ts = [int(v) for v in block[-1]]
        wall = self.elapsed + (time.perf_counter() - self._t0)
        rows: dict[int, list[dict[str, float]]] = {}
        for i in (j for j, w in enumerate(which) if w):
            row: dict[str, float] = {
                "step": ts[i],
                "wall_time": wall,
                "iteration": float(self.iteration),
            }
            for k, v in cols.items():
                if not math.isnan(
                    v[i]
                ):  # β is 0/0 at g = 0 exactly: leave it out rather than store NaN
                    row[k] = v[i]
            if extra and i in extra:
                row.update(extra[i])
            rows[self.run_ids[i]] = [row]
        self.store.log_metrics_many(rows)  # one transaction for all runs logged at this step
        self.last_logged = m

    # -------------------------------------------------------------- loop
    def _batch(self, iteration: int | None = None) -> Tensor | None:
        """The minibatch of ``iteration`` (default: the current one); None when full batch."""
        if self.batch_size is None or self.batch_size >= len(self.e.X):
            return None
        it = self.iteration if iteration is None else iteration
        gen = torch.Generator().manual_seed(1_000_003 * (self.e.specs[0].seed + 1) + it)
        return torch.randperm(len(self.e.X), generator=gen)[: self.batch_size].to(self.e.device)

    def start(self, resumed: bool) -> None:
        """Set up for stepping: evaluate the first point (a resumed minibatch batch takes it
        from the checkpoint) and, for a new batch, log and checkpoint step 0."""
        e, K = self.e, self.e.K
        self._t0 = time.perf_counter()
        batch = self._batch()
        if resumed and getattr(self, "_resume_eval", None) is not None:
            self.g, self.ll, self.out, self.qmin = self._resume_eval
            self.g = list(self.g)
        else:
            self.g, self.ll, self.out = e.evaluate(self.params, batch)
            self.qmin = e.batch_q_min(self.out, batch)
        if not resumed:
            self.consistent = False  # until step 0 is logged and checkpointed
            self.log([True] * K, batch is None)
            self.checkpoint()  # step 0: an interruption from here on can always be resumed
            self.consistent = True

    def run(self, resumed: bool) -> None:
        """Step until every run has ended. On a GPU (``pipelined``) step t+1 is queued before
        the host reads step t's event flags, so the device never waits for the host; the flags
        come through a non-blocking copy and a CUDA event recorded right after step t."""
        e = self.e
        self.start(resumed)
        bar = _Progress(self.steps, enabled=self.progress)
        pending: _Pending | None = None
        try:
            while True:
                if self.stop.signum is not None or all(self.done_host):
                    if pending is not None:  # a step queued past the end (or the signal) is dropped
                        self._restore(pending.before)
                        self.done = torch.tensor(self.done_host, dtype=torch.bool, device=e.device)
                        pending = None
                    self.consistent = True  # the state is the last settled step's
                    if self.stop.signum is not None:
                        raise Interrupted(self.stop.signum, self.t_host_max)
                    break
                if (
                    self.batch_id is not None
                    and time.monotonic() - self._last_beat > HEARTBEAT_EVERY_S
                ):
                    self.store.heartbeat(self.batch_id)
                    self._last_beat = time.monotonic()
                self.consistent = False
                queued = self.advance()
                if pending is not None:
                    self.settle(pending)
                pending = queued
                if not self.pipelined:
                    self.settle(pending)
                    pending = None
                    self.consistent = True
                bar.update(
                    self.t_host_max,
                    lambda: float(self.ll.min()),
                    self.last_logged.get("margin_own") if hasattr(self, "last_logged") else None,
                )
        finally:
            bar.close()
            self.elapsed += time.perf_counter() - self._t0
            self._t0 = time.perf_counter()
        self.consistent = True

    def step(self) -> None:
        """One whole step: advance, then settle (read its events, log, checkpoint)."""
        self.settle(self.advance())

    def advance(self) -> _Pending:
        """Queue one step on the device (:func:`steepest.step.step`) and commit it to the
        runner's state, with the events it raises. No host-device synchronization: acceptance,
        rollback, step size and the event flags stay on the device; the flags start a
        non-blocking copy to the host that :meth:`settle` reads."""
        e = self.e
        before = self._snapshot() if self.pipelined else {}  # only a queued step is ever dropped
        batch = self._batch(self.iteration + 1)
        new, what = step(self.step_state(), e, e.groups, e.schedule, batch)
        accept, active = what.accepted, what.active
        t_new, ll_new = new.t, new.ll
        # Events, decided on the device: log-spaced steps, first separated step, end of run.
        newly_separated = accept & (self.separated_at < 0) & (new.qmin > 0)
        finished = active & (t_new >= self.steps)
        if self.target is not None:
            finished = finished | (active & (ll_new <= self.target))
        dead = what.gave_up
        pos = torch.searchsorted(self.milestones, t_new).clamp(max=len(self.milestones) - 1)
        milestone = accept & (self.milestones[pos] == t_new)
        decade = torch.floor(torch.log10(torch.clamp(-ll_new, min=1.0))).to(torch.long)
        crossed = active & (decade > self.decade)
        flags = torch.stack(
            [
                accept.to(torch.long),
                newly_separated.to(torch.long),
                finished.to(torch.long),
                dead.to(torch.long),
                milestone.to(torch.long),
                crossed.to(torch.long),
                t_new,
            ]
        )
        cuda = flags.device.type == "cuda"
        flags_host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=cuda)
        flags_host.copy_(flags, non_blocking=cuda)
        ready = None
        if cuda:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(flags.device))  # the stream that runs the copy
        # Commit (a half-done step is never checkpointed: ``consistent`` is False until the
        # step is settled).
        self.take_state(new)
        self.separated_at = torch.where(newly_separated, t_new, self.separated_at)
        self.decade = torch.maximum(decade, self.decade)
        self.done = self.done | finished | dead
        return _Pending(flags_host, ready, before, self._snapshot(), batch is None)

    def step_state(self) -> StepState:
        """The runner's step state (references, no copies)."""
        return StepState(**{k: getattr(self, k) for k in STEP_FIELDS})

    def take_state(self, state: StepState) -> None:
        """Adopt ``state`` (from :func:`steepest.step.step`) as the runner's step state."""
        for k in STEP_FIELDS:
            setattr(self, k, getattr(state, k))

    _STATE = (
        "params",
        "g",
        "ll",
        "out",
        "qmin",
        "algo_states",
        "dir_cache",
        "sliding",
        "frame",
        "log_alpha",
        "rej_log_alpha",
        "log_floor",
        "rollbacks",
        "t",
        "log_flow",
        "last_log_lr",
        "separated_at",
        "decade",
        "done",
        "iteration",
    )

    def _snapshot(self) -> dict[str, Any]:
        """References to the state: a step builds new tensors and new lists, never edits old
        ones, so nothing is copied (lists are shallow-copied as a second guard)."""
        return {
            k: (list(v) if isinstance(v, list) else v)
            for k in self._STATE
            for v in (getattr(self, k),)
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        for k, v in snap.items():
            setattr(self, k, list(v) if isinstance(v, list) else v)

    @contextmanager
    def _viewing(self, snap: dict[str, Any]):
        """The runner's state as of ``snap`` inside the block (for logging and checkpoints of a
        settled step while the next one is already queued)."""
        now = self._snapshot()
        self._restore(snap)
        try:
            yield
        finally:
            self._restore(now)

    def settle(self, p: _Pending) -> None:
        """Read a step's event flags (the only wait on the device, for that step's copy only),
        then act on them as of that step: log, statuses, checkpoint."""
        K = self.e.K
        if p.ready is not None:
            p.ready.synchronize()
        acc_h, sep_h, fin_h, dead_h, mile_h, cross_h, ts = p.flags.tolist()
        self.t_host_max = max(ts)
        wall = self.elapsed + (time.perf_counter() - self._t0)
        wall_over = self.wall_limit is not None and wall >= self.wall_limit
        if wall_over:
            fin_h = [a or not d for a, d in zip(fin_h, self.done_host, strict=True)]
        ending = [bool(f or d) for f, d in zip(fin_h, dead_h, strict=True)]
        extra = {}
        for i in (j for j in range(K) if sep_h[j]):
            extra[i] = {"separated": 1.0}
            self.store.update_run(self.run_ids[i], info={"separated_at": int(ts[i])})
        for i in range(K):
            if dead_h[i]:
                self.status[i] = "diverged"
            elif fin_h[i] and not self.done_host[i]:
                self.status[i] = "completed"
        if any(ending):
            self.done_host = [a or b for a, b in zip(self.done_host, ending, strict=True)]
        with self._viewing(p.state):
            self.log(
                [bool(m or s_ or en) for m, s_, en in zip(mile_h, sep_h, ending, strict=True)],
                p.full_batch,
                extra,
            )
            # Checkpoints: a run's −log𝓛 passes a power of ten, a run first separates (the KKT
            # check compares against the state at separation), or every ``checkpoint_every``.
            if (
                any(cross_h)
                or any(sep_h)
                or (self.ckpt_every and self.iteration % self.ckpt_every == 0)
            ):
                if not all(self.done_host):
                    self.checkpoint()
        if wall_over:  # the wall clock ends every run here; the device learns it for later steps
            self.done = torch.ones_like(self.done)


@dataclass
class _Pending:
    """A step queued on the device, not yet settled on the host."""

    flags: Tensor  # (7, K) on the host (pinned on CUDA), filled by a non-blocking copy
    ready: Any  # a CUDA event recorded after the copy, or None on the CPU
    before: dict[str, Any]  # the state the step started from
    state: dict[str, Any]  # the state the step produced
    full_batch: bool


class _Progress:
    """A rich progress bar when stderr is a terminal (or forced); silent otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        self._last = 0
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self.task = self.p.add_task("training", total=total)
            self.p.start()

    def update(self, step: int, log_loss: Callable[[], float], margin: Any) -> None:
        """``log_loss`` is called only when the bar is shown: reading it is a device sync."""
        if not self.enabled or step == self._last:
            return
        self._last = step
        desc = f"log𝓛 {log_loss():.4g}"
        if margin is not None:
            desc += f" γ_own {float(margin.max()):.4g}"
        self.p.update(self.task, completed=step, description=desc)

    def close(self) -> None:
        if self.enabled:
            self.p.stop()


# ---------------------------------------------------------------------- public entry point


def load_experiment_data(cfg: ExperimentConfig) -> Dataset:
    """The config's dataset, in float64 (the engine casts to its dtype and device)."""
    d = cfg.data
    return load_dataset(
        d.name,
        n_train=d.n_train,
        n_test=d.n_test,
        classes=d.classes,
        binarize=d.binarize,
        seed=d.seed,
        dtype=torch.float64,
        **d.options,
    )


def warm_start_params(
    cfg: ExperimentConfig, dataset: Dataset, engine: Engine, params: list[Tensor]
) -> tuple[list[Tensor], dict[str, Any]]:
    """Run the warm-start algorithm once per seed until log 𝓛 ≤ until_log_loss, from
    ``params``; returns the parameters every run then starts from (one common separated state
    per seed) and a record of the warm start. Raises ``ValueError`` if a seed misses the target."""
    ws = cfg.warm_start
    assert ws is not None
    seeds = sorted({sp.seed for sp in engine.specs})
    entry: dict[str, Any] = {"algorithm": ws.algorithm, "lr": ws.lr, "schedule": ws.schedule}
    if ws.a is not None:
        entry["a"] = ws.a
    wcfg = cfg.model_copy(
        update={
            "algorithms": [
                load_config(
                    {"name": "w", "data": {"name": cfg.data.name}, "algorithms": [entry]}
                ).algorithms[0]
            ],
            "seeds": seeds,
            "stop": cfg.stop.model_copy(
                update={"steps": ws.max_steps, "log_loss": ws.until_log_loss, "wall_time": None}
            ),
            "warm_start": None,
        }
    )
    wengine = Engine(
        wcfg,
        wcfg.run_specs(),
        dataset,
        engine.device,
        model_factory=engine.model_factory,
        allow_inhomogeneous=engine.allow_inhomogeneous,
    )
    with RunStore(":memory:") as mem:
        ids = [
            mem.create_run(name=f"warm/{s}", algorithm=ws.algorithm, seed=s, config={})
            for s in seeds
        ]
        runner = BatchRunner(wengine, mem, ids, None, progress=False)
        runner.fresh_state(wengine.init_params())
        runner.run(resumed=False)
        lls = runner.ll.tolist()
        steps = runner.t.tolist()
    if any(ll > ws.until_log_loss for ll in lls):
        bad = [s for s, ll in zip(seeds, lls, strict=True) if ll > ws.until_log_loss]
        raise ValueError(
            f"warm start did not reach log-loss {ws.until_log_loss} within {ws.max_steps} steps for seeds {bad} "
            f"(reached {lls}); raise warm_start.max_steps or lr"
        )
    pos = {s: i for i, s in enumerate(seeds)}
    sel = torch.tensor([pos[sp.seed] for sp in engine.specs], device=engine.device)
    warm = [p.index_select(0, sel).to(engine.dtype) for p in runner.params]
    return warm, {
        "algorithm": ws.algorithm,
        "steps": dict(zip(map(str, seeds), steps, strict=True)),
        "log_loss": dict(zip(map(str, seeds), lls, strict=True)),
    }


def _resumable(store: RunStore, cfg: ExperimentConfig, K: int) -> list[Any]:
    """The runs of the latest batch of this exact config that has a checkpoint for every run
    and at least one run left unfinished (running, interrupted or failed)."""
    h = cfg.config_hash()
    batches: dict[str, list[Any]] = {}
    for r in store.list_runs(experiment=cfg.name):
        if r.info.get("config_hash") == h:
            batches.setdefault(r.info.get("batch", ""), []).append(r)
    complete = [
        b
        for b in batches.values()
        if len(b) == K
        and all("checkpoint" in r.info for r in b)
        and any(r.status in ("running", "interrupted", "failed") for r in b)
    ]
    if not complete:
        raise ValueError(
            f"nothing to resume: no unfinished batch of experiment {cfg.name!r} with this exact "
            f"config (hash {h}) and a checkpoint in {store.path}"
        )
    latest = max(complete, key=lambda b: max(r.id for r in b))
    return sorted(latest, key=lambda r: r.info["index"])


def _tree_bytes(tree: Any) -> int:
    total = 0

    def add(x: Tensor) -> Tensor:
        nonlocal total
        total += x.numel() * x.element_size()
        return x

    tree_map(add, tree)
    return total


def _check_disk_space(folder: Path, nbytes: int) -> None:
    """Fail before any run row exists if the first checkpoints cannot fit."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < nbytes:
        raise OSError(
            f"not enough disk space for the checkpoints in {folder}: each needs about "
            f"{nbytes / 2 / 1e6:.1f} MB (two are kept), {free / 1e6:.1f} MB free"
        )


def config_with_objects(
    config: str | Path | dict[str, Any] | ExperimentConfig, model: Any = None, data: Any = None
) -> ExperimentConfig:
    """The config of a run whose model or data are passed as objects: its ``model`` / ``data``
    section is named ``"user"`` (filled in when the config leaves the name out). A config that
    names another model or data set as well is refused: one of the two would be ignored."""
    if model is None and data is None:
        return load_config(config)
    raw = dict(read_config_mapping(config))
    for key, given, reserved in (("model", model, USER_MODEL), ("data", data, USER_DATA)):
        if given is None:
            continue
        section = dict(raw.get(key) or {})
        name = section.get("name", reserved)
        if name != reserved:
            raise ConfigError(
                f"{key}= was passed and the config names {key} {name!r}: leave the "
                f"name out (or name it {reserved!r}) to use the object"
            )
        # The object replaces the section: settings the object would ignore are refused.
        allowed = ("name", "seed") if key == "data" else ("name",)
        extra = sorted(
            k for k, v in section.items() if k not in allowed and v not in (None, {}, [])
        )
        if extra:
            hint = "subsample the tensors instead" if key == "data" else "set them in the factory"
            raise ConfigError(
                f"{key}= was passed: the config's {key} section can only name it; "
                f"remove {', '.join(extra)} ({hint})"
            )
        section["name"] = reserved
        raw[key] = section
    return load_config(raw)


def train(
    config: str | Path | dict[str, Any] | ExperimentConfig,
    *,
    model: Callable[[int], torch.nn.Module] | None = None,
    data: Any = None,
    allow_inhomogeneous: bool = False,
    db: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    device: str | None = None,
) -> TrainResult:
    """Run an experiment config: K = algorithms × lrs × seeds runs stepped together.

    Results go to the SQLite store at ``db`` (default ``./steepest-runs/runs.db`` or
    ``$STEEPEST_DB``); checkpoints to ``<db folder>/checkpoints/<batch>/``.

    What can be checked up front (the config, the device, the data, the model, the warm start's
    target, the disk space for the first checkpoints) is checked before any run row is written.
    A checkpoint is written at step 0 and then between whole steps only; SIGINT and SIGTERM stop
    the loop at the next step boundary, checkpoint there, mark the runs "interrupted" and raise
    :class:`Interrupted`. Any other failure marks the unfinished runs "failed" with the reason.

    ``resume=True`` continues the latest unfinished batch of the same config from its last
    checkpoint, exactly: metric rows logged after that checkpoint are replaced, and the resumed
    batch equals an uninterrupted one row for row (minibatches too). One process owns a batch
    at a time (a lease in the store); a second resume of a batch whose owner is alive is
    refused (:class:`steepest.store.BatchBusyError`).

    ``device`` (``auto | cpu | cuda | cuda:N``) overrides the config's ``device`` key.

    A user's own objects: ``model`` is a factory ``seed -> nn.Module`` (called once per seed, on
    CPU, in float64 or the config's dtype after); ``data`` is a :class:`~steepest.data.Dataset`
    or tensors ``(X, y)`` / ``(X, y, X_test, y_test)`` (:func:`steepest.data.as_dataset`). The
    config's ``model`` / ``data`` sections then leave the name out (it is recorded as
    ``"user"``); the rest of the config applies. The model's homogeneity is measured: a model
    that fails the test is refused (the error names the offending module where it can), unless
    ``allow_inhomogeneous=True``: then it trains without margin columns and ``steepest verify``
    says its theorem checks are not applicable. ``resume`` with objects needs the same objects.
    """
    if isinstance(model, torch.nn.Module):
        raise TypeError(
            "model= takes a factory seed -> nn.Module, called once per seed (the seeds' "
            "initializations differ); got the module itself: pass a function that builds it, "
            "e.g. model=lambda seed: MyNet()"
        )
    if model is not None and not callable(model):
        raise TypeError(f"model= must be a callable seed -> nn.Module, got {type(model).__name__}")
    cfg = config_with_objects(config, model, data)
    if device is not None:
        cfg = cfg.model_copy(
            update={"device": load_config({**cfg.canonical(), "device": device}).device}
        )
    dev = resolve_device(cfg.device)
    specs = cfg.run_specs()
    dataset = as_dataset(data) if data is not None else load_experiment_data(cfg)
    engine = Engine(
        cfg, specs, dataset, dev, model_factory=model, allow_inhomogeneous=allow_inhomogeneous
    )
    db_path = Path(db) if db is not None else default_db_path()
    show = (
        progress
        if progress is not None
        else (cfg.logging.progress if cfg.logging.progress is not None else sys.stderr.isatty())
    )
    if resume:
        if not db_path.is_file():
            raise ValueError(f"nothing to resume: no results database at {db_path}")
        store = RunStore(db_path, create=False)
    else:
        params = engine.init_params()
        winfo = None
        if cfg.warm_start is not None:
            params, winfo = warm_start_params(
                cfg, dataset, engine, params
            )  # before any row is written
        batch = uuid.uuid4().hex[:12]
        ckpt_dir = db_path.parent / "checkpoints" / batch
        fresh = BatchRunner(engine, None, [], ckpt_dir, show)  # type: ignore[arg-type]  # store and rows come next
        fresh.fresh_state(params)
        _check_disk_space(ckpt_dir, 2 * _tree_bytes(fresh.state_dict()) + 2**20)
        store = RunStore(db_path)
    stop = _StopFlag()
    try:
        with _deferred_signals(
            stop
        ):  # from the first row written: a signal stops between whole steps
            return _train_batch(
                engine,
                cfg,
                specs,
                dataset,
                store,
                db_path,
                resume,
                show,
                stop,
                fresh=None if resume else fresh,
                winfo=None if resume else winfo,
                batch=None if resume else batch,
                ckpt_dir=None if resume else ckpt_dir,
            )
    finally:
        store.close()


def _train_batch(
    engine: Engine,
    cfg: ExperimentConfig,
    specs: list[RunSpec],
    dataset: Dataset,
    store: RunStore,
    db_path: Path,
    resume: bool,
    show: bool,
    stop: _StopFlag,
    *,
    fresh: BatchRunner | None,
    winfo: dict[str, Any] | None,
    batch: str | None,
    ckpt_dir: Path | None,
) -> TrainResult:
    """Create (or find) the batch's rows, own it, train it, settle it: :func:`train`'s body."""
    if resume:
        records = _resumable(store, cfg, engine.K)
        stored = (records[0].info.get("dataset") or {}).get("fingerprint")
        if stored is not None and stored != dataset.info.get("fingerprint"):
            raise ValueError(
                "resume: the data passed now differ from the batch's (its fingerprint "
                f"{stored}, now {dataset.info.get('fingerprint')}); pass the same data"
            )
        run_ids = [r.id for r in records]
        batch = records[0].info["batch"]
        ckpt_dir = Path(records[0].info["checkpoint_dir"])
        store.acquire_lease(batch)
        try:
            remove_stale_temps(ckpt_dir)  # a writer SIGKILLed mid-checkpoint leaves its temp file
            runner = BatchRunner(engine, store, run_ids, ckpt_dir, show)
            runner.load_state_dict(load_checkpoint(records[0].info["checkpoint"], engine.device))
            for rid, t in zip(run_ids, runner.t.tolist(), strict=True):
                store.delete_metrics_after(rid, t)
                store.update_run(rid, status="running")
        except BaseException:
            store.release_lease(batch)  # a resume that cannot start leaves the batch free
            raise
    else:
        h = cfg.config_hash()
        run_ids = []
        for sp in specs:
            lr = sp.schedule["lr"]
            info = {
                "batch": batch,
                "index": sp.index,
                "label": sp.label,
                "config_hash": h,
                "schedule": sp.schedule,
                "options": sp.options,
                "own_norm": engine.own_norms[sp.index].name,
                "own_norm_column": engine.own_norms[sp.index].column,
                "own_norm_kkt_program": engine.own_norms[sp.index].kkt_program,
                "degree": engine.L,
                "not_homogeneous": engine.not_homogeneous,
                "loss": cfg.loss,
                "dataset": dataset.info,
                "checkpoint_dir": str(ckpt_dir),
                "normalized": next(
                    g.algo.normalized for g in engine.groups if sp.index in g.indices
                ),
            }
            if winfo is not None:
                info["warm_start"] = winfo
            run_ids.append(
                store.create_run(
                    name=f"{cfg.name}/{sp.label}/lr={lr:g}/seed={sp.seed}",
                    algorithm=sp.algorithm,
                    seed=sp.seed,
                    config=cfg.canonical(),
                    experiment=cfg.name,
                    info=info,
                )
            )
        store.acquire_lease(batch)
        runner = fresh
        runner.store, runner.run_ids = store, run_ids
    runner.batch_id = batch
    runner.stop = stop
    try:
        runner.run(resumed=resume)
    except BaseException as exc:
        _settle_after_failure(runner, store, run_ids, exc)
        raise
    path = runner.checkpoint(final=True)
    for rid, st in zip(run_ids, runner.status, strict=True):
        store.update_run(rid, status=st if st != "running" else "completed")
    store.release_lease(batch)
    final = [
        {"step": float(store.metrics(rid)["step"][-1]), **store.final_metrics(rid)}
        for rid in run_ids
    ]
    statuses = [store.get_run(rid).status for rid in run_ids]
    return TrainResult(
        run_ids=run_ids,
        batch=batch,
        db=db_path,
        final=final,
        labels=[sp.label for sp in specs],
        checkpoint=path,
        statuses=statuses,
    )


def _settle_after_failure(
    runner: BatchRunner, store: RunStore, run_ids: list[int], exc: BaseException
) -> None:
    """Checkpoint the last whole step (if the failure came between steps) and mark the
    unfinished runs "interrupted" (a signal) or "failed" (with the reason). Best effort: on a
    full disk these writes can fail too, and then the last checkpoint on disk stays the one to
    resume from (its rows past that point are replaced on resume)."""
    if isinstance(exc, BatchBusyError):  # another process owns the batch now: leave it alone
        return
    interrupted = isinstance(exc, KeyboardInterrupt)
    try:
        if runner.consistent:
            runner.checkpoint()
    except BaseException:  # noqa: BLE001 - the original failure is what the user must see
        pass
    reason = (
        f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        if str(exc)
        else type(exc).__name__
    )
    for rid, st in zip(run_ids, runner.status, strict=True):
        try:
            if st != "running":  # ended before the failure: completed or diverged, as it was
                store.update_run(rid, status=st)
            elif interrupted:
                store.update_run(rid, status="interrupted")
            else:
                store.update_run(rid, status="failed", info={"error": reason})
        except BaseException:  # noqa: BLE001
            pass
    try:
        if runner.batch_id is not None:
            store.release_lease(runner.batch_id)
    except BaseException:  # noqa: BLE001
        pass
