"""steepest: implicit bias of steepest descent in homogeneous neural networks.

One :class:`~steepest.norms.Norm` defines both an optimizer (its steepest direction) and the
margin that optimizer maximizes (q_min / ‖θ‖^L). See the README for a tour.
"""

from __future__ import annotations

import os as _os

# OpenMP threads that spin while waiting slow small-matrix steps down several-fold when the
# cores are shared (measured: 16-21 ms vs 2.4-3.1 ms per step under load; benchmarks/README).
# Only effective if torch is not imported yet; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import adaptive, algorithms, losses, metrics, models, norms, optim
from .algorithms import Algorithm, algorithm, algorithm_names, register_algorithm
from .data import register_dataset
from .engine import train
from .fingerprints import Fingerprint, fingerprint
from .models import homogeneity_degree, register_model
from .norms import Norm, norm, norm_names, register_norm
from .optim import SteepestDescent, optimizer

__version__ = "0.1.0"

#: Submodules that ``import steepest`` does not load; ``steepest.NAME`` imports one on first use
#: (PEP 562), so that cvxpy (oracles, kkt) and matplotlib (plots, reproduce) load only when used.
_LAZY = (
    "checkpoints",
    "cli",
    "config",
    "data",
    "devices",
    "engine",
    "implicit",
    "kkt",
    "oracles",
    "plots",
    "plugins",
    "reproduce",
    "schedules",
    "stacked",
    "step",
    "store",
    "sweep",
    "sweep_backends",
    "verify",
)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'steepest' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Algorithm",
    "Fingerprint",
    "adaptive",
    "Norm",
    "SteepestDescent",
    "algorithm",
    "algorithm_names",
    "algorithms",
    "fingerprint",
    "fingerprints",
    "homogeneity_degree",
    "losses",
    "metrics",
    "models",
    "norm",
    "norm_names",
    "norms",
    "optim",
    "optimizer",
    "register_algorithm",
    "register_dataset",
    "register_model",
    "register_norm",
    "train",
]
