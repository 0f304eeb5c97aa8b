"""Adaptive and momentum methods as pure update rules: Adam, MomentumGD, Signum, Muon, Shampoo,
and the Muon–Signum / Muon–Adam hybrids (docs/theory.md §2.4, §4.4, A.3–A.6).

Every rule is an :class:`~steepest.algorithms.Algorithm`: ``state = rule.init(params)`` and
``params, state = rule.update(params, grads, state, lr)``, pure torch (no in-place edits, no
``.item()``, no Python branching on tensor values; only on shapes and hyperparameters), and
declares the norm whose margin it is predicted to maximize (``predicted_norm``). Importing this
package registers the names below (each file its own) with :func:`steepest.algorithms.register_algorithm`, so
``steepest.optimizer("adam", params, lr=1e-3, betas=(0.9, 0.999), eps=0.0)`` works; each rule
also has a thin ``torch.optim.Optimizer`` wrapper (:class:`Adam`, :class:`MomentumGD`, …).

=============  ========================================================  =======================
name           update (g = gradient, m = momentum, η = lr)                predicted norm
=============  ========================================================  =======================
adam           Kingma–Ba Adam, θ ← θ − η m̂/(√v̂ + ε)                      ℓ∞ (ε > 0: drifts to ℓ2)
momentum       m ← βm + (1−β)g, θ ← θ − η m/‖m‖₂                          ℓ2
signum         m ← βm + (1−β)g, θ ← θ − η sign(m)                         ℓ∞
muon           m ← βm + (1−β)g, θ ← θ − η polar(m) per layer              max-spectral
shampoo        θ ← θ − η (L+εI)^{−1/r} G (R+εI)^{−1/r}                     max-spectral
muon-signum    Muon on hidden matrices (η), Signum on the rest (aη)       max{a‖W‖_msp, ‖u‖_∞}
muon-adam      Muon on hidden matrices (η), Adam on the rest (aη)         max{a‖W‖_msp, ‖u‖_∞}
=============  ========================================================  =======================

a = ``lr_ratio`` = η_A/η_M for the hybrids.

Momentum methods use Gronich & Vardi's normalized momentum steepest descent (docs/theory.md A.3):
m_t = β m_{t−1} + (1 − β) g_t, θ_{t+1} = θ_t − η_t U(m_t) with U the unit steepest direction
of the norm (:meth:`steepest.norms.Norm.direction`). Because U is scale-invariant, the
dampening (1 − β) does not change the trajectory: torch's SGD-style m ← βm + g gives the same
steps.

Shapes (shared with :class:`steepest.norms.Spectral`): a tensor of ndim ≥ 2 is the matrix
(shape[0], rest) (a conv kernel (out, in, k, k) becomes (out, in·k·k)); a vector or scalar is a
1×n matrix, whose polar factor is x/‖x‖₂ (ℓ2 normalization).

Every state holds ``step`` (updates taken, a 0-dim tensor) and ``grad_dual`` (‖g‖_* of the raw
gradient in the predicted norm, the quantity the engine's flow-time clock uses, as in
:class:`~steepest.algorithms.SteepestDescentRule`); per-parameter buffers are lists with one
tensor per parameter, in the parameters' dtype (so ``torch.optim`` checkpoints reload them
bit-exactly).
"""

from __future__ import annotations

from ..norms import HybridNorm, default_muon_indices
from .adam import Adam, AdamRule
from .common import NS_COEFFICIENTS, ORTHOGONALIZE_METHODS, newton_schulz, orthogonalize
from .hybrid import MuonAdam, MuonAdamRule, MuonSignum, MuonSignumRule
from .momentum import MomentumGD, MomentumSteepestRule, Signum
from .muon import Muon, MuonRule
from .shampoo import Shampoo, ShampooRule

__all__ = [
    "NS_COEFFICIENTS",
    "ORTHOGONALIZE_METHODS",
    "AdamRule",
    "MomentumSteepestRule",
    "MuonRule",
    "ShampooRule",
    "MuonSignumRule",
    "MuonAdamRule",
    "HybridNorm",
    "Adam",
    "MomentumGD",
    "Signum",
    "Muon",
    "Shampoo",
    "MuonSignum",
    "MuonAdam",
    "newton_schulz",
    "orthogonalize",
    "default_muon_indices",
]
