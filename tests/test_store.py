"""Tests of the results store (steepest.store): round-trips, idempotent logging, resume,
concurrent writers, crash safety (SIGKILL), exports, default path, provenance."""

from __future__ import annotations

import csv
import math
import multiprocessing as mp
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steepest import store as store_mod
from steepest.store import (
    ENV_VAR,
    RUN_STATUSES,
    RunNotFoundError,
    RunStore,
    default_db_path,
    provenance,
)


def _value(step: int, k: int) -> float:
    """A deterministic, non-round float64 for (step, metric k): catches truncation to float32
    or to a decimal string with too few digits."""
    return math.sqrt(2.0) * (step + 1) / (k + 3) + 1e-17 * step


def _bits(x: float) -> int:
    return int(np.float64(x).view(np.int64))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "runs.db"


@pytest.fixture
def rs(db: Path):
    with RunStore(db) as s:
        yield s


def _new_run(s: RunStore, **kw) -> int:
    args = dict(name="r", algorithm="sign", seed=0, config={"lr": 0.1})
    args.update(kw)
    return s.create_run(**args)


# ---------------------------------------------------------------- runs


def test_schema_wal_and_parent_dir(db: Path) -> None:
    with RunStore(db) as s:
        assert db.exists()  # the missing parent directory "sub" was created
        conn = s._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"runs", "metrics", "checkpoints", "meta"} <= tables
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        assert version == str(store_mod.SCHEMA_VERSION)


def test_run_round_trip(rs: RunStore) -> None:
    config = {"b": [1, 2], "a": {"lr": 0.1, "norm": "linf"}, "big": 2.0**-1074}
    rid = rs.create_run(
        name="mlp-sign", algorithm="sign", seed=np.int64(7), config=config,
        experiment="exp1", info={"L": np.int64(2), "predicted_norm": "linf"},
    )  # fmt: skip
    rec = rs.get_run(rid)
    assert rec.id == rid and rec.name == "mlp-sign" and rec.algorithm == "sign"
    assert rec.seed == 7 and isinstance(rec.seed, int)
    assert rec.experiment == "exp1" and rec.status == "running"
    assert rec.config == config  # the subnormal survives JSON exactly
    assert rec.info == {"L": 2, "predicted_norm": "linf"}
    assert rec.version == provenance()["version"]
    assert rec.created_at == rec.updated_at
    # canonical JSON: sorted keys, so equal configs give equal stored text
    stored = rs._conn.execute("SELECT config_json FROM runs WHERE id=?", (rid,)).fetchone()[0]
    assert stored.index('"a"') < stored.index('"b"') < stored.index('"big"')
    rid2 = _new_run(rs)
    assert rid2 == rid + 1


def test_update_run_merges_info(rs: RunStore) -> None:
    rid = _new_run(rs, info={"L": 2, "norm": "l2"})
    before = rs.get_run(rid)
    time.sleep(0.002)  # timestamps have microsecond resolution; make the change visible
    rs.update_run(rid, info={"norm": "linf", "separation_step": 41})
    rec = rs.update_run(rid, status="completed")
    assert rec.info == {"L": 2, "norm": "linf", "separation_step": 41}  # merged, not replaced
    assert rec.status == "completed"
    assert rec.updated_at > before.updated_at and rec.created_at == before.created_at
    with pytest.raises(ValueError, match="completed"):  # the message lists the valid choices
        rs.update_run(rid, status="done")
    assert rs.get_run(rid).status == "completed"  # the bad update changed nothing


