"""The checks every public registry (``register_algorithm``, ``register_norm``,
``register_model``) makes before it names a user's object."""

from __future__ import annotations

from typing import Any

__all__ = ["check_registration"]


def check_registration(kind: str, name: Any, factory: Any, taken: bool, replace: bool) -> None:
    """Refuse an empty or non-string ``name``, a ``factory`` that cannot be called, and a
    ``taken`` name unless ``replace`` (``kind``: "algorithm", "norm", "model", for messages)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a {kind} name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_{kind}({name!r}): the factory must be callable")
    if taken and not replace:
        raise ValueError(f"{kind} {name!r} is already registered; pass replace=True to replace it")
