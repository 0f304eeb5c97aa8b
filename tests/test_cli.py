"""End-to-end CLI: train, runs, show, plot, export, and clear errors (exit 2, no traceback)."""

from __future__ import annotations

import csv

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from steepest.cli import app

CFG = {
    "name": "cli-tiny",
    "data": {"name": "digits", "classes": [0, 1], "n_train": 50, "n_test": 30},
    "model": {"name": "mlp", "widths": [6], "init_scale": 0.5},
    "seeds": [0],
    "algorithms": [
        {"algorithm": "ngd", "schedule": "power", "lr": 0.1, "a": 0.5},
        {"algorithm": "cd", "schedule": "constant", "lr": 0.05},
    ],
    "stop": {"steps": 60},
}

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    db = d / "runs.db"
    res = runner.invoke(app, ["train", str(cfg), "--db", str(db), "--no-progress"])
    assert res.exit_code == 0, res.output
    return d, db, res.output


def test_train_prints_a_table_of_runs(trained):
    _, db, out = trained
    assert "ngd" in out and "cd" in out and "completed" in out
    assert str(db) in out


def test_runs_and_show(trained):
    _, db, _ = trained
    res = runner.invoke(app, ["runs", "--db", str(db)])
    assert res.exit_code == 0 and "cli-tiny" in res.output and res.output.count("completed") == 2
    res = runner.invoke(app, ["show", "1", "--db", str(db)])
    assert res.exit_code == 0
    assert "margin_own" in res.output and "own norm=l2" in res.output


def test_plot_writes_png(trained):
    d, db, _ = trained
    for x in ("step", "flow_time", "neg_log_loss"):
        out = d / f"p-{x}.png"
        res = runner.invoke(
            app,
            [
                "plot",
                "1",
                "2",
                "--metric",
                "margin_l2",
                "--x",
                x,
                "--out",
                str(out),
                "--db",
                str(db),
            ],
        )
        assert res.exit_code == 0, res.output
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_csv_and_parquet_round_trip(trained):
    d, db, _ = trained
    from steepest.store import RunStore

    with RunStore(db) as store:
        cols = store.metrics(1)
    out = d / "r1.csv"
    res = runner.invoke(app, ["export", "1", "--format", "csv", "--out", str(out), "--db", str(db)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert [int(float(r["step"])) for r in rows] == cols["step"].tolist()
    assert [float(r["margin_own"]) for r in rows] == cols["margin_own"].tolist()  # exact floats
    outp = d / "r1.parquet"
    res = runner.invoke(
        app, ["export", "1", "--format", "parquet", "--out", str(outp), "--db", str(db)]
    )
    assert res.exit_code == 0, res.output
    assert pd.read_parquet(outp)["log_loss"].tolist() == cols["log_loss"].tolist()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["show", "99"], "no run with id 99"),
        (["plot", "1", "--metric", "nope"], "valid metrics"),
        (["plot", "1", "--x", "time"], "valid: step, flow_time, neg_log_loss"),
        (["export", "1", "--format", "xlsx"], "csv"),
    ],
)
def test_user_errors_exit_2_without_traceback(trained, args, needle):
    _, db, _ = trained
    res = runner.invoke(app, [*args, "--db", str(db)])
    assert res.exit_code == 2
    assert needle in res.output
    assert "Traceback" not in res.output


def test_bad_config_names_the_field(tmp_path):
    bad = dict(CFG, algorithms=[{"algorithm": "ngd", "lr": 0.1, "schedule": "power"}])
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    res = runner.invoke(app, ["train", str(p), "--db", str(tmp_path / "r.db")])
    assert res.exit_code == 2
    assert "algorithms.0" in res.output and "decay exponent" in res.output
    res = runner.invoke(
        app, ["train", str(tmp_path / "missing.yaml"), "--db", str(tmp_path / "r.db")]
    )
    assert res.exit_code == 2 and "not found" in res.output
