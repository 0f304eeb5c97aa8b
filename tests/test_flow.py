"""The ``flow`` schedule: error-controlled steps that follow the steepest flow.

Where the flow is an ODE with a smooth right-hand side (ℓ2, and ℓp with 1 < p < 2, whose
direction sign(g)|g|^{q−1} has q − 1 > 1), the engine's trajectory is compared with
``scipy.integrate.solve_ivp`` (DOP853, rtol 1e-10) at matched log-loss: in direction, and in
flow time. For ℓp with p > 2 the direction field |g|^{q−1}, q − 1 < 1, is not Lipschitz where a
gradient coordinate crosses 0, and for sign and coordinate descent the flow is a differential
inclusion; for those the tests check what the inclusion guarantees instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from steepest.config import ConfigError, load_config
from steepest.engine import BatchRunner, Engine, load_experiment_data, train
from steepest.schedules import FLOW_TOL, schedule
from steepest.store import RunStore

# 20 separable points in 5 dimensions: small enough for solve_ivp at rtol 1e-10
SMALL_CLUSTERS = {
    "name": "gaussian_clusters",
    "n_train": 20,
    "n_test": 4,
    "seed": 0,
    "options": {"d": 5},
}
LINEAR = {
    "name": "flow-linear",
    "data": SMALL_CLUSTERS,
    "model": {"name": "linear"},
    "loss": "exponential",
    "seeds": [0],
    "stop": {"steps": 300},
}
SMALL_MLP = {
    "name": "flow-mlp",
    "data": SMALL_CLUSTERS,
    "model": {"name": "mlp", "widths": [6], "init_scale": 1.0, "activation": "squared_relu"},
    "loss": "exponential",
    "seeds": [0],
    "stop": {"steps": 300, "log_loss": -100.0},
}
DIGITS = {
    "name": "flow-digits",
    "data": {"name": "digits", "classes": [0, 1], "n_train": 60, "n_test": 40},
    "model": {"name": "mlp", "widths": [8], "init_scale": 0.5},
    "seeds": [0],
    "warm_start": {"algorithm": "ngd", "lr": 0.05, "until_log_loss": -2.0, "max_steps": 3000},
    "stop": {"steps": 150},
}


def _runner(cfg_dict: dict) -> BatchRunner:
    """A runner on an in-memory store whose logging and checkpoints do nothing."""
    cfg = load_config(cfg_dict)
    specs = cfg.run_specs()
    e = Engine(cfg, specs, load_experiment_data(cfg), "cpu")
    store = RunStore(":memory:")
    ids = [
        store.create_run(name="t", algorithm=sp.algorithm, seed=sp.seed, config={}) for sp in specs
    ]
    r = BatchRunner(e, store, ids, None, progress=False)
    r.fresh_state(e.init_params())
    r.log = lambda *a, **k: None  # type: ignore[method-assign]
    r.checkpoint = lambda *a, **k: None  # type: ignore[method-assign]
    r.start(resumed=False)  # the first evaluation (log and checkpoint do nothing)
    return r


def _flat(params: list[torch.Tensor], k: int = 0) -> np.ndarray:
    return torch.cat([p[k].reshape(-1) for p in params]).numpy().copy()


def _engine_flow(cfg: dict, p: float, tol: float, steps: int):
    """Step a flow run from its first state with log-loss ≤ −2 (separated data): every
    accepted step's (θ, log τ, log 𝓛), with τ counted from that state."""
    r = _runner(
        {
            **cfg,
            "algorithms": [
                {"algorithm": "lp", "options": {"p": p}, "schedule": "flow", "tol": tol}
            ],
        }
    )
    while r.ll[0].item() > -2:
        r.step()
    start = _flat(r.params)
    r.log_flow = torch.full_like(r.log_flow, -math.inf)
    t0, traj = r.t[0].item(), []
    for _ in range(steps):
        if r.done_host[0]:
            break
        r.step()
        if r.t[0].item() > t0:
            t0 = r.t[0].item()
            traj.append((_flat(r.params), r.log_flow[0].item(), r.ll[0].item()))
    return r, start, traj


