"""The engine: batched runs, late-phase numerics, rollback, flow time, resume after SIGKILL."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from steepest.config import load_config
from steepest.engine import Engine, train
from steepest.store import RunStore

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "classes": [0, 1], "n_train": 60, "n_test": 40},
    "model": {"name": "mlp", "widths": [8], "init_scale": 0.5},
    "seeds": [0, 1],
    "algorithms": [
        {"algorithm": "ngd", "schedule": "power", "lr": 0.1, "a": 0.5},
        {"algorithm": "sign", "schedule": "power", "lr": 0.01, "a": 0.5},
        {"algorithm": "gd", "schedule": "loss_based", "lr": 0.1},
    ],
    "stop": {"steps": 120},
}


def _cfg(**over):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for k, v in over.items():
        cfg[k] = v
    return cfg


def _finite_rows(store: RunStore, rid: int) -> dict[str, np.ndarray]:
    cols = store.metrics(rid)
    for name, col in cols.items():
        if name in ("flow_time", "lr"):
            continue  # exp of log values may legitimately overflow to inf (stored as inf)
        if name in ("log_flow_time", "log_lr"):
            assert col[0] == -math.inf  # τ = 0 and no step taken yet at step 0: log 0
            col = col[1:]
        present = col[~np.isnan(col)]
        assert np.isfinite(present).all(), f"run {rid}: {name} has non-finite values"
    return cols


def test_batched_runs_equal_runs_stepped_alone(tmp_path):
    """Stepping K runs together gives exactly the numbers of each run alone (same math)."""
    together = train(_cfg(), db=tmp_path / "a.db", progress=False)
    for i, spec in enumerate(load_config(_cfg()).run_specs()):
        if spec.seed != 1:
            continue
        entry = TINY["algorithms"][spec.entry]
        alone = train(
            _cfg(algorithms=[entry], seeds=[spec.seed]), db=tmp_path / f"b{i}.db", progress=False
        )
        a, b = together.final[i], alone.final[0]
        # A batched matmul may round differently from a single one (different kernel blocking),
        # so equality is up to float64 rounding amplified by the dynamics: ~1e-13 measured for
        # normalized steps; loss-based GD sits at the edge of stability, where 120 steps of
        # accept/reject amplify it to ~5e-9.
        rel = 1e-7 if spec.algorithm == "gd" else 1e-10
        for k in ("log_loss", "margin_own", "norm_l2", "q_min", "log_flow_time"):
            assert a[k] == pytest.approx(b[k], rel=rel, abs=1e-12), (spec.label, k)


def test_records_are_finite_and_logged_at_log_spaced_steps(tmp_path):
    res = train(_cfg(), db=tmp_path / "r.db", progress=False)
    with RunStore(tmp_path / "r.db") as store:
        for rid in res.run_ids:
            cols = _finite_rows(store, rid)
            steps = cols["step"]
            assert steps[0] == 0 and steps[-1] == 120
            assert len(steps) == len(set(steps.tolist()))
            # ~20 per decade: between 10 and 100 there are about 20 rows (+ separation row).
            assert 15 <= int(((steps >= 10) & (steps < 100)).sum()) <= 23
            rec = store.get_run(rid)
            assert rec.status == "completed"
            assert rec.info["own_norm"] in ("l2", "linf")


def test_config_errors_name_the_field():
    from steepest.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"algorithms\.0\.algorithm: unknown algorithm 'sgnd'; allowed: .*sign"
    ):
        load_config(_cfg(algorithms=[{"algorithm": "sgnd", "lr": 0.1}]))
    with pytest.raises(ConfigError, match=r"data\.name: unknown dataset 'mnst'; allowed: .*mnist"):
        load_config(_cfg(data={"name": "mnst"}))
    with pytest.raises(ConfigError, match=r"algorithms\.0\.schedule"):
        load_config(_cfg(algorithms=[{"algorithm": "ngd", "lr": 0.1, "schedule": "cosine"}]))
    with pytest.raises(ConfigError, match=r"norm 'l_banana'; valid names"):
        load_config(
            _cfg(algorithms=[{"algorithm": "steepest", "lr": 0.1, "options": {"norm": "l_banana"}}])
        )
    with pytest.raises(ConfigError, match=r"stop\.stepz: unknown field"):
        load_config(_cfg(stop={"stepz": 3}))
    with pytest.raises(ConfigError, match=r"loss_based.*normalized"):
        load_config(_cfg(algorithms=[{"algorithm": "sign", "lr": 0.1, "schedule": "loss_based"}]))
    with pytest.raises(ConfigError, match="needs the decay exponent"):
        load_config(_cfg(algorithms=[{"algorithm": "sign", "lr": 0.1, "schedule": "power"}]))
    with pytest.raises(
        ConfigError, match=r"algorithms\.0: .*up and down apply to schedule 'loss_based' only"
    ):
        load_config(
            _cfg(algorithms=[{"algorithm": "gd", "lr": 0.1, "schedule": "constant", "down": 2.0}])
        )
    with pytest.raises(ConfigError, match=r"algorithms\.0\.down"):
        load_config(
            _cfg(algorithms=[{"algorithm": "gd", "lr": 0.1, "schedule": "loss_based", "down": 1.0}])
        )


def test_late_phase_reaches_e_minus_10000_without_nan(tmp_path):
    """A linear model on separable data: normalized GD with constant steps drives log𝓛 far
    below float64's e^-745; every value stays finite and the ℓ2 margin keeps rising."""
    cfg = _cfg(
        data={
            "name": "gaussian_clusters",
            "n_train": 40,
            "n_test": 20,
            "options": {"d": 5, "margin": 0.2},
        },
        model={"name": "linear", "init_scale": 0.1},
        seeds=[0],
        algorithms=[{"algorithm": "ngd", "schedule": "constant", "lr": 20.0}],
        stop={"steps": 4000, "log_loss": -10000},
    )
    res = train(cfg, db=tmp_path / "r.db", progress=False)
    f = res.final[0]
    assert f["log_loss"] <= -10000
    with RunStore(tmp_path / "r.db") as store:
        cols = _finite_rows(store, res.run_ids[0])
    sep = cols["separated"] == 1
    m = cols["smoothed_own"]
    after = m[np.argmax(sep) :]
    assert after[-1] > after[0]
    # Deep in the late phase the smoothed margin is the normalized one to within log(n)/‖θ‖.
    assert f["smoothed_own"] == pytest.approx(f["margin_own"], rel=1e-3)


