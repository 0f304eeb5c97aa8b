"""The results store: runs, their metrics and checkpoints in one SQLite database.

Everything a run needs to be regenerated (config, seed, algorithm, package version, git hash)
is stored with its results, so any figure or theorem check
can be redone from the database alone.

Design choices (ECOSYSTEM.md, "results store"):

* stdlib ``sqlite3`` in WAL mode: two processes can write at once (DuckDB refuses a second
  writer). Every write is one explicit ``BEGIN IMMEDIATE … COMMIT`` transaction, so a second
  writer waits on the busy timeout instead of failing, and a crash (even SIGKILL) leaves the
  database consistent: a transaction is either fully there or not at all.
* ``synchronous=FULL``: a commit is on disk when ``log_metrics`` returns, so a checkpoint saved
  after it can never point at metric rows that a power loss took back.
* Metrics are stored long (``run_id, step, name, value``) so any metric name can be logged;
  the primary key ``(run_id, step, name)`` plus ``INSERT OR REPLACE`` makes logging idempotent:
  a run resumed from a checkpoint never duplicates a row.
* SQLite stores IEEE-754 doubles, so float64 values (±inf included) round-trip bit-exactly.
  NaN does not: SQLite turns it into NULL, so :meth:`RunStore.log_metrics` rejects NaN.
  One caveat: SQLite stores integral REALs as integers, so ``-0.0`` reads back as ``0.0``.

Schema (version :data:`SCHEMA_VERSION`)::

    runs(id INTEGER PRIMARY KEY AUTOINCREMENT, name, experiment, algorithm, seed,
         config_json, info_json, status, version, git_hash, created_at, updated_at)
    metrics(run_id, step, name, value REAL, PRIMARY KEY (run_id, step, name))
    checkpoints(run_id, step, path, log_loss, PRIMARY KEY (run_id, step))
    meta(key PRIMARY KEY, value)            -- holds schema_version
    leases(batch PRIMARY KEY, pid, host, started, heartbeat)
                                            -- one owner per batch being trained; a lease whose
                                               owner is dead or silent is stale (taken over)
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .atomic import atomic_write, atomic_write_text

__all__ = [
    "DEFAULT_DB",
    "ENV_VAR",
    "SCHEMA_VERSION",
    "RUN_STATUSES",
    "EXPORT_FORMATS",
    "default_db_path",
    "provenance",
    "RunRecord",
    "RunNotFoundError",
    "RunStore",
    "StoreNotFoundError",
    "BatchBusyError",
    "pid_alive",
]

DEFAULT_DB = Path("steepest-runs/runs.db")
ENV_VAR = "STEEPEST_DB"
SCHEMA_VERSION = 1
#: Valid values of ``runs.status``; validated so a typo never makes a filter silently miss runs.
RUN_STATUSES = ("pending", "running", "completed", "failed", "diverged", "interrupted")
EXPORT_FORMATS = ("csv", "parquet")

_BUSY_TIMEOUT_S = 30.0
# Beyond the busy handler, WAL can still report SQLITE_BUSY in rare cases (e.g. while another
# connection switches the journal mode); retry those a bounded number of times.
_LOCK_RETRIES = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    experiment  TEXT,
    algorithm   TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    info_json   TEXT NOT NULL,
    status      TEXT NOT NULL,
    version     TEXT,
    git_hash    TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_experiment ON runs(experiment);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step   INTEGER NOT NULL,
    name   TEXT NOT NULL,
    value  REAL NOT NULL,
    PRIMARY KEY (run_id, step, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    batch     TEXT PRIMARY KEY,
    pid       INTEGER NOT NULL,
    host      TEXT NOT NULL,
    started   TEXT NOT NULL,
    heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step     INTEGER NOT NULL,
    path     TEXT NOT NULL,
    log_loss REAL,
    PRIMARY KEY (run_id, step)
);
"""

_T = TypeVar("_T")


