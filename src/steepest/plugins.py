"""Plug-ins: a user's norms, optimizers, models and data sets, named for configs and the CLI.

A plug-in is a module that registers its objects when it is loaded, through the public
registries (:func:`steepest.register_norm`, :func:`steepest.register_algorithm`,
:func:`steepest.register_model`, :func:`steepest.register_dataset`). Two ways to load one:

* an installed package declares an entry point in the group ``steepest.plugins``::

      [project.entry-points."steepest.plugins"]
      mine = "my_package.steepest_plugin:register"

  The entry point names a callable (called with no arguments) or a module (imported).
  Entry points are loaded once per process, the first time a config names something no
  registry knows, or by :func:`load_entry_points`;
* ``steepest --plugin my_module COMMAND ...`` (repeatable) or :func:`load_plugin` imports a module
  by name; a module that defines ``register()`` has it called once.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "load_entry_points",
    "load_plugin",
    "retry_after_plugins",
]

#: The entry-point group that installed plug-ins declare.
ENTRY_POINT_GROUP = "steepest.plugins"

_loaded_entry_points: list[str] | None = None
_loaded_modules: set[str] = set()


class PluginError(ValueError):
    """A plug-in could not be found or failed while loading; the message names it."""


def load_plugin(module: str) -> ModuleType:
    """Import the plug-in module ``module`` (a dotted name) and call its ``register()`` if it
    has one, once per process. Raises :class:`PluginError` naming the module on failure."""
    if not isinstance(module, str) or not module.strip():
        raise PluginError(f"a plug-in is named by a module name, got {module!r}")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(f"plug-in {module!r} cannot be imported: {exc}") from exc
    except Exception as exc:  # the plug-in's own code failed while importing
        raise PluginError(
            f"plug-in {module!r} failed while importing: {type(exc).__name__}: {exc}"
        ) from exc
    if module not in _loaded_modules:
        register = getattr(mod, "register", None)
        if callable(register):
            try:
                register()
            except Exception as exc:
                raise PluginError(f"plug-in {module!r}: register() failed: {exc}") from exc
        _loaded_modules.add(module)  # only once register() went through
    return mod


def loaded_plugins() -> list[str]:
    """The plug-in modules loaded by :func:`load_plugin` in this process (``--plugin``), in
    name order: what a worker of another process must load to read the same configs."""
    return sorted(_loaded_modules)


def load_entry_points() -> list[str]:
    """Load every plug-in declared in the ``steepest.plugins`` entry-point group, once per
    process; returns the names of the entry points loaded by *this* call (empty when they were
    loaded before, or when none is installed)."""
    global _loaded_entry_points
    if _loaded_entry_points is not None:
        return []
    _loaded_entry_points = []
    failed = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, ModuleType):
                obj()
        except Exception as exc:  # the others still load; the failures are named together
            failed.append(f"{ep.name!r} ({ep.value}): {type(exc).__name__}: {exc}")
            continue
        _loaded_entry_points.append(ep.name)
    if failed:
        raise PluginError(f"plug-in entry points failed to load: {'; '.join(failed)}")
    return list(_loaded_entry_points)


def retry_after_plugins(error: Exception) -> bool:
    """For a lookup that just failed with ``error``: load the installed plug-ins (once per
    process) and say whether any loaded, i.e. whether the lookup is worth retrying. A plug-in
    that fails to load does not hide ``error``: its failure is added to it, and ``error`` is
    raised."""
    try:
        return bool(load_entry_points())
    except PluginError as exc:
        raise type(error)(f"{error} (also, {exc})") from exc