def test_constant_step_gd_is_faithful_and_stalls(tmp_path):
    """Unnormalized GD with a constant lr really takes η·∇𝓛 steps (lr is multiplied by 𝓛):
    its log-loss falls only logarithmically, unlike the loss-based schedule."""
    base = dict(seeds=[0], stop={"steps": 300})
    const = train(
        _cfg(algorithms=[{"algorithm": "gd", "schedule": "constant", "lr": 0.5}], **base),
        db=tmp_path / "c.db",
        progress=False,
    )
    lossb = train(
        _cfg(algorithms=[{"algorithm": "gd", "schedule": "loss_based", "lr": 0.1}], **base),
        db=tmp_path / "l.db",
        progress=False,
    )
    assert const.final[0]["log_loss"] > -15
    assert lossb.final[0]["log_loss"] < 10 * const.final[0]["log_loss"]
    # Flow time of unnormalized steps is Σ η: 300 steps of 0.5.
    assert const.final[0]["log_flow_time"] == pytest.approx(math.log(150.0), rel=1e-12)


def test_nonfinite_step_is_rolled_back_and_retried_smaller(tmp_path):
    """lr = 1e170 makes f overflow ((1e170)² > 1e308): each such step is rolled back and α
    halves until the step is finite; nothing non-finite is recorded."""
    cfg = _cfg(
        seeds=[0],
        algorithms=[{"algorithm": "ngd", "schedule": "constant", "lr": 1e170}],
        stop={"steps": 30},
    )
    res = train(cfg, db=tmp_path / "r.db", progress=False)
    f = res.final[0]
    assert f["rollbacks"] > 20
    with RunStore(tmp_path / "r.db") as store:
        _finite_rows(store, res.run_ids[0])
    assert res.statuses == ["completed"]
    assert f["step"] == 30