def _reference(r: BatchRunner, p: float, start: np.ndarray, ll_end: float, grid: int = 3000):
    """solve_ivp of dθ/ds = −U(∇log𝓛(θ)) (unit speed in ℓp) and dτ/ds = 1/‖∇𝓛‖_*, from
    ``start`` until log 𝓛 ≤ ll_end; returns (θ, log τ, log 𝓛) on a fine grid in s."""
    e = r.e
    N = e.own_norms[0]
    shapes = [x.shape[1:] for x in r.params]
    sizes = [int(np.prod(s)) for s in shapes]

    def unflat(v: np.ndarray, k: int) -> list[torch.Tensor]:
        out, i = [], 0
        for s, n in zip(shapes, sizes, strict=True):
            out.append(torch.as_tensor(v[:, i : i + n]).reshape(k, *s))
            i += n
        return out

    scale = -ll_end  # τ·e^{−scale} stays O(1) at the end of the interval

    def rhs(_s: float, y: np.ndarray) -> np.ndarray:
        g, ll, _ = e.evaluate(unflat(y[None, :-1], 1))
        u, dual = N.stacked_direction_and_dual(g)
        du = torch.cat([x.reshape(-1) for x in u]).numpy()
        return np.concatenate([-du, [math.exp(-ll.item() - scale) / dual.item()]])

    def below(_s: float, y: np.ndarray) -> float:
        return e.evaluate(unflat(y[None, :-1], 1))[1].item() - (ll_end - 1.0)

    below.terminal = True  # type: ignore[attr-defined]
    sol = solve_ivp(
        rhs,
        (0.0, 1e6),
        np.concatenate([start, [0.0]]),
        method="DOP853",
        rtol=1e-10,
        atol=1e-12,
        dense_output=True,
        events=below,
    )
    assert sol.status == 1, sol.message  # stopped by the loss level, not by the interval's end
    s = np.linspace(0.0, sol.t[-1], grid)
    Y = sol.sol(s).T
    _, ll, _ = e.evaluate(unflat(Y[:, :-1], grid))
    with np.errstate(divide="ignore"):
        log_tau = np.log(Y[:, -1]) + scale
    return Y[:, :-1], log_tau, ll.numpy()


def _matched_loss_errors(traj, ref) -> tuple[float, float]:
    """Largest direction error ‖θ/‖θ‖ − θ*/‖θ*‖‖₂ and largest relative log-flow-time error
    |log τ − log τ*| / max(1, |log τ*|), the reference interpolated to each engine log-loss."""
    theta, log_tau, ll = ref
    dir_err, time_err = 0.0, 0.0
    for th, lt, l in traj:
        i = int(np.searchsorted(-ll, -l))  # ll decreases along the flow
        i = min(max(i, 1), len(ll) - 1)
        f = (ll[i - 1] - l) / (ll[i - 1] - ll[i])
        th_ref = (1 - f) * theta[i - 1] + f * theta[i]
        lt_ref = (1 - f) * log_tau[i - 1] + f * log_tau[i]
        dir_err = max(
            dir_err,
            float(np.linalg.norm(th / np.linalg.norm(th) - th_ref / np.linalg.norm(th_ref))),
        )
        if np.isfinite(lt_ref):
            time_err = max(time_err, abs(lt - lt_ref) / max(1.0, abs(lt_ref)))
    return dir_err, time_err


# ---------------------------------------------------------------- the smooth flows: an oracle
@pytest.mark.parametrize(
    "cfg,p,tol",
    [
        (LINEAR, 2.0, FLOW_TOL),
        (LINEAR, 2.0, 0.01),
        (LINEAR, 1.5, FLOW_TOL),
        (SMALL_MLP, 2.0, FLOW_TOL),
    ],
    ids=["linear-l2", "linear-l2-tol0.01", "linear-l1.5", "squared-relu-mlp-l2"],
)
def test_flow_stays_within_tol_of_solve_ivp(cfg, p, tol):
    r, start, traj = _engine_flow(cfg, p, tol, 300)
    assert len(traj) > 15 and traj[-1][2] < -40, "the run must get well into the late phase"
    ref = _reference(r, p, start, traj[-1][2])
    dir_err, time_err = _matched_loss_errors(traj, ref)
    assert dir_err <= tol, f"direction off the flow by {dir_err:.3g} > tol {tol}"
    assert time_err <= tol, f"log flow time off by {time_err:.3g} (relative) > tol {tol}"


def test_a_tighter_tol_follows_the_flow_more_closely():
    loose = _matched_loss_errors(
        *(lambda r, s, t: (t, _reference(r, 2.0, s, t[-1][2])))(
            *_engine_flow(LINEAR, 2.0, 0.05, 300)
        )
    )
    tight = _matched_loss_errors(
        *(lambda r, s, t: (t, _reference(r, 2.0, s, t[-1][2])))(
            *_engine_flow(LINEAR, 2.0, 0.005, 300)
        )
    )
    assert tight[0] < loose[0] / 2


