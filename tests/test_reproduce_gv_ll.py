"""Smoke tests and helper checks for the gronich-vardi and lyu-li reproductions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from steepest.config import load_config
from steepest.reproduce import reproduce
from steepest.reproduce.common import batch_configs, load_spec
from steepest.reproduce.gronich_vardi import (
    PREDICTED,
    checkpoint_params,
    column_winners,
    directional_cosines,
    first_step_at,
    paper_stop_log_loss,
    single_thread,
)
from steepest.reproduce.lyu_li import increase_fraction, margin_at
from steepest.store import RunStore


@pytest.fixture(scope="module")
def gv(tmp_path_factory):
    out = tmp_path_factory.mktemp("gv")
    return reproduce("gronich-vardi", "smoke", out), out


@pytest.fixture(scope="module")
def ll(tmp_path_factory):
    out = tmp_path_factory.mktemp("ll")
    return reproduce("lyu-li", "smoke", out), out


@pytest.mark.parametrize("name", ["gronich-vardi", "lyu-li"])
def test_every_size_validates(name):
    spec = load_spec(name)
    for size in ("smoke", "quick", "full"):
        for cfg in batch_configs(spec, size).values():
            load_config(cfg)  # raises ConfigError on any invalid field


def test_gv_quick_uses_the_paper_protocol():
    # The schedule exponent, ε and losses are the paper's; a wrong copy would silently change the experiment.
    for cfg in batch_configs(load_spec("gronich-vardi"), "quick").values():
        assert cfg["loss"] == "logistic" and cfg["data"]["binarize"] == "odd_even"
        for a in cfg["algorithms"]:
            assert a["schedule"] == "power" and a["a"] == 0.8
            if a["algorithm"] in ("adam", "muon-adam"):
                assert a["options"]["eps"] == 1e-20
        assert {a["label"] for a in cfg["algorithms"]} >= {
            lab for labs in PREDICTED.values() for lab in labs
        }


def test_gv_smoke_report(gv):
    report, out = gv
    assert (out / "report.md").exists() and (out / "results.json").exists()
    assert report.reproduced is None  # smoke is never a verdict
    assert len(report.tables) == 2 and all(
        p.exists() and p.suffix == ".png" for p in report.figures
    )
    assert "steepest verify" in (out / "report.md").read_text() and report.verdicts_md
    assert report.defaults
    for caption, table in report.tables:
        header = table.splitlines()[0]
        for col in ("γ_2", "γ_∞", "γ_msp", "γ_hyb", "own", "cos(θ_T/2, θ_T)", "cos(θ_T*/2, θ_T*)"):
            assert col in header, (caption, col)
    nums = json.loads((out / "results.json").read_text())["numbers"]
    for batch in nums.values():
        assert set(batch["per_label"]) >= {
            "NGD",
            "MomentumGD",
            "Signum",
            "Adam",
            "Muon",
            "Muon-Adam",
        }
        for row in batch["per_label"].values():
            for key in ("l2", "linf", "spectral", "hybrid", "own", "cos_half"):
                assert math.isfinite(row[key]), key
            assert -1.0 - 1e-12 <= row["cos_half"] <= 1.0 + 1e-12  # a cosine (rounding slack only)


def test_checkpoint_params_match_engine_norms(gv):
    # The final checkpoint slice of each run must be the run's own θ_T: its ℓ2 norm equals the
    # engine's final norm_l2 up to float64 summation-order rounding.
    report, out = gv
    db = out / "runs.db"
    with RunStore(db) as store:
        runs = store.list_runs()
        for r in runs:
            cks = store.checkpoints(r.id)
            T = max(c["step"] for c in cks)
            theta = checkpoint_params([c for c in cks if c["step"] == T][-1]["path"], r.id)
            norm = math.sqrt(sum(float((p * p).sum()) for p in theta))
            assert norm == pytest.approx(store.final_metrics(r.id)["norm_l2"], rel=1e-10)
        with pytest.raises(ValueError, match="run_id"):
            checkpoint_params(store.checkpoints(runs[0].id)[0]["path"], 10_000)


def test_directional_cosine_identity_and_range(gv):
    _, out = gv
    db = out / "runs.db"
    with RunStore(db) as store:
        ids = [r.id for r in store.list_runs()]
    cos = directional_cosines(db, ids, fractions=(1.0, 0.5))
    for v in cos.values():
        assert v["cos"][1.0] == pytest.approx(1.0, abs=1e-12)  # cos(θ_T, θ_T) = 1
        assert v["steps"][0.5] <= v["T"]
        assert -1.0 - 1e-12 <= v["cos"][0.5] <= 1.0 + 1e-12


def test_cosines_at_an_earlier_end_use_only_checkpoints_up_to_it(gv):
    # ends= reads the cosines as if the run had stopped there (the paper's stopping loss): θ_T is
    # the checkpoint nearest that step, and no later checkpoint may be used for T/2.
    _, out = gv
    db = out / "runs.db"
    with RunStore(db) as store:
        rid = store.list_runs()[0].id
        steps = sorted({c["step"] for c in store.checkpoints(rid)})
    assert len(steps) >= 3
    mid = steps[len(steps) // 2]
    early = directional_cosines(db, [rid], fractions=(1.0, 0.5), ends={rid: mid})[rid]
    late = directional_cosines(db, [rid], fractions=(1.0, 0.5))[rid]
    assert early["T"] == mid and late["T"] == steps[-1]
    assert early["cos"][1.0] == pytest.approx(1.0, abs=1e-12)
    assert early["steps"][0.5] <= mid


def test_paper_stop_is_the_mean_loss_in_summed_log_loss():
    # GV stop at mean loss 1e-8; the package's 𝓛 is the sum over n points.
    assert paper_stop_log_loss(200) == pytest.approx(math.log(200 * 1e-8), rel=1e-12)
    assert paper_stop_log_loss(200) == pytest.approx(-13.1, abs=0.03)  # the old config: rounded
    cols = {"step": np.array([0, 5, 10, 20]), "log_loss": np.array([-1.0, -12.0, -14.0, -20.0])}
    assert first_step_at(cols, -13.0) == 8  # halfway from −12 (step 5) to −14 (step 10): 7.5
    assert first_step_at(cols, -14.0) == 10 and first_step_at(cols, -0.5) == 0
    assert first_step_at(cols, -30.0) is None


def test_hybrid_margin_matches_engine_own_margin(gv):
    # For the Muon–Adam runs the engine's margin_own is the same hybrid-norm margin, computed
    # independently (vmapped, inside the engine): agreement up to rounding.
    report, _ = gv
    nums = report.numbers
    for res in nums.values():
        row = res["per_label"]["Muon-Adam"]
        assert row["hybrid"] == pytest.approx(row["own"], rel=1e-9)
        # …while the others' own margins are in other norms (ℓ2 for NGD): the hybrid column differs.
        assert res["per_label"]["NGD"]["own"] == pytest.approx(
            res["per_label"]["NGD"]["l2"], rel=1e-12
        )


def test_column_winners():
    vals = {"A": {"x": 1.0, "y": 5.0}, "B": {"x": 2.0, "y": -1.0}}
    assert column_winners(vals, ["x", "y"]) == {"x": "B", "y": "A"}


def test_single_thread_restores():
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), single_thread():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_lyu_li_smoke_report(ll):
    report, out = ll
    assert (out / "report.md").exists() and (out / "results.json").exists()
    assert report.reproduced is None
    assert report.figures and all(p.exists() for p in report.figures)
    assert report.verdicts_md and report.defaults
    res = report.numbers["cnn"]
    for name in ("loss_based", "constant"):
        vals = res["margin_l2"][name]
        assert len(vals) == len(res["steps"]) and all(math.isfinite(v) for v in vals)
    # Both runs start from the same warm-started θ: identical margin at step 0.
    assert res["margin_l2"]["loss_based"][0] == res["margin_l2"]["constant"][0]
    assert res["margin_l2"]["loss_based"][0] > 0  # the common start separates the data


def test_margin_at_and_increase_fraction():
    cols = {"step": np.array([0, 1, 3, 10]), "margin_l2": np.array([0.1, np.nan, 0.3, 0.4])}
    assert margin_at(cols, 2) == 0.1  # step 1 is NaN: the last finite row at or before 2
    assert margin_at(cols, 3) == 0.3
    assert margin_at(cols, 100) == 0.4
    assert math.isnan(margin_at(cols, -1))
    assert increase_fraction([1, 2, 3]) == 1.0
    assert increase_fraction([3, 2, 1]) == 0.0
    assert increase_fraction([1, 2, 2, 3, 1]) == 0.5
    assert increase_fraction([5]) == 1.0
