"""Homogeneous model builders and a numerical check of the homogeneity degree L.

An L-homogeneous model satisfies ``f(cθ; x) = c^L f(θ; x)`` for every c > 0 (docs/theory.md §1.2).
For a network without biases (or with a bias in the first weight layer only: a weight on a
constant input, Lyu & Li's ``BiasMode.FIRST_LAYER``) whose activation is k-homogeneous, the
degree after the first weight layer is 1 and ``d_{l+1} = 1 + k·d_l``:

* ReLU, leaky ReLU, identity, max pool, average pool (k = 1): L = number of weight layers;
* squared ReLU (k = 2): L = 2^D − 1 for D weight layers.

Every builder takes flat inputs of shape (n, d) and returns (n,) when ``out == 1`` (binary) or
(n, k) for k classes, builds its parameters in float64 by default, initializes them
deterministically from ``seed`` (or an explicit ``generator``), and exposes the declared degree
as ``model.homogeneity_degree`` (an int).

Euler's identity ``⟨θ, h⟩ = L f(θ; x)`` holds for every Clarke subgradient h (docs/theory.md §1.2).
Autograd returns one such element: PyTorch uses ``ReLU'(0) = 0`` (and the gradient of max
pooling goes to one maximal entry), which is a valid Clarke subgradient, so the identity holds
for autograd gradients too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .registry import check_registration

__all__ = [
    "NotHomogeneousError",
    "Linear",
    "DiagonalLinear",
    "MLP",
    "CNN",
    "SquaredReLU",
    "homogeneity_degree",
    "check_homogeneous",
    "build_model",
    "MODELS",
    "model_names",
    "register_model",
    "ACTIVATIONS",
    "POOLS",
]

ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "squared_relu")
POOLS: tuple[str, ...] = ("max", "avg")
# Homogeneity degree k of each activation: σ(cz) = c^k σ(z) for c > 0.
_ACTIVATION_DEGREE: dict[str, int] = {"relu": 1, "leaky_relu": 1, "squared_relu": 2}

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
_WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


class NotHomogeneousError(ValueError):
    """The model is not (or cannot be shown to be) positively homogeneous in its parameters."""


# --------------------------------------------------------------------------------------------
# helpers


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """The init generator: ``generator`` if given, else a fresh one seeded by ``seed``."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def _uniform_(param: Tensor, bound: float, gen: torch.Generator) -> None:
    """Fill ``param`` with U(−bound, bound) draws from ``gen`` (drawn on CPU, then copied)."""
    draw = torch.rand(param.shape, generator=gen, dtype=param.dtype)
    with torch.no_grad():
        param.copy_((2.0 * draw - 1.0) * bound)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_init_scale(init_scale: Any) -> float:
    s = float(init_scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"init_scale must be a finite float > 0, got {init_scale!r}")
    return s