# ---------------------------------------------------------------- differential inclusions
@pytest.mark.parametrize("algo,options", [("sign", {}), ("cd", {}), ("cd", {"normalized": False})])
def test_inclusion_flows_keep_what_the_inclusion_guarantees(tmp_path, algo, options):
    """Along any solution of the inclusion dθ/ds ∈ −∂‖·‖_*(∇log𝓛): log 𝓛 never rises, and after
    separation ‖θ‖ grows and the own-norm smoothed margin is non-decreasing (Tsilivis et al.,
    Theorem A). The acceptance test uses only the first."""
    db = tmp_path / "r.db"
    cfg = {
        **DIGITS,
        "algorithms": [{"algorithm": algo, "options": options, "schedule": "flow"}],
        "logging": {"per_decade": 40},
    }
    train(cfg, db=db, progress=False)
    with RunStore(db) as st:
        (run,) = st.list_runs()
        assert run.status == "completed"
        m = st.metrics(run.id)
    ll, rho = m["log_loss"], m["norm_own"]
    assert np.all(np.diff(ll) <= 1e-12 * np.abs(ll[1:])), "log-loss rose between logged rows"
    assert ll[-1] < ll[0] - 5, "the run went nowhere"
    sep = m["q_min"] > 0
    assert np.all(np.diff(rho[sep]) >= 0), "‖θ‖ fell after separation"
    # The smoothed margin, with the O(step) allowance of verify (unchanged): the discrete steps
    # of an inclusion chatter by one step length around its solution.
    from steepest.verify import verify_runs

    with RunStore(db) as st:
        verdict = verify_runs(st, [run.id], kkt=False).runs[0]
    for check in ("margin_monotone", "loss_falls", "norm_grows"):
        assert verdict.get(check).verdict == "pass", (check, verdict.get(check).reason)


# ---------------------------------------------------------------- every rule, and the engine
FLOW_RULES = [
    ("gd", {}),
    ("ngd", {}),
    ("sign", {}),
    ("cd", {}),
    ("cd", {"normalized": False}),
    ("lp", {"p": 3}),
    ("spectral", {}),
    ("adam", {}),
    ("signum", {}),
    ("muon", {}),
    ("muon-adam", {}),
    ("shampoo", {}),
    ("momentum", {}),
]


def test_inclusion_flows_reach_the_exact_max_margin_of_a_linear_model(tmp_path):
    """On a linear model the flows of sign and coordinate descent converge in direction to the
    ℓ∞ and ℓ1 max-margin separators (Gunasekar et al. 2018), whose margins the convex oracles
    give exactly. A step taken past the loss's stability edge keeps θ close in relative
    direction but not on the flow: with the direction error alone, sign descent ended at 0.50
    of γ*_∞ and coordinate descent at 0.82 of γ*_1 on this problem (measured 2026-12-04, 10,000
    steps). With the loss error both pass 0.99 within 3,000 steps (0.9955 and 0.9932 measured);
    0.99 leaves room for the last digits of the controller's path."""
    from steepest.reproduce.linear import make_data, oracles

    X, y = make_data(n=40, d=60, k=3, seed=0, margin=0.1)
    gamma = {n: orc.gamma for n, orc in oracles(X, y, ["l1", "linf"]).items()}
    cfg = {
        "name": "flow-linear-oracle",
        "data": {
            "name": "sparse_teacher",
            "n_train": 40,
            "n_test": 40,
            "seed": 0,
            "options": {"d": 60, "k": 3, "margin": 0.1},
        },
        "model": {"name": "linear", "init_scale": 0.01},
        "loss": "exponential",
        "seeds": [0],
        "algorithms": [
            {"algorithm": "sign", "schedule": "flow"},
            {"algorithm": "cd", "schedule": "flow"},
        ],
        "stop": {"steps": 3000},
    }
    db = tmp_path / "r.db"
    train(cfg, db=db, progress=False)
    with RunStore(db) as st:
        runs = st.list_runs()
        own = {"sign": "linf", "cd": "l1"}
        ratio = {
            own[r.algorithm]: st.final_metrics(r.id)[f"margin_{own[r.algorithm]}"]
            / gamma[own[r.algorithm]]
            for r in runs
        }
    assert ratio["linf"] >= 0.99, f"sign descent's flow ended at {ratio['linf']:.4f} γ*_∞"
    assert ratio["l1"] >= 0.99, f"coordinate descent's flow ended at {ratio['l1']:.4f} γ*_1"


