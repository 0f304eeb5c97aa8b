"""A user's own norm, optimizer and model go through the public registries and the engine,
without editing the package (issue 15, the registry part). The registering test runs in its
own process, as a user's session would, so that no other test sees its names."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from user_plugin import ScaledL2

import steepest
from steepest.algorithms import SteepestDescentRule


def test_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        steepest.register_algorithm("sign", lambda: SteepestDescentRule("linf"))
    with pytest.raises(ValueError, match="already registered"):
        steepest.register_norm("L2", ScaledL2)
    with pytest.raises(ValueError, match="already registered"):
        steepest.register_norm("l7", ScaledL2)  # the l<p> family is taken too
    with pytest.raises(ValueError, match="already registered"):
        steepest.register_model("mlp", torch.nn.Linear)
    with pytest.raises(TypeError, match="must be callable"):
        steepest.register_model("nothing-here", None)


def test_a_user_norm_satisfies_the_steepest_direction_identity():
    """⟨U(g), g⟩ = ‖g‖_* and ‖U(g)‖ = 1 for a norm that gives only value, dual and direction;
    the stacked forms come from the base class (vmap)."""
    N = ScaledL2()
    g = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    u, dual = N.direction_and_dual(g)
    torch.testing.assert_close(sum((a * b).sum() for a, b in zip(u, g, strict=True)), dual)
    torch.testing.assert_close(N(u), torch.tensor(1.0, dtype=torch.float64))
    gs = [torch.stack([x, 2 * x]) for x in g]
    torch.testing.assert_close(N.stacked_dual(gs), torch.stack([dual, 2 * dual]))


def test_a_user_model_and_optimizer_train_through_the_engine(tmp_path):
    """In a fresh process: register a norm, an optimizer steepest w.r.t. it and a model, and
    train a config that names them. The engine measures the model's degree (2), the run's own
    norm is the user's, and its margin is the ℓ2 margin over 2^L = 4 (rtol 1e-10: the same
    float64 numbers, divided)."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import user_plugin
        user_plugin.register()
        import steepest
        from steepest.store import RunStore
        cfg = {{
            "name": "user-objects",
            "data": {{"name": "digits", "classes": [0, 1], "n_train": 60, "n_test": 20}},
            "model": {{"name": "user-two-layer", "width": 8, "init_scale": 0.5}},
            "seeds": [0],
            "algorithms": [{{"algorithm": "user-scaled-gd", "schedule": "power", "lr": 0.1,
                             "a": 0.5}}],
            "stop": {{"steps": 60}},
        }}
        res = steepest.train(cfg, db={str(tmp_path / "runs.db")!r}, progress=False)
        assert res.statuses == ["completed"], res.statuses
        with RunStore({str(tmp_path / "runs.db")!r}, create=False) as store:
            info = store.get_run(res.run_ids[0]).info
            m = store.metrics(res.run_ids[0])
        assert info["own_norm"] == "user-scaled-l2" and info["degree"] == 2, info
        assert m["log_loss"][-1] < m["log_loss"][0]
        own, l2 = float(m["margin_own"][-1]), float(m["margin_l2"][-1])
        assert abs(own - l2 / 4) <= 1e-10 * abs(l2 / 4), (own, l2)
        print("ok", own)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


# ------------------------------------------------------------------ objects through train()


def _objects():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 6, generator=g, dtype=torch.float64)
    y = torch.where(X[:, 0] - 0.5 * X[:, 1] > 0, 1.0, -1.0)

    def net(seed, bias=False):
        gen = torch.Generator().manual_seed(seed)
        m = torch.nn.Sequential(
            torch.nn.Linear(6, 10, bias=bias), torch.nn.ReLU(), torch.nn.Linear(10, 1, bias=bias)
        ).double()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        return m

    return X, y, net


CFG = {
    "name": "objects",
    "seeds": [0, 1],
    "stop": {"steps": 300},
    "algorithms": [{"algorithm": "ngd", "schedule": "power", "lr": 1.0, "a": 0.5}],
}


