"""steepest.fingerprints: which margin does an optimizer maximize?

Known answers (docs/theory.md §3.3, §3.7): steepest descent w.r.t. N converges in direction to
the max-N-margin separator of a linear model, so gd → ℓ2, sign → ℓ∞, cd → ℓ1, lp(3) → ℓ3 on the
vector problems, and spectral descent → the spectral norm on the matrix problems. The default
tests run one problem per family with a shorter budget; ``-m slow`` runs the whole default
fingerprint (every problem, 6,000 steps) for the package's rules and torch.optim's.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import steepest
from steepest.cli import app
from steepest.fingerprints import (
    MATRIX_NORMS,
    VECTOR_NORMS,
    VERDICT_RATIO,
    ConstantSteps,
    LossScaledSteps,
    fingerprint,
    load_optimizer,
    problems,
    write_report,
)


@pytest.fixture(scope="module")
def family():
    return problems()


@pytest.fixture(scope="module")
def small(family):
    """One vector and one matrix problem: the sparse teacher and the low-rank multiclass one."""
    return [family[0], family[3]]


def _rule(name, lr=1e-3, **kw):
    return lambda ps: steepest.optimizer(name, ps, lr=lr, **kw)


def test_the_problems_have_exact_max_margins_and_tell_the_norms_apart(family):
    assert [p.kind for p in family] == ["vector"] * 3 + ["matrix"] * 2
    for p in family:
        assert set(p.gamma) == set(p.norms) and all(g > 0 for g in p.gamma.values())
        cross = p.cross_ratios()
        for n in p.norms:
            # each oracle direction attains its own γ* (ratio 1) and no other direction beats it
            assert cross[n][n] == pytest.approx(1.0, abs=1e-6)
            assert all(cross[m][n] <= 1 + 1e-6 for m in p.norms)
        # ℓ1 and ℓ∞ (vector), spectral and entrywise max (matrix) are far apart on every problem
        a, b = ("l1", "linf") if p.kind == "vector" else ("spectral", "max")
        assert cross[a][b] < 0.8 and cross[b][a] < 0.9, (p.name, cross[a][b], cross[b][a])


@pytest.mark.parametrize(
    "name,options,expected",
    [("gd", {"lr": 0.1}, "l2"), ("sign", {}, "linf"), ("cd", {}, "l1"), ("lp", {"p": 3.0}, "l3")],
)
def test_the_package_rules_maximize_their_own_vector_norm(family, name, options, expected):
    fp = fingerprint(_rule(name, **options), name=name, steps=6000, family=[family[0]])
    assert fp.norm == expected, fp.verdict
    assert fp.ratios[expected][0] >= VERDICT_RATIO
    assert fp.gap > 0


def test_muon_maximizes_the_spectral_margin_of_a_matrix(family):
    fp = fingerprint(_rule("muon"), name="muon", steps=6000, family=[family[3]])
    assert fp.matrix_norm == "spectral", fp.verdict
    assert fp.norm is None  # no vector problem ran


def test_an_optimizer_that_produces_nan_is_reported_and_the_others_still_run(small):
    class NaNAfter3(torch.optim.SGD):
        def step(self, closure=None):
            super().step()
            self.state.setdefault("n", 0)
            self.state["n"] += 1
            if self.state["n"] > 3:
                for g in self.param_groups:
                    for p in g["params"]:
                        p.data.fill_(float("nan"))

    fp = fingerprint(lambda ps: NaNAfter3(ps, lr=0.1), steps=50, family=small)
    assert [r.status for r in fp.results] == ["NaN or inf in the parameters at step 4"] * 2
    assert fp.norm is None and fp.matrix_norm is None
    assert "no run finished" in fp.verdict
    assert len(fp.failures()) == 2


def test_divergence_errors_and_no_separation_each_get_one_line(small):
    class Ascent(torch.optim.SGD):  # climbs the loss: log 𝓛 rises without bound
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    p.data.add_(p.grad, alpha=g["lr"])

    fp = fingerprint(
        lambda ps: Ascent(ps, lr=100.0), steps=300, family=small, step_rule=ConstantSteps()
    )
    vec, mat = fp.results
    assert vec.status.startswith("diverged at step"), vec.status
    # cross-entropy's log 𝓛 grows only like log ‖W‖ on the way up: it ends unseparated
    assert mat.status.startswith(("diverged at step", "never separated")), mat.status

    def broken(ps):
        raise RuntimeError("no such thing")

    fp = fingerprint(broken, steps=10, family=small)
    assert all("error building the optimizer: RuntimeError" in r.status for r in fp.results)

    fp = fingerprint(
        lambda ps: torch.optim.SGD(ps, lr=0.0), steps=5, family=small, step_rule=ConstantSteps()
    )
    assert all(r.status.startswith("never separated the data") for r in fp.results)


def test_a_factory_that_returns_no_optimizer_or_one_without_lr_does_not_stop_the_sweep(small):
    fp = fingerprint(lambda ps: None, steps=5, family=small)
    assert all("returned a NoneType" in r.status for r in fp.results)

    class NoLr(torch.optim.Optimizer):  # sets its own step: nothing for the step rule to scale
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    p.data.add_(p.grad, alpha=-0.05)

    fp = fingerprint(lambda ps: NoLr(ps), steps=200, family=small)
    assert not any("error" in r.status for r in fp.results), fp.failures()
    assert fp.results[0].ok, fp.results[0].status  # the binary problem separates in 200 steps


def test_the_network_flavor_matrix_puts_each_rule_first_in_its_own_column():
    """MNIST 2 vs 7, one hidden layer: after 300 steps from the common warm start, GD has the
    largest ℓ2 margin and sign descent the largest ℓ∞ margin (flavors-f1's diagonal); a broken
    optimizer is one row with its reason."""
    from steepest.fingerprints import network_flavor_matrix

    runs = network_flavor_matrix(
        {
            "gd": _rule("ngd", lr=0.1),
            "sign": _rule("sign"),
            "broken": lambda ps: None,
        },
        steps=300,
        width=16,
        n_train=60,
    )
    gd, sign, broken = runs
    assert gd.status == sign.status == "ok" and gd.log_loss < -2 and sign.log_loss < -2
    assert gd.margins["l2"] > sign.margins["l2"]
    assert sign.margins["linf"] > gd.margins["linf"]
    assert "returned a NoneType" in broken.status and broken.margins == {}
    with pytest.raises(ValueError, match="two distinct digits"):
        network_flavor_matrix({}, classes=(1, 2, 3))


def test_no_single_norm_is_an_outcome_not_an_error(small):
    # 100 steps of sign descent: separated, still far from every max-margin direction
    fp = fingerprint(_rule("sign", lr=1e-2), steps=100, family=small)
    assert all(r.ok for r in fp.results)
    assert fp.norm == "no single norm" and fp.matrix_norm == "no single norm"
    assert max(v[0] for v in fp.ratios.values()) < VERDICT_RATIO


def test_loss_scaled_steps_hold_the_relative_step_at_c_over_q():
    rule = LossScaledSteps(0.1)
    # at log 𝓛 = −50 the target relative step is 0.002: a step twice that long halves m
    assert rule(10, -50.0, 0.004, 1.0) == pytest.approx(0.5)
    assert rule(10, -50.0, 0.001, 1.0) == pytest.approx(2.0)
    assert rule(10, -50.0, 0.0015, 1.0) == pytest.approx(0.002 / 0.0015)
    assert rule(10, 3.0, 0.1, 1.0) == pytest.approx(1.0)  # before separation: target c
    assert rule(10, -50.0, 0.0, 0.7) == 0.7  # no movement: nothing to learn from
    with pytest.raises(ValueError, match="positive"):
        LossScaledSteps(0.0)


def test_load_optimizer_resolves_import_paths_and_names_bad_input():
    make = load_optimizer("torch.optim:SGD", {"lr": 0.1})
    assert isinstance(make([torch.nn.Parameter(torch.zeros(3))]), torch.optim.SGD)
    make = load_optimizer("steepest:sign", {"lr": 0.01})
    assert isinstance(make([torch.nn.Parameter(torch.zeros(3))]), torch.optim.Optimizer)
    with pytest.raises(ValueError, match="module:Name"):
        load_optimizer("Adam")
    with pytest.raises(ImportError, match="cannot import"):
        load_optimizer("no_such_module_xyz:Opt")
    with pytest.raises(ValueError, match="did you mean Adam"):
        load_optimizer("torch.optim:Adamm")
    with pytest.raises(ValueError, match="with options"):
        load_optimizer("torch.optim:SGD", {"lr": 0.1, "bogus": 1})
    with pytest.raises(ValueError, match="unknown algorithm|valid"):
        load_optimizer("steepest:no-such-rule")
    # "group": the params go in as one param group carrying these keys
    make = load_optimizer("torch.optim:SGD", {"lr": 0.1, "group": {"momentum": 0.5}})
    opt = make([torch.nn.Parameter(torch.zeros(3))])
    assert opt.param_groups[0]["momentum"] == 0.5
    with pytest.raises(ValueError, match='"group" must be a dict'):
        load_optimizer("torch.optim:SGD", {"group": [1]})


def test_an_optimizer_that_ignores_lr_still_runs(family):
    """Rprop sets its own step sizes after the first step, so the step rule cannot steer it; the
    multiplier stays bounded and the run ends as Rprop's own (it drove m to 0 before)."""
    fp = fingerprint(lambda ps: torch.optim.Rprop(ps), steps=3000, family=[family[0]])
    assert fp.results[0].ok, fp.results[0].status


def test_cli_prints_the_verdict_and_writes_the_report(tmp_path, monkeypatch, small):
    import steepest.fingerprints as fpm

    monkeypatch.setattr(fpm, "problems", lambda seed=0: small)
    res = CliRunner().invoke(
        app,
        [
            "fingerprint",
            "steepest:gd",
            "--options",
            '{"lr": 0.1}',
            "--steps",
            "3000",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "vector problems: l2" in res.output
    for f in ("report.md", "results.json", "profile.png"):
        assert (tmp_path / f).stat().st_size > 100
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["norm"] == "l2" and len(data["results"]) == 2
    assert set(data["results"][0]["trajectory"]) >= {"step", "log_loss", *VECTOR_NORMS}
    bad = CliRunner().invoke(app, ["fingerprint", "torch.optim:SGD", "--options", "{lr: 1}"])
    assert bad.exit_code == 2 and "not valid JSON" in bad.output


def test_report_lists_failures_and_distinctness(tmp_path, small):
    fp = fingerprint(
        lambda ps: torch.optim.SGD(ps, lr=0.0), steps=5, family=small, step_rule=ConstantSteps()
    )
    write_report(fp, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "never separated the data" in md
    assert "How distinct" in md and all(n in md for n in MATRIX_NORMS)
    data = json.loads((tmp_path / "results.json").read_text())
    # failed runs carry their status and no ratios; the verdict says nothing finished
    assert all(r["ratios"] == {} and r["status"].startswith("never") for r in data["results"])
    assert data["norm"] is None and "no run finished" in data["verdict"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "label,make,vector,matrix",
    [
        ("gd", _rule("gd", lr=0.1), "l2", "frobenius"),
        ("sign", _rule("sign"), "linf", None),
        ("cd", _rule("cd"), "l1", None),
        ("lp3", _rule("lp", p=3.0), "l3", None),
        ("spectral", _rule("spectral"), None, "spectral"),
        ("torch SGD", lambda ps: torch.optim.SGD(ps, lr=0.1), "l2", "frobenius"),
        (
            "torch Adam eps=0",
            lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.99), eps=0.0),
            "linf",
            "max",
        ),
    ],
)
def test_default_fingerprints_of_known_optimizers(label, make, vector, matrix):
    fp = fingerprint(make, name=label)
    assert not fp.failures()
    if vector is not None:
        assert fp.norm == vector, fp.verdict
    if matrix is not None:
        assert fp.matrix_norm == matrix, fp.verdict
    assert fp.seconds < 120  # the default budget is < 60 s on the 2-core CI machine
