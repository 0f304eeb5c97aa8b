"""Pure update rules: steepest descent w.r.t. a norm, and the registry of named algorithms.

An :class:`Algorithm` is a norm plus a step rule. Its two pure functions follow optax:

* ``state = algo.init(params)``
* ``params, state = algo.update(params, grads, state, lr)``

``params`` and ``grads`` are lists of tensors; ``state`` is a dict whose values are tensors or
lists of tensors (one per parameter). Nothing is edited in place, there is no ``.item()`` and
no Python branching on tensor values, so ``torch.func.vmap`` can step K runs together.

Steepest descent (docs/theory.md §2.2):

* normalized:   θ ← θ − η · U(g),  U(g) ∈ argmax_{‖u‖≤1} ⟨g, u⟩,  so ‖Δθ‖ = η;
* unnormalized: θ ← θ − η · J(g),  J(g) = ‖g‖_* U(g),              so ‖Δθ‖ = η‖g‖_*.

Every algorithm declares ``predicted_norm``: the norm whose margin q_min/‖θ‖^L it is
predicted to maximize once the data are separated (docs/theory.md §3.1, §3.4).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from .norms import LpNorm, Norm, Spectral, get_norm
from .registry import check_registration

__all__ = [
    "Algorithm",
    "SteepestDescentRule",
    "algorithm",
    "algorithm_defaults",
    "algorithm_names",
    "register_algorithm",
]

State = dict[str, Any]


class Algorithm:
    """A pure update rule with a declared predicted norm.

    Subclasses implement :meth:`init` and :meth:`update`. ``hyperparams`` holds the plain
    values (floats, bools, strings) that rebuild the rule: the optimizer wrappers keep them in
    ``param_groups`` so that ``state_dict`` stays loadable with ``weights_only=True``.
    """

    name: str = "algorithm"
    predicted_norm: Norm
    normalized: bool = True

    def init(self, params: Sequence[Tensor]) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], state: State, lr: float | Tensor
    ) -> tuple[list[Tensor], State]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {}

    #: State entries that only the engine reads (the flow-time clock ``grad_dual``, Adam's ε
    #: frame); a rule whose own :meth:`apply_` does not keep them names them here.
    engine_only_state: tuple[str, ...] = ()
    #: The methods whose arithmetic a rule's own :meth:`apply_` spells again, in place. A
    #: subclass that replaces one of them steps through its ``update`` instead (see ``in_place``).
    in_place_of: tuple[str, ...] = ()

    @functools.cached_property
    def in_place(self) -> bool:
        """Whether :meth:`apply_` is this rule's own in-place step: False for the default, and for
        a subclass that replaced a method of ``in_place_of`` (a user's rule built on ours), whose
        arithmetic the inherited in-place step would silently skip."""
        owner = next(c for c in type(self).__mro__ if "apply_" in vars(c))
        if owner is Algorithm:
            return False
        return all(getattr(type(self), n) is getattr(owner, n) for n in self.in_place_of)

    def optimizer_state(self, state: State) -> State:
        """``state`` as a ``torch.optim`` wrapper keeps it: without ``engine_only_state`` when
        :meth:`apply_` is the rule's own in-place step (which does not need those entries)."""
        drop = self.engine_only_state if self.in_place else ()
        return {k: v for k, v in state.items() if k not in drop}

    def apply_(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], state: State, lr: float | Tensor
    ) -> State:
        """The step in place, for ``torch.optim`` wrappers: moves ``params`` (the user's tensors)
        where :meth:`update` would and returns the new state (as :meth:`optimizer_state` keeps
        it). The caller gives ``state`` away: its tensors may be updated in place.

        Default: :meth:`update`, then a copy into ``params``. Rules override it with multi-tensor
        in-place operations (``torch._foreach_*``, not ``vmap``-able, so :meth:`update` stays
        the pure form the engine batches) and name what they re-spell in ``in_place_of``;
        tests/test_optim.py checks every registered rule's ``apply_`` against its ``update``,
        step for step.
        """
        new_params, new_state = self.update(params, grads, state, lr)
        torch._foreach_copy_(list(params), list(new_params))
        return new_state

    def rescale_state(self, state: State, log_factor: Tensor) -> State:
        """Re-express ``state`` for gradients that are e^{log_factor} times the previous ones.

        The engine feeds ∇log𝓛 = ∇𝓛/𝓛 (which never underflows) instead of ∇𝓛, and calls
        this before each step with log_factor = log 𝓛_prev − log 𝓛_now, so a stateful rule
        (Adam's moments, ε) behaves exactly as on the raw loss. Scale-free state: unchanged.
        """
        return state

    # Stacked forms: K runs on a leading axis (every tensor (K, *shape), lr a (K,) tensor), as
    # the engine steps them. Defaults are ``vmap`` of the pure functions; rules override them
    # with natively batched code where vmap's per-op dispatch dominates small steps.
    def stacked_init(self, params: Sequence[Tensor]) -> State:
        return vmap(self.init)(list(params))

    def stacked_update(
        self, params: Sequence[Tensor], grads: Sequence[Tensor], state: State, lr: Tensor
    ) -> tuple[list[Tensor], State]:
        p0 = params[0]
        lr = torch.as_tensor(lr, dtype=p0.dtype, device=p0.device).expand(
            p0.shape[:1]
        )  # a float: every run
        new_params, new_state = vmap(self.update)(list(params), list(grads), state, lr)
        return list(new_params), new_state

    def stacked_rescale_state(self, state: State, log_factor: Tensor) -> State:
        if type(self).rescale_state is Algorithm.rescale_state:
            return state
        return vmap(self.rescale_state)(state, log_factor)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{type(self).__name__}({self.name!r}{', ' if hp else ''}{hp})"