def test_a_user_module_and_tensors_train_and_verify(tmp_path):
    """model= and data= go through the engine: the degree is measured (2), the seeds build
    different initializations, and the margins are those of the user's own module."""
    from steepest.store import RunStore
    from steepest.verify import verify_runs

    X, y, net = _objects()
    db = tmp_path / "runs.db"
    res = steepest.train(CFG, model=net, data=(X, y), db=db, progress=False)
    assert res.statuses == ["completed", "completed"]
    with RunStore(db, create=False) as store:
        rec = store.get_run(res.run_ids[0])
        m = store.metrics(res.run_ids[0])
        assert rec.info["degree"] == 2 and rec.config["model"]["name"] == "user"
        assert rec.info["dataset"]["source"] == "passed as objects"
        verdicts = verify_runs(store, res.run_ids, kkt=False)
    # The last logged margin is the user's module's: q_min/‖θ‖₂² at the final parameters.
    assert m["train_acc"][-1] == 1.0
    expected = float(m["q_min"][-1]) / float(m["norm_l2"][-1]) ** 2
    assert float(m["margin_l2"][-1]) == pytest.approx(expected, rel=1e-12)
    assert res.final[0]["margin_own"] != res.final[1]["margin_own"]  # two seeds, two inits
    checks = {c.check: c.verdict for c in verdicts.runs[0].checks}
    assert checks["preconditions"] == "pass" and checks["margin_monotone"] == "pass", checks


def test_an_inhomogeneous_module_is_refused_naming_the_module_or_trained_without_margins(tmp_path):
    from steepest.models import NotHomogeneousError
    from steepest.store import RunStore
    from steepest.verify import verify_runs

    X, y, net = _objects()
    refused = r"module '2' \(Linear\) has a bias.*allow_inhomogeneous"
    with pytest.raises(NotHomogeneousError, match=refused):
        steepest.train(CFG, model=lambda s: net(s, bias=True), data=(X, y), db=tmp_path / "a.db")
    db = tmp_path / "b.db"
    res = steepest.train(
        CFG,
        model=lambda s: net(s, bias=True),
        data=(X, y),
        db=db,
        progress=False,
        allow_inhomogeneous=True,
    )
    assert res.statuses == ["completed", "completed"]
    assert "margin_own" not in res.final[0] and res.final[0]["log_loss"] < 0
    with RunStore(db, create=False) as store:
        verdicts = verify_runs(store, res.run_ids, kkt=False)
    pre = verdicts.runs[0].get("preconditions")
    assert pre.verdict == "not applicable" and "has a bias" in pre.reason, pre
    assert all(c.verdict == "not applicable" for c in verdicts.runs[0].checks)


def test_objects_and_a_config_that_names_others_are_refused(tmp_path):
    from steepest.config import ConfigError

    X, y, net = _objects()
    with pytest.raises(ConfigError, match="model= was passed and the config names model 'mlp'"):
        steepest.train(
            {**CFG, "model": {"name": "mlp"}}, model=net, data=(X, y), db=tmp_path / "r.db"
        )
    with pytest.raises(ConfigError, match="data section can only name it; remove n_train"):
        steepest.train(
            {**CFG, "data": {"n_train": 10}}, model=net, data=(X, y), db=tmp_path / "r.db"
        )
    with pytest.raises(ValueError, match="the config's model is 'user': pass the model"):
        steepest.train({**CFG, "model": {"name": "user"}}, data=(X, y), db=tmp_path / "r.db")
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        steepest.train(CFG, model=lambda s: "net", data=(X, y), db=tmp_path / "r.db")
    assert not (tmp_path / "r.db").exists()  # nothing was written by a refused call


def test_a_registered_dataset_loads_by_name_and_refuses_what_its_loader_does_not_take():
    from steepest.data import load_dataset

    def loader(n_train=None, seed=0):
        X, y, _ = _objects()
        return X[: n_train or 60], y[: n_train or 60]

    name = "test-extending-toy"  # a name no other test uses: it stays registered in this process
    steepest.register_dataset(name, loader, replace=True)
    ds = load_dataset(name, n_train=20)
    assert ds.X_train.shape == (20, 6) and ds.num_classes == 2 and ds.X_test.shape == (0, 6)
    with pytest.raises(ValueError, match="does not take 'n_test'"):
        load_dataset(name, n_test=5)
    with pytest.raises(ValueError, match="already registered"):
        steepest.register_dataset(name, loader)
    with pytest.raises(ValueError, match="already registered"):
        steepest.register_dataset("mnist", loader)


