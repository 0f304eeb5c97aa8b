"""Fault injection: interruptions resume exactly, one owner per batch, bad starts leave nothing.

Every interrupted training here is compared row for row (every stored column but wall time)
with the same config trained without interruption in this process; "rows lost" is the count
of reference rows missing from the interrupted-and-resumed batch and must be 0.

CI runs 5 trials of each of SIGKILL, SIGINT and SIGTERM (full batch and minibatch alternate);
``pytest -m slow tests/test_faults.py`` runs 50 of each. With ``STEEPEST_FAULTS_LOG=FILE`` each
trial appends its outcome (signal, whether it landed mid-run, rows lost) to FILE as JSON.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from steepest.cli import app
from steepest.config import ConfigError, load_config
from steepest.engine import train
from steepest.store import BatchBusyError, RunStore

FULL = {
    "name": "faults",
    "data": {"name": "digits", "classes": [0, 1], "n_train": 60, "n_test": 20},
    "model": {"name": "mlp", "widths": [8], "init_scale": 0.5},
    "seeds": [0, 1],
    "algorithms": [
        {"algorithm": "ngd", "schedule": "power", "lr": 0.1, "a": 0.5},
        # Loss-based steps roll back (their α is part of the state to resume); f1's up/down
        # keep the rollbacks to about 0.7 per step, so the trials stay fast.
        {
            "algorithm": "gd",
            "schedule": "loss_based",
            "lr": 0.1,
            "up": 1.2599210498948732,
            "down": 1.4142135623730951,
        },
    ],
    "stop": {"steps": 300},
    "logging": {"checkpoint_every": 40},
}
MINI = {
    **FULL,
    "name": "faults-mini",
    "batch_size": 20,
    "algorithms": [
        {"algorithm": "ngd", "schedule": "power", "lr": 0.1, "a": 0.5},
        {"algorithm": "sign", "schedule": "power", "lr": 0.01, "a": 0.5},
    ],
}
ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
runner = CliRunner()


def _rows(db: Path, run_ids: list[int]) -> list[dict[str, np.ndarray]]:
    with RunStore(db, create=False) as store:
        return [store.metrics(r) for r in run_ids]


def _completed_batch(db: Path, name: str) -> list[int]:
    """Run ids of the newest completed batch of experiment ``name``, in run order."""
    with RunStore(db, create=False) as store:
        runs = [r for r in store.list_runs(experiment=name) if r.status == "completed"]
    newest = max(r.info["batch"] for r in runs if r.id == max(x.id for x in runs))
    return [
        r.id
        for r in sorted(
            (r for r in runs if r.info["batch"] == newest), key=lambda r: r.info["index"]
        )
    ]


def _rows_lost_and_equal(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> int:
    """Rows of the reference missing from ``got`` (0 expected); asserts every value is equal."""
    lost = 0
    for a, b in zip(ref, got, strict=True):
        lost += len(set(a["step"].tolist()) - set(b["step"].tolist()))
        assert a["step"].tolist() == b["step"].tolist(), "rows lost or duplicated"
        assert set(a) == set(b)
        for k in a:
            if k != "wall_time":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    return lost


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    out = {}
    for cfg in (FULL, MINI):
        res = train(cfg, db=d / f"{cfg['name']}.db", progress=False)
        out[cfg["name"]] = _rows(d / f"{cfg['name']}.db", res.run_ids)
    return out


def _start(cfg_path: Path, db: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steepest.cli",
            "train",
            str(cfg_path),
            "--db",
            str(db),
            "--no-progress",
            *extra,
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_rows(db: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Until the batch has written a metric row (True), or the process ended (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                    if conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] > 0:
                        return True
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    raise AssertionError("training wrote no row in time")


SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def _trial(tmp_path: Path, references, sig_name: str, index: int) -> dict[str, int]:
    cfg = MINI if index % 2 else FULL
    rng = random.Random(1000 * index + sum(map(ord, sig_name)))
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    db = tmp_path / "runs.db"
    proc = _start(cfg_path, db)
    survived = 0
    if _wait_for_rows(db, proc):
        time.sleep(rng.uniform(0.0, 1.0))  # a random moment: before, during or after training
        if proc.poll() is None:
            proc.send_signal(SIGNALS[sig_name])
            survived = 1
    _, err = proc.communicate(timeout=120)
    if sig_name != "SIGKILL" and proc.returncode not in (0,):
        # A signal stops training between two whole steps: one line, exit 128 + signal number.
        assert proc.returncode == 128 + SIGNALS[sig_name], err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    if proc.returncode != 0:  # continue the batch (in this process: same threads, same numbers)
        try:
            train(cfg, db=db, resume=True, progress=False)
        except ValueError as exc:  # killed before its step-0 checkpoint: start again
            assert "nothing to resume" in str(exc)
            train(cfg, db=db, progress=False)
    done = _completed_batch(db, cfg["name"])
    lost = _rows_lost_and_equal(references[cfg["name"]], _rows(db, done))
    with RunStore(db, create=False) as store:
        ckpt_dir = Path(store.get_run(done[0]).info["checkpoint_dir"])
    assert not list(ckpt_dir.glob("*.tmp")), "a temporary checkpoint was left behind"
    out = {"signal": sig_name, "minibatch": bool(index % 2), "mid_run": survived, "lost": lost}
    if os.environ.get("STEEPEST_FAULTS_LOG"):  # counts for a report: one JSON line per trial
        with open(os.environ["STEEPEST_FAULTS_LOG"], "a") as fh:
            fh.write(json.dumps(out) + "\n")
    return out


@pytest.mark.parametrize("sig_name", list(SIGNALS))
@pytest.mark.parametrize("index", range(5))
def test_interrupt_at_a_random_moment_then_resume_equals_uninterrupted(
    tmp_path, references, sig_name, index
):
    out = _trial(tmp_path, references, sig_name, index)
    assert out["lost"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig_name", list(SIGNALS))
@pytest.mark.parametrize("index", range(5, 55))
def test_interrupt_at_a_random_moment_many(tmp_path, references, sig_name, index):
    out = _trial(tmp_path, references, sig_name, index)
    assert out["lost"] == 0


# ---------------------------------------------------------------------- one owner per batch


def test_a_second_resume_of_a_live_batch_is_refused_and_the_first_loses_nothing(tmp_path):
    cfg = {**FULL, "name": "owner", "stop": {"steps": 1500}, "logging": {"checkpoint_every": 100}}
    ref = train(cfg, db=tmp_path / "ref.db", progress=False)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    db = tmp_path / "runs.db"
    first = _start(cfg_path, db)
    assert _wait_for_rows(db, first)
    time.sleep(0.5)  # past the step-0 checkpoint
    second = subprocess.run(
        [sys.executable, "-m", "steepest.cli", "train", str(cfg_path), "--db", str(db), "--resume"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.poll() is None, "the first process ended before the second tried; lengthen the run"
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "being trained" in lines[0], (
        second.stderr
    )
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert (
        _rows_lost_and_equal(
            _rows(tmp_path / "ref.db", ref.run_ids), _rows(db, _completed_batch(db, "owner"))
        )
        == 0
    )


def test_a_dead_or_silent_owner_is_taken_over_and_a_live_one_is_not(tmp_path):
    import socket

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    with RunStore(tmp_path / "s.db") as store:

        def put(batch, pid, host, beat):
            store._transact(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                    (batch, pid, host, "t", beat),
                )
            )

        put("dead", dead_pid, socket.gethostname(), time.time())
        store.acquire_lease("dead")  # its owner is dead: taken over
        assert store.lease("dead")["pid"] == os.getpid()
        put("silent", 1, "another-host", time.time() - 10_000)
        store.acquire_lease("silent")  # another host's owner stopped beating: taken over
        put("live", os.getppid(), socket.gethostname(), time.time())
        with pytest.raises(BatchBusyError, match=f"pid {os.getppid()}"):
            store.acquire_lease("live")


def test_orphans_are_shown_and_settled_without_losing_rows(tmp_path):
    db = tmp_path / "o.db"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    with RunStore(db) as store:
        rid = store.create_run(name="x", algorithm="ngd", seed=0, config={}, info={"batch": "b"})
        store.update_run(rid, status="running")
        store.log_metrics(rid, [{"step": 0, "log_loss": 0.5}, {"step": 1, "log_loss": 0.25}])
        store._transact(
            lambda c: c.execute(
                "INSERT INTO leases VALUES (?, ?, ?, ?, ?)",
                ("b", int(dead.stdout), socket.gethostname(), "t", time.time()),
            )
        )
    res = runner.invoke(app, ["runs", "--db", str(db)])
    assert res.exit_code == 0 and "orphan" in res.output, res.output
    res = runner.invoke(app, ["gc", "--db", str(db), "--yes"])
    assert res.exit_code == 0 and "marked 1 run(s) failed" in res.output, res.output
    with RunStore(db, create=False) as store:
        assert store.get_run(rid).status == "failed"
        assert store.metrics(rid)["step"].tolist() == [0, 1]  # rows kept
    res = runner.invoke(app, ["runs", "--db", str(db), "--mark-failed", str(rid)])
    assert res.exit_code == 2 and "only running or interrupted" in res.output


# ---------------------------------------------------------------------- disk full


def _interrupting(monkeypatch, target, name, n_ok: int, exc: BaseException):
    orig = getattr(target, name)
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise exc
        return orig(*a, **k)

    monkeypatch.setattr(target, name, failing)
    return calls


@pytest.mark.parametrize("where", ["checkpoint", "database"])
def test_a_full_disk_fails_cleanly_and_resume_is_exact(tmp_path, monkeypatch, references, where):
    import steepest.checkpoints as ck

    db = tmp_path / "runs.db"
    if where == "checkpoint":
        _interrupting(
            monkeypatch, ck.torch, "save", 4, OSError(errno.ENOSPC, "No space left on device")
        )
        expect = OSError
    else:
        _interrupting(
            monkeypatch,
            RunStore,
            "log_metrics_many",
            12,
            sqlite3.OperationalError("database or disk is full"),
        )
        expect = sqlite3.OperationalError
    with pytest.raises(expect):
        train(FULL, db=db, progress=False)
    monkeypatch.undo()
    assert not list(tmp_path.rglob("*.tmp")), "a temporary checkpoint was left behind"
    with RunStore(db, create=False) as store:
        statuses = {r.status for r in store.list_runs()}
        assert statuses == {"failed"}, statuses
        assert all("error" in r.info for r in store.list_runs())
    res = train(FULL, db=db, resume=True, progress=False)
    assert _rows_lost_and_equal(references["faults"], _rows(db, res.run_ids)) == 0


def test_cli_names_a_full_disk_in_one_line(tmp_path, monkeypatch):
    import steepest.checkpoints as ck

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(FULL))

    def no_space(*a, **k):
        raise RuntimeError("PytorchStreamWriter failed writing file") from OSError(
            errno.ENOSPC, "No space left on device"
        )

    monkeypatch.setattr(ck.torch, "save", no_space)
    res = runner.invoke(app, ["train", str(cfg), "--db", str(tmp_path / "r.db"), "--no-progress"])
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "no space left on device" in err[0] and "--resume" in err[0], (
        res.stderr
    )


# ---------------------------------------------------------------------- bad checkpoints


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > evil-ran.txt",))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "malicious", "foreign"])
def test_bad_checkpoints_are_one_line_errors(tmp_path, monkeypatch, damage):
    monkeypatch.chdir(tmp_path)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(FULL))
    db = tmp_path / "runs.db"
    _interrupting(monkeypatch, RunStore, "log_metrics_many", 6, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(FULL, db=db, progress=False)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    with RunStore(db, create=False) as store:
        latest = Path(store.list_runs()[0].info["checkpoint"])
        ids = [r.id for r in store.list_runs()]
    good = latest.read_bytes()
    if damage == "truncated":
        latest.write_bytes(good[: len(good) // 3])
    elif damage == "garbage":
        latest.write_bytes(os.urandom(4096))
    elif damage == "malicious":
        latest.write_bytes(pickle.dumps({"version": 1, "params": _Evil()}))
    else:
        torch.save({"something": torch.zeros(3)}, latest)
    res = runner.invoke(app, ["train", str(cfg_path), "--db", str(db), "--resume", "--no-progress"])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and str(latest) in err[0], res.stderr
    assert not (tmp_path / "evil-ran.txt").exists()
    res = runner.invoke(app, ["verify", *map(str, ids), "--db", str(db)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "evil-ran.txt").exists()


# ---------------------------------------------------------------------- bad starts


@pytest.mark.parametrize("case", ["steps", "per_decade", "device", "warm_start", "disk"])
def test_a_bad_start_is_one_line_and_writes_nothing(tmp_path, monkeypatch, case):
    cfg = yaml.safe_load(yaml.safe_dump(FULL))
    if case == "steps":
        cfg["stop"] = {"steps": 10**12}
        expect = "stop.steps"
    elif case == "per_decade":
        cfg["logging"] = {"per_decade": 10**8}
        expect = "logging.per_decade"
    elif case == "device":
        cfg["device"] = "cuda:7"
        expect = "cuda:7"
        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    elif case == "warm_start":
        cfg["warm_start"] = {
            "algorithm": "ngd",
            "lr": 0.01,
            "until_log_loss": -50.0,
            "max_steps": 3,
        }
        expect = "warm start did not reach"
    else:
        import steepest.engine as eng

        monkeypatch.setattr(eng.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
        expect = "not enough disk space"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    db = tmp_path / "sub" / "runs.db"
    res = runner.invoke(app, ["train", str(path), "--db", str(db), "--no-progress"])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and expect in err[0], res.stderr
    assert not db.exists() and not (tmp_path / "sub").exists()


@pytest.mark.parametrize(
    "argv",
    [["runs"], ["show", "1"], ["export", "1"], ["verify", "all"], ["plot", "1"], ["gc", "--yes"]],
)
def test_read_commands_never_create_files(tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "typo" / "runs.db"
    res = runner.invoke(app, [*argv, "--db", str(db)])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "no results database" in err[0], res.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_onto_a_folder_is_one_line(tmp_path):
    db = tmp_path / "r.db"
    res = train({**FULL, "stop": {"steps": 5}}, db=db, progress=False)
    (tmp_path / "folder").mkdir()
    out = runner.invoke(
        app, ["export", str(res.run_ids[0]), "--db", str(db), "--out", str(tmp_path / "folder")]
    )
    assert (
        out.exit_code == 2
        and len(out.stderr.strip().splitlines()) == 1
        and "is a folder" in out.stderr
    )


def test_debug_shows_the_traceback(tmp_path):
    res = runner.invoke(app, ["--debug", "runs", "--db", str(tmp_path / "none.db")])
    assert (
        res.exit_code != 0
        and res.exception is not None
        and not isinstance(res.exception, SystemExit)
    )


def test_overflowing_columns_are_stored_by_their_logs(tmp_path):
    res = train({**FULL, "stop": {"steps": 30}}, db=tmp_path / "r.db", progress=False)
    with RunStore(tmp_path / "r.db", create=False) as store:
        cols = store.metrics(res.run_ids[0])
    assert "log_flow_time" in cols and "log_lr" in cols
    assert "flow_time" not in cols and "lr" not in cols  # exp(log) overflows to inf in long runs


# ---------------------------------------------------------------------- fuzzed configs

_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**13), 10**13),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_PATHS = [
    ("name",),
    ("data",),
    ("data", "name"),
    ("data", "n_train"),
    ("data", "classes"),
    ("model",),
    ("model", "widths"),
    ("seeds",),
    ("algorithms",),
    ("algorithms", 0, "lr"),
    ("algorithms", 0, "schedule"),
    ("algorithms", 0, "a"),
    ("algorithms", 0, "algorithm"),
    ("stop",),
    ("stop", "steps"),
    ("logging", "per_decade"),
    ("dtype",),
    ("device",),
    ("loss",),
    ("batch_size",),
    ("warm_start",),
    ("bogus_key",),
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(_PATHS), value=_JUNK)
def test_fuzzed_configs_fail_in_one_line_naming_the_field(path, value):
    cfg = yaml.safe_load(yaml.safe_dump(FULL))
    node = cfg
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    node[path[-1]] = value
    try:
        load_config(cfg)
    except ConfigError as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.startswith("invalid experiment config: ")
        assert str(path[0]) in msg, (path, msg)


def test_malformed_configs_write_nothing_through_the_cli(tmp_path):
    for i, bad in enumerate(
        [
            {**FULL, "seeds": "zero"},
            {**FULL, "stop": {"steps": -1}},
            {**FULL, "algorithms": []},
            {**FULL, "data": {"name": "nonexistent"}},
        ]
    ):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(yaml.safe_dump(bad))
        db = tmp_path / f"d{i}" / "runs.db"
        res = runner.invoke(app, ["train", str(path), "--db", str(db)])
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not db.parent.exists()


def test_a_run_with_a_live_owner_cannot_be_marked_failed(tmp_path):
    import socket

    db = tmp_path / "o.db"
    with RunStore(db) as store:
        rid = store.create_run(name="x", algorithm="ngd", seed=0, config={}, info={"batch": "b"})
        store.update_run(rid, status="running")
        store._transact(
            lambda c: c.execute(
                "INSERT INTO leases VALUES (?, ?, ?, ?, ?)",
                ("b", os.getppid(), socket.gethostname(), "t", time.time()),
            )
        )
    res = runner.invoke(app, ["runs", "--db", str(db), "--mark-failed", str(rid)])
    assert res.exit_code == 2 and f"being trained by pid {os.getppid()}" in res.stderr
    res = runner.invoke(app, ["gc", "--db", str(db), "--yes"])
    assert res.exit_code == 0 and "no orphaned runs" in res.output


def _stop_when(monkeypatch, predicate):
    """Ask training to stop (as SIGTERM would) once ``predicate(runner)`` holds after a step."""
    from steepest import engine as eng

    orig = eng.BatchRunner.settle

    def settle(self, p):
        orig(self, p)
        if self.stop.signum is None and predicate(self):
            self.stop.signum = signal.SIGTERM

    monkeypatch.setattr(eng.BatchRunner, "settle", settle)


def test_runs_that_ended_before_an_interrupt_keep_their_status(tmp_path, monkeypatch):
    from steepest import engine as eng

    cfg = {**FULL, "stop": {"steps": 300, "log_loss": -30.0}}
    _stop_when(monkeypatch, lambda r: any(r.done_host) and not all(r.done_host))
    with pytest.raises(eng.Interrupted):
        train(cfg, db=tmp_path / "r.db", progress=False)
    with RunStore(tmp_path / "r.db", create=False) as store:
        statuses = sorted(r.status for r in store.list_runs())
        assert (
            "completed" in statuses and "interrupted" in statuses and "running" not in statuses
        ), statuses
        assert store.orphans() == []


@pytest.mark.parametrize("stop_at", [3, 6, 11])
def test_a_minibatch_resume_after_a_rolled_back_step_is_exact(tmp_path, monkeypatch, stop_at):
    """A rolled-back run keeps the gradient of an older minibatch; the checkpoint carries it."""
    from steepest import engine as eng

    cfg = {
        **MINI,
        "name": "mini-rollback",
        "seeds": [0],
        "algorithms": [
            {"algorithm": "gd", "schedule": "constant", "lr": 1e160},
            {"algorithm": "ngd", "schedule": "power", "lr": 0.1, "a": 0.5},
        ],
        "stop": {"steps": 40},
    }
    ref = train(cfg, db=tmp_path / "ref.db", progress=False)
    with RunStore(tmp_path / "ref.db", create=False) as store:
        assert store.metrics(ref.run_ids[0])["rollbacks"].max() > 0  # the scenario happens
    _stop_when(monkeypatch, lambda r: r.iteration >= stop_at)
    with pytest.raises(eng.Interrupted):
        train(cfg, db=tmp_path / "r.db", progress=False)
    monkeypatch.undo()
    res = train(cfg, db=tmp_path / "r.db", resume=True, progress=False)
    assert (
        _rows_lost_and_equal(
            _rows(tmp_path / "ref.db", ref.run_ids), _rows(tmp_path / "r.db", res.run_ids)
        )
        == 0
    )


def test_an_owner_that_lost_its_lease_stops(tmp_path):
    with RunStore(tmp_path / "s.db") as store:
        store.acquire_lease("b")
        store.heartbeat("b")  # fine while it owns the batch
        store._transact(
            lambda c: c.execute("UPDATE leases SET pid = ? WHERE batch = 'b'", (os.getppid(),))
        )
        with pytest.raises(BatchBusyError, match="lost its lease"):
            store.heartbeat("b")