def test_list_runs_filters(rs: RunStore) -> None:
    a = _new_run(rs, experiment="e1")
    b = _new_run(rs, experiment="e1", status="completed")
    c = _new_run(rs, experiment="e2", status="completed")
    d = _new_run(rs)
    ids = lambda runs: [r.id for r in runs]  # noqa: E731
    assert ids(rs.list_runs()) == [a, b, c, d]
    assert ids(rs.list_runs(experiment="e1")) == [a, b]
    assert ids(rs.list_runs(status="completed")) == [b, c]
    assert ids(rs.list_runs(experiment="e1", status="completed")) == [b]
    assert ids(rs.list_runs(experiment="nope")) == []
    with pytest.raises(ValueError, match="running"):
        rs.list_runs(status="complete")  # typo: rejected, not silently empty
    assert "completed" in RUN_STATUSES


def test_run_not_found_message(rs: RunStore, db: Path) -> None:
    _new_run(rs)
    for call in (
        lambda: rs.get_run(999),
        lambda: rs.update_run(999, status="failed"),
        lambda: rs.log_metrics(999, [{"step": 0, "loss": 1.0}]),
        lambda: rs.metrics(999),
        lambda: rs.delete_metrics_after(999, 0),
        lambda: rs.add_checkpoint(999, step=0, path="x"),
    ):
        with pytest.raises(RunNotFoundError) as info:
            call()
        assert isinstance(info.value, KeyError)
        msg = str(info.value)
        assert "999" in msg and str(db) in msg, msg


def test_bad_arguments(rs: RunStore) -> None:
    with pytest.raises(TypeError, match="config"):
        rs.create_run(name="r", algorithm="a", seed=0, config={"f": object()})
    with pytest.raises(TypeError, match="seed"):
        rs.create_run(name="r", algorithm="a", seed=1.5, config={})
    with pytest.raises(ValueError, match="pending"):
        rs.create_run(name="r", algorithm="a", seed=0, config={}, status="bogus")
    assert rs.list_runs() == []  # nothing half-written


# ---------------------------------------------------------------- metrics


def test_metrics_round_trip_exact_and_wide(rs: RunStore) -> None:
    rid = _new_run(rs)
    rows = [{"step": s, "loss": _value(s, 0), "margin": _value(s, 1)} for s in (0, 1, 3, 10)]
    rows[2]["kkt"] = 0.1  # only logged at step 3
    rows[3]["loss"] = math.inf
    rows[3]["margin"] = -math.inf
    rs.log_metrics(rid, rows[::-1])  # logged out of order: read back ordered by step
    m = rs.metrics(rid)
    assert list(m) == ["step", "kkt", "loss", "margin"]
    assert m["step"].dtype == np.int64 and m["step"].tolist() == [0, 1, 3, 10]
    for name in ("loss", "margin", "kkt"):
        assert m[name].dtype == np.float64
    for i, row in enumerate(rows):
        for name in ("loss", "margin"):
            assert _bits(m[name][i]) == _bits(row[name])  # bit-exact, inf included
    assert np.isnan(m["kkt"][[0, 1, 3]]).all() and m["kkt"][2] == 0.1
    final = rs.final_metrics(rid)
    assert final == {"loss": math.inf, "margin": -math.inf}  # kkt was not logged at step 10


def test_empty_run_metrics(rs: RunStore) -> None:
    rid = _new_run(rs)
    m = rs.metrics(rid)
    assert list(m) == ["step"] and m["step"].shape == (0,)
    assert rs.final_metrics(rid) == {}
    rs.log_metrics(rid, [])  # no-op, no error
    assert rs.metrics(rid)["step"].shape == (0,)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=False, allow_infinity=True, width=64), min_size=1, max_size=20
    )
)
def test_any_float64_round_trips(tmp_path_factory, values: list[float]) -> None:
    with RunStore(":memory:") as s:
        rid = _new_run(s)
        s.log_metrics(rid, [{"step": i, "v": v} for i, v in enumerate(values)])
        got = s.metrics(rid)["v"]
    for g, v in zip(got, values, strict=True):
        if v == 0.0:
            # Documented: SQLite stores integral REALs as integers, so -0.0 comes back +0.0.
            assert g == 0.0
        else:
            assert _bits(g) == _bits(v)