def test_every_rule_runs_under_flow_without_tuning(tmp_path):
    db = tmp_path / "r.db"
    algos = [
        {"algorithm": a, "options": o, "schedule": "flow", "label": f"{a}{o}"}
        for a, o in FLOW_RULES
    ]
    res = train({**DIGITS, "algorithms": algos, "stop": {"steps": 80}}, db=db, progress=False)
    with RunStore(db) as st:
        for rid in res.run_ids:
            run = st.get_run(rid)
            m = st.metrics(rid)
            assert run.status == "completed", (run.algorithm, run.status)
            assert np.isfinite(m["log_loss"]).all()
            assert m["log_loss"][-1] < m["log_loss"][0], run.algorithm
            assert np.all(np.diff(m["log_loss"]) <= 1e-12 * np.abs(m["log_loss"][1:])), (
                run.algorithm
            )


def test_gd_and_ngd_take_the_same_steps_under_flow():
    """Under flow the step's length is set in the norm, so the unnormalized rule (lr η/‖∇𝓛‖_* on
    ∇𝓛) and the normalized one trace the same points, to rounding (Dion-style float64 check:
    rtol 1e-9 allows ~1e3 ulp of drift over 60 steps of products and logs)."""
    r = _runner(
        {
            **LINEAR,
            "algorithms": [
                {"algorithm": "gd", "schedule": "flow"},
                {"algorithm": "ngd", "schedule": "flow"},
            ],
        }
    )
    for _ in range(60):
        r.step()
    np.testing.assert_allclose(_flat(r.params, 0), _flat(r.params, 1), rtol=1e-9)
    np.testing.assert_allclose(r.log_flow[0].item(), r.log_flow[1].item(), rtol=1e-9)


def test_flow_runs_leave_other_runs_of_the_batch_unchanged():
    mixed = _runner(
        {
            **LINEAR,
            "algorithms": [
                {"algorithm": "ngd", "schedule": "power", "lr": 0.3, "a": 0.5},
                {"algorithm": "sign", "schedule": "flow"},
            ],
        }
    )
    alone = _runner(
        {**LINEAR, "algorithms": [{"algorithm": "ngd", "schedule": "power", "lr": 0.3, "a": 0.5}]}
    )
    for _ in range(40):
        mixed.step()
        alone.step()
    np.testing.assert_array_equal(_flat(mixed.params, 0), _flat(alone.params, 0))


def test_flow_rolls_back_steps_whose_error_is_beyond_tol():
    """A rejected step leaves the run where it was; the accepted ones all met the test."""
    r = _runner(
        {**SMALL_MLP, "algorithms": [{"algorithm": "ngd", "schedule": "flow", "tol": 1e-3}]}
    )
    for _ in range(100):
        before = _flat(r.params)
        t = r.t[0].item()
        r.step()
        if r.t[0].item() == t:
            np.testing.assert_array_equal(_flat(r.params), before)
    assert r.rollbacks[0].item() > 0
    assert r.t[0].item() > 50


def _resumed(cfg: dict, saved: dict) -> BatchRunner:
    """A fresh runner of ``cfg`` continued from the checkpoint state ``saved`` (full batch:
    the gradient is recomputed, as ``train(resume=True)`` does)."""
    b = _runner(cfg)
    b.load_state_dict(saved)
    b.g, b.ll, b.out = b.e.evaluate(b.params)
    b.qmin = b.e.q_min(b.out, b.e.y)
    return b


def test_flow_state_round_trips_through_a_checkpoint():
    """The step-size controller's state (α) is in the checkpoint: stepping on from a saved
    state equals stepping on without the save, bit for bit."""
    cfg = {
        **LINEAR,
        "algorithms": [
            {"algorithm": "sign", "schedule": "flow"},
            {"algorithm": "ngd", "schedule": "flow"},
        ],
    }
    a = _runner(cfg)
    for _ in range(30):
        a.step()
    b = _resumed(cfg, a.state_dict())
    for _ in range(30):
        a.step()
        b.step()
    for k in range(2):
        np.testing.assert_array_equal(_flat(a.params, k), _flat(b.params, k))
    assert torch.equal(a.log_alpha, b.log_alpha) and torch.equal(a.log_flow, b.log_flow)
    assert torch.equal(a.log_floor, b.log_floor) and torch.equal(a.rej_log_alpha, b.rej_log_alpha)