def test_hopeless_step_size_ends_as_diverged_not_nan(tmp_path):
    """Constant-step GD at lr 1e300 overflows the loss to e^1e60; no finite step exists from
    there, so α underflows its floor and the run is marked 'diverged' (never NaN)."""
    cfg = _cfg(
        seeds=[0],
        algorithms=[{"algorithm": "gd", "schedule": "constant", "lr": 1e300}],
        stop={"steps": 30},
    )
    res = train(cfg, db=tmp_path / "r.db", progress=False)
    assert res.statuses == ["diverged"]
    with RunStore(tmp_path / "r.db") as store:
        _finite_rows(store, res.run_ids[0])


def test_loss_based_schedule_never_accepts_a_loss_increase(tmp_path):
    res = train(
        _cfg(
            seeds=[0],
            algorithms=[{"algorithm": "gd", "schedule": "loss_based", "lr": 0.1}],
            stop={"steps": 200},
        ),
        db=tmp_path / "r.db",
        progress=False,
    )
    with RunStore(tmp_path / "r.db") as store:
        ll = store.metrics(res.run_ids[0])["log_loss"]
    assert (np.diff(ll) <= 0).all()
    assert res.final[0]["rollbacks"] > 0  # it did probe too-large steps and rolled them back


def test_loss_based_up_and_down_set_the_rollback_rate(tmp_path):
    """α ×up per accepted step and ÷down per rollback hover at the stability edge, so in
    equilibrium rollbacks/accepted ≈ log(up)/log(down): about 2 for Lyu & Li's 2^(1/5), 2^(1/10),
    about 0.3 for up = 2^(1/5), down = 2 (bounds leave room for the first steps, where α only grows)."""
    rates = {}
    for name, extra in (("lyu-li", {}), ("fast", {"up": 2**0.2, "down": 2.0})):
        algo = {"algorithm": "gd", "schedule": "loss_based", "lr": 0.1, **extra}
        res = train(
            _cfg(seeds=[0], algorithms=[algo], stop={"steps": 300}),
            db=tmp_path / f"{name}.db",
            progress=False,
        )
        with RunStore(tmp_path / f"{name}.db") as store:
            assert store.get_run(res.run_ids[0]).info["schedule"]["down"] == extra.get(
                "down", 2**0.1
            )
            ll = store.metrics(res.run_ids[0])["log_loss"]
        assert (np.diff(ll) <= 0).all()
        rates[name] = res.final[0]["rollbacks"] / 300
    assert 1.5 < rates["lyu-li"] < 2.5
    assert 0.1 < rates["fast"] < 0.5


def test_flow_time_makes_normalized_and_unnormalized_comparable(tmp_path):
    """Normalized and unnormalized GD trace the same curve (docs/theory.md §2.2): at equal flow time
    their ℓ2 margins agree far better than at equal step counts."""
    cfg = _cfg(
        seeds=[0],
        algorithms=[
            {"algorithm": "ngd", "schedule": "constant", "lr": 0.002},
            {"algorithm": "gd", "schedule": "constant", "lr": 0.05},
        ],
        stop={"steps": 600},
        warm_start={"algorithm": "ngd", "lr": 0.05, "until_log_loss": -1.0},
    )
    res = train(cfg, db=tmp_path / "r.db", progress=False)
    with RunStore(tmp_path / "r.db") as store:
        a, b = (store.metrics(r) for r in res.run_ids)
    lo = max(a["log_flow_time"][1], b["log_flow_time"][1])
    hi = min(a["log_flow_time"][-1], b["log_flow_time"][-1])
    grid = np.linspace(lo, hi, 20)
    ia = np.interp(grid, a["log_flow_time"][1:], a["margin_l2"][1:])
    ib = np.interp(grid, b["log_flow_time"][1:], b["margin_l2"][1:])
    assert np.max(np.abs(ia - ib)) < 0.05 * np.max(np.abs(ia))


