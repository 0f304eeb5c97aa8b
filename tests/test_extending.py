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
    code = textwrap.dedent(f'''
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
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
