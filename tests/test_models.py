"""Tests for steepest.models: homogeneity, Euler's identity, structural checks (docs/theory.md §1.2, §5 item 3)."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from steepest.models import (
    ACTIVATIONS,
    CNN,
    MLP,
    MODELS,
    DiagonalLinear,
    Linear,
    NotHomogeneousError,
    build_model,
    check_homogeneous,
    homogeneity_degree,
)

SCALES = (0.5, 2.0, 10.0)

# (id, builder, input dim, expected L from the formula d_{l+1} = 1 + k d_l, docs/theory.md §1.2)
CASES = [
    ("linear", lambda: Linear(6, seed=1), 6, 1),
    ("linear_out3", lambda: Linear(6, out=3, seed=1), 6, 1),
    ("diagonal_d2", lambda: DiagonalLinear(6, depth=2, seed=2), 6, 2),
    ("diagonal_d3", lambda: DiagonalLinear(6, depth=3, seed=2), 6, 3),
    ("mlp_out3", lambda: MLP(6, [5], out=3, seed=3), 6, 2),
    (
        "cnn_max",
        lambda: CNN((2, 8, 8), [3, 4], pool="max", seed=4),
        128,
        3,
    ),
    (
        "cnn_avg_hidden_out3",
        lambda: CNN((2, 8, 8), [3], pool="avg", hidden=[6], out=3, seed=4),
        128,
        3,
    ),
    ("cnn_avg", lambda: CNN((1, 6, 6), [2], pool="avg", kernel_size=5, seed=5), 36, 2),
]
for act in ACTIVATIONS:
    k = 2 if act == "squared_relu" else 1
    for widths in ([], [7], [7, 5]):
        n_layers = len(widths) + 1
        expected = 2**n_layers - 1 if k == 2 else n_layers
        CASES.append(
            (
                f"mlp_{act}_D{n_layers}",
                lambda widths=widths, act=act: MLP(6, widths, activation=act, seed=6),
                6,
                expected,
            )
        )
IDS = [c[0] for c in CASES]


def _x(d: int, n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(("name", "build", "d", "expected"), CASES, ids=IDS)
def test_declared_degree_and_scaling(name, build, d, expected):
    model = build()
    x = _x(d)
    assert model.homogeneity_degree == expected
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.float64 for p in params.values())
    f = model(x)
    assert f.dtype == torch.float64
    assert f.shape == ((12,) if model.out == 1 else (12, model.out))
    # A non-trivial f: if every output were 0 the identity below would hold vacuously.
    assert f.abs().max() > 1e-3
    L = model.homogeneity_degree
    for c in SCALES:
        fc = functional_call(model, {k: c * p for k, p in params.items()}, (x,))
        # docs/theory.md §1.2 unit test: |f(cθ) − c^L f(θ)| ≤ 1e-10 |c^L f|. Scaling changes only rounding
        # (~1e-16 per op, exact for c = 0.5, 2); 1e-10 leaves room for cancellation in sums.
        err = (fc - c**L * f).abs()
        assert torch.all(err <= 1e-10 * (c**L * f).abs()), (name, c, float(err.max()))
    # The measured degree equals the declared one; the model was not touched.
    before = {k: p.detach().clone() for k, p in params.items()}
    assert homogeneity_degree(model, x) == expected
    assert all(torch.equal(before[k], p) for k, p in model.named_parameters())


@pytest.mark.parametrize(("name", "build", "d", "expected"), CASES, ids=IDS)
def test_euler_identity(name, build, d, expected):
    """⟨θ, ∇_θ f(x)⟩ = L f(x) for every output (Euler; autograd gives a Clarke subgradient)."""
    model = build()
    x = _x(d, n=5, seed=1)
    params = {k: p.detach() for k, p in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    f = functional_call(model, params, (x,))
    out_dims = f.ndim
    terms = [(jac[k] * params[k]).reshape(*f.shape, -1) for k in params]  # θ_j ∂f/∂θ_j per output
    prods = torch.cat(terms, dim=out_dims)
    euler = prods.sum(-1)
    scale = prods.abs().sum(-1) + expected * f.abs()
    # Rounding of a sum of p products is ≲ (log p)·eps·Σ|θ_j ∂_j f|; 1e-11 of that scale is
    # ~100x the worst float64 error for these sizes but far below any real violation
    # (a hidden bias, for instance, changes the left side by O(|b ∂f/∂b|)).
    assert torch.all((euler - expected * f).abs() <= 1e-11 * scale), name


def test_first_layer_bias_is_homogeneous():
    model = MLP(6, [7], seed=8, bias_first=True)
    assert model.net[0].bias is not None
    check_homogeneous(model)
    x = _x(6)
    assert homogeneity_degree(model, x) == 2
    # The bias must scale with θ: with the bias frozen the identity would fail.
    params = dict(model.named_parameters())
    fc = functional_call(
        model, {k: (p if k == "net.0.bias" else 2 * p) for k, p in params.items()}, (x,)
    )
    assert not torch.allclose(fc, 4 * model(x), rtol=1e-6)


def _seq(**modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(modules)).double()


@pytest.mark.parametrize(
    ("model", "offender"),
    [
        (
            _seq(fc1=nn.Linear(4, 8, bias=False), act=nn.ReLU(), fc2=nn.Linear(8, 1, bias=True)),
            "fc2",
        ),
        (
            _seq(
                fc1=nn.Linear(4, 8, bias=False),
                bn=nn.BatchNorm1d(8),
                act=nn.ReLU(),
                fc2=nn.Linear(8, 1, bias=False),
            ),
            "bn",
        ),
        (
            _seq(
                fc1=nn.Linear(4, 8, bias=False),
                block=_seq(ln=nn.LayerNorm(8), act=nn.ReLU()),
                fc2=nn.Linear(8, 1, bias=False),
            ),
            "block.ln",
        ),
        (
            _seq(c1=nn.Conv1d(1, 2, 3, bias=True), act=nn.ReLU(), c2=nn.Conv1d(2, 2, 3, bias=True)),
            "c2",
        ),
    ],
    ids=["hidden_bias", "batchnorm", "layernorm_nested", "conv_bias"],
)
def test_structural_rejections(model, offender):
    with pytest.raises(NotHomogeneousError, match=f"'{offender}'"):
        check_homogeneous(model)
    # homogeneity_degree runs the structural check first
    with pytest.raises(NotHomogeneousError, match=f"'{offender}'"):
        homogeneity_degree(model, torch.ones(3, 4, dtype=torch.float64))


def test_hidden_bias_actually_breaks_scaling():
    """Negative control: the rejected model really violates f(cθ) = c^L f(θ)."""
    torch.manual_seed(0)
    model = _seq(fc1=nn.Linear(4, 8, bias=False), act=nn.ReLU(), fc2=nn.Linear(8, 1, bias=True))
    x = _x(4)
    params = dict(model.named_parameters())
    f = model(x)
    fc = functional_call(model, {k: 2 * p for k, p in params.items()}, (x,))
    assert not torch.allclose(fc, 4 * f, rtol=1e-6)


def test_dropout_accepted_and_measured_in_eval_mode():
    model = _seq(
        fc1=nn.Linear(4, 8, bias=True),
        drop=nn.Dropout(0.5),
        act=nn.ReLU(),
        fc2=nn.Linear(8, 1, bias=False),
    )
    model.train()
    check_homogeneous(model)
    assert homogeneity_degree(model, _x(4)) == 2
    assert model.training and model.drop.training  # flags restored


def test_numerical_check_catches_non_homogeneous_activation():
    model = _seq(fc1=nn.Linear(4, 8, bias=False), act=nn.Tanh(), fc2=nn.Linear(8, 1, bias=False))
    with pytest.raises(NotHomogeneousError, match="disagree|sign"):
        homogeneity_degree(model, _x(4))


def test_non_integer_degree_returned_as_float():
    class Pow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.3, 0.7], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w.abs().pow(1.5)

    L = homogeneity_degree(Pow(), _x(2).abs() + 0.1)
    assert isinstance(L, float) and math.isclose(L, 1.5, rel_tol=1e-9)


def test_zero_output_cannot_be_measured():
    model = DiagonalLinear(3, depth=2)
    with torch.no_grad():
        model.v.copy_(model.u)  # u^2 − v^2 = 0
    with pytest.raises(ValueError, match="f\\(θ; x\\) = 0"):
        homogeneity_degree(model, _x(3))


def test_deterministic_init_and_generator():
    a, b = MLP(5, [4], seed=3), MLP(5, [4], seed=3)
    c = MLP(5, [4], seed=4)
    g = torch.Generator().manual_seed(3)
    d = MLP(5, [4], generator=g)
    pa, pb, pc, pd = (list(m.parameters()) for m in (a, b, c, d))
    assert all(torch.equal(u, v) for u, v in zip(pa, pb, strict=True))
    assert all(torch.equal(u, v) for u, v in zip(pa, pd, strict=True))
    assert not torch.equal(pa[0], pc[0])


def test_init_bounds_follow_init_scale():
    m = MLP(100, [50], init_scale=0.01, seed=0)
    w1, w2 = m.net[0].weight, m.net[2].weight
    assert w1.abs().max() <= 0.01 / 10 and w1.abs().max() > 0.9 * 0.01 / 10
    assert w2.abs().max() <= 0.01 / math.sqrt(50)
    assert m.net[0].bias is None and m.net[2].bias is None


def test_build_model_registry():
    assert set(MODELS) == {"linear", "diagonal", "mlp", "cnn"}
    m = build_model("mlp", d=3, widths=[4], activation="squared_relu")
    assert isinstance(m, MLP) and m.homogeneity_degree == 3
    assert build_model("cnn", image_shape=(1, 4, 4), channels=[2]).homogeneity_degree == 2
    with pytest.raises(ValueError, match="linear.*diagonal.*mlp.*cnn"):
        build_model("resnet")


def test_argument_validation():
    with pytest.raises(ValueError, match="activation.*relu"):
        MLP(3, [2], activation="tanh")
    with pytest.raises(ValueError, match="pool.*max"):
        CNN((1, 4, 4), [2], pool="min")
    with pytest.raises(ValueError, match="too small"):
        CNN((1, 4, 4), [2, 2, 2])
    with pytest.raises(ValueError, match="init_scale"):
        Linear(3, init_scale=0.0)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        Linear(3)(torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="scales"):
        homogeneity_degree(Linear(3), _x(3), scales=(1.0,))


def test_float32_input_is_upcast_not_mutated():
    m = Linear(3, seed=0)
    x = _x(3).float()
    out = m(x)
    assert out.dtype == torch.float64 and x.dtype == torch.float32
    assert torch.allclose(out, m(x.double()))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Linear(5, out=3, seed=0),
        lambda: DiagonalLinear(5, depth=3, seed=0),
        lambda: MLP(5, [4, 3], activation="squared_relu", seed=0),
        lambda: MLP(300, [6], bias_first=True, seed=0),  # wide input: the single-GEMM branch
        lambda: MLP(300, [6], out=3, seed=0),
    ],
)
def test_batched_forward_matches_per_run_forward(make):
    """The engine's fast path: K stacked parameter sets give each run's own outputs."""
    from torch.func import functional_call

    model = make()
    names = [n for n, _ in model.named_parameters()]
    K = 3
    stacked = [
        torch.stack([p.detach() * (1 + 0.1 * k) for k in range(K)]) for p in model.parameters()
    ]
    x = torch.rand(
        7,
        model.d if hasattr(model, "d") else 5,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    out = model.batched_forward(stacked, x)
    for k in range(K):
        ref = functional_call(model, {n: s[k] for n, s in zip(names, stacked, strict=True)}, (x,))
        # Same products summed in a different order (one GEMM vs K): float64 rounding only.
        torch.testing.assert_close(out[k], ref, rtol=1e-12, atol=1e-14)
