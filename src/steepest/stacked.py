"""Helpers for K runs stacked along a leading run axis.

Parameters, gradients and optimizer states of a batch are lists (or dicts) of tensors of shape
(K, ...). These functions map over such trees and select, gather or scatter runs. None of them
edits a tensor in place, so a snapshot of an earlier state stays valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "tree_map",
    "where_runs",
    "select_runs",
    "gather_runs",
    "scatter_runs",
    "finite_or_zero",
    "dot_runs",
]


def tree_map(fn: Callable[..., Any], *trees: Any) -> Any:
    """``fn`` applied leaf by leaf to trees of the same structure (dicts, lists, tuples); a
    leaf that is not a tensor is taken from the first tree unchanged."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: tree_map(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(tree_map(fn, *items) for items in zip(*trees, strict=True))
    if isinstance(first, Tensor):
        return fn(*trees)
    return first


def where_runs(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per-run select along the leading axis: ``new[i]`` where ``mask[i]``, else ``old[i]``."""
    m = mask.reshape(mask.shape + (1,) * (new.dim() - 1))
    return torch.where(m, new, old)


def select_runs(mask: Tensor, new: Any, old: Any) -> Any:
    """:func:`where_runs` over a whole state tree (new tensors; nothing is edited)."""
    return tree_map(lambda a, b: where_runs(mask, a, b), new, old)


def gather_runs(tree: Any, idx: Tensor | None) -> Any:
    """The runs ``idx`` of every leaf (``idx`` None: all runs, the tree itself)."""
    return tree if idx is None else tree_map(lambda x: x.index_select(0, idx), tree)


def scatter_runs(full: Tensor, idx: Tensor | None, part: Tensor) -> Tensor:
    """``full`` with its runs ``idx`` replaced by ``part`` (a new tensor; ``idx`` None:
    ``part`` itself)."""
    return part if idx is None else full.index_copy(0, idx, part)


def finite_or_zero(x: Tensor) -> Tensor:
    """x with NaN and ±inf set to 0 (integer tensors unchanged)."""
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) if x.is_floating_point() else x


def dot_runs(a: Sequence[Tensor], b: Sequence[Tensor], k: int) -> Tensor:
    """⟨a, b⟩ per run (float64, shape (k,)) for two stacked parameter lists."""
    return sum(
        (x.reshape(k, -1) * y.reshape(k, -1)).sum(dim=1).to(torch.float64)
        for x, y in zip(a, b, strict=True)
    )
