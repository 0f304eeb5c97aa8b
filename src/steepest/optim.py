"""``torch.optim.Optimizer`` wrappers over the pure update rules, for users' own loops.

``SteepestDescent(model.parameters(), norm="linf", lr=1e-3)`` is sign descent;
``steepest.optimizer("cd", params, lr=0.1)`` builds any registered algorithm by name.

Each param group is one "vector" for the norm: ℓ1 moves one coordinate of the whole group,
spectral takes the max over the group's layers, and so on. A parameter whose ``.grad`` is
``None`` is treated as having a zero gradient (it still belongs to the norm's vector).

The pure rule's state (a dict of tensors and per-parameter lists) is stored the torch way,
per parameter in ``self.state[p]`` (scalars such as ``step`` are replicated in every
parameter's entry, as ``torch.optim.Adam`` does), so ``state_dict()``/``load_state_dict()``
round-trip with torch's own machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .algorithms import Algorithm, SteepestDescentRule, algorithm
from .norms import Norm

__all__ = ["AlgorithmOptimizer", "SteepestDescent", "optimizer"]


class AlgorithmOptimizer(torch.optim.Optimizer):
    """Runs a pure :class:`~steepest.algorithms.Algorithm` as a ``torch.optim.Optimizer``.

    ``build(**group_hyperparams) -> Algorithm`` rebuilds the rule from a param group's plain
    hyperparameters, so param groups may differ (per-group norms, betas, …).
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
        super().__init__(params, dict(lr=lr, **hyperparams))

    def _algorithm(self, group: dict[str, Any]) -> Algorithm:
        hp = {k: v for k, v in group.items() if k not in ("params", "lr")}
        return self._build(**hp)

    @staticmethod
    def _gather(state: dict, params: list[Tensor], template: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, val in template.items():
            if isinstance(val, list):
                out[key] = [state[p][key] for p in params]
            else:
                out[key] = state[params[0]][key]
        return out

    @staticmethod
    def _scatter(state: dict, params: list[Tensor], new: dict[str, Any]) -> None:
        for i, p in enumerate(params):
            entry = state[p]
            for key, val in new.items():
                entry[key] = val[i] if isinstance(val, list) else val

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = list(group["params"])
            if not params:
                continue
            algo = self._algorithm(group)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            template = algo.init(params)
            if any(len(self.state[p]) == 0 for p in params):
                pure_state = template
            else:
                pure_state = self._gather(self.state, params, template)
            new_params, new_state = algo.update(params, grads, pure_state, group["lr"])
            for p, q in zip(params, new_params, strict=True):
                p.copy_(q)
            self._scatter(self.state, params, new_state)
        return loss


def _steepest_builder(norm: Norm | str, normalized: bool) -> Algorithm:
    return SteepestDescentRule(norm, normalized)


class SteepestDescent(AlgorithmOptimizer):
    """Steepest descent w.r.t. ``norm`` (a name such as ``"linf"`` or a :class:`Norm`).

    normalized=True: θ ← θ − lr·U(g); normalized=False: θ ← θ − lr·‖g‖_*·U(g) (spec §2.2).
    A norm given by name is stored by name, so ``state_dict`` stays ``weights_only``-loadable.
    """

    def __init__(self, params, norm: Norm | str = "l2", lr: float = 1e-3, normalized: bool = True):
        super().__init__(params, _steepest_builder, lr=lr, norm=norm, normalized=normalized)


def optimizer(name: str, params, lr: float = 1e-3, **kwargs: Any) -> AlgorithmOptimizer:
    """Build a ``torch.optim.Optimizer`` for a registered algorithm by name.

    ``steepest.optimizer("sign", model.parameters(), lr=1e-3)``;
    ``steepest.optimizer("lp", params, lr=0.01, p=3)``. Unknown names or options raise
    ``ValueError`` listing the valid ones.
    """
    algorithm(name, **kwargs)  # validate eagerly: a bad name fails here, not at the first step

    def build(**hp: Any) -> Algorithm:
        return algorithm(name, **hp)

    opt = AlgorithmOptimizer(params, build, lr=lr, **kwargs)
    opt.algorithm_name = name  # type: ignore[attr-defined]
    return opt
