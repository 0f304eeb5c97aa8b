"""The one batched step (steepest.step): purity, rollbacks, the schedule formula, the loop.

A linear model with the exponential loss is the objective (``LinearObjective``), so every
expected number is a closed form: q = Aθ, log 𝓛 = logsumexp(−q), ∇log𝓛 = −Aᵀ softmax(−q).
"""

from __future__ import annotations

import math

import pytest
import torch

from steepest.algorithms import algorithm
from steepest.reproduce.linear import LinearObjective, make_data
from steepest.schedules import BatchedSchedule, schedule
from steepest.stacked import tree_map
from steepest.step import RuleGroup, initial_state, run_steps, step


def _problem(K: int, algos: list[tuple[str, dict]], seed: int = 0):
    """K = len(algos) runs of a linear model on the sparse teacher, from a common θ₀ ≠ 0."""
    X, y = make_data(n=20, d=30, seed=seed)
    A = torch.as_tensor(y)[:, None] * torch.as_tensor(X)

    class Batched(LinearObjective):
        def evaluate(self, params, batch=None):
            q = params[0] @ self.A.T  # (K, n)
            ll = torch.logsumexp(-q, 1)
            p = torch.exp(-q - ll[:, None])
            return [-(p @ self.A)], ll, q

    obj = Batched(A)
    obj.K = K
    groups = [
        RuleGroup(algorithm(name, **opts), [i], K, algorithm(name, **opts).predicted_norm)
        for i, (name, opts) in enumerate(algos)
    ]
    gen = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(1, A.shape[1], generator=gen, dtype=torch.float64).repeat(K, 1)
    return obj, groups, theta0


def _clone(tree):
    return tree_map(lambda x: x.clone(), tree)


def _equal(a, b) -> bool:
    flat_a, flat_b = [], []
    tree_map(lambda x: flat_a.append(x), a)
    tree_map(lambda x: flat_b.append(x), b)
    return len(flat_a) == len(flat_b) and all(
        torch.equal(x, z) for x, z in zip(flat_a, flat_b, strict=True)
    )