def test_float32_and_minibatch_options(tmp_path):
    cfg = _cfg(
        dtype="float32",
        batch_size=16,
        seeds=[0],
        algorithms=[{"algorithm": "sign", "schedule": "power", "lr": 0.01, "a": 0.5}],
        stop={"steps": 50},
    )
    res = train(cfg, db=tmp_path / "r.db", progress=False)
    with RunStore(tmp_path / "r.db") as store:
        cols = _finite_rows(store, res.run_ids[0])
    assert cols["step"][-1] == 50
    assert res.final[0]["train_acc"] > 0.5


def test_warm_start_gives_every_run_the_same_separated_start(tmp_path):
    cfg = _cfg(
        seeds=[0],
        warm_start={"algorithm": "ngd", "lr": 0.05, "until_log_loss": -1.0},
        stop={"steps": 5},
    )
    res = train(cfg, db=tmp_path / "r.db", progress=False)
    with RunStore(tmp_path / "r.db") as store:
        first = [store.metrics(r) for r in res.run_ids]
        info = store.get_run(res.run_ids[0]).info
    starts = {round(c["log_loss"][0], 12) for c in first}
    assert len(starts) == 1 and next(iter(starts)) <= -1.0
    assert info["warm_start"]["algorithm"] == "ngd"


def test_engine_rejects_a_model_whose_degree_disagrees():
    cfg = load_config(_cfg(model={"name": "mlp", "widths": [8], "activation": "squared_relu"}))
    from steepest.engine import load_experiment_data

    eng = Engine(cfg, cfg.run_specs(), load_experiment_data(cfg))
    assert eng.L == 3  # squared ReLU, two weight layers: L = 2^2 - 1


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL test uses POSIX signals")
def test_sigkill_and_resume_gives_identical_results(tmp_path):
    cfg = _cfg(seeds=[0], stop={"steps": 600}, logging={"checkpoint_every": 50})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ref = train(cfg, db=tmp_path / "ref.db", progress=False)

    db = tmp_path / "kill.db"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steepest.cli",
            "train",
            str(path),
            "--db",
            str(db),
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a mid-run checkpoint exists
        time.sleep(0.2)
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as conn:
                    if (
                        conn.execute(
                            "SELECT COUNT(*) FROM checkpoints WHERE step >= 150"
                        ).fetchone()[0]
                        >= 3
                    ):
                        break
            except sqlite3.OperationalError:
                pass
        assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunStore(db) as store:
        assert {r.status for r in store.list_runs()} == {"running"}
    resumed = train(cfg, db=db, resume=True, progress=False)
    with RunStore(tmp_path / "ref.db") as a, RunStore(db) as b:
        for ra, rb in zip(ref.run_ids, resumed.run_ids, strict=True):
            ca, cb = a.metrics(ra), b.metrics(rb)
            assert ca["step"].tolist() == cb["step"].tolist()  # no lost, no duplicated rows
            for k in ca:
                if k == "wall_time":
                    continue
                np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)  # bit-for-bit
            assert b.get_run(rb).status == "completed"


def test_resume_without_anything_to_resume_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        train(_cfg(), db=tmp_path / "r.db", resume=True, progress=False)


def test_mnist_mlp_reaches_log_loss_minus_1000_with_finite_records(tmp_path):
    """Issue bar: a small bias-free MLP on two real MNIST digits reaches log𝓛 ≤ −1000, every
    recorded value is finite, and its own-norm margin is higher at the end than at separation."""
    cfg = {
        "name": "mnist-late",
        "data": {"name": "mnist", "classes": [2, 7], "n_train": 100, "n_test": 100},
        "model": {"name": "mlp", "widths": [16], "init_scale": 0.5},
        "seeds": [0],
        "algorithms": [{"algorithm": "sign", "schedule": "constant", "lr": 0.05}],
        "stop": {"steps": 3000, "log_loss": -1000},
    }
    res = train(cfg, db=tmp_path / "r.db", progress=False)
    assert res.final[0]["log_loss"] <= -1000
    with RunStore(tmp_path / "r.db") as store:
        cols = _finite_rows(store, res.run_ids[0])
        sep_step = store.get_run(res.run_ids[0]).info["separated_at"]
    at_sep = cols["margin_own"][cols["step"] == sep_step][0]
    assert cols["margin_own"][-1] > at_sep > 0
