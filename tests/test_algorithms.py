"""Pure update rules, the algorithm registry, and the torch.optim wrappers."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch.func import vmap

import steepest
from steepest.algorithms import SteepestDescentRule, algorithm, algorithm_names
from steepest.norms import LpNorm, Spectral, inner
from steepest.optim import SteepestDescent, optimizer


def _net(seed=0, act=None):
    torch.manual_seed(seed)
    act = act or torch.nn.LeakyReLU(0.1)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7, bias=False), act, torch.nn.Linear(7, 1, bias=False)
    ).double()


def _data(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.where(torch.randn(n, generator=g) > 0, 1.0, -1.0).double()
    return X, y


def _loss(model, X, y):
    return torch.logsumexp(-y * model(X).squeeze(-1), 0)  # log of the summed exponential loss


@pytest.mark.parametrize(
    "name,norm_name,normalized",
    [
        ("gd", "l2", False),
        ("ngd", "l2", True),
        ("sign", "linf", True),
        ("cd", "l1", True),
        ("spectral", "max-spectral", True),
    ],
)
def test_named_algorithms_declare_their_norm(name, norm_name, normalized):
    a = algorithm(name)
    assert a.predicted_norm.name == norm_name
    assert a.normalized is normalized


def test_lp_algorithm_takes_p():
    a = algorithm("lp", p=3)
    assert a.predicted_norm.name == "l3" and a.normalized
    assert algorithm("lp", p=1.5, normalized=False).normalized is False


def test_unknown_names_and_options_list_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*sign"):
        algorithm("signn")
    with pytest.raises(ValueError, match="does not take 'beta'"):
        algorithm("sign", beta=0.9)
    with pytest.raises(ValueError, match="valid names"):
        optimizer("nope", [torch.zeros(2, requires_grad=True)], lr=0.1)
    assert {"gd", "ngd", "sign", "cd", "lp", "spectral"} <= set(algorithm_names())


@pytest.mark.parametrize("name", ["ngd", "sign", "cd", "spectral", "lp"])
@pytest.mark.parametrize("normalized", [True, False])
def test_update_is_theta_minus_lr_times_step(name, normalized):
    kw = {"p": 3} if name == "lp" else {}
    a = algorithm(name, normalized=normalized, **kw)
    params = [torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    grads = [torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    before = [p.clone() for p in params]
    state = a.init(params)
    new, state2 = a.update(params, grads, state, 0.1)
    N = a.predicted_norm
    step = [(p - q) / 0.1 for p, q in zip(params, new, strict=True)]
    d = N.dual(grads)
    # Normalized: ‖Δ‖ = 1 and ⟨Δ, g⟩ = ‖g‖_*. Unnormalized: ‖Δ‖ = ‖g‖_*, ⟨Δ, g⟩ = ‖g‖_*².
    # rtol 1e-10: Δ is recovered as (θ − θ')/η, which loses a few digits to cancellation.
    expected_norm = torch.ones((), dtype=torch.float64) if normalized else d
    torch.testing.assert_close(N(step), expected_norm, rtol=1e-10, atol=0)
    torch.testing.assert_close(inner(step, grads), d * expected_norm, rtol=1e-10, atol=0)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True)), (
        "update edited params in place"
    )
    assert float(state2["step"]) == 1.0
    torch.testing.assert_close(state2["grad_dual"], d, rtol=1e-12, atol=0)


def test_gd_is_plain_gradient_step():
    params = [torch.randn(6, dtype=torch.float64)]
    grads = [torch.randn(6, dtype=torch.float64)]
    a = algorithm("gd")
    new, _ = a.update(params, grads, a.init(params), 0.3)
    # J(g) = ‖g‖₂ · (g/‖g‖₂) = g up to two roundings; compare the step, not θ (no cancellation).
    torch.testing.assert_close((params[0] - new[0]) / 0.3, grads[0], rtol=1e-14, atol=0)


def test_vmap_update_over_four_runs_matches_loop():
    a = algorithm("spectral")
    P = [torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)]
    G = [torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)]
    lrs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    S = vmap(a.init)(P)
    newP, newS = vmap(a.update)(P, G, S, lrs)
    for i in range(4):
        pi, gi = [x[i] for x in P], [x[i] for x in G]
        ref, refS = a.update(pi, gi, a.init(pi), float(lrs[i]))
        for x, r in zip(newP, ref, strict=True):
            torch.testing.assert_close(x[i], r, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(newS["grad_dual"][i], refS["grad_dual"], rtol=1e-12, atol=0)


def test_sign_equals_torch_adam_with_zero_betas_and_eps():
    """Adam with β1 = β2 = 0, ε = 0 is m/√v = g/|g| = sign(g): the same steps (docs/theory.md §2.4)."""
    X, y = _data()
    m1, m2 = _net(), _net()
    # Leaky ReLU keeps every gradient coordinate non-zero (Adam's 0/0 would be NaN).
    opt1 = torch.optim.Adam(m1.parameters(), lr=1e-2, betas=(0.0, 0.0), eps=0.0)
    opt2 = optimizer("sign", m2.parameters(), lr=1e-2)
    for _ in range(25):
        for m, o in ((m1, opt1), (m2, opt2)):
            o.zero_grad()
            _loss(m, X, y).backward()
            o.step()
        for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
            # Adam divides g by sqrt(g²) in float64: exact up to one rounding of sqrt and /.
            torch.testing.assert_close(p, q, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: SteepestDescent(ps, norm="linf", lr=1e-2),
        lambda ps: SteepestDescent(ps, norm="l1", lr=1e-1, normalized=False),
        lambda ps: optimizer("spectral", ps, lr=1e-2),
        lambda ps: optimizer("lp", ps, lr=1e-2, p=3),
        lambda ps: optimizer("gd", ps, lr=1e-1),
    ],
)
def test_state_dict_round_trip_reproduces_next_step(make):
    X, y = _data(1)
    model = _net(1, torch.nn.ReLU())
    opt = make(model.parameters())
    for _ in range(3):
        opt.zero_grad()
        _loss(model, X, y).backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(
        buf, weights_only=True
    )  # checkpoints load with weights_only (no pickled objects)
    clone = copy.deepcopy(model)
    clone.load_state_dict(saved["model"])
    opt2 = make(clone.parameters())
    opt2.load_state_dict(saved["opt"])
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        _loss(m, X, y).backward()
        o.step()
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)
    assert float(opt2.state[next(clone.parameters())]["step"]) == 4.0


def test_param_groups_use_their_own_norm():
    w1 = torch.nn.Parameter(torch.tensor([[3.0, -1.0], [0.5, 2.0]], dtype=torch.float64))
    w2 = torch.nn.Parameter(torch.tensor([1.0, -4.0, 2.0], dtype=torch.float64))
    opt = SteepestDescent(
        [{"params": [w1], "norm": "linf"}, {"params": [w2], "norm": "l1", "lr": 0.5}], lr=0.1
    )
    w1.grad = torch.tensor([[1.0, -2.0], [0.0, 3.0]], dtype=torch.float64)
    w2.grad = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(
        w1.detach(),
        torch.tensor([[2.9, -0.9], [0.5, 1.9]], dtype=torch.float64),
        rtol=0,
        atol=1e-15,
    )
    torch.testing.assert_close(
        w2.detach(), torch.tensor([1.0, -3.5, 2.0], dtype=torch.float64), rtol=0, atol=1e-15
    )


def test_missing_grad_counts_as_zero_in_the_group_norm():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([5.0], dtype=torch.float64))
    opt = SteepestDescent([a, b], norm="l2", lr=1.0)
    a.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(
        a.detach(), torch.tensor([0.4, 1.2], dtype=torch.float64), rtol=0, atol=1e-15
    )
    assert float(b.detach()) == 5.0


def test_training_with_each_rule_increases_own_margin_direction():
    """Smoke test with meaning: after separation, sign descent's ℓ∞-normalized margin exceeds
    the one GD reaches in the same number of steps, and vice versa for ℓ2 (docs/theory.md §3.1)."""
    X = torch.tensor([[1.0, 0.2], [0.9, -0.3], [-1.0, 0.1], [-0.8, -0.4]], dtype=torch.float64)
    X = torch.cat([X, torch.ones(4, 1, dtype=torch.float64) * 0.3], 1)
    y = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    out = {}
    for name in ("ngd", "sign"):
        w = torch.nn.Parameter(torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64))
        opt = optimizer(name, [w], lr=0.05)
        for t in range(1, 3001):
            for g in opt.param_groups:
                g["lr"] = 0.05 / math.sqrt(t)
            opt.zero_grad()
            torch.logsumexp(-y * (X @ w), 0).backward()
            opt.step()
        q = float((y * (X @ w)).min())
        out[name] = {n: q / float(steepest.norm(n)([w.detach()])) for n in ("l2", "linf")}
    assert out["ngd"]["l2"] > out["sign"]["l2"]
    assert out["sign"]["linf"] > out["ngd"]["linf"]


def test_rule_accepts_norm_objects():
    r = SteepestDescentRule(LpNorm(4), normalized=True)
    assert r.predicted_norm.name == "l4"
    s = SteepestDescentRule(Spectral(), normalized=False)
    assert not s.normalized and s.hyperparams == {"norm": "max-spectral", "normalized": False}


@pytest.mark.parametrize(
    "name", ["gd", "ngd", "sign", "cd", "spectral", "lp", "adam", "adam-eps", "signum", "muon-adam"]
)
def test_stacked_update_matches_the_single_run_update(name):
    """``stacked_update`` (the engine's path: native batching for steepest rules, vmap for the
    rest) gives each run's own ``update`` with its own lr, over three steps with state.

    rtol 1e-13: the same float64 operations per run; batching changes at most the reduction
    order inside a norm (a few ulps), which three steps do not amplify beyond 1e-13.
    """
    kw = {"lp": {"p": 3}, "adam-eps": {"eps": 1e-3}}.get(name, {})
    a = algorithm(name.removesuffix("-eps"), **kw)  # adam-eps: ε > 0, rescaled with the state
    g = torch.Generator().manual_seed(7)
    K = 4
    P = [
        torch.randn(K, 3, 5, generator=g, dtype=torch.float64),
        torch.randn(K, 1, 3, generator=g, dtype=torch.float64),
    ]
    lrs = torch.tensor([0.1, 0.2, 0.05, 0.4], dtype=torch.float64)
    S = a.stacked_init(P)
    singles = [([x[i] for x in P], a.init([x[i] for x in P])) for i in range(K)]
    for _ in range(3):
        G = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in P]
        G[0][1, 0] = 0.0  # a zero row in one run only: per-run guards must not leak
        P, S = a.stacked_update(P, G, S, lrs)
        singles = [
            a.update(p, [x[i] for x in G], s, float(lrs[i])) for i, (p, s) in enumerate(singles)
        ]
    for i, (p, _) in enumerate(singles):
        for x, r in zip(P, p, strict=True):
            torch.testing.assert_close(x[i], r, rtol=1e-13, atol=1e-15)
    if "grad_dual" in S:
        for i, (_, s) in enumerate(singles):
            torch.testing.assert_close(S["grad_dual"][i], s["grad_dual"], rtol=1e-13, atol=0)
    # The state re-expressed for rescaled gradients (the engine's frame change, a different
    # factor per run), then one more step: still each run's own.
    lf = torch.tensor([0.5, -3.0, 0.0, 40.0], dtype=torch.float64)
    S = a.stacked_rescale_state(S, lf)
    singles = [(p, a.rescale_state(s, lf[i])) for i, (p, s) in enumerate(singles)]
    G = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in P]
    P, S = a.stacked_update(P, G, S, lrs)
    singles = [a.update(p, [x[i] for x in G], s, float(lrs[i])) for i, (p, s) in enumerate(singles)]
    for i, (p, _) in enumerate(singles):
        for x, r in zip(P, p, strict=True):
            torch.testing.assert_close(x[i], r, rtol=1e-13, atol=1e-15)
    # A float lr applies to every run, as in update().
    P1, _ = a.stacked_update(P, G, S, 0.1)
    P2, _ = a.stacked_update(P, G, S, torch.full((K,), 0.1, dtype=torch.float64))
    for x, z in zip(P1, P2, strict=True):
        torch.testing.assert_close(x, z, rtol=0, atol=0)
