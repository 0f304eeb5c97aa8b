"""``torch.optim.Optimizer`` wrappers over the pure update rules, for users' own loops.

``SteepestDescent(model.parameters(), norm="linf", lr=1e-3)`` is sign descent;
``steepest.optimizer("cd", params, lr=0.1)`` builds any registered algorithm by name.

Each param group is one "vector" for the norm: ℓ1 moves one coordinate of the whole group,
spectral takes the max over the group's layers, and so on. A parameter whose ``.grad`` is
``None`` is treated as having a zero gradient (it still belongs to the norm's vector).

The rule's state (a dict of tensors and per-parameter lists, as ``Algorithm.optimizer_state``
keeps it: without what only the engine reads) is stored the torch way, per parameter in
``self.state[p]`` (scalars such as ``step`` are replicated in every parameter's entry, as
``torch.optim.Adam`` does), so ``state_dict()``/``load_state_dict()`` round-trip with torch's
own machinery.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .algorithms import Algorithm, SteepestDescentRule, algorithm, algorithm_defaults
from .norms import Norm

__all__ = ["AlgorithmOptimizer", "SteepestDescent", "optimizer", "optimizer_class"]


def _plain(value: Any) -> Any:
    """An option as a plain Python value (numpy scalars, ranges, lists become floats, ints,
    tuples): what the param groups store, so that ``state_dict`` loads with
    ``weights_only=True``, and a hashable key that a loaded group's lists compare equal to."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple, range)):
        return tuple(_plain(v) for v in value)
    return value