def _as_input(x: Tensor, d: int, ref: Tensor) -> Tensor:
    """Check x has shape (n, d) and cast it to the dtype/device of the parameter ``ref``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (n, {d}), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (n, {d}), got {tuple(x.shape)}")
    # Upcasting float32 data to the float64 parameters is harmless; it never mutates x.
    return x.to(dtype=ref.dtype, device=ref.device)


def _squeeze_out(y: Tensor, out: int) -> Tensor:
    """(n, 1) -> (n,) for binary models; (n, k) unchanged."""
    return y.squeeze(-1) if out == 1 else y


class SquaredReLU(nn.Module):
    """σ(z) = max(z, 0)², a 2-homogeneous activation (Gronich & Vardi's smooth ReLU^2)."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.relu(z).square()


def _activation(name: str, negative_slope: float) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if name == "squared_relu":
        return SquaredReLU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _degree(n_weight_layers: int, k: int) -> int:
    """d_1 = 1, d_{l+1} = 1 + k·d_l (docs/theory.md §1.2); returns d_D for D weight layers."""
    d = 1
    for _ in range(n_weight_layers - 1):
        d = 1 + k * d
    return d


# --------------------------------------------------------------------------------------------
# builders


class Linear(nn.Module):
    """f(x) = ⟨w, x⟩ (or W x for ``out`` > 1), no bias; L = 1.

    Init: W ~ U(−s/√d, s/√d) with s = ``init_scale``.
    """

    def __init__(
        self,
        d: int,
        out: int = 1,
        *,
        init_scale: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.d = _check_positive_int("d", d)
        self.out = _check_positive_int("out", out)
        s = _check_init_scale(init_scale)
        gen = _generator(seed, generator)
        self.weight = nn.Parameter(torch.empty(out, d, dtype=dtype))
        _uniform_(self.weight, s / math.sqrt(d), gen)
        self.to(device=device)

    @property
    def homogeneity_degree(self) -> int:
        return 1

    def forward(self, x: Tensor) -> Tensor:
        x = _as_input(x, self.d, self.weight)
        return _squeeze_out(x @ self.weight.T, self.out)

    def batched_forward(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        """f for K stacked parameter sets (K, *shape) at once: (K, n) or (K, n, out).

        Plain batched matmuls, so the engine can differentiate K runs with ordinary autograd
        (about twice as fast as ``vmap(functional_call)`` on small nets).
        """
        (w,) = params
        return _squeeze_out(torch.matmul(x.to(w.dtype), w.transpose(-1, -2)), self.out)


class DiagonalLinear(nn.Module):
    """Diagonal linear network f(x) = ⟨u^D − v^D, x⟩ (elementwise powers), L = D = ``depth``.

    Parameters u, v ∈ R^d, both drawn i.i.d. from U(−s, s) with s = ``init_scale``. (The
    symmetric init u = v = α·1 used in the diagonal-network literature gives f ≡ 0; set it by
    hand with ``model.u.data.fill_(α)`` if needed.)
    """

    def __init__(
        self,
        d: int,
        depth: int = 2,
        *,
        init_scale: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.d = _check_positive_int("d", d)
        self.depth = _check_positive_int("depth", depth)
        self.out = 1
        s = _check_init_scale(init_scale)
        gen = _generator(seed, generator)
        self.u = nn.Parameter(torch.empty(d, dtype=dtype))
        self.v = nn.Parameter(torch.empty(d, dtype=dtype))
        _uniform_(self.u, s, gen)
        _uniform_(self.v, s, gen)
        self.to(device=device)

    @property
    def homogeneity_degree(self) -> int:
        return self.depth

    def effective_weight(self) -> Tensor:
        """w = u^D − v^D, the linear predictor the network represents."""
        return self.u.pow(self.depth) - self.v.pow(self.depth)

    def forward(self, x: Tensor) -> Tensor:
        x = _as_input(x, self.d, self.u)
        return x @ self.effective_weight()

    def batched_forward(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        """f for K stacked (u, v) at once: (K, n)."""
        u, v = params
        w = u.pow(self.depth) - v.pow(self.depth)  # (K, d)
        return w @ x.to(w.dtype).T


class MLP(nn.Module):
    """Bias-free MLP: ``len(widths)`` hidden layers, then a linear layer to ``out``.

    f(x) = W_D σ(W_{D−1} ··· σ(W_1 x)), D = len(widths) + 1 weight layers (``widths=()`` gives a
    linear model). Degree (docs/theory.md §1.2): d_1 = 1, d_{l+1} = 1 + k·d_l with k the activation's degree,
    so L = D for ReLU / leaky ReLU and L = 2^D − 1 for squared ReLU.

    Init (docs/theory.md §4.2): W_l ~ U(−s/√fan_in, s/√fan_in), s = ``init_scale``. With ``bias_first``
    the first layer gets a bias (same init) — a weight on a constant input, which keeps f
    homogeneous (Lyu & Li's BiasMode.FIRST_LAYER). Layers live in ``self.net`` (an
    ``nn.Sequential``: linear, activation, linear, ...).
    """

    def __init__(
        self,
        d: int,
        widths: Sequence[int] = (),
        out: int = 1,
        activation: str = "relu",
        init_scale: float = 1.0,
        negative_slope: float = 0.01,
        *,
        bias_first: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.d = _check_positive_int("d", d)
        self.out = _check_positive_int("out", out)
        self.widths = tuple(_check_positive_int("widths[i]", w) for w in widths)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        s = _check_init_scale(init_scale)
        gen = _generator(seed, generator)
        sizes = (d, *self.widths, out)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lin = nn.Linear(fan_in, fan_out, bias=bias_first and i == 0, dtype=dtype)
            bound = s / math.sqrt(fan_in)
            _uniform_(lin.weight, bound, gen)
            if lin.bias is not None:
                _uniform_(lin.bias, bound, gen)
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(_activation(activation, negative_slope))
        self.net = nn.Sequential(*layers)
        self._degree = _degree(len(sizes) - 1, _ACTIVATION_DEGREE[activation])
        self.to(device=device)

    @property
    def homogeneity_degree(self) -> int:
        return self._degree

    def forward(self, x: Tensor) -> Tensor:
        x = _as_input(x, self.d, self.net[0].weight)
        return _squeeze_out(self.net(x), self.out)

    def batched_forward(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        """f for K stacked parameter sets (in ``named_parameters`` order): (K, n) or (K, n, out)."""
        it = iter(params)
        h = x.to(params[0].dtype)
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.Linear):
                w = next(it)
                if i == 0 and w.dim() == 3 and w.shape[0] > 1 and w.shape[-1] >= 256:
                    # Wide shared input: one (n, d) @ (d, K·m) GEMM beats K small ones (~25%
                    # measured on MNIST, K = 15); for small d the batched matmul is faster.
                    K, m, d = w.shape
                    h = (h @ w.reshape(K * m, d).T).reshape(h.shape[0], K, m).transpose(0, 1)
                else:
                    h = torch.matmul(h, w.transpose(-1, -2))
                if layer.bias is not None:
                    h = h + next(it).unsqueeze(-2)
            else:
                h = layer(h)
        return _squeeze_out(h, self.out)


class CNN(nn.Module):
    """Bias-free CNN on flat inputs reshaped to ``image_shape = (C, H, W)``.

    Each entry of ``channels`` adds conv(kernel_size, padding "same", no bias) → ReLU → 2×2 pool
    (``pool`` = "max" or "avg"); then flatten, optional bias-free hidden linear layers
    (``hidden`` widths, each followed by ReLU) and a bias-free linear layer to ``out``.
    Max and average pooling are 1-homogeneous, so L = number of weight layers
    = len(channels) + len(hidden) + 1.

    Init: every weight ~ U(−s/√fan_in, s/√fan_in), fan_in = C_in·k² for convolutions.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int],
        kernel_size: int = 3,
        pool: str = "max",
        out: int = 1,
        init_scale: float = 1.0,
        hidden: Sequence[int] | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = tuple(image_shape)
        if len(shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        c_in, h, w = (_check_positive_int("image_shape[i]", v) for v in shape)
        self.image_shape = (c_in, h, w)
        self.d = c_in * h * w
        self.out = _check_positive_int("out", out)
        k = _check_positive_int("kernel_size", kernel_size)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = pool
        s = _check_init_scale(init_scale)
        gen = _generator(seed, generator)
        channels = tuple(_check_positive_int("channels[i]", c) for c in channels)
        hidden_t = tuple(_check_positive_int("hidden[i]", v) for v in (hidden or ()))

        layers: list[nn.Module] = [nn.Unflatten(1, self.image_shape)]
        for c_out in channels:
            if h < 2 or w < 2:
                raise ValueError(
                    f"image_shape {self.image_shape} is too small for {len(channels)} 2x2 pools "
                    f"(spatial size reached {h}x{w}); use fewer channels entries"
                )
            conv = nn.Conv2d(c_in, c_out, k, padding="same", bias=False, dtype=dtype)
            _uniform_(conv.weight, s / math.sqrt(c_in * k * k), gen)
            pool_layer = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
            layers += [conv, nn.ReLU(), pool_layer]
            c_in, h, w = c_out, h // 2, w // 2
        layers.append(nn.Flatten(1))
        sizes = (c_in * h * w, *hidden_t, self.out)
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lin = nn.Linear(fan_in, fan_out, bias=False, dtype=dtype)
            _uniform_(lin.weight, s / math.sqrt(fan_in), gen)
            layers.append(lin)
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self._degree = len(channels) + len(hidden_t) + 1
        self.to(device=device)

    @property
    def homogeneity_degree(self) -> int:
        return self._degree

    def forward(self, x: Tensor) -> Tensor:
        first = next(m for m in self.net if isinstance(m, _WEIGHT_LAYER_TYPES))
        x = _as_input(x, self.d, first.weight)
        return _squeeze_out(self.net(x), self.out)


# --------------------------------------------------------------------------------------------
# checks


def check_homogeneous(model: nn.Module) -> None:
    """Structural check that ``model`` can be positively homogeneous in its parameters.

    Raises :class:`NotHomogeneousError` naming the offending module (its qualified name in
    ``model.named_modules()``) for

    * any normalization layer (BatchNorm*, InstanceNorm*, LayerNorm, GroupNorm,
      LocalResponseNorm, RMSNorm): they divide out the scale of the previous layers;
    * a bias on a Linear/Conv layer other than the first weight layer (docs/theory.md §1.2; a first-layer
      bias is a weight on a constant input and is allowed).

    Dropout is allowed (identity at evaluation). "First" means first in registration order
    (``named_modules()``), which matches the forward order for sequential models. Residual
    connections and non-homogeneous activations are invisible to this check; the numerical
    test in :func:`homogeneity_degree` catches them.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seen_weight_layer = False
    for name, module in model.named_modules():
        label = name or "<root>"
        if isinstance(module, _NORM_TYPES):
            raise NotHomogeneousError(
                f"module {label!r} ({type(module).__name__}) is a normalization layer; "
                "normalization breaks homogeneity f(cθ) = c^L f(θ)"
            )
        if isinstance(module, _WEIGHT_LAYER_TYPES):
            if seen_weight_layer and getattr(module, "bias", None) is not None:
                raise NotHomogeneousError(
                    f"module {label!r} ({type(module).__name__}) has a bias but is not the first "
                    "weight layer; only a first-layer bias keeps f homogeneous "
                    "(build it with bias=False)"
                )
            seen_weight_layer = True


def homogeneity_degree(
    model: nn.Module,
    x: Tensor,
    scales: Sequence[float] = (0.5, 2.0, 10.0),
    rtol: float = 1e-6,
) -> int | float:
    """Measure L from f(cθ; x) = c^L f(θ; x): L = log(|f(cθ)| / |f(θ)|) / log c.

    Calls :func:`check_homogeneous` first. Every parameter is scaled by c through
    ``torch.func.functional_call`` (the model's parameters are never touched). The model is
    evaluated in eval mode (so dropout is the identity); its train/eval flags are restored.

    Outputs with |f(θ)| ≤ 1e-6·max|f(θ)| are ignored: their rounding error relative to |f| is
    too large for a clean estimate. Every remaining (output, scale) pair gives an estimate; if
    a sign flips or the estimates spread by more than ``rtol``·max(1, |L|), raises
    :class:`NotHomogeneousError`. Returns the nearest int when within ``rtol`` of it, else the
    float. Raises ``ValueError`` if f(θ; x) = 0 for every output (L cannot be measured).
    """
    check_homogeneous(model)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    scales = tuple(float(c) for c in scales)
    if not scales or any(not math.isfinite(c) or c <= 0 or c == 1.0 for c in scales):
        raise ValueError(f"scales must be non-empty, finite, > 0 and != 1, got {scales!r}")
    if not (rtol > 0):
        raise ValueError(f"rtol must be > 0, got {rtol!r}")

    params = dict(model.named_parameters())
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            f0 = functional_call(model, params, (x,)).reshape(-1)
            fcs = [
                functional_call(model, {k: c * p for k, p in params.items()}, (x,)).reshape(-1)
                for c in scales
            ]
    finally:
        for m, flag in flags.items():
            m.train(flag)

    f0 = f0.to(torch.float64) if not f0.is_floating_point() else f0
    abs0 = f0.abs()
    top = abs0.max() if abs0.numel() else torch.tensor(0.0)
    if not bool(torch.isfinite(top)):
        raise NotHomogeneousError(f"f(θ; x) is not finite (max |f| = {float(top)})")
    if float(top) <= torch.finfo(f0.dtype).tiny:
        raise ValueError(
            "x gives f(θ; x) = 0 for every output, so the degree L cannot be measured; "
            "pass inputs on which the model is non-zero"
        )
    keep = abs0 > 1e-6 * top
    estimates = []
    for c, fc in zip(scales, fcs, strict=True):
        a, b = f0[keep], fc[keep]
        if bool(((a > 0) != (b > 0)).any()) or not bool(torch.isfinite(b).all()):
            raise NotHomogeneousError(
                f"f(cθ) changes sign or is not finite at c = {c}: not positively homogeneous"
            )
        estimates.append(torch.log(b.abs() / a.abs()) / math.log(c))
    est = torch.cat(estimates)
    center = float(est.mean())
    spread = float((est - center).abs().max())
    if spread > rtol * max(1.0, abs(center)):
        raise NotHomogeneousError(
            f"degree estimates disagree across scales {scales} / outputs: range "
            f"[{float(est.min()):.6g}, {float(est.max()):.6g}] (rtol {rtol}); "
            "the model is not positively homogeneous"
        )
    nearest = round(center)
    if abs(center - nearest) <= rtol * max(1.0, abs(center)):
        return int(nearest)
    return center


# --------------------------------------------------------------------------------------------
# registry

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "linear": Linear,
    "diagonal": DiagonalLinear,
    "mlp": MLP,
    "cnn": CNN,
}
MODELS: tuple[str, ...] = tuple(_REGISTRY)  # the built-in names


#: The model name of a model passed as an object (``steepest.train(config, model=factory)``):
#: a config may name it, and the run records it, but nothing can be built by this name.
USER_MODEL = "user"


def register_model(name: str, builder: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Register ``builder(d=..., out=..., seed=..., dtype=..., init_scale=..., **config keys)
    -> nn.Module`` under ``name``, so that :func:`build_model` and configs accept it. The engine
    measures the model's homogeneity degree. A name that is taken is refused unless
    ``replace=True``."""
    check_registration("model", name, builder, name in _REGISTRY or name == USER_MODEL, replace)
    if name == USER_MODEL:
        raise ValueError(f"model name {USER_MODEL!r} is reserved for models passed as objects")
    _REGISTRY[name] = builder


def model_names() -> list[str]:
    """The names :func:`build_model` and configs accept: the built-in ones, then the
    registered ones, in the order they were registered."""
    return list(_REGISTRY)


def build_model(name: str, **kw: Any) -> nn.Module:
    """Build a model by name ("linear", "diagonal", "mlp", "cnn", or a registered one); ``kw``
    go to the builder."""
    if name == USER_MODEL:
        raise ValueError(
            f"model {USER_MODEL!r} stands for a model passed as an object: "
            "steepest.train(config, model=lambda seed: MyNet(...))"
        )
    try:
        builder = _REGISTRY[name]
    except (KeyError, TypeError):
        names = ", ".join(model_names())
        raise ValueError(f"unknown model {name!r}; valid names: {names}") from None
    return builder(**kw)