def default_db_path() -> Path:
    """The database used when none is given: ``$STEEPEST_DB`` if set (and non-empty), else
    ``./steepest-runs/runs.db`` relative to the current directory."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_DB


def provenance() -> dict[str, str | None]:
    """``{"version": <steepest version>, "git_hash": <HEAD of the cwd's git repo or None>}``.

    Best effort, never raises: the version falls back to ``"0+unknown"`` when the package is not
    installed, the hash to ``None`` outside a repository, without git, or after 5 s.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("steepest")
    except PackageNotFoundError:
        pkg_version = "0+unknown"
    git_hash: str | None = None
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        out = proc.stdout.strip()
        if proc.returncode == 0 and out:
            git_hash = out
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": pkg_version, "git_hash": git_hash}


class StoreNotFoundError(FileNotFoundError):
    """A read command was pointed at a results database that does not exist."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no results database at {path} (check --db or ${ENV_VAR})")


class BatchBusyError(RuntimeError):
    """Another live process holds the lease on a batch (one owner per batch)."""


#: A lease whose heartbeat is older than this is stale and may be taken over (the engine beats
#: every ``HEARTBEAT_EVERY_S`` while it trains).
LEASE_STALE_AFTER_S = 300.0
HEARTBEAT_EVERY_S = 30.0


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a non-positive id never does: signal
    0 to it would reach a whole process group)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RunNotFoundError(KeyError):
    """No run with the given id in the database (a :class:`KeyError`)."""

    def __init__(self, run_id: int, db: str | Path) -> None:
        self.run_id = run_id
        self.db = str(db)
        super().__init__(run_id)

    def __str__(self) -> str:  # KeyError would print only repr(run_id)
        return f"no run with id {self.run_id!r} in the results database {self.db}"


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``; ``config`` and ``info`` are decoded JSON (tuples come back as
    lists). ``info`` is free-form (e.g. predicted norm, homogeneity degree L, separation step)."""

    id: int
    name: str
    experiment: str | None
    algorithm: str
    seed: int
    config: dict
    status: str
    version: str | None
    git_hash: str | None
    created_at: str
    updated_at: str
    info: dict


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays (e.g. L = np.int64(2)) are common in configs and info.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _canonical_json(value: Mapping[str, Any], what: str) -> str:
    """Canonical JSON (sorted keys, no spaces) so equal configs store equal text."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"), default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serializable: {exc}") from exc


def _check_status(status: str) -> str:
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
    return status


def _as_step(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{where}: step must be an int, got bool")
    try:
        step = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: step must be an int, got {type(value).__name__}") from None
    if step < 0:
        raise ValueError(f"{where}: step must be >= 0, got {step}")
    return step


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class RunStore:
    """A handle on one results database (SQLite, WAL mode). Use as a context manager.

    ``path=None`` uses :func:`default_db_path`; the parent directory and the schema are created
    when missing, unless ``create=False`` (read commands), which raises
    :class:`StoreNotFoundError` instead; ``":memory:"`` gives a private in-memory database. One instance holds one
    connection: share the *path*, not the instance, across threads or processes.
    """

    def __init__(self, path: str | Path | None = None, *, create: bool = True) -> None:
        if path is None:
            path = default_db_path()
        self._memory = str(path) == ":memory:"
        self.path: Path = Path(path) if self._memory else Path(path).expanduser()
        if not self._memory:
            if not create and not self.path.is_file():
                # Read commands never create files: a mistyped --db is an error, not a new database.
                raise StoreNotFoundError(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            ":memory:" if self._memory else str(self.path),
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,  # autocommit; transactions are explicit BEGIN IMMEDIATE
        )
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            raise

    # ---------------------------------------------------------------- plumbing
    def _retry(self, fn: Callable[[], _T]) -> _T:
        for attempt in range(_LOCK_RETRIES + 1):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or attempt == _LOCK_RETRIES:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def _transact(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` in one write transaction and commit; retried as a whole on a lock
        error, so ``fn`` must be safe to re-run. BEGIN IMMEDIATE takes the write lock up front,
        so a concurrent writer waits on the busy timeout instead of failing halfway."""
        conn = self._conn

        def attempt() -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return self._retry(attempt)

    def _setup(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not self._memory:
            mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise OSError(
                    f"could not put the results database {self.path} in WAL mode (got {mode!r});"
                    " is it on a network file system?"
                )
        conn.execute("PRAGMA synchronous = FULL")

        def create(c: sqlite3.Connection) -> str:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            return c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]

        found = self._transact(create)
        if found != str(SCHEMA_VERSION):
            raise ValueError(
                f"results database {self.path} has schema version {found}; this steepest "
                f"reads version {SCHEMA_VERSION}"
            )

    def _require_run(self, conn: sqlite3.Connection, run_id: int) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise RunNotFoundError(run_id, self.path)

    @staticmethod
    def _record(row: tuple) -> RunRecord:
        (rid, name, exp, alg, seed, cfg, info, status, ver, git, created, updated) = row
        return RunRecord(
            id=rid, name=name, experiment=exp, algorithm=alg, seed=seed,
            config=json.loads(cfg), status=status, version=ver, git_hash=git,
            created_at=created, updated_at=updated, info=json.loads(info),
        )  # fmt: skip

    _RUN_COLS = (
        "id, name, experiment, algorithm, seed, config_json, info_json, status, version, "
        "git_hash, created_at, updated_at"
    )

    # ---------------------------------------------------------------- runs
    def create_run(
        self,
        *,
        name: str,
        algorithm: str,
        seed: int,
        config: dict,
        experiment: str | None = None,
        info: dict | None = None,
        status: str = "running",
    ) -> int:
        """Insert a run, stamped with :func:`provenance` (version, git hash); returns its id."""
        for arg, val in (("name", name), ("algorithm", algorithm)):
            if not isinstance(val, str) or not val:
                raise TypeError(f"{arg} must be a non-empty string, got {val!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        seed = int(seed)
        cfg = _canonical_json(config, "config")
        inf = _canonical_json(info or {}, "info")
        _check_status(status)
        prov = provenance()
        now = _now()

        def insert(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO runs (name, experiment, algorithm, seed, config_json, info_json,"
                " status, version, git_hash, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, experiment, algorithm, seed, cfg, inf, status,
                 prov["version"], prov["git_hash"], now, now),
            )  # fmt: skip
            return int(cur.lastrowid)  # type: ignore[arg-type]

        return self._transact(insert)

    def update_run(
        self, run_id: int, *, status: str | None = None, info: dict | None = None
    ) -> RunRecord:
        """Set the status and/or merge ``info`` into the stored info (``dict.update``, top level
        only); the read-modify-write is one transaction, so concurrent merges are not lost."""
        if status is not None:
            _check_status(status)
        if info is not None:
            _canonical_json(info, "info")  # fail before touching the database

        def update(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT info_json FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id, self.path)
            if status is None and info is None:
                return
            merged = json.loads(row[0])
            merged.update(info or {})
            conn.execute(
                "UPDATE runs SET status = COALESCE(?, status), info_json = ?, updated_at = ?"
                " WHERE id = ?",
                (status, _canonical_json(merged, "info"), _now(), run_id),
            )

        self._transact(update)
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> RunRecord:
        """The run with this id; :class:`RunNotFoundError` (a KeyError) if there is none."""
        row = self._conn.execute(
            f"SELECT {self._RUN_COLS} FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise RunNotFoundError(run_id, self.path)
        return self._record(row)

    def list_runs(
        self, *, experiment: str | None = None, status: str | None = None
    ) -> list[RunRecord]:
        """All runs, oldest first, optionally filtered by experiment and/or status."""
        where, args = [], []
        if experiment is not None:
            where.append("experiment = ?")
            args.append(experiment)
        if status is not None:
            where.append("status = ?")
            args.append(_check_status(status))
        sql = f"SELECT {self._RUN_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn.execute(sql + " ORDER BY id", args).fetchall()
        return [self._record(r) for r in rows]

    # ---------------------------------------------------------------- metrics
    def log_metrics(self, run_id: int, rows: Sequence[Mapping[str, float]]) -> None:
        """Record metric rows ``{"step": int, name: float, ...}`` in one transaction.

        Idempotent per ``(run_id, step, name)`` (INSERT OR REPLACE): logging a step again after
        a resume overwrites instead of duplicating. ±inf are stored exactly; NaN is rejected
        with a ValueError naming the metric and step (SQLite would store it as NULL).
        """
        self.log_metrics_many({run_id: rows})

    def log_metrics_many(self, rows_by_run: Mapping[int, Sequence[Mapping[str, float]]]) -> None:
        """:meth:`log_metrics` for several runs in ONE transaction (one fsync for K runs)."""
        records: list[tuple[int, int, str, float]] = []
        for run_id, rows in rows_by_run.items():
            records.extend(self._records(run_id, rows))

        def insert(conn: sqlite3.Connection) -> None:
            for run_id in rows_by_run:
                self._require_run(conn, run_id)
            conn.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                records,
            )

        self._transact(insert)

    @staticmethod
    def _records(
        run_id: int, rows: Sequence[Mapping[str, float]]
    ) -> list[tuple[int, int, str, float]]:
        records: list[tuple[int, int, str, float]] = []
        for i, row in enumerate(rows):
            if "step" not in row:
                raise ValueError(f"metric row {i} has no 'step' key (keys: {sorted(row)})")
            step = _as_step(row["step"], f"metric row {i}")
            for name, raw in row.items():
                if name == "step":
                    continue
                if not isinstance(name, str) or not name:
                    raise TypeError(f"metric names must be non-empty strings, got {name!r}")
                try:
                    value = float(raw)
                except (TypeError, ValueError):
                    raise TypeError(
                        f"metric {name!r} at step {step} must be a real number,"
                        f" got {type(raw).__name__}"
                    ) from None
                if math.isnan(value):
                    raise ValueError(
                        f"metric {name!r} at step {step} is NaN; the store refuses NaN (SQLite"
                        " would record it as NULL). Fix the computation or drop the metric."
                    )
                records.append((run_id, step, name, value))
        return records

    def delete_metrics_after(self, run_id: int, step: int) -> int:
        """For resume: delete this run's metric rows with ``step > step``; returns how many."""
        step = operator.index(step)

        def delete(conn: sqlite3.Connection) -> int:
            self._require_run(conn, run_id)
            cur = conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step))
            return cur.rowcount

        return self._transact(delete)

    def metrics(self, run_id: int) -> dict[str, np.ndarray]:
        """Wide columns ordered by step: ``"step"`` (int64) then one float64 array per metric
        name (names sorted), NaN where a metric was not logged at a step."""
        self.get_run(run_id)  # raises RunNotFoundError
        rows = self._conn.execute(
            "SELECT step, name, value FROM metrics WHERE run_id = ? ORDER BY step, name",
            (run_id,),
        ).fetchall()
        if not rows:
            return {"step": np.zeros(0, dtype=np.int64)}
        steps = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        names = sorted({r[1] for r in rows})
        values = np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows))
        uniq, step_idx = np.unique(steps, return_inverse=True)
        col = {n: j for j, n in enumerate(names)}
        name_idx = np.fromiter((col[r[1]] for r in rows), dtype=np.intp, count=len(rows))
        table = np.full((len(uniq), len(names)), np.nan, dtype=np.float64)
        table[step_idx, name_idx] = values
        out: dict[str, np.ndarray] = {"step": uniq}
        out.update({n: table[:, j].copy() for n, j in col.items()})
        return out

    def final_metrics(self, run_id: int) -> dict[str, float]:
        """The metrics logged at the run's last (largest) step; ``{}`` if none were logged.
        Metrics not logged at that step are absent, not carried over from earlier steps."""
        self.get_run(run_id)
        rows = self._conn.execute(
            "SELECT name, value FROM metrics WHERE run_id = ? AND step ="
            " (SELECT MAX(step) FROM metrics WHERE run_id = ?) ORDER BY name",
            (run_id, run_id),
        ).fetchall()
        return {name: float(value) for name, value in rows}

    # ---------------------------------------------------------------- checkpoints
    def add_checkpoint(
        self, run_id: int, *, step: int, path: str | Path, log_loss: float | None = None
    ) -> None:
        """Record a checkpoint file for ``(run_id, step)`` (replaces an earlier record)."""
        step = _as_step(step, "add_checkpoint")
        ll = None if log_loss is None else float(log_loss)
        if ll is not None and math.isnan(ll):
            raise ValueError(f"log_loss of the checkpoint at step {step} is NaN")

        def insert(conn: sqlite3.Connection) -> None:
            self._require_run(conn, run_id)
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, step, path, log_loss)"
                " VALUES (?, ?, ?, ?)",
                (run_id, step, str(path), ll),
            )

        self._transact(insert)

    def checkpoints(self, run_id: int) -> list[dict]:
        """``[{"step", "path", "log_loss"}, ...]`` ordered by step."""
        self.get_run(run_id)
        rows = self._conn.execute(
            "SELECT step, path, log_loss FROM checkpoints WHERE run_id = ? ORDER BY step",
            (run_id,),
        ).fetchall()
        return [{"step": s, "path": p, "log_loss": ll} for s, p, ll in rows]

    # ---------------------------------------------------------------- imports (sweeps)
    def marks(self, prefix: str) -> dict[str, Any]:
        """The marks (:meth:`import_runs`, :meth:`put_mark`) whose key starts with ``prefix``:
        key -> its JSON value (for an import's mark, the run ids)."""
        rows = self._conn.execute(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        ).fetchall()
        return {k: json.loads(v) for k, v in rows}

    def put_mark(self, key: str, value: Any) -> None:
        """Set the mark ``key`` to the JSON value ``value`` (replacing it); see :meth:`marks`."""
        if not isinstance(key, str) or not key:
            raise TypeError(f"a mark's key must be a non-empty string, got {key!r}")
        text = json.dumps(value, sort_keys=True)
        self._transact(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, text)
            )
        )

    def import_runs(self, runs: Sequence[Mapping[str, Any]], *, marker: str) -> list[int]:
        """Store finished runs from elsewhere (a sweep's worker) and the mark ``marker``, all in
        ONE transaction; returns the new run ids. A mark that is already there means the runs
        are stored: nothing is written and their ids come back (imports are idempotent).

        Each run: ``name, experiment, algorithm, seed, status, config, info`` as in
        :meth:`create_run`, ``metrics`` as rows for :meth:`log_metrics`, and ``checkpoints``
        as ``[{"step", "path", "log_loss"}]``. Provenance (version, git hash) is the
        importer's: the worker runs the same installed code.
        """
        if not isinstance(marker, str) or not marker:
            raise TypeError(f"marker must be a non-empty string, got {marker!r}")
        prepared = []
        for r in runs:
            cfg = _canonical_json(r["config"], "config")
            inf = _canonical_json(r.get("info") or {}, "info")
            status = _check_status(r["status"])
            ckpts = [
                (_as_step(c["step"], "import_runs"), str(c["path"]), c.get("log_loss"))
                for c in r.get("checkpoints", ())
            ]
            prepared.append((r, cfg, inf, status, ckpts))
        prov, now = provenance(), _now()

        def insert(conn: sqlite3.Connection) -> list[int]:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (marker,)).fetchone()
            if row is not None:
                return list(json.loads(row[0]))
            ids = []
            for r, cfg, inf, status, ckpts in prepared:
                cur = conn.execute(
                    "INSERT INTO runs (name, experiment, algorithm, seed, config_json, info_json,"
                    " status, version, git_hash, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r["name"], r.get("experiment"), r["algorithm"], int(r["seed"]), cfg, inf,
                     status, prov["version"], prov["git_hash"], now, now),
                )  # fmt: skip
                rid = int(cur.lastrowid)  # type: ignore[arg-type]
                conn.executemany(
                    "INSERT OR REPLACE INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                    self._records(rid, r.get("metrics", ())),
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO checkpoints (run_id, step, path, log_loss)"
                    " VALUES (?, ?, ?, ?)",
                    [(rid, st, path, ll) for st, path, ll in ckpts],
                )
                ids.append(rid)
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (marker, json.dumps(ids)))
            return ids

        return self._transact(insert)

    # ---------------------------------------------------------------- leases
    def lease(self, batch: str) -> dict[str, Any] | None:
        """The lease on ``batch`` (pid, host, started, heartbeat, stale), or None."""
        row = self._conn.execute(
            "SELECT pid, host, started, heartbeat FROM leases WHERE batch = ?", (batch,)
        ).fetchone()
        if row is None:
            return None
        pid, host, started, hb = row
        return {
            "pid": pid,
            "host": host,
            "started": started,
            "heartbeat": hb,
            "stale": self._lease_stale(pid, host, hb),
        }

    @staticmethod
    def _lease_stale(
        pid: int, host: str, heartbeat: float, stale_after: float = LEASE_STALE_AFTER_S
    ) -> bool:
        if host == socket.gethostname():
            return not pid_alive(
                pid
            )  # on this host the process table is the truth (a paused owner is alive)
        return time.time() - heartbeat > stale_after  # another host's owner stopped beating

    def acquire_lease(self, batch: str, stale_after: float = LEASE_STALE_AFTER_S) -> None:
        """Become the one owner of ``batch``; a live owner's lease raises :class:`BatchBusyError`,
        a dead or stale one is taken over."""
        me, host = os.getpid(), socket.gethostname()

        def take(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT pid, host, heartbeat FROM leases WHERE batch = ?", (batch,)
            ).fetchone()
            if (
                row is not None
                and (row[0], row[1]) != (me, host)
                and not self._lease_stale(*row, stale_after=stale_after)
            ):
                age = time.time() - row[2]
                raise BatchBusyError(
                    f"batch {batch} is being trained by pid {row[0]} on {row[1]} "
                    f"(heartbeat {age:.0f} s ago); wait for it, or stop it first"
                )
            conn.execute(
                "INSERT OR REPLACE INTO leases(batch, pid, host, started, heartbeat) VALUES (?, ?, ?, ?, ?)",
                (batch, me, host, _now(), time.time()),
            )

        self._transact(take)

    def heartbeat(self, batch: str) -> None:
        """Renew this process's lease on ``batch``; :class:`BatchBusyError` if it was taken over
        (the owner must stop: another process now trains the batch)."""
        n = self._transact(
            lambda c: (
                c.execute(
                    "UPDATE leases SET heartbeat = ? WHERE batch = ? AND pid = ? AND host = ?",
                    (time.time(), batch, os.getpid(), socket.gethostname()),
                ).rowcount
            )
        )
        if n == 0:
            owner = self.lease(batch)
            who = f"pid {owner['pid']} on {owner['host']}" if owner else "nobody"
            raise BatchBusyError(
                f"this process lost its lease on batch {batch} (now held by {who}); stopping"
            )

    def release_lease(self, batch: str) -> None:
        self._transact(
            lambda c: c.execute(
                "DELETE FROM leases WHERE batch = ? AND pid = ? AND host = ?",
                (batch, os.getpid(), socket.gethostname()),
            )
        )

    def orphans(self) -> list[RunRecord]:
        """Runs marked "running" whose batch has no live owner (its lease is stale or absent)."""
        out = []
        for r in self.list_runs(status="running"):
            lease = self.lease(str(r.info.get("batch", "")))
            if lease is None or lease["stale"]:
                out.append(r)
        return out

    # ---------------------------------------------------------------- export
    def export(self, run_id: int, path: str | Path, fmt: str = "csv") -> Path:
        """Write the run's wide metric table (see :meth:`metrics`) to ``path``, atomically.

        ``csv``: floats written with ``repr`` (shortest round-trip form; ``inf``/``-inf``; an
        empty field where a metric is missing), so ``float(field)`` recovers float64 exactly
        (pandas 3 ``read_csv`` is exact by default).
        ``parquet``: via pandas + pyarrow, float64 columns kept bit-exactly; needs the optional
        extra ``pip install steepest[parquet]``.
        """
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"fmt must be one of {EXPORT_FORMATS}, got {fmt!r}")
        cols = self.metrics(run_id)
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"export: {path} is a folder; give a file name, e.g. {path / f'run-{run_id}.{fmt}'}"
            )
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(list(cols))
            names = [n for n in cols if n != "step"]
            for i, step in enumerate(cols["step"]):
                cells = [str(int(step))]
                for n in names:
                    v = float(cols[n][i])
                    cells.append("" if math.isnan(v) else repr(v))
                writer.writerow(cells)
            text = buf.getvalue()
            atomic_write_text(path, text)
        else:
            try:
                import pandas as pd
                import pyarrow  # noqa: F401  (pandas' parquet engine)
            except ImportError as exc:
                raise ImportError(
                    "parquet export needs pandas and pyarrow: pip install steepest[parquet]"
                ) from exc
            frame = pd.DataFrame(cols)
            atomic_write(path, lambda tmp: frame.to_parquet(tmp, engine="pyarrow", index=False))
        return path

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"