class AlgorithmOptimizer(torch.optim.Optimizer):
    """Runs a pure :class:`~steepest.algorithms.Algorithm` as a ``torch.optim.Optimizer``.

    ``build(**group_hyperparams) -> Algorithm`` builds the rule from a param group's plain
    hyperparameters, so param groups may differ (per-group norms, betas, …). They are the
    group's values of the optimizer's own keys (``defaults``, less ``lr``): like torch's
    optimizers, it ignores other keys, such as a scheduler's ``initial_lr``. The rule is built
    once per group and rebuilt only when the group's hyperparameters change. Each step calls
    the rule's in-place form :meth:`~steepest.algorithms.Algorithm.apply_` (multi-tensor
    operations on the parameters and the state, as ``torch.optim``'s foreach implementations).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        build: Callable[..., Algorithm],
        lr: float,
        **hyperparams: Any,
    ):
        if not (isinstance(lr, (int, float)) and lr >= 0):
            raise ValueError(f"lr must be a non-negative number, got {lr!r}")
        self._build = build
        # id(group) -> (hyperparameter key, rule, {state key: is it per parameter}).
        self._rules: dict[int, tuple[tuple, Algorithm, dict[str, bool]]] = {}
        super().__init__(params, dict(lr=lr, **hyperparams))

    def __getstate__(self) -> dict[str, Any]:
        # torch keeps defaults, state and param_groups; the builder is needed to step again
        # (picklable for the classes of optimizer_class and SteepestDescent), the rule cache
        # is rebuilt.
        return {**super().__getstate__(), "_build": self._build}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also called by torch's load_state_dict with the new state and groups only.
        state = dict(state)
        if "_build" in state:
            self._build = state.pop("_build")
        self._rules = {}
        super().__setstate__(state)

    def rule(self, group: dict[str, Any]) -> Algorithm:
        """The rule that steps ``group`` (one of ``param_groups``), as its hyper-parameters
        are now."""
        return self._rule(group)[0]

    def _rule(self, group: dict[str, Any]) -> tuple[Algorithm, dict[str, bool]]:
        # The rule's hyper-parameters are the keys the optimizer was built with; other keys
        # (a scheduler's initial_lr or max_lr) are not the rule's.
        hp = {k: group[k] for k in self.defaults if k != "lr" and k in group}
        key = tuple((k, _plain(v)) for k, v in hp.items())
        cached = self._rules.get(id(group))
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        algo = self._build(**hp)
        template = algo.init(list(group["params"]))
        layout = {k: isinstance(v, list) for k, v in algo.optimizer_state(template).items()}
        self._rules[id(group)] = (key, algo, layout)
        return algo, layout

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        state = self.state
        for group in self.param_groups:
            params: list[Tensor] = group["params"]
            if not params:
                continue
            algo, layout = self._rule(group)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            entries = [state[p] for p in params]
            if not all(entries):
                pure = {k: v for k, v in algo.init(params).items() if k in layout}
            else:
                pure = {
                    k: [e[k] for e in entries] if per_param else entries[0][k]
                    for k, per_param in layout.items()
                }
            new_state = algo.apply_(params, grads, pure, group["lr"])
            for i, entry in enumerate(entries):
                for k, v in new_state.items():
                    entry[k] = v[i] if isinstance(v, list) else v
        return loss


def _steepest_builder(norm: Norm | str, normalized: bool) -> Algorithm:
    return SteepestDescentRule(norm, normalized)


class SteepestDescent(AlgorithmOptimizer):
    """Steepest descent w.r.t. ``norm`` (a name such as ``"linf"`` or a :class:`Norm`).

    normalized=True: θ ← θ − lr·U(g); normalized=False: θ ← θ − lr·‖g‖_*·U(g) (docs/theory.md §2.2).
    A norm given by name is stored by name, so ``state_dict`` stays ``weights_only``-loadable.
    """

    def __init__(self, params, norm: Norm | str = "l2", lr: float = 1e-3, normalized: bool = True):
        super().__init__(params, _steepest_builder, lr=lr, norm=norm, normalized=normalized)


def optimizer(name: str, params, lr: float = 1e-3, **kwargs: Any) -> AlgorithmOptimizer:
    """Build a ``torch.optim.Optimizer`` for a registered algorithm by name.

    ``steepest.optimizer("sign", model.parameters(), lr=1e-3)``;
    ``steepest.optimizer("lp", params, lr=0.01, p=3)``. Unknown names or options raise
    ``ValueError`` listing the valid ones. The optimizer is an instance of
    ``optimizer_class(name)`` (for "adam" that is :class:`steepest.adaptive.Adam`).
    """
    return optimizer_class(name)(params, lr, **kwargs)


#: name -> its class; one class per algorithm, whoever asks first names its module.
_CLASSES: dict[str, type[AlgorithmOptimizer]] = {}


def optimizer_class(
    name: str, doc: str | None = None, class_name: str | None = None, module: str | None = None
) -> type[AlgorithmOptimizer]:
    """The ``torch.optim``-style class of the registered algorithm ``name``:
    ``cls(params, lr=1e-3, *options, **options)``. The options and their defaults are the
    algorithm factory's, in its order (its signature is the class's), so they are written
    once, in the factory; every option goes into the param groups as a plain value, defaults
    included (as torch's optimizers do, so that schedulers such as OneCycleLR find betas or
    momentum). One class per name: the first call makes it (``module``: where it is bound,
    for pickling), later calls return it."""
    if name in _CLASSES:
        return _CLASSES[name]
    defaults = algorithm_defaults(name)  # an unknown name fails here
    order = list(defaults)

    def __init__(self, params, lr: float = 1e-3, *args: Any, **options: Any) -> None:
        if len(args) > len(order):
            raise TypeError(
                f"{type(self).__name__} takes at most {len(order)} positional "
                f"options ({', '.join(order)}), got {len(args)}"
            )
        for k, v in zip(order, args, strict=False):
            if k in options:
                raise TypeError(f"{type(self).__name__} got option {k!r} twice")
            options[k] = v
        algorithm(name, **options)  # validate eagerly: a bad option fails here, not at a step
        hp = {k: _plain(v) for k, v in {**defaults, **options}.items()}
        AlgorithmOptimizer.__init__(self, params, functools.partial(algorithm, name), lr=lr, **hp)
        self.algorithm_name = name

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("lr", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1e-3),
            *(
                inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=v)
                for k, v in defaults.items()
            ),
        ]
    )
    title = class_name or "".join(
        part.capitalize() for part in name.replace("[", "-").replace("]", "").split("-")
    )
    cls = type(
        title,
        (AlgorithmOptimizer,),
        {
            "__init__": __init__,
            "__doc__": doc
            or f"``torch.optim``-style optimizer for the registered algorithm {name!r}.",
            "__module__": module or __name__,
        },
    )
    _CLASSES[name] = cls
    return cls
