"""The ``torch.optim`` wrappers: the in-place step equals the pure rule, and the peers with the
same math (``torch.optim.SGD``, ``torch.optim.Adam``, pytorch-optimizer's ``SignSGD``) agree
step for step in float64, through param groups and a ``state_dict`` round-trip.

Conventions that differ, and how they map:

* Signum here is m ← βm + (1 − β)g, θ ← θ − η sign(m): pytorch-optimizer's ``SignSGD`` with
  momentum β (its ``lerp_``). torch-style momentum m ← βm + g is (1 − β)⁻¹ times that buffer
  and gives the same signs, hence the same steps (tested below).
* Weight decay: the steepest rules have none (it would change the predicted margin), so the
  peers run with ``weight_decay=0``.
* Muon here has no Nesterov term and no shape-dependent scale (the form Gronich & Vardi
  analyse); other Muons differ by those factors and are not compared step for step.

Tolerances: the in-place forms reorder a few floating-point operations (lerp for βm + (1 − β)g,
per-tensor partial sums), ~1e-16 per step; 1e-12 over 50 steps leaves room for accumulation
while a wrong formula (a missing bias correction, a β swapped) is off by ≥ 1e-3.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import pytorch_optimizer
import torch

import steepest
from steepest.algorithms import algorithm, algorithm_names
from steepest.optim import AlgorithmOptimizer

F64 = torch.float64
#: Options for registered names that need some (the rest use their defaults).
OPTIONS = {"lp": {"p": 3}, "steepest": {"norm": "l1.5"}}


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (4, 3, 2, 2), (7,), ()]  # a matrix, a conv kernel, a vector, a scalar
    return [torch.randn(s, generator=g, dtype=F64) for s in shapes]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g, dtype=F64) for p in params]


@pytest.mark.parametrize("name", algorithm_names())
def test_in_place_step_equals_the_pure_rule_for_every_registered_rule(name):
    rule = algorithm(name, **OPTIONS.get(name, {}))
    pure_p = _params()
    pure_s = rule.init(pure_p)
    live_p = [p.clone() for p in pure_p]
    live_s = rule.optimizer_state(rule.init(live_p))
    worst = 0.0
    for t in range(50):
        grads = _grads(pure_p, t)
        pure_p, pure_s = rule.update(pure_p, grads, pure_s, 0.01)
        kept = live_p  # apply_ moves these tensors, in place
        live_s = rule.apply_(live_p, grads, live_s, 0.01)
        assert all(a is b for a, b in zip(kept, live_p, strict=True))
        scale = max(float(p.abs().max()) for p in pure_p)
        diff = max(float((a - b).abs().max()) for a, b in zip(pure_p, live_p, strict=True))
        worst = max(worst, diff / scale)
        assert set(live_s) == set(rule.optimizer_state(pure_s))
        assert float(live_s["step"]) == float(pure_s["step"]) == t + 1
    assert worst <= 1e-12, (name, worst)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 6, bias=False), torch.nn.ReLU(), torch.nn.Linear(6, 1, bias=False)
    ).to(F64)


def _data(seed: int = 0, n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g, dtype=F64)
    y = torch.where(torch.randn(n, generator=g) > 0, 1.0, -1.0).to(F64)
    return X, y


def _groups(model: torch.nn.Module, extra: dict) -> list[dict]:
    # Two param groups with different lr (and, where given, other hyper-parameters).
    return [{"params": [model[0].weight]}, {"params": [model[2].weight], "lr": 3e-3, **extra}]


PEERS = {
    "gd": (
        lambda gs: steepest.optimizer("gd", gs, lr=1e-2),
        lambda gs: torch.optim.SGD(gs, lr=1e-2, foreach=True),
        {},
    ),
    "adam": (
        lambda gs: steepest.optimizer("adam", gs, lr=1e-2, betas=(0.9, 0.999), eps=1e-8),
        lambda gs: torch.optim.Adam(gs, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, foreach=True),
        {"betas": (0.8, 0.99)},
    ),
    "sign": (
        lambda gs: steepest.optimizer("sign", gs, lr=1e-2),
        lambda gs: pytorch_optimizer.SignSGD(gs, lr=1e-2, momentum=0.0, weight_decay=0.0),
        {},
    ),
    "signum": (
        lambda gs: steepest.optimizer("signum", gs, lr=1e-2, momentum=0.9),
        lambda gs: pytorch_optimizer.SignSGD(gs, lr=1e-2, momentum=0.9, weight_decay=0.0),
        {"momentum": 0.5},
    ),
}


def _train(model, opt, X, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        torch.logsumexp(-y * model(X).squeeze(-1), 0).backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(PEERS))
def test_equals_its_peer_step_for_step_through_groups_and_a_state_dict_round_trip(name):
    ours_make, peer_make, extra = PEERS[name]
    X, y = _data()
    ours_model, peer_model = _model(), _model()
    ours = ours_make(_groups(ours_model, extra))
    peer = peer_make(_groups(peer_model, extra))
    _train(ours_model, ours, X, y, 25)
    _train(peer_model, peer, X, y, 25)
    # Round-trip both through torch.save / weights_only load into fresh objects, then go on.
    buf = io.BytesIO()
    torch.save({"model": ours_model.state_dict(), "opt": ours.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    ours_model = copy.deepcopy(ours_model)
    ours_model.load_state_dict(saved["model"])
    ours = ours_make(_groups(ours_model, extra))
    ours.load_state_dict(saved["opt"])
    _train(ours_model, ours, X, y, 25)
    _train(peer_model, peer, X, y, 25)
    for a, b in zip(ours_model.parameters(), peer_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    moved = float((ours_model[0].weight.detach() - _model()[0].weight.detach()).abs().max())
    assert moved > 1e-3  # 50 steps really moved the weights: the comparison is not vacuous


def test_signum_equals_sign_of_torch_style_momentum():
    # m ← βm + g (torch's SGD momentum) is (1 − β)⁻¹ times m ← βm + (1 − β)g: same sign(m).
    params = _params(3)
    rule = algorithm("signum", momentum=0.9)
    state = rule.optimizer_state(rule.init(params))
    ref = [p.clone() for p in params]
    buf = [torch.zeros_like(p) for p in params]
    for t in range(30):
        grads = _grads(params, t)
        state = rule.apply_(params, grads, state, 0.05)
        for r, b, g in zip(ref, buf, grads, strict=True):
            b.mul_(0.9).add_(g)
            r.sub_(0.05 * torch.sign(b))
    for a, b in zip(params, ref, strict=True):
        assert torch.equal(a, b)


def test_rule_is_built_once_and_rebuilt_when_a_hyperparameter_changes():
    builds = []

    def build(**hp):
        builds.append(hp)
        return algorithm("adam", **hp)

    model = _model()
    X, y = _data()
    opt = AlgorithmOptimizer(model.parameters(), build, lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    _train(model, opt, X, y, 5)
    assert len(builds) == 1
    opt.param_groups[0]["betas"] = (0.5, 0.9)
    _train(model, opt, X, y, 1)
    assert len(builds) == 2 and builds[-1]["betas"] == (0.5, 0.9)
    assert opt.rule(opt.param_groups[0]).betas == (0.5, 0.9)


def test_state_of_the_earlier_layout_still_loads():
    # Before the in-place step the wrappers also stored grad_dual (and Adam log_grad_scale):
    # such a state_dict loads, and the extra entries are not used.
    model = _model()
    X, y = _data()
    opt = steepest.optimizer("adam", model.parameters(), lr=1e-2)
    _train(model, opt, X, y, 3)
    buf = io.BytesIO()  # through bytes, as a checkpoint: load_state_dict of a live state_dict
    torch.save(opt.state_dict(), buf)  # shares its tensors, as with torch.optim.Adam
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    for entry in sd["state"].values():
        entry["grad_dual"] = torch.tensor(1.0, dtype=F64)
        entry["log_grad_scale"] = torch.tensor(0.0, dtype=F64)
    clone = copy.deepcopy(model)
    opt2 = steepest.optimizer("adam", clone.parameters(), lr=1e-2)
    opt2.load_state_dict(sd)
    _train(model, opt, X, y, 2)
    _train(clone, opt2, X, y, 2)
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cd_moves_one_coordinate_of_a_non_contiguous_parameter(dtype):
    # The in-place coordinate step indexes the tensor (no reshape copy that would drop the write).
    base = torch.zeros(5, 4, dtype=dtype)
    p = base.t()  # (4, 5), non-contiguous view
    assert not p.is_contiguous()
    g = torch.zeros_like(p)
    g[2, 3] = -2.0
    rule = algorithm("cd")
    rule.apply_([p], [g], {"step": torch.zeros((), dtype=F64)}, 0.5)
    assert float(p[2, 3]) == 0.5 and int((p != 0).sum()) == 1
    assert math.isclose(float(base[3, 2]), 0.5)


@pytest.mark.parametrize("name", ["gd", "sign", "cd", "lp", "signum", "adam", "momentum"])
def test_in_place_step_handles_empty_and_strided_parameters(name):
    # A parameter with no entries, a transposed one and a channels-last kernel: the list forms
    # must index by position, not by memory layout, and skip what holds nothing.
    rule = algorithm(name, **OPTIONS.get(name, {}))
    g = torch.Generator().manual_seed(5)
    base = [
        torch.randn(5, 4, generator=g, dtype=F64).t(),
        torch.zeros(0, 3, dtype=F64),
        torch.randn(2, 3, 4, 4, generator=g, dtype=F64).to(memory_format=torch.channels_last),
    ]
    pure_p, live_p = [p.clone() for p in base], [p.clone() for p in base]
    pure_s, live_s = rule.init(pure_p), rule.optimizer_state(rule.init(live_p))
    for _ in range(5):
        grads = [
            torch.randn(p.shape, generator=g, dtype=F64).to(memory_format=torch.channels_last)
            if p.dim() == 4
            else torch.randn(p.shape[::-1], generator=g, dtype=F64).t()
            for p in base
        ]
        pure_p, pure_s = rule.update(pure_p, grads, pure_s, 0.05)
        live_s = rule.apply_(live_p, grads, live_s, 0.05)
    for a, b in zip(pure_p, live_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_a_subclass_that_changes_the_direction_steps_by_its_own_update():
    # The in-place step re-spells SteepestDescentRule's arithmetic; a user's subclass that
    # replaces it must not be stepped by the inherited fast path.
    from steepest.algorithms import SteepestDescentRule

    class HalfSign(SteepestDescentRule):
        def step_direction(self, grads):
            u, dual = super().step_direction(grads)
            return [0.5 * x for x in u], dual

    rule = HalfSign("linf")
    assert not rule.in_place and algorithm("sign").in_place
    p = [torch.zeros(3, dtype=F64)]
    rule.apply_(p, [torch.tensor([1.0, -2.0, 0.0], dtype=F64)], rule.init(p), 1.0)
    assert torch.equal(p[0], torch.tensor([-0.5, 0.5, 0.0], dtype=F64))


def test_lr_schedulers_drive_the_optimizer():
    # Schedulers add keys such as initial_lr to the param groups (not the rule's options), and
    # OneCycleLR needs betas in the defaults: both work, and the schedule reaches the step.
    p = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = steepest.optimizer("sign", [p], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    for _ in range(3):
        p.grad = torch.ones(3, dtype=F64)
        opt.step()
        sched.step()
    assert torch.equal(p.detach(), torch.full((3,), -1.75, dtype=F64))  # 1 + 0.5 + 0.25
    adam = steepest.optimizer("adam", [p], lr=0.1)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)
    cycle = torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=0.1, total_steps=10)
    p.grad = torch.ones(3, dtype=F64)
    adam.step()
    cycle.step()
    assert adam.param_groups[0]["betas"][0] != 0.9  # OneCycle moved beta1; the rule followed
    assert adam.rule(adam.param_groups[0]).betas == tuple(adam.param_groups[0]["betas"])


def test_the_optimizer_classes_take_their_options_from_the_rules_factory():
    # One copy of each option's default: the factory's. The class shows it in its signature,
    # puts it in the param groups, and refuses an option the factory does not take.
    import inspect

    from steepest.adaptive import Adam, Muon

    sig = inspect.signature(Adam)
    assert sig.parameters["betas"].default == (0.9, 0.999) and sig.parameters["eps"].default == 1e-8
    assert inspect.signature(Muon).parameters["orthogonalize"].default == "svd"
    p = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    opt = Adam([p], lr=0.1, eps=0.0)
    assert isinstance(opt, torch.optim.Optimizer) and type(opt).__name__ == "Adam"
    assert opt.param_groups[0]["eps"] == 0.0 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="does not take 'beta'; valid options: betas"):
        Adam([p], lr=0.1, beta=0.9)


def test_optimizer_classes_take_positional_options_pickle_and_keep_plain_values(tmp_path):
    # Adam(params, lr, betas) as torch's Adam; one class per name (optimizer("adam") is an
    # adaptive.Adam); pickling keeps what is needed to step again; numpy and range options are
    # stored as plain values, so the state_dict loads with weights_only=True.
    import pickle

    import numpy as np

    from steepest.adaptive import Adam, MuonSignum

    p = torch.nn.Parameter(torch.zeros(2, 3, dtype=F64))
    opt = Adam([p], 1e-2, (0.8, np.float64(0.99)))
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    assert type(opt.param_groups[0]["betas"][1]) is float
    assert isinstance(steepest.optimizer("adam", [p]), Adam)
    with pytest.raises(TypeError, match="got option 'betas' twice"):
        Adam([p], 1e-2, (0.8, 0.9), betas=(0.5, 0.9))
    p.grad = torch.ones_like(p)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    q = clone.param_groups[0]["params"][0]
    q.grad = torch.ones_like(q)
    clone.step()  # the builder came along: the copy steps
    ms = MuonSignum([p], lr=0.1, muon_params=range(1))
    ms.step()
    path = tmp_path / "opt.pt"
    torch.save(ms.state_dict(), path)
    torch.load(path, weights_only=True)


def test_muon_steps_in_place_with_its_own_direction_and_loads_earlier_states():
    # Muon's rule replaces the direction, not the update: its in-place step runs, with the
    # polar factors, and keeps no grad_dual (a state saved before it was kept loads and steps).
    from steepest.adaptive import Muon

    rule = algorithm("muon")
    assert rule.in_place and "grad_dual" not in rule.optimizer_state(rule.init(_params()))
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=F64))
    p.grad = torch.randn(4, 3, dtype=F64)
    opt = Muon([p], lr=0.1)
    opt.step()
    sd = opt.state_dict()
    for entry in sd["state"].values():
        entry.pop("grad_dual", None)
    opt2 = Muon([p], lr=0.1)
    opt2.load_state_dict(sd)
    opt2.step()