def test_nan_rejected_names_metric_and_step(rs: RunStore) -> None:
    rid = _new_run(rs)
    rows = [{"step": 0, "loss": 1.0}, {"step": 5, "loss": 0.5, "margin": float("nan")}]
    with pytest.raises(ValueError, match=r"'margin' at step 5 is NaN"):
        rs.log_metrics(rid, rows)
    with pytest.raises(ValueError, match="'loss' at step 2"):
        rs.log_metrics(rid, [{"step": 2, "loss": np.float64("nan")}])
    assert rs.metrics(rid)["step"].shape == (0,)  # the valid row in the batch was not written


def test_bad_metric_rows(rs: RunStore) -> None:
    rid = _new_run(rs)
    with pytest.raises(ValueError, match="no 'step' key"):
        rs.log_metrics(rid, [{"loss": 1.0}])
    with pytest.raises(TypeError, match="step must be an int"):
        rs.log_metrics(rid, [{"step": 1.5, "loss": 1.0}])
    with pytest.raises(ValueError, match=">= 0"):
        rs.log_metrics(rid, [{"step": -1, "loss": 1.0}])
    with pytest.raises(TypeError, match="'loss' at step 1"):
        rs.log_metrics(rid, [{"step": 1, "loss": "one"}])
    rs.log_metrics(rid, [{"step": np.int64(3), "loss": np.float32(0.5)}])  # numpy scalars ok
    assert rs.final_metrics(rid) == {"loss": 0.5}


def test_log_metrics_idempotent(rs: RunStore) -> None:
    rid = _new_run(rs)
    rs.log_metrics(rid, [{"step": 4, "loss": 1.0, "margin": 0.2}])
    rs.log_metrics(rid, [{"step": 4, "loss": 0.75, "margin": 0.2}])  # same step again
    n = rs._conn.execute("SELECT COUNT(*) FROM metrics WHERE run_id=?", (rid,)).fetchone()[0]
    assert n == 2  # one row per (step, name), not four
    assert rs.final_metrics(rid) == {"loss": 0.75, "margin": 0.2}  # the later value wins


def test_delete_metrics_after_and_resume(rs: RunStore) -> None:
    rid = _new_run(rs)
    other = _new_run(rs)
    rows = [{"step": s, "a": _value(s, 0), "b": _value(s, 1)} for s in range(10)]
    rs.log_metrics(rid, rows)
    rs.log_metrics(other, rows)
    assert rs.delete_metrics_after(rid, 6) == 6  # steps 7, 8, 9 × 2 metrics
    assert rs.metrics(rid)["step"].tolist() == list(range(7))
    assert rs.metrics(other)["step"].tolist() == list(range(10))  # other run untouched
    assert rs.delete_metrics_after(rid, 6) == 0
    # resume from step 4: drop after it and replay 5..9 -> identical to an uninterrupted run
    rs.delete_metrics_after(rid, 4)
    rs.log_metrics(rid, rows[5:])
    m, ref = rs.metrics(rid), rs.metrics(other)
    for k in ref:
        np.testing.assert_array_equal(m[k], ref[k])  # exact: same float64 values


def test_checkpoints(rs: RunStore) -> None:
    rid = _new_run(rs)
    rs.add_checkpoint(rid, step=20, path="ck/20.pt", log_loss=-3.5)
    rs.add_checkpoint(rid, step=10, path=Path("ck/10.pt"))
    rs.add_checkpoint(rid, step=20, path="ck/20b.pt", log_loss=-math.inf)  # replaces step 20
    assert rs.checkpoints(rid) == [
        {"step": 10, "path": "ck/10.pt", "log_loss": None},
        {"step": 20, "path": "ck/20b.pt", "log_loss": -math.inf},
    ]
    with pytest.raises(ValueError, match="NaN"):
        rs.add_checkpoint(rid, step=30, path="x", log_loss=math.nan)


