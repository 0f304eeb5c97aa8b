"""Norms on lists of tensors: the value, the dual norm, the steepest direction, the duality map.

A :class:`Norm` is the centre of the package. The same object gives

* the optimizer: the unit steepest direction ``U(g) ∈ argmax_{‖u‖≤1} ⟨g, u⟩`` and the
  unnormalized step (duality map) ``J(g) = ‖g‖_* · U(g)``;
* the measurement: the margin ``q_min / ‖θ‖^L`` that steepest descent w.r.t. this norm
  maximizes (docs/theory.md §2.1–§2.3, §3.1).

Every method takes a *list* of tensors (a model's parameters, seen as one vector or as
blocks) and is written in pure torch: no in-place edits of inputs, no ``.item()``, no Python
branching on tensor values. So ``torch.func.vmap`` batches them over a leading run axis.

Identities every implementation satisfies (docs/theory.md §2.1, tested for every norm):
``⟨U(g), g⟩ = ‖g‖_*``, ``‖U(g)‖ = 1`` (0 when g = 0), ``⟨J(g), g⟩ = ‖g‖_*²``,
``‖J(g)‖ = ‖g‖_*``.

Tie-breaks (the theory allows any element of the argmax set; docs/theory.md §2.2, §6 item 2):

* ℓ∞ / sign: ``sign(0) = 0``, so coordinates with zero gradient stay.
* ℓ1 / greedy coordinate descent: exactly one coordinate moves, the one of largest ``|g_j|``
  in the flattened concatenation, ties broken by the **lowest flat index**.
* spectral: the compact-SVD polar factor ``U_r V_rᵀ`` over singular values above a rank
  tolerance; repeated singular values are all kept (a valid element of the subdifferential).
* block sum: only the block with the largest dual norm moves, ties to the lowest block.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from .registry import check_registration

__all__ = [
    "Norm",
    "flat_params",
    "LpNorm",
    "Spectral",
    "BlockMax",
    "BlockSum",
    "weighted_max",
    "HybridNorm",
    "default_muon_indices",
    "check_muon_params",
    "check_nonneg",
    "norm",
    "get_norm",
    "norm_names",
    "register_norm",
    "inner",
    "one_lapack_thread",
    "NORM_ALIASES",
    "METRIC_NORM_NAMES",
]

Tensors = Sequence[Tensor]


def flat_params(xs: Tensors, stacked: bool = False) -> Tensor:
    """Concatenate a list of tensors into one flat vector θ; (K, P) rows when ``stacked``."""
    if len(xs) == 0:
        raise ValueError("a Norm needs at least one tensor; got an empty list")
    if stacked:
        return torch.cat([x.reshape(x.shape[0], -1) for x in xs], dim=1)
    return torch.cat([x.reshape(-1) for x in xs])


def _unflat(v: Tensor, like: Tensors) -> list[Tensor]:
    """Split the last axis of ``v`` (flat θ, or (K, P) rows) back into tensors shaped like ``like``."""
    out, start = [], 0
    rows = v.dim() == 2
    for x in like:
        n = x[0].numel() if rows else x.numel()
        out.append(v[..., start : start + n].reshape(x.shape))
        start += n
    return out


class _OneLapackThread:
    """Run LAPACK factorizations (SVD, eigh) on one CPU thread.

    Measured on the 2-core CI-class machine (MKL, OMP_WAIT_POLICY=PASSIVE): a batch of 16
    64×64 SVDs takes 7.6 ms on 1 thread vs 29.8 ms on 2; svdvals 2.7 vs 5.6 ms; a 784×784
    svdvals 80 vs 130 ms. MKL's threaded bidiagonalization only pays for much larger matrices.
    """

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        if self.saved > 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.saved > 1:
            torch.set_num_threads(self.saved)


def one_lapack_thread() -> _OneLapackThread:
    """Context manager: LAPACK calls inside run on one thread (see :class:`_OneLapackThread`)."""
    return _OneLapackThread()


def inner(xs: Tensors, ys: Tensors) -> Tensor:
    """Euclidean inner product ⟨x, y⟩ of two lists of tensors seen as one vector."""
    if len(xs) != len(ys):
        raise ValueError(f"inner: lists differ in length ({len(xs)} vs {len(ys)})")
    return sum((x * y).sum() for x, y in zip(xs, ys, strict=True))  # type: ignore[return-value]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (double-where keeps autograd free of NaN)."""
    zero = den == 0
    if den.dim() == 0 or den.shape[-1] == 1:
        # A scalar (or per-row, last axis 1) divisor: one multiply instead of full-size where/zeros.
        return num * torch.where(
            zero, torch.zeros_like(den), 1.0 / torch.where(zero, torch.ones_like(den), den)
        )
    return torch.where(
        zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den)
    )