def test_a_bundle_retry_in_progress_round_trips_through_a_checkpoint():
    """With ``bundle: true`` the direction of the next step can be a bundle direction, which
    is no function of θ: the checkpoint keeps it. Saved while coordinate descent slides along
    a ReLU kink (digits 0 vs 1), stepping on equals stepping on without the save."""
    cfg = {
        **DIGITS,
        "model": {"name": "mlp", "widths": [16], "init_scale": 0.5},
        "algorithms": [{"algorithm": "cd", "schedule": "flow", "bundle": True}],
    }
    a = _runner(cfg)
    for _ in range(600):
        a.step()
        if a.sliding is not None and bool(a.sliding.any()):
            break
    assert a.sliding is not None and bool(a.sliding.any()), "no kink met: the test needs one"
    b = _resumed(cfg, a.state_dict())
    for _ in range(40):
        a.step()
        b.step()
    np.testing.assert_array_equal(_flat(a.params), _flat(b.params))
    assert torch.equal(a.log_alpha, b.log_alpha) and torch.equal(a.sliding, b.sliding)


def test_a_checkpoint_from_before_the_loss_error_resumes_with_no_floor():
    """Checkpoints written before the loss error have no floor state: they load with none
    (no floor, no pending rollback) and step on to the same kind of state."""
    cfg = {**LINEAR, "algorithms": [{"algorithm": "sign", "schedule": "flow"}]}
    a = _runner(cfg)
    for _ in range(20):
        a.step()
    old = {k: v for k, v in a.state_dict().items() if k not in ("rej_log_alpha", "log_floor")}
    b = _runner(cfg)
    b.log_floor = torch.zeros(1, dtype=torch.float64)  # must be replaced, not kept
    b.load_state_dict(old)
    assert torch.equal(b.log_floor, torch.full((1,), -math.inf, dtype=torch.float64))
    assert torch.equal(b.rej_log_alpha, torch.full((1,), math.inf, dtype=torch.float64))
    b.g, b.ll, b.out = b.e.evaluate(b.params)
    b.qmin = b.e.q_min(b.out, b.e.y)
    ll0 = float(b.ll[0])
    for _ in range(20):
        b.step()
    assert int(b.t[0]) > 20 and float(b.ll[0]) < ll0


# ---------------------------------------------------------------- config
def test_flow_config_needs_no_lr_and_names_bad_options():
    cfg = load_config({**DIGITS, "algorithms": [{"algorithm": "sign", "schedule": "flow"}]})
    (sp,) = cfg.run_specs()
    assert sp.schedule["flow"] and sp.schedule["tol"] == FLOW_TOL
    cfg = load_config(
        {**DIGITS, "algorithms": [{"algorithm": "sign", "schedule": "flow", "tol": 0.01}]}
    )
    assert cfg.run_specs()[0].schedule["tol"] == 0.01
    bad = [
        ({"algorithm": "sign", "schedule": "flow", "lr": 0.1}, "drop lr"),
        ({"algorithm": "sign", "schedule": "flow", "tol": 2}, "tol"),
        (
            {"algorithm": "sign", "schedule": "power", "lr": 0.1, "a": 0.5, "tol": 0.1},
            "tol applies to schedule 'flow' only",
        ),
        ({"algorithm": "sign", "schedule": "power", "a": 0.5}, "needs lr"),
    ]
    for entry, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            load_config({**DIGITS, "algorithms": [entry]})
    with pytest.raises(ConfigError, match="full-batch"):
        load_config(
            {**DIGITS, "batch_size": 10, "algorithms": [{"algorithm": "sign", "schedule": "flow"}]}
        )
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        schedule("flow", tol=0.0)
    with pytest.raises(ValueError, match="error control"):
        schedule("flow")(t=3)


def test_configs_without_flow_keep_their_hash():
    """``tol`` (None unless a flow entry sets it) is left out of the hash: the hash below was
    computed by the code before the field existed (commit b855362), so batches started then
    still resume. If flavors-f2.yaml itself changes, recompute it from that commit (last done
    on 2026-12-05, when f2 gained its short-memory Adam run: b855362's load_config gives
    a7fe718f0164d68a for the new batch config too)."""
    from steepest.reproduce.common import batch_configs, load_spec

    cfg = load_config(batch_configs(load_spec("flavors-f2"), "quick")["one-hidden-layer"])
    assert cfg.config_hash() == "a7fe718f0164d68a"
    flow = load_config(
        {**DIGITS, "algorithms": [{"algorithm": "sign", "schedule": "flow", "tol": 0.01}]}
    )
    default = load_config({**DIGITS, "algorithms": [{"algorithm": "sign", "schedule": "flow"}]})
    assert flow.config_hash() != default.config_hash()