# ---------------------------------------------------------------- processes


def _concurrent_writer(db: str, run_id: int, metric: str, n: int, barrier) -> None:
    with RunStore(db) as s:  # opening also races on the schema / WAL setup
        barrier.wait(timeout=60)
        for step in range(n):  # one transaction per row: maximal lock contention
            s.log_metrics(run_id, [{"step": step, metric: _value(step, len(metric))}])
        s.update_run(run_id, info={metric: n})


def test_two_processes_write_concurrently(db: Path) -> None:
    with RunStore(db) as s:
        rid = _new_run(s)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    n = 200
    procs = [
        ctx.Process(target=_concurrent_writer, args=(str(db), rid, name, n, barrier))
        for name in ("a", "bb")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]  # no "database is locked" in either
    with RunStore(db) as s:
        m = s.metrics(rid)
        count = s._conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        info = s.get_run(rid).info
    assert count == 2 * n
    assert m["step"].tolist() == list(range(n))
    for name in ("a", "bb"):
        assert [_bits(v) for v in m[name]] == [_bits(_value(s, len(name))) for s in range(n)]
    assert info == {"a": n, "bb": n}  # concurrent read-modify-write merges both


N_CRASH_METRICS = 100  # metrics per step: each transaction is long enough to be hit by the kill
CKPT_EVERY = 5


def _crash_writer(db: str, run_id: int) -> None:
    with RunStore(db) as s:
        for step in range(1_000_000):  # until killed
            row = {"step": step, **{f"m{k:03d}": _value(step, k) for k in range(N_CRASH_METRICS)}}
            s.log_metrics(run_id, [row])
            if step % CKPT_EVERY == 0:
                s.add_checkpoint(run_id, step=step, path=f"ck/{step}.pt")


def test_sigkill_mid_write_leaves_db_intact_and_resumable(db: Path) -> None:
    if sys.platform == "win32":
        pytest.skip("SIGKILL is POSIX")
    with RunStore(db) as s:
        rid = _new_run(s)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_crash_writer, args=(str(db), rid))
    proc.start()
    reader = sqlite3.connect(str(db), timeout=30)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = reader.execute("SELECT COUNT(DISTINCT step) FROM metrics").fetchone()[0]
            if n >= 3 * CKPT_EVERY:
                break
            time.sleep(0.01)
        assert proc.is_alive(), f"writer died early, exit code {proc.exitcode}"
    finally:
        reader.close()
        proc.kill()  # SIGKILL: no cleanup, no rollback, the -wal file stays behind
        proc.join(timeout=30)
    assert proc.exitcode == -9

    raw = sqlite3.connect(str(db))
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with RunStore(db) as s:
        m = s.metrics(rid)
        last = int(m["step"][-1])
        # every committed step is complete (atomic transactions) and contiguous, values exact
        assert m["step"].tolist() == list(range(last + 1))
        assert len(m) == 1 + N_CRASH_METRICS
        for k in range(N_CRASH_METRICS):
            col = m[f"m{k:03d}"]
            assert [_bits(v) for v in col] == [_bits(_value(st, k)) for st in range(last + 1)]
        # resume as the engine does: roll back to the last checkpoint, replay past the crash
        ck = s.checkpoints(rid)[-1]["step"]
        assert ck <= last
        removed = s.delete_metrics_after(rid, ck)
        assert removed == (last - ck) * N_CRASH_METRICS
        end = last + 3
        for step in range(ck + 1, end + 1):
            row = {"step": step, **{f"m{k:03d}": _value(step, k) for k in range(N_CRASH_METRICS)}}
            s.log_metrics(rid, [row])
        count = s._conn.execute("SELECT COUNT(*) FROM metrics WHERE run_id=?", (rid,)).fetchone()
        assert count[0] == (end + 1) * N_CRASH_METRICS  # nothing lost, nothing duplicated
        assert s.metrics(rid)["step"].tolist() == list(range(end + 1))