class Norm:
    """A norm ‖·‖ on a list of tensors, with its dual and its steepest-descent maps.

    Subclasses implement :meth:`__call__`, :meth:`dual` and :meth:`direction`;
    :meth:`duality_map` is ``dual(g) · direction(g)`` (docs/theory.md §2.1).
    """

    name: str = "norm"
    #: The KKT program of docs/theory.md §3.6 that :func:`steepest.kkt.kkt_residual` solves for
    #: this norm ("l2", "l1", "linf", "lp", "spectral"), or None: no KKT residual.
    kkt_program: str | None = None
    #: The norm the exact max-margin oracles solve for a linear model with this norm
    #: (:func:`steepest.oracles.max_margin`, :func:`steepest.implicit.implicit_flow`): an ℓp
    #: exponent p ≥ 1 (``math.inf`` for ℓ∞), a matrix-norm name ("spectral", "nuclear",
    #: "frobenius", "max"), or None: no oracle.
    oracle_norm: float | str | None = None

    @property
    def column(self) -> str:
        """The suffix of this norm's metric columns (``margin_<column>``, ``beta_<column>``)."""
        return self.name.replace(".", "_")

    def __call__(self, xs: Tensors) -> Tensor:  # pragma: no cover - abstract
        """The norm ‖x‖ as a 0-dim tensor."""
        raise NotImplementedError

    def dual(self, gs: Tensors) -> Tensor:  # pragma: no cover - abstract
        """The dual norm ‖g‖_* = sup_{‖u‖≤1} ⟨u, g⟩ as a 0-dim tensor."""
        raise NotImplementedError

    def direction(self, gs: Tensors) -> list[Tensor]:  # pragma: no cover - abstract
        """One element U(g) of argmax_{‖u‖≤1} ⟨g, u⟩ (the normalized steepest direction).

        Descent moves θ ← θ − η·U(∇𝓛). For g = 0 the direction is 0.
        """
        raise NotImplementedError

    def duality_map(self, gs: Tensors) -> list[Tensor]:
        """J(g) = ‖g‖_* · U(g): the unnormalized steepest step, with ⟨J(g), g⟩ = ‖g‖_*²."""
        d = self.dual(gs)
        return [d * u for u in self.direction(gs)]

    def direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        """U(g) and ‖g‖_* together; subclasses share work between the two where they can."""
        return self.direction(gs), self.dual(gs)

    def update_direction(self, gs: Tensors, normalized: bool = True) -> list[Tensor]:
        """Δ of the step θ ← θ − η·Δ: U(g) (``normalized``) or J(g) = ‖g‖_* U(g).

        The optimizers' form (:meth:`steepest.algorithms.Algorithm.apply_`): the same maps as
        :meth:`direction_and_dual`, for one parameter list, computed where a norm can with
        multi-tensor (``torch._foreach_*``) operations and without concatenating the list.
        It is not ``vmap``-able (the engine uses the stacked maps). The result may share memory
        with ``gs`` (ℓ2, unnormalized: J(g) = g): read it, do not write to it.
        """
        u, dual = self.direction_and_dual(gs)
        return u if normalized else [dual * x for x in u]

    # Stacked maps: K parameter sets on a leading run axis (every tensor (K, *shape)), as the
    # engine holds them. The defaults are ``vmap`` of the single-set maps; LpNorm, Spectral and
    # the block norms override them with natively batched code (no per-op vmap dispatch, one
    # batched LAPACK call), which gives the same values (tested to rtol 1e-14).
    def stacked(self, xs: Tensors) -> Tensor:
        """‖x_k‖ for each of the K stacked sets: a (K,) tensor."""
        return vmap(self.__call__)(list(xs))

    def stacked_dual(self, gs: Tensors) -> Tensor:
        """‖g_k‖_* for each of the K stacked sets: a (K,) tensor."""
        return vmap(self.dual)(list(gs))

    def stacked_direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        """U(g_k) stacked like ``gs``, and ‖g_k‖_* as a (K,) tensor."""
        dirs, duals = vmap(self.direction_and_dual)(list(gs))
        return list(dirs), duals

    #: Whether :meth:`stacked_bundle_direction` gives a direction (the flow schedule then
    #: retries a step rolled back across a kink along it).
    offers_bundle: bool = False

    def stacked_bundle_direction(self, gs: Tensors, hs: Tensors) -> list[Tensor] | None:
        """U of a bundle of two gradients, per run: the step θ ← θ − ηU is steepest for the
        two-piece model max(⟨g, Δ⟩, ⟨h, Δ⟩) of the change of the loss,

            U ∈ argmax_{‖u‖ ≤ 1} min(⟨g, u⟩, ⟨h, u⟩),  max = min_{λ∈[0,1]} ‖λg + (1−λ)h‖_*,

        for two gradients g, h taken on the two sides of a kink (a bundle of two subgradients:
        Kiwiel, *Methods of Descent for Nondifferentiable Optimization*, 1985; Filippov's
        sliding velocity, *Differential Equations with Discontinuous Righthand Sides*, 1988).
        Where U(g) crosses a kink uphill, u is tangent to it. The flow schedule retries a
        rolled-back step along u (``steepest.step``). None: this norm has no such direction
        (then the retry uses U(g))."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class LpNorm(Norm):
    """ℓp norm of the concatenated parameter vector, 1 ≤ p ≤ ∞ (docs/theory.md §2.3).

    * ‖θ‖_p = (Σ_j |θ_j|^p)^{1/p};  dual ‖g‖_q with 1/p + 1/q = 1.
    * p = 2: U(g) = g/‖g‖₂ (gradient descent).
    * p = ∞: U(g) = sign(g), sign(0) = 0 (sign descent). ‖·‖_∞ of the concatenated vector is
      the max over layers of the per-layer ℓ∞ norms, so sign descent on every tensor is exactly
      ℓ∞ steepest descent on θ.
    * p = 1: U(g) = sign(g_{j*}) e_{j*}, j* = argmax_j |g_j| with ties broken by the **lowest
      flat index** (greedy Gauss–Southwell coordinate descent: one coordinate moves).
    * 1 < p < ∞: U(g)_j = sign(g_j)|g_j|^{q−1} / ‖g‖_q^{q−1}, computed after scaling g by
      ‖g‖_∞ so that no power under- or overflows.
    """

    def __init__(self, p: float):
        p = float(p)
        if not (p >= 1.0):
            raise ValueError(f"LpNorm: p must satisfy 1 <= p <= inf, got p={p}")
        self.p = p
        self.q = math.inf if p == 1.0 else (1.0 if math.isinf(p) else p / (p - 1.0))
        self.name = _lp_name(p)
        self.kkt_program = {2.0: "l2", 1.0: "l1", math.inf: "linf"}.get(p, "lp")
        self.oracle_norm = p

    @staticmethod
    def vec_norm(v: Tensor, p: float, *, nonneg: bool = False) -> Tensor:
        """‖v‖_p over the last axis (a flat θ, or (K, P) stacked rows); ``nonneg``: v is |v| already."""
        a = v if nonneg else v.abs()
        if math.isinf(p):
            return a.amax(-1)
        if p == 1.0:
            return a.sum(-1)
        # Scale by max|v| so that |v|^p neither overflows nor underflows (‖1e-200·g‖₂ would
        # otherwise square to 0).
        m = a.amax(-1, keepdim=True)
        scaled = _safe_div(a, m)
        return (m * scaled.pow(p).sum(-1, keepdim=True).pow(1.0 / p)).squeeze(-1)

    def __call__(self, xs: Tensors) -> Tensor:
        return self.vec_norm(flat_params(xs), self.p)

    def dual(self, gs: Tensors) -> Tensor:
        return self.vec_norm(flat_params(gs), self.q)

    def direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        return self._direction_and_dual_flat(flat_params(gs), gs)

    def direction(self, gs: Tensors) -> list[Tensor]:
        return self._direction_and_dual_flat(flat_params(gs), gs)[0]

    def update_direction(self, gs: Tensors, normalized: bool = True) -> list[Tensor]:
        """U(g) or J(g) of :meth:`Norm.update_direction` for ℓp, list by list (no flattening).

        * p = ∞: sign(g); J(g) = ‖g‖₁ sign(g).
        * p = 2: g/‖g‖₂ (0 for g = 0); J(g) = g itself.
        * p = 1: ±e_{j*}, j* the lowest flat index of max|g_j| (as :meth:`direction`); J = ‖g‖_∞ U.
        * 1 < p < ∞: a = g/‖g‖_∞, U = sign(a)|a|^{q−1}/‖a‖_q^{q−1} (scaled as :meth:`direction`).

        Equal to ``direction_and_dual`` up to the order of summation (tested to 1e-14).
        """
        gs = list(gs)
        if not gs:
            raise ValueError("a Norm needs at least one tensor; got an empty list")
        if math.isinf(self.p):
            u = torch._foreach_sign(gs)
            if not normalized:
                torch._foreach_mul_(u, torch.stack(torch._foreach_norm(gs, 1)).sum())
            return list(u)
        if self.p == 2.0:
            if not normalized:
                return gs
            n = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs, 2)))
            return list(torch._foreach_mul(gs, torch.where(n > 0, 1.0 / n, torch.zeros_like(n))))
        if self.p == 1.0:
            if not any(g.numel() for g in gs):
                return [torch.zeros(g.shape, dtype=g.dtype, device=g.device) for g in gs]
            k, j, top = self.top_coordinate(gs)
            # Contiguous zeros (zeros_like keeps a transposed or channels-last layout, which
            # view(-1) cannot flatten); j is the row-major index.
            u = [torch.zeros(g.shape, dtype=g.dtype, device=g.device) for g in gs]
            u[k].view(-1)[j] = torch.sign(top) * (1.0 if normalized else top.abs())
            return u
        absg = torch._foreach_abs(gs)
        zero = torch.zeros((), dtype=gs[0].dtype, device=gs[0].device)
        maxes = torch.stack([a.amax() if a.numel() else zero for a in absg])
        m = maxes.amax()
        q = self.q
        # |a|, a = g/‖g‖_∞:
        torch._foreach_mul_(absg, torch.where(m > 0, 1.0 / m, torch.zeros_like(m)))
        u = torch._foreach_pow(absg, q - 1.0)  # |a|^{q−1}
        # ‖a‖_q^q = Σ |a|^{q−1}|a|: a dot product per tensor instead of a second power.
        sum_aq = torch.stack(
            [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(u, absg, strict=True)]
        ).sum()
        for x, g in zip(u, gs, strict=True):
            x.copysign_(g)
        pos = sum_aq > 0  # ‖a‖_q^q ≥ 1 when g ≠ 0
        safe = torch.where(pos, sum_aq, torch.ones_like(sum_aq))
        # U = sign(a)|a|^{q−1}/‖a‖_q^{q−1}; J = ‖g‖_q U with ‖g‖_q = ‖g‖_∞‖a‖_q.
        scale = safe.pow((1.0 - q) / q) if normalized else m * safe.pow((2.0 - q) / q)
        torch._foreach_mul_(u, torch.where(pos, scale, torch.zeros_like(scale)))
        return list(u)

    @staticmethod
    def top_coordinate(gs: Tensors) -> tuple[int, int, Tensor]:
        """(k, j, g_kj): the entry of largest |g| over a list of tensors, at the lowest flat
        index of the concatenation on ties (as :meth:`direction` for p = 1): tensor k, flat
        index j within it, and its value (a 0-dim tensor). Greedy coordinate descent moves it.

        One max and one min per row of every tensor (its first axis; a vector is one row),
        then argmax over the few row maxima: no |g| copy and no flat argmax (a single-threaded
        scan, 8x slower than row maxima on a 784 × 256 matrix).
        """
        if not any(g.numel() for g in gs):
            raise ValueError("top_coordinate: the tensors hold no coordinates")
        rows = [g.reshape(max(g.shape[0], 1), -1) if g.dim() >= 2 else g.reshape(1, -1) for g in gs]
        row_max = [torch.maximum(x.amax(1), -x.amin(1)) if x.numel() else None for x in rows]
        lowest = torch.tensor(-math.inf, dtype=gs[0].dtype, device=gs[0].device)
        k = int(torch.argmax(torch.stack([lowest if m is None else m.amax() for m in row_max])))
        r = int(torch.argmax(row_max[k]))
        c = int(torch.argmax(rows[k][r].abs()))
        return k, r * rows[k].shape[1] + c, rows[k][r, c]

    def stacked(self, xs: Tensors) -> Tensor:
        return self.vec_norm(flat_params(xs, stacked=True), self.p)

    def stacked_dual(self, gs: Tensors) -> Tensor:
        return self.vec_norm(flat_params(gs, stacked=True), self.q)

    def stacked_direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        return self._direction_and_dual_flat(flat_params(gs, stacked=True), gs)

    @property
    def offers_bundle(self) -> bool:  # type: ignore[override]
        return self.p == 1.0

    def stacked_bundle_direction(self, gs: Tensors, hs: Tensors) -> list[Tensor] | None:
        """ℓ1 (greedy coordinate descent): see :meth:`Norm.stacked_bundle_direction`.

        With d = g − h, F(λ) = ‖h + λd‖_∞ is convex and piecewise linear. At its minimum λ* in
        (0, 1) a coordinate p whose |h_p + λd_p| rises with λ meets one, m, where it falls; U
        moves those two, U = w σ_p e_p + (1 − w) σ_m e_m with σ = sign(h + λ*d) and w such
        that ⟨d, U⟩ = 0, so ⟨g, U⟩ = ⟨h, U⟩ = F(λ*). A greedy step along one coordinate
        jumps across such a kink and back (measured: on a ReLU kink of MNIST 2 vs 7 it lowered
        log 𝓛 by 2.5% of its first-order prediction at a step of 1e-8; U by its prediction from 1e-8
        to 1e-3, and within 0.7% at 1e-2).

        λ* is found on the M = 256 coordinates with the largest max(|g_j|, |h_j|): three grids
        of 65 points, each in the last one's bracket, name the two active lines, whose exact
        crossing is then certified (no line of the subset above it, none outside able to
        reach it). U is the better of that pair and the best single coordinate σe_j (worth
        min(σg_j, σh_j)): this linear program over the cross-polytope has an optimum that
        moves at most two coordinates.
        """
        if self.p != 1.0:
            return None
        g, h = flat_params(gs, stacked=True), flat_params(hs, stacked=True)
        k = min(256, g.shape[-1])
        bound, idx = torch.maximum(g.abs(), h.abs()).topk(k, dim=-1)
        a, b = g.gather(-1, idx), h.gather(-1, idx)
        d = a - b
        # F(λ) on a grid of 65 points, three times, each in the bracket the last one found:
        # the bracket is then 64⁻³ ≈ 4e-6 wide and its two ends tell the two active lines.
        lo, hi = torch.zeros_like(a[:, :1]), torch.ones_like(a[:, :1])
        steps = torch.linspace(0.0, 1.0, 65, dtype=g.dtype, device=g.device)
        for _ in range(3):
            lams = lo + (hi - lo) * steps  # (K, 65)
            peak = (b.unsqueeze(1) + lams.unsqueeze(-1) * d.unsqueeze(1)).abs().amax(-1)
            best = peak.argmin(-1, keepdim=True)
            lo = lams.gather(-1, (best - 1).clamp(min=0))
            hi = lams.gather(-1, (best + 1).clamp(max=64))

        def top_line(lam: Tensor) -> Tensor:
            return (b + lam * d).abs().argmax(-1, keepdim=True)

        jm, jp = top_line(lo), top_line(hi)  # F falls left of λ* (jm) and rises right of it (jp)
        bp, bm, dp, dm = b.gather(-1, jp), b.gather(-1, jm), d.gather(-1, jp), d.gather(-1, jm)
        lam = 0.5 * (lo + hi)
        sgp, sgm = torch.sign(bp + lam * dp), torch.sign(bm + lam * dm)
        sp, sm = sgp * dp, sgm * dm  # the slopes of |h_j + λd_j|
        pair_ok = (jp != jm) & (sp > 0) & (sm < 0)
        den = torch.where(pair_ok, sp - sm, torch.ones_like(sp))
        cross = (sgm * bm - sgp * bp) / den  # where the two lines meet
        f_star = sgp * (bp + cross * dp)
        w = -sm / den  # U = w σ_p e_p + (1 − w) σ_m e_m has ⟨d, U⟩ = 0
        # Certified: no line of the subset is above the crossing, none outside can reach it.
        peak_at = (b + cross * d).abs().amax(-1, keepdim=True)
        pair_ok = pair_ok & (cross > 0) & (cross < 1) & (peak_at <= f_star * (1 + 1e-12))
        pair_ok = pair_ok & (bound[:, -1:] <= f_star if k < g.shape[-1] else pair_ok)
        # The best single coordinate σe_j is worth min(σg_j, σh_j); this linear program over
        # the cross-polytope has an optimum that moves at most two coordinates, so U is the
        # better of the two candidates.
        up, down = torch.minimum(a, b), torch.minimum(-a, -b)
        one_val, j1 = torch.maximum(up, down).max(-1, keepdim=True)
        sigma = torch.where(up.gather(-1, j1) >= down.gather(-1, j1), 1.0, -1.0).to(g.dtype)
        pair = pair_ok & (f_star > one_val)
        zero = torch.zeros_like(w)
        u = torch.zeros_like(g)
        first = idx.gather(-1, torch.where(pair, jp, j1))
        u = u.scatter(-1, first, torch.where(pair, w * sgp, sigma))
        u = u.scatter_add(-1, idx.gather(-1, jm), torch.where(pair, (1.0 - w) * sgm, zero))
        return _unflat(u, gs)

    def _direction_and_dual_flat(self, g: Tensor, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        """U(g) of a flat g (or of each row of a (K, P) g), split back like ``gs``, and ‖g‖_q.

        For 1 < p < ∞ the dual norm reuses the scaled powers of the direction: the same
        operations as :meth:`vec_norm`, so the value is identical, at half the passes.
        """
        if math.isinf(self.p):
            return _unflat(torch.sign(g), gs), self.vec_norm(g, self.q)
        if self.p == 1.0:
            # torch.argmax returns the first maximal index: the lowest-index tie-break.
            absg = g.abs()
            j = torch.argmax(absg, dim=-1, keepdim=True)
            u = torch.zeros_like(g).scatter(-1, j, torch.sign(g.gather(-1, j)))
            return _unflat(u, gs), absg.amax(-1)  # ‖g‖_∞, as vec_norm(g, ∞)
        q = self.q
        absg = g.abs()
        m = absg.amax(-1, keepdim=True)
        a = _safe_div(absg, m)  # in [0, 1]; the max entry is 1 up to rounding
        sum_aq = a.pow(q).sum(-1, keepdim=True)
        dual = (m * sum_aq.pow(1.0 / q)).squeeze(-1)  # = vec_norm(g, q), same operations
        if self.p == 2.0:
            u = _safe_div(g, dual.unsqueeze(-1))
        else:
            denom = sum_aq.pow((q - 1.0) / q)  # ‖a‖_q^{q-1} ≥ 1 when g ≠ 0
            u = torch.sign(g) * _safe_div(a.pow(q - 1.0), denom)
        return _unflat(u, gs), dual


class Spectral(Norm):
    """Max over layers of the spectral norm: ‖θ‖_msp = max_k σ_max(W_k) (docs/theory.md §2.3, A.3).

    Each tensor is one block:

    * a matrix W (out, in) uses σ_max(W), dual nuclear ‖G‖_nuc = Σσ_i and direction U_r V_rᵀ
      from the compact SVD (rank-r part; singular values below ``rank_rtol·σ_max`` are dropped);
    * a conv kernel (out, in, k, k) is reshaped to (out, in·k·k) first;
    * a vector or scalar uses its ℓ2 norm (its spectral norm as a 1×n matrix).

    Across blocks this is the block-max combination: dual Σ_k ‖G_k‖_nuc, and every block moves
    by its own unit direction. SVDs run in float64 whatever the input dtype (the direction must
    be exact; Newton–Schulz is not used here).
    """

    name = "max-spectral"
    kkt_program = "spectral"
    oracle_norm = "spectral"  # one weight matrix: max over layers = σ_max(W)

    @property
    def column(self) -> str:
        # margin_spectral, not margin_max-spectral; a subclass with its own name keeps it
        return "spectral" if self.name == Spectral.name else super().column

    def __init__(self, rank_rtol: float | None = None):
        self.rank_rtol = rank_rtol

    @staticmethod
    def _as_matrix(x: Tensor, stacked: bool = False) -> Tensor:
        """The matrix view of one block: (out, rest), or (1, n) for a vector; (K, ·, ·) if stacked."""
        lead = x.shape[:1] if stacked else x.shape[:0]
        body = x.shape[len(lead) :]
        if len(body) >= 2:
            return x.reshape(*lead, body[0], -1)
        return x.reshape(*lead, 1, -1)

    def _mask(self, s: Tensor, shape: torch.Size) -> Tensor:
        # numpy.linalg.matrix_rank's default tolerance: σ_max · max(m, n) · eps.
        rtol = self.rank_rtol
        if rtol is None:
            rtol = max(shape[-2:]) * torch.finfo(torch.float64).eps
        return (s > rtol * s.amax(-1, keepdim=True)).to(s.dtype)

    def _block_svdvals(self, xs: Tensors, stacked: bool) -> list[Tensor]:
        with one_lapack_thread():
            return [torch.linalg.svdvals(self._as_matrix(x, stacked).to(torch.float64)) for x in xs]

    def _polar_and_dual(self, gs: Tensors, stacked: bool) -> tuple[list[Tensor], Tensor]:
        dirs, total = [], None
        with one_lapack_thread():
            for g in gs:
                m = self._as_matrix(g, stacked).to(torch.float64)
                u, s, vh = torch.linalg.svd(m, full_matrices=False)
                polar = (u * self._mask(s, m.shape).unsqueeze(-2)) @ vh
                dirs.append(polar.reshape(g.shape).to(g.dtype))
                nuc = s.sum(-1).to(g.dtype)
                total = nuc if total is None else total + nuc
        return dirs, total  # type: ignore[return-value]

    def block_norms(self, xs: Tensors) -> Tensor:
        """σ_max of every block, stacked (ℓ2 for vectors)."""
        return torch.stack(
            [s[0].to(x.dtype) for s, x in zip(self._block_svdvals(xs, False), xs, strict=True)]
        )

    def __call__(self, xs: Tensors) -> Tensor:
        if len(xs) == 0:
            raise ValueError("a Norm needs at least one tensor; got an empty list")
        return self.block_norms(xs).amax()

    def dual(self, gs: Tensors) -> Tensor:
        if len(gs) == 0:
            raise ValueError("a Norm needs at least one tensor; got an empty list")
        # Singular values only: no U, V needed for the nuclear norm.
        return sum(
            s.sum().to(g.dtype) for s, g in zip(self._block_svdvals(gs, False), gs, strict=True)
        )  # type: ignore[return-value]

    def direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        if len(gs) == 0:
            raise ValueError("a Norm needs at least one tensor; got an empty list")
        return self._polar_and_dual(gs, False)

    def direction(self, gs: Tensors) -> list[Tensor]:
        return self.direction_and_dual(gs)[0]

    def duality_map(self, gs: Tensors) -> list[Tensor]:
        dirs, d = self.direction_and_dual(gs)
        return [d * u for u in dirs]

    def stacked(self, xs: Tensors) -> Tensor:
        if len(xs) == 0:
            raise ValueError("a Norm needs at least one tensor; got an empty list")
        tops = [s[:, 0].to(x.dtype) for s, x in zip(self._block_svdvals(xs, True), xs, strict=True)]
        return torch.stack(tops, dim=1).amax(1)

    def stacked_dual(self, gs: Tensors) -> Tensor:
        if len(gs) == 0:
            raise ValueError("a Norm needs at least one tensor; got an empty list")
        return sum(
            s.sum(-1).to(g.dtype) for s, g in zip(self._block_svdvals(gs, True), gs, strict=True)
        )  # type: ignore[return-value]

    def stacked_direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        if len(gs) == 0:
            raise ValueError("a Norm needs at least one tensor; got an empty list")
        return self._polar_and_dual(gs, True)


def _resolve_groups(
    groups: Sequence[Sequence[int]] | None, n_blocks: int, n_tensors: int
) -> list[list[int]]:
    if groups is None:
        return [[i] for i in range(n_tensors)]
    gl = [list(g) for g in groups]
    flat = sorted(i for g in gl for i in g)
    if flat != list(range(n_tensors)):
        raise ValueError(
            f"block groups must partition the tensor indices 0..{n_tensors - 1} exactly once; got {gl}"
        )
    if len(gl) != n_blocks:
        raise ValueError(f"{len(gl)} groups given for {n_blocks} block norms")
    return gl


class _Blocks(Norm):
    """Shared machinery of block combinations: per-block norms over groups of tensors."""

    def __init__(
        self,
        norms: Norm | Sequence[Norm],
        groups: Sequence[Sequence[int]] | None = None,
        weights: Sequence[float] | None = None,
    ):
        if isinstance(norms, Norm):
            if groups is not None:
                raise ValueError("pass a list of norms (one per group) together with `groups`")
            self.norms: Sequence[Norm] | None = None
            self.shared = norms
        else:
            norms = list(norms)
            if not norms or not all(isinstance(n, Norm) for n in norms):
                raise TypeError("norms must be a Norm or a non-empty list of Norm objects")
            if groups is None:
                raise ValueError(
                    "a list of norms needs `groups`: one list of tensor indices per norm"
                )
            self.norms = norms
            self.shared = None
        self.groups = None if groups is None else [list(g) for g in groups]
        if weights is not None:
            weights = [float(w) for w in weights]
            if any(not (w > 0 and math.isfinite(w)) for w in weights):
                raise ValueError(f"block weights must be positive and finite; got {weights}")
        self.weights = weights

    def _split(self, xs: Tensors) -> list[tuple[Norm, list[Tensor], float]]:
        n_blocks = len(xs) if self.norms is None else len(self.norms)
        groups = _resolve_groups(self.groups, n_blocks, len(xs))
        weights = self.weights if self.weights is not None else [1.0] * len(groups)
        if len(weights) != len(groups):
            raise ValueError(f"{len(weights)} weights given for {len(groups)} blocks")
        norms = [self.shared] * len(groups) if self.norms is None else list(self.norms)
        return [(n, [xs[i] for i in g], w) for n, g, w in zip(norms, groups, weights, strict=True)]

    def _assemble(self, xs: Tensors, block_dirs: list[list[Tensor]]) -> list[Tensor]:
        n_blocks = len(xs) if self.norms is None else len(self.norms)
        groups = _resolve_groups(self.groups, n_blocks, len(xs))
        out: list[Tensor | None] = [None] * len(xs)
        for g, dirs in zip(groups, block_dirs, strict=True):
            for i, d in zip(g, dirs, strict=True):
                out[i] = d
        return out  # type: ignore[return-value]


class BlockMax(_Blocks):
    """Weighted block-max norm ‖θ‖ = max_b w_b ‖θ_b‖_(b) (docs/theory.md §2.3, "layer-wise" methods).

    * dual: ‖g‖_* = Σ_b ‖g_b‖_(b),* / w_b;
    * direction: every block moves by its own unit direction, U(g)_b = U_b(g_b) / w_b
      (blocks with g_b = 0 stay).

    ``BlockMax(LpNorm(2))`` (one shared norm, no groups) treats every tensor as a block. With a
    list of norms, ``groups`` gives the tensor indices of each block. The weighted max
    max{a‖W‖_A, ‖u‖_B} of Muon–Adam hybrids is ``weights=[a, 1]`` (see :func:`weighted_max`).
    """

    def __init__(self, norms, groups=None, weights=None, name: str | None = None):
        super().__init__(norms, groups, weights)
        self.name = name or "block-max"

    def __call__(self, xs: Tensors) -> Tensor:
        vals = [w * n(b) for n, b, w in self._split(xs)]
        return torch.stack(vals).amax()

    def dual(self, gs: Tensors) -> Tensor:
        return sum(n.dual(b) / w for n, b, w in self._split(gs))  # type: ignore[return-value]

    def direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        return self._direction_and_dual(gs, stacked=False)

    def _direction_and_dual(self, gs: Tensors, stacked: bool) -> tuple[list[Tensor], Tensor]:
        dirs, total = [], None
        for n, b, w in self._split(gs):
            u, d = n.stacked_direction_and_dual(b) if stacked else n.direction_and_dual(b)
            dirs.append([x / w for x in u])
            total = d / w if total is None else total + d / w
        return self._assemble(gs, dirs), total  # type: ignore[return-value]

    def direction(self, gs: Tensors) -> list[Tensor]:
        return self.direction_and_dual(gs)[0]

    def duality_map(self, gs: Tensors) -> list[Tensor]:
        dirs, d = self.direction_and_dual(gs)
        return [d * u for u in dirs]

    def stacked(self, xs: Tensors) -> Tensor:
        return torch.stack([w * n.stacked(b) for n, b, w in self._split(xs)], dim=1).amax(1)

    def stacked_dual(self, gs: Tensors) -> Tensor:
        return sum(n.stacked_dual(b) / w for n, b, w in self._split(gs))  # type: ignore[return-value]

    def stacked_direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        return self._direction_and_dual(gs, stacked=True)


class BlockSum(_Blocks):
    """Weighted block-sum norm ‖θ‖ = Σ_b w_b ‖θ_b‖_(b) (docs/theory.md §2.3, block-greedy descent).

    * dual: ‖g‖_* = max_b ‖g_b‖_(b),* / w_b;
    * direction: only the block b* with the largest ‖g_b‖_*/w_b moves, by U_{b*}(g_{b*})/w_{b*};
      ties go to the **lowest block index**. ℓ1 is the case of scalar blocks.
    """

    def __init__(self, norms, groups=None, weights=None, name: str | None = None):
        super().__init__(norms, groups, weights)
        self.name = name or "block-sum"

    def __call__(self, xs: Tensors) -> Tensor:
        return sum(w * n(b) for n, b, w in self._split(xs))  # type: ignore[return-value]

    def dual(self, gs: Tensors) -> Tensor:
        return torch.stack([n.dual(b) / w for n, b, w in self._split(gs)]).amax()

    def direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        return self._direction_and_dual(gs, stacked=False)

    def _direction_and_dual(self, gs: Tensors, stacked: bool) -> tuple[list[Tensor], Tensor]:
        parts = [
            (n.stacked_direction_and_dual(b) if stacked else n.direction_and_dual(b), w)
            for n, b, w in self._split(gs)
        ]
        duals = torch.stack([d / w for (_, d), w in parts], dim=-1)  # (blocks,) or (K, blocks)
        winner = torch.argmax(
            duals, dim=-1
        )  # first maximal block (per run): lowest-index tie-break
        dirs = []
        for k, ((u, _), w) in enumerate(parts):
            on = (winner == k).to(duals.dtype)
            dirs.append([on.reshape(on.shape + (1,) * (x.dim() - on.dim())) * x / w for x in u])
        return self._assemble(gs, dirs), duals.amax(-1)

    def direction(self, gs: Tensors) -> list[Tensor]:
        return self.direction_and_dual(gs)[0]

    def duality_map(self, gs: Tensors) -> list[Tensor]:
        dirs, d = self.direction_and_dual(gs)
        return [d * u for u in dirs]

    def stacked(self, xs: Tensors) -> Tensor:
        return sum(w * n.stacked(b) for n, b, w in self._split(xs))  # type: ignore[return-value]

    def stacked_dual(self, gs: Tensors) -> Tensor:
        return torch.stack([n.stacked_dual(b) / w for n, b, w in self._split(gs)], dim=1).amax(1)

    def stacked_direction_and_dual(self, gs: Tensors) -> tuple[list[Tensor], Tensor]:
        return self._direction_and_dual(gs, stacked=True)


def weighted_max(
    a: float,
    norm_a: Norm | str,
    norm_b: Norm | str,
    groups: Sequence[Sequence[int]],
) -> BlockMax:
    """The hybrid norm max{a·‖W‖_A, ‖u‖_B} of Muon–Adam / Muon–Signum (docs/theory.md §2.3, A.3).

    ``groups = [indices of the W tensors, indices of the u tensors]``. Muon on W with lr η_M and
    sign/Adam on u with lr η_A is steepest descent for this norm with a = η_A/η_M.
    """
    na, nb = get_norm(norm_a), get_norm(norm_b)
    return BlockMax(
        [na, nb], groups=groups, weights=[a, 1.0], name=f"max({a:g}*{na.name},{nb.name})"
    )


def _lp_name(p: float) -> str:
    if math.isinf(p):
        return "linf"
    return f"l{p:g}"


# name -> factory; "l<p>" for any p ≥ 1 is parsed separately.
_REGISTRY: dict[str, Callable[[], Norm]] = {
    "l1": lambda: LpNorm(1),
    "l2": lambda: LpNorm(2),
    "linf": lambda: LpNorm(math.inf),
    "spectral": Spectral,
    "max-spectral": Spectral,
    "layer-l2": lambda: BlockMax(LpNorm(2), name="layer-l2"),
    "layer-linf": lambda: BlockMax(LpNorm(math.inf), name="layer-linf"),
}
NORM_ALIASES = {
    "l_inf": "linf",
    "inf": "linf",
    "sign": "linf",
    "msp": "max-spectral",
    "euclidean": "l2",
}
_LP = re.compile(r"^l(\d+(\.\d+)?)$")


#: The norms whose margins every run logs (besides its own and ``logging.extra_norms``).
METRIC_NORM_NAMES: tuple[str, ...] = ("l1", "l2", "linf", "max-spectral")


def register_norm(name: str, factory: Callable[[], Norm], *, replace: bool = False) -> None:
    """Register ``factory() -> Norm`` under ``name`` (lower case), so that :func:`norm`, the
    ``steepest`` algorithm's ``norm`` option and configs accept it. A name that is taken (or an
    alias, or an ``l<p>`` name) is refused unless ``replace=True``."""
    key = name.strip().lower() if isinstance(name, str) else ""
    taken = key in _REGISTRY or key in NORM_ALIASES or _LP.match(key) is not None
    check_registration("norm", name, factory, taken, replace)
    _REGISTRY[key] = factory


def norm_names() -> list[str]:
    """The registered norm names (``"l<p>"`` accepts any p ≥ 1, e.g. ``"l3"``, ``"l1.5"``)."""
    return sorted(_REGISTRY) + ["l<p> for any p >= 1 (e.g. l3, l1.5)"]


def norm(name: str | Norm) -> Norm:
    """Build a norm by name: ``"l2"``, ``"linf"``, ``"l1"``, ``"l3"``, ``"spectral"``, …

    ``"spectral"`` and ``"max-spectral"`` are the same norm: the max over layers of σ_max
    (on a single matrix, its spectral norm). A :class:`Norm` passes through unchanged.
    """
    if isinstance(name, Norm):
        return name
    if not isinstance(name, str):
        raise TypeError(f"norm must be a name or a Norm, got {type(name).__name__}")
    key = name.strip().lower()
    key = NORM_ALIASES.get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]()
    m = _LP.match(key)
    if m:
        p = float(m.group(1))
        if p >= 1:
            return LpNorm(p)
    raise ValueError(f"unknown norm {name!r}; valid names: {', '.join(norm_names())}")


get_norm = norm


# ----------------------------------------------------------------------------- hybrid norm


def check_nonneg(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a finite float ≥ 0 (> 0 with ``positive``); the error names ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a {'positive' if positive else 'non-negative'} number; got {value!r}"
        )
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a finite {kind} number; got {value!r}")
    return v


def check_muon_params(muon_params: Any) -> tuple[int, ...] | None:
    """The parameter indices measured spectrally by a hybrid norm, sorted, or None (default)."""
    if muon_params is None:
        return None
    if isinstance(muon_params, (str, bytes)) or not isinstance(muon_params, Sequence):
        raise TypeError(
            f"muon_params must be None or a sequence of parameter indices; got {muon_params!r}"
        )
    out = []
    for i in muon_params:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"muon_params must hold non-negative int indices; got {muon_params!r}")
        out.append(int(i))
    if len(set(out)) != len(out):
        raise ValueError(f"muon_params has repeated indices: {muon_params!r}")
    return tuple(sorted(out))


def default_muon_indices(params: Sequence[Tensor]) -> list[int]:
    """Indices of the "hidden matrices" Muon takes in a hybrid by default.

    A tensor goes to Muon when ndim ≥ 2 and shape[0] > 1; vectors, scalars and 1×m output rows
    (whose spectral norm is their ℓ2 norm) go to the Signum/Adam part.
    """
    return [i for i, p in enumerate(params) if p.dim() >= 2 and p.shape[0] > 1]


class HybridNorm(Norm):
    """max{a·‖W‖_msp, ‖u‖_∞}, with W/u split by shape at call time (docs/theory.md §2.3, A.3).

    Muon tensors W are ``muon_params`` if given, else :func:`default_muon_indices`; the rest is
    u. Every method builds :func:`steepest.norms.weighted_max` for the given list (see
    :meth:`for_params`) and delegates to it, so this norm applies to any parameter list of the
    model it was declared for. If one side is empty, the norm is the other side alone.
    """

    def __init__(self, a: float, muon_params: Sequence[int] | None = None):
        self.a = check_nonneg("lr_ratio", a, positive=True)
        self.muon_params = check_muon_params(muon_params)
        self.name = f"max({self.a:g}*max-spectral,linf)"

    def groups(self, xs: Sequence[Tensor]) -> tuple[list[int], list[int]]:
        """(Muon indices, Signum/Adam indices) for this list of tensors."""
        n = len(xs)
        if self.muon_params is None:
            muon = default_muon_indices(xs)
        else:
            bad = [i for i in self.muon_params if i >= n]
            if bad:
                raise ValueError(
                    f"muon_params {list(bad)} out of range for {n} parameters (valid: 0..{n - 1})"
                )
            muon = list(self.muon_params)
        mset = set(muon)
        return muon, [i for i in range(n) if i not in mset]

    def for_params(self, xs: Sequence[Tensor]) -> Norm:
        """The concrete :func:`~steepest.norms.weighted_max` norm for this parameter list."""
        if len(xs) == 0:
            raise ValueError("a Norm needs at least one tensor; got an empty list")
        muon, other = self.groups(xs)
        if not other:
            return BlockMax([Spectral()], groups=[muon], weights=[self.a], name=self.name)
        if not muon:
            return BlockMax([LpNorm(math.inf)], groups=[other], weights=[1.0], name=self.name)
        return weighted_max(self.a, "spectral", "linf", groups=[muon, other])

    def __call__(self, xs: Sequence[Tensor]) -> Tensor:
        return self.for_params(xs)(xs)

    def dual(self, gs: Sequence[Tensor]) -> Tensor:
        return self.for_params(gs).dual(gs)

    def direction_and_dual(self, gs: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        return self.for_params(gs).direction_and_dual(gs)

    def direction(self, gs: Sequence[Tensor]) -> list[Tensor]:
        return self.for_params(gs).direction(gs)

    def duality_map(self, gs: Sequence[Tensor]) -> list[Tensor]:
        return self.for_params(gs).duality_map(gs)