class SteepestDescentRule(Algorithm):
    """Steepest descent w.r.t. ``norm``, normalized or not (docs/theory.md §2.2–§2.3).

    State: ``step`` (number of updates taken) and ``grad_dual`` (‖g‖_* of the last gradient,
    which the engine needs for flow time: Σ η for unnormalized steps, Σ η/‖g‖_* for
    normalized ones; docs/theory.md §3.8).
    """

    def __init__(self, norm: Norm | str, normalized: bool = True, name: str | None = None):
        self.norm = get_norm(norm)
        self.normalized = bool(normalized)
        self.predicted_norm = self.norm
        self.name = (
            name or f"steepest[{self.norm.name},{'normalized' if normalized else 'unnormalized'}]"
        )

    @property
    def hyperparams(self) -> dict[str, Any]:
        return {"norm": self.norm.name, "normalized": self.normalized}

    def init(self, params: Sequence[Tensor]) -> State:
        p0 = params[0]
        zero = torch.zeros((), dtype=p0.dtype, device=p0.device)
        return {"step": zero, "grad_dual": zero}

    def step_direction(self, grads: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """The step Δ (U(g) or J(g)) with θ ← θ − η Δ, and ‖g‖_*."""
        u, dual = self.norm.direction_and_dual(grads)
        if not self.normalized:
            u = [dual * x for x in u]
        return u, dual

    def update(self, params, grads, state, lr):
        delta, dual = self.step_direction(grads)
        new_params = [p - lr * d for p, d in zip(params, delta, strict=True)]
        return new_params, {"step": state["step"] + 1, "grad_dual": dual}

    engine_only_state = ("grad_dual",)
    in_place_of = ("update", "step_direction")

    def apply_(self, params, grads, state, lr):
        """θ ← θ − η·Δ in place, Δ = :meth:`Norm.update_direction` (for ℓ2 unnormalized Δ = g:
        one ``_foreach_add_``, as ``torch.optim.SGD``). ‖g‖_* is not kept: the engine's clock."""
        if not self.in_place:
            return super().apply_(params, grads, state, lr)
        if isinstance(self.norm, LpNorm) and self.norm.p == 1.0:
            # Greedy coordinate descent moves one entry: write it, not a dense one-hot Δ.
            if not any(g.numel() for g in grads):
                return {"step": state["step"] + 1}
            k, j, top = self.norm.top_coordinate(grads)
            p = params[k]
            at = []
            for size in reversed(p.shape):  # the flat index as a multi-index: p may be strided
                j, i = divmod(j, size)
                at.append(i)
            p[tuple(reversed(at))] -= float(lr) * (torch.sign(top) if self.normalized else top)
        else:
            delta = self.norm.update_direction(grads, self.normalized)
            torch._foreach_add_(list(params), delta, alpha=-float(lr))
        return {"step": state["step"] + 1}

    def stacked_update(self, params, grads, state, lr):
        u, dual = self.norm.stacked_direction_and_dual(grads)
        return self.stacked_step(params, u, dual, state, lr)

    def stacked_step(self, params, u, dual, state, lr):
        """:meth:`stacked_update` with the direction U(g) and ‖g‖_* already computed (the
        engine's flow schedule computes them at θ' for its error estimate, one step early)."""
        lr = torch.as_tensor(lr, dtype=dual.dtype, device=dual.device).expand(
            dual.shape
        )  # a float: every run
        new_params = []
        for p, d in zip(params, u, strict=True):
            shape = (-1,) + (1,) * (p.dim() - 1)
            if not self.normalized:
                d = dual.reshape(shape) * d  # same operation order as update()
            new_params.append(p - lr.reshape(shape) * d)
        return new_params, {"step": state["step"] + 1, "grad_dual": dual}


# ----------------------------------------------------------------------------- registry

_FACTORIES: dict[str, Callable[..., Algorithm]] = {}
_DOCS: dict[str, str] = {}


def register_algorithm(
    name: str, factory: Callable[..., Algorithm], doc: str = "", *, replace: bool = False
) -> None:
    """Register ``factory(**kw) -> Algorithm`` under ``name`` (used by :func:`algorithm`, by
    ``steepest.optimizer`` and by configs). A name that is taken is refused unless
    ``replace=True``."""
    check_registration("algorithm", name, factory, name in _FACTORIES, replace)
    _FACTORIES[name] = factory
    _DOCS[name] = doc


def algorithm_defaults(name: str) -> dict[str, Any]:
    """The keyword options of the registered algorithm ``name`` that have defaults, with them
    (``algorithm_defaults("adam")`` gives betas, eps and bias_correction)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown algorithm {name!r}; valid names: {', '.join(algorithm_names())}")
    params = inspect.signature(_FACTORIES[name]).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def algorithm_names() -> list[str]:
    """The names :func:`algorithm` and :func:`steepest.optimizer` accept."""
    return sorted(_FACTORIES)


def algorithm(name: str | Algorithm, **kwargs: Any) -> Algorithm:
    """Build a named algorithm, e.g. ``algorithm("sign")`` or ``algorithm("lp", p=3)``.

    Unknown names, and keyword arguments a rule does not take, raise ``ValueError`` listing the
    valid choices.
    """
    if isinstance(name, Algorithm):
        if kwargs:
            raise ValueError("keyword arguments cannot be applied to an Algorithm instance")
        return name
    if name not in _FACTORIES:
        raise ValueError(f"unknown algorithm {name!r}; valid names: {', '.join(algorithm_names())}")
    factory = _FACTORIES[name]
    sig = inspect.signature(factory)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    bad = [k for k in kwargs if k not in sig.parameters] if not takes_any else []
    if bad:
        valid = [k for k in sig.parameters]
        raise ValueError(
            f"algorithm {name!r} does not take {', '.join(map(repr, bad))}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
    return factory(**kwargs)


def _gd(normalized: bool = False) -> Algorithm:
    return SteepestDescentRule(LpNorm(2), normalized, name="gd" if not normalized else "ngd")


def _ngd(normalized: bool = True) -> Algorithm:
    return SteepestDescentRule(LpNorm(2), normalized, name="ngd" if normalized else "gd")


def _sign(normalized: bool = True) -> Algorithm:
    return SteepestDescentRule(LpNorm(float("inf")), normalized, name="sign")


def _cd(normalized: bool = True) -> Algorithm:
    return SteepestDescentRule(LpNorm(1), normalized, name="cd")


def _lp(p: float, normalized: bool = True) -> Algorithm:
    n = LpNorm(p)
    return SteepestDescentRule(n, normalized, name=f"lp[{n.name}]")


def _spectral(normalized: bool = True) -> Algorithm:
    return SteepestDescentRule(Spectral(), normalized, name="spectral")


def _steepest(norm: Norm | str, normalized: bool = True) -> Algorithm:
    return SteepestDescentRule(norm, normalized)


register_algorithm(
    "gd", _gd, "gradient descent, unnormalized ℓ2 steepest descent; predicted norm ℓ2"
)
register_algorithm("ngd", _ngd, "normalized gradient descent (ℓ2); predicted norm ℓ2")
register_algorithm("sign", _sign, "sign descent, normalized ℓ∞ steepest descent; predicted norm ℓ∞")
register_algorithm("cd", _cd, "greedy coordinate descent, ℓ1 steepest descent; predicted norm ℓ1")
register_algorithm("lp", _lp, "ℓp steepest descent for any p ≥ 1 (keyword p); predicted norm ℓp")
register_algorithm(
    "spectral", _spectral, "spectral descent (UVᵀ per layer); predicted norm max-spectral"
)
register_algorithm("steepest", _steepest, "steepest descent w.r.t. any norm (keyword norm)")