# ---------------------------------------------------------------- export


def _filled_run(s: RunStore) -> int:
    rid = _new_run(s)
    rows = [{"step": st, "loss": _value(st, 0), "margin": _value(st, 1)} for st in range(0, 50, 7)]
    rows[1]["loss"] = math.inf
    rows[2]["margin"] = -math.inf
    rows[3]["kkt"] = 5e-324  # subnormal; missing (NaN) at every other step
    s.log_metrics(rid, rows)
    return rid


def test_export_csv_exact(rs: RunStore, tmp_path: Path) -> None:
    rid = _filled_run(rs)
    out = rs.export(rid, tmp_path / "out" / "m.csv")
    assert out.exists() and not list(out.parent.glob("*.tmp"))  # temp file renamed away
    with out.open(newline="") as fh:
        table = list(csv.reader(fh))
    ref = rs.metrics(rid)
    assert table[0] == list(ref)
    for i, line in enumerate(table[1:]):
        assert int(line[0]) == ref["step"][i]
        for j, name in enumerate(list(ref)[1:], start=1):
            want = ref[name][i]
            if np.isnan(want):
                assert line[j] == ""
            else:
                assert _bits(float(line[j])) == _bits(want)
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(out)  # pandas 3 parses floats round-trip exactly by default
    for name in ref:
        np.testing.assert_array_equal(frame[name].to_numpy(), ref[name])  # exact, NaN = NaN


def test_export_parquet_exact(rs: RunStore, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rid = _filled_run(rs)
    out = rs.export(rid, tmp_path / "m.parquet", fmt="parquet")
    frame = pd.read_parquet(out)
    ref = rs.metrics(rid)
    assert list(frame.columns) == list(ref)
    for name in ref:
        col = frame[name].to_numpy()
        assert col.dtype == ref[name].dtype
        assert col.tobytes() == ref[name].tobytes()  # bit-exact float64 (NaN payload too)


def test_export_errors(rs: RunStore, tmp_path: Path, monkeypatch) -> None:
    rid = _filled_run(rs)
    with pytest.raises(ValueError, match="parquet"):
        rs.export(rid, tmp_path / "m.json", fmt="json")
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(ImportError, match=r"pip install steepest\[parquet\]"):
        rs.export(rid, tmp_path / "m.parquet", fmt="parquet")
    assert not (tmp_path / "m.parquet").exists()
    with pytest.raises(RunNotFoundError):
        rs.export(12345, tmp_path / "x.csv")


# ---------------------------------------------------------------- defaults, provenance


def test_default_path_and_env(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert default_db_path() == Path("steepest-runs/runs.db")
    target = tmp_path / "env" / "x.db"
    monkeypatch.setenv(ENV_VAR, str(target))
    assert default_db_path() == target
    with RunStore() as s:  # no path: the environment variable decides
        assert s.path == target
        _new_run(s)
    assert target.exists()
    monkeypatch.setenv(ENV_VAR, "")  # empty counts as unset
    monkeypatch.chdir(tmp_path)
    with RunStore() as s:
        assert s.path == Path("steepest-runs/runs.db")
    assert (tmp_path / "steepest-runs" / "runs.db").exists()


def test_schema_version_mismatch(db: Path) -> None:
    with RunStore(db) as s:
        s._conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(ValueError, match="schema version 99"):
        RunStore(db)


def test_provenance(monkeypatch, tmp_path: Path) -> None:
    p = provenance()
    assert set(p) == {"version", "git_hash"}
    assert isinstance(p["version"], str) and p["version"]
    assert p["git_hash"] is None or (len(p["git_hash"]) == 40 and int(p["git_hash"], 16) >= 0)
    monkeypatch.chdir(tmp_path)  # not a repository (tmp dirs are outside any repo here)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance()["git_hash"] is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all: never raises
    assert provenance()["git_hash"] is None
