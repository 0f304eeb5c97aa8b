"""Smoke test of `steepest reproduce linear` and checks of its helpers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from steepest.config import load_config
from steepest.reproduce import reproduce
from steepest.reproduce.common import batch_configs, load_spec
from steepest.reproduce.linear import Rescale, diagonal_dominates, make_data, oracles, train_linear
from steepest.schedules import schedule


def test_smoke_report(tmp_path):
    rep = reproduce("linear", "smoke", tmp_path)
    assert rep.reproduced is None  # smoke size never claims a verdict
    assert (tmp_path / "report.md").exists() and (tmp_path / "results.json").exists()
    for fig in rep.figures:
        assert fig.exists() and fig.suffix == ".png" and fig.stat().st_size > 1000
    captions = [c for c, _ in rep.tables]
    assert any(c.startswith("Flavor matrix") for c in captions)
    assert any(c.startswith("Time to margin") for c in captions)
    flavor = next(t for c, t in rep.tables if c.startswith("Flavor matrix"))
    assert flavor.splitlines()[0].count("γ_") == 4  # l1, l2, linf, l3 columns
    mat = rep.numbers["flavor_matrix"]
    assert set(mat) >= {
        "GD (l2)",
        "sign (linf)",
        "CD (l1)",
        "l3 descent",
        "Adam eps=0",
        "Adam eps=1",
    }
    for row in mat.values():
        for v in row.values():
            # γ_N/γ*_N is finite and never above 1: γ* is the maximum (1e-9: oracle rounding)
            assert math.isfinite(v) and v <= 1 + 1e-9
    # The flows themselves, by implicit steps: each reaches 0.999 of its exact max margin (on
    # the smoke size's 20 x 30 data too) with its smoothed margin rising at every step.
    flows = rep.numbers["implicit_flow"]
    assert set(flows) == {"l1", "l2", "linf", "l3"}
    for n, f in flows.items():
        assert f["steps_0.999"] is not None and f["final"] <= 1 + 1e-9, n
        assert f["smoothed_margin_monotone"], n
    assert all(rep.numbers["flow_0.999_within_10k"].values())
    assert any(c.startswith("The steepest flows, integrated by implicit") for c in captions)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["name"] == "linear" and res["size"] == "smoke"
    assert "Theorem checks" in (tmp_path / "report.md").read_text()


def test_full_and_quick_configs_validate():
    spec = load_spec("linear")
    for size in ("smoke", "quick", "full"):
        for cfg in batch_configs(spec, size).values():
            load_config(cfg)


def test_diagonal_dominates_detects_a_loser():
    diag = {"l2": "A", "linf": "B"}
    good = {"A": {"l2": 0.99, "linf": 0.5}, "B": {"l2": 0.7, "linf": 0.99}}
    assert diagonal_dominates(good, diag) == {"l2": True, "linf": True}
    bad = {"A": {"l2": 0.99, "linf": 0.995}, "B": {"l2": 0.7, "linf": 0.99}}
    assert diagonal_dominates(bad, diag) == {"l2": True, "linf": False}


def test_rescale_keeps_direction_and_sets_radius():
    """PRGD rescaling is radial: it changes ‖θ‖ to R_t, never the margin ratio of the direction."""
    X, y = make_data(n=12, d=16, seed=1)
    gam = {n: r.gamma for n, r in oracles(X, y, ("l2",)).items()}
    tr = train_linear(
        X,
        y,
        "ngd",
        schedule("norm_scaled", lr=0.2, a=1.0),
        50,
        gammas=gam,
        rescale=Rescale(r0=2.0, kappa=0.05),
    )
    R = Rescale(2.0, 0.05).radius(50)
    assert np.linalg.norm(tr.theta) >= R * (
        1 - 1e-12
    )  # at least the target radius after the last step
    assert R == pytest.approx(2.0 * math.exp(2.5), rel=1e-15)