def test_the_linear_objective_gradient_is_the_gradient_of_its_log_loss():
    """Oracle: autograd of logsumexp(−Aθ) in float64 (agreement to rounding, 1e-12)."""
    X, y = make_data(n=20, d=30)
    A = torch.as_tensor(y)[:, None] * torch.as_tensor(X)
    theta = torch.randn(1, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (g,), ll, q = LinearObjective(A).evaluate([theta])
    th = theta.clone().requires_grad_(True)
    ref = torch.logsumexp(-(A @ th[0]), 0)
    (ref_g,) = torch.autograd.grad(ref, th)
    torch.testing.assert_close(ll[0], ref.detach(), rtol=1e-13, atol=0)
    torch.testing.assert_close(g, ref_g, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(q[0], A @ theta[0], rtol=0, atol=0)


@pytest.mark.parametrize("sched", [{"name": "power", "lr": 0.1, "a": 0.5}, {"name": "flow"}])
def test_a_step_edits_none_of_its_inputs(sched):
    """step() is pure: the state it was given is bit for bit the same afterwards (the engine's
    snapshots and rollbacks rely on it)."""
    algos = [("ngd", {}), ("sign", {}), ("adam", {"eps": 0.0})]
    obj, groups, theta0 = _problem(3, algos)
    name = sched.pop("name")
    batched = BatchedSchedule.of([schedule(name, **sched)] * 3)
    state = initial_state(obj, groups, [theta0])
    for _ in range(3):  # past the first step: the flow's direction cache and Adam's moments
        state, _ = step(state, obj, groups, batched)
    before = _clone(
        [state.params, state.g, state.ll, state.algo_states, state.log_alpha, state.log_flow]
    )
    new, _ = step(state, obj, groups, batched)
    after = [state.params, state.g, state.ll, state.algo_states, state.log_alpha, state.log_flow]
    assert _equal(before, after)
    assert not torch.equal(new.params[0], state.params[0])  # and the step did move


def test_a_loss_increase_under_loss_based_is_rolled_back_and_alpha_falls():
    """Lyu & Li's rule: a step that raises log 𝓛 is undone (θ, g, t unchanged), α falls by
    ``down``, the rollback is counted; the next proposal is shorter."""
    obj, groups, theta0 = _problem(1, [("gd", {})])
    batched = BatchedSchedule.of([schedule("loss_based", lr=1e6)])  # far past stability
    state = initial_state(obj, groups, [theta0])
    new, what = step(state, obj, groups, batched)
    assert not bool(what.accepted[0]) and bool(what.rolled_back[0])
    assert torch.equal(new.params[0], state.params[0]) and torch.equal(new.ll, state.ll)
    assert int(new.t[0]) == 0 and int(new.rollbacks[0]) == 1 and new.iteration == 1
    down = 2.0 ** (1 / 10)
    torch.testing.assert_close(new.log_alpha[0], torch.tensor(-math.log(down), dtype=torch.float64))
    assert float(new.last_log_lr[0]) == -math.inf  # no accepted step yet: no lr recorded


def test_a_run_that_is_done_takes_no_step():
    obj, _, theta0 = _problem(2, [("ngd", {}), ("ngd", {})])
    batched = BatchedSchedule.of([schedule("power", lr=0.1, a=0.5)] * 2)
    groups = [RuleGroup(algorithm("ngd"), [0, 1], 2, algorithm("ngd").predicted_norm)]  # one group
    state = initial_state(obj, groups, [theta0]).replace(done=torch.tensor([False, True]))
    new, what = step(state, obj, groups, batched)
    assert what.accepted.tolist() == [True, False] and what.rolled_back.tolist() == [False, False]
    assert torch.equal(new.params[0][1], theta0[1]) and not torch.equal(new.params[0][0], theta0[0])
    assert new.t.tolist() == [1, 0]


def test_the_batched_schedule_is_the_schedule_formula_run_by_run():
    """One formula: BatchedSchedule.log_eta equals Schedule.log_lr for every run of a mixed
    batch (power, loss-based, norm-scaled, constant), to rounding."""
    scheds = [
        schedule("power", lr=0.3, a=0.8),
        schedule("loss_based", lr=0.1),
        schedule("norm_scaled", lr=0.5, a=0.9),
        schedule("constant", lr=2.0),
    ]
    batched = BatchedSchedule.of(scheds)
    t = torch.tensor([7, 3, 11, 5])
    log_loss = torch.tensor([-3.0, -1234.5, -20.0, -0.5], dtype=torch.float64)
    log_alpha = torch.tensor([0.0, -0.7, 0.2, 0.0], dtype=torch.float64)
    norm = torch.tensor([2.0, 5.0, 40.0, 1.5], dtype=torch.float64)
    got = batched.log_eta(t, log_loss, log_alpha, norm)
    for i, s in enumerate(scheds):
        want = s.log_lr(float(t[i]), log_loss[i], math.log(norm[i]), log_alpha[i])
        torch.testing.assert_close(got[i], want, rtol=1e-15, atol=1e-15)
    # a loss-based η ∝ 1/𝓛 stays finite where 𝓛 = e^-1234.5 underflows
    assert math.isfinite(float(got[1])) and float(got[1]) > 1000


def test_run_steps_ends_each_run_at_its_step_count_or_when_the_hook_says():
    obj, groups, theta0 = _problem(2, [("ngd", {}), ("cd", {})])
    batched = BatchedSchedule.of([schedule("power", lr=0.1, a=0.5)] * 2)
    state = initial_state(obj, groups, [theta0])
    end = run_steps(state, obj, groups, batched, 40)
    assert end.t.tolist() == [40, 40] and bool(end.done.all())
    assert float(end.ll.max()) < float(state.ll.min())  # both runs lowered the loss
    seen = []

    def stop_after_ten(st, what):
        seen.append(int(st.iteration))
        return st.iteration >= 10

    end = run_steps(state, obj, groups, batched, 40, on_step=stop_after_ten)
    assert seen == list(range(1, 11)) and end.t.tolist() == [10, 10]


def test_a_transform_moves_the_proposal_before_it_is_evaluated():
    """The hook (PRGD's rescaling in the linear reproduction): the state's θ, log 𝓛 and
    gradient are those of the moved point."""
    obj, groups, theta0 = _problem(1, [("ngd", {})])
    batched = BatchedSchedule.of([schedule("constant", lr=0.1)])
    state = initial_state(obj, groups, [theta0])
    new, what = step(state, obj, groups, batched, transform=lambda p, st: [2.0 * p[0]])
    plain, _ = step(state, obj, groups, batched)
    assert bool(what.accepted[0])
    torch.testing.assert_close(new.params[0], 2.0 * plain.params[0], rtol=1e-15, atol=0)
    (g,), ll, _ = obj.evaluate(new.params)
    assert torch.equal(new.ll, ll) and torch.equal(new.g[0], g)


def test_a_flow_run_can_start_at_the_origin():
    """The linear reproduction starts at θ = 0, where a step's error relative to ‖θ‖₂ = 0 was
    infinite and every step was rejected until α ran out. Relative to max(‖θ‖₂, ‖Δ‖₂) the run
    takes all its steps; GD's flow then nears the exact ℓ2 max margin (0.993 of γ* measured
    after 300 steps; asserted ≥ 0.98)."""
    from steepest.reproduce.linear import oracles, train_linear

    X, y = make_data(n=20, d=30)
    orc = oracles(X, y, ["l2"])
    gam = {"l2": orc["l2"]["gamma"] if isinstance(orc["l2"], dict) else orc["l2"].gamma}
    tr = train_linear(X, y, "ngd", schedule("flow"), 300, gammas=gam)
    assert int(tr.steps[-1]) == 300
    assert tr.final["l2"] >= 0.98 and tr.log_loss[-1] < -50


class _Crease:
    """log 𝓛(θ) = 3|θ₁ − θ₂| − θ₁ − 0.9θ₂ on θ ∈ R² (K runs): a kink along the diagonal, across
    which greedy coordinate descent's coordinate is uphill. Its ℓ1 steepest flow slides along
    the diagonal (Filippov), lowering log 𝓛 by 0.95 per unit of ℓ1 length."""

    K = 1
    device = torch.device("cpu")
    dtype = torch.float64

    def evaluate(self, params, batch=None):
        th = params[0]
        diff = th[:, 0] - th[:, 1]
        ll = 3 * diff.abs() - th[:, 0] - 0.9 * th[:, 1]
        s = torch.sign(diff)
        g = torch.stack([3 * s - 1, -3 * s - 0.9], 1)
        return [g], ll, th.sum(1, keepdim=True)

    def batch_q_min(self, out, batch=None):
        return out.min(dim=1).values


def _crease_run(steps: int, bundle: bool = True):
    obj = _Crease()
    cd = algorithm("cd")
    groups = [RuleGroup(cd, [0], 1, cd.predicted_norm)]  # plain: the rule's own norm object
    state = initial_state(obj, groups, [torch.tensor([[1.0, 1.001]], dtype=torch.float64)])
    sched = BatchedSchedule.of([schedule("flow", bundle=bundle)])
    return state, run_steps(state, obj, groups, sched, steps, max_iterations=4 * steps)


def test_coordinate_descent_slides_along_a_kink_on_the_flow():
    """Retried along the bundle direction of the gradients on both sides, CD follows the
    sliding flow: θ stays at the crease and log 𝓛 falls by 0.95 per unit of ℓ1 path, as the
    Filippov solution does (rtol 1e-6: the path is straight, the model exact). Without the
    bundle retry (``flow``'s default) the same budget ends in a stall."""
    start, end = _crease_run(300)
    th = end.params[0][0]
    assert int(end.t[0]) == 300
    # It started 1e-3 off the crease; it stays that close while ‖θ‖₁ grows a thousandfold.
    assert abs(float(th[0] - th[1])) <= 2e-3 and float(th.abs().sum()) > 1000
    path = float((th - start.params[0][0]).abs().sum())
    drop = float(start.ll[0] - end.ll[0])
    assert drop == pytest.approx(0.95 * path, rel=1e-6)

    _, stalled = _crease_run(300, bundle=False)
    assert float(start.ll[0] - stalled.ll[0]) < 0.01 * drop