def test_what_goes_wrong_with_objects_is_said_plainly(tmp_path):
    from steepest.config import ConfigError
    from steepest.data import as_dataset

    X, y, net = _objects()
    with pytest.raises(TypeError, match="takes a factory seed -> nn.Module"):
        steepest.train(CFG, model=net(0), data=(X, y), db=tmp_path / "r.db")
    with pytest.raises(ConfigError, match="model section can only name it; remove widths"):
        steepest.train(
            {**CFG, "model": {"widths": [8]}}, model=net, data=(X, y), db=tmp_path / "r.db"
        )
    # An image model on image data: the inputs arrive flat, and the error says so.
    images = (torch.randn(20, 1, 4, 4, dtype=torch.float64), y[:20])

    def conv(seed):
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 2, 3, bias=False),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 1, bias=False),
        ).double()

    with pytest.raises(ValueError, match=r"\(20, 16\).*x\.view\(-1, 1, 4, 4\)"):
        steepest.train(CFG, model=conv, data=images, db=tmp_path / "r.db")
    with pytest.raises(ValueError, match="every class present"):
        as_dataset((X, torch.ones(60, dtype=torch.int64) + (X[:, 0] > 0)))  # ids {1, 2}


def test_resume_refuses_other_data(tmp_path):
    """A batch trained on objects is interrupted (SIGINT, as Ctrl-C); resuming it with other
    tensors is refused, since the config alone cannot tell them apart (its data is "user")."""
    import os
    import signal
    import threading

    from steepest.engine import Interrupted

    X, y, net = _objects()
    db = tmp_path / "runs.db"
    cfg = {**CFG, "stop": {"steps": 10**6}}
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(Interrupted):
            steepest.train(cfg, model=net, data=(X, y), db=db, progress=False)
    finally:
        timer.cancel()
    with pytest.raises(ValueError, match="data passed now differ from the batch's"):
        steepest.train(cfg, model=net, data=(X + 1e-9, y), db=db, resume=True, progress=False)


def test_a_user_norm_gets_margins_and_verify_says_the_kkt_check_needs_a_program(tmp_path):
    """The norm is the one dispatch point: a norm with only value, dual and direction gets its
    margin, smoothed margin and alignment columns (named by ``Norm.column``), the trajectory
    checks, and a KKT check that says what it lacks instead of failing."""
    from steepest.store import RunStore
    from steepest.verify import verify_runs

    steepest.register_algorithm(
        "test-extending-scaled-gd", lambda: SteepestDescentRule(ScaledL2()), replace=True
    )
    X, y, net = _objects()
    cfg = {
        **CFG,
        "seeds": [0],
        "algorithms": [{**CFG["algorithms"][0], "algorithm": "test-extending-scaled-gd"}],
    }
    db = tmp_path / "runs.db"
    res = steepest.train(cfg, model=net, data=(X, y), db=db, progress=False)
    with RunStore(db, create=False) as store:
        info = store.get_run(res.run_ids[0]).info
        report = verify_runs(store, res.run_ids, kkt=True)
    assert info["own_norm"] == "user-scaled-l2" and info["own_norm_column"] == ScaledL2().column
    final = res.final[0]
    # ‖θ‖ = 2‖θ‖₂, so the own margin is the ℓ2 margin over 2^L = 4, and the alignment is ℓ2's.
    assert final["margin_own"] == pytest.approx(final["margin_l2"] / 4, rel=1e-10)
    assert final["beta_own"] == pytest.approx(final["beta_l2"], rel=1e-10)
    run = report.runs[0]
    assert run.get("margin_monotone").verdict == "pass"
    kkt = run.get("kkt")
    assert kkt.verdict == "not applicable" and "has no KKT program" in kkt.reason, kkt
