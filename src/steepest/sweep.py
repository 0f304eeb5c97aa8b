"""Sweeps: one experiment config, split into jobs, run by workers, written by one driver.

A config's lists expand into runs as in :func:`steepest.train` (algorithm entries × lrs ×
seeds). :func:`plan_jobs` groups them into jobs of at most ``runs_per_job`` runs that are stepped
together: whole (entry, lr) units with all their seeds when the seeds fit, else the seeds of one
unit split into chunks. Each job is itself an ordinary config, so a sweep's run equals the same
run of ``steepest train`` (the engine steps every run of a batch independently; the runs are
matched by name, which the split keeps).

**One writer.** A worker trains its job into a scratch database and checkpoint folder of its
own (:func:`run_job`), then sends back a payload: the runs' rows, every metric row, and the
checkpoint files as bytes. Only the driver (:func:`run_sweep`) opens the results database. It
writes the checkpoint files into ``<db folder>/sweeps/<sweep>/checkpoints/`` and then the job's
runs, metrics, checkpoint records and a "job done" mark in ONE transaction
(:meth:`steepest.store.RunStore.import_runs`), so a crash anywhere leaves a job either wholly
in the database or not at all.

**Resumable.** Run again, a sweep skips the jobs marked done. A worker that dies (killed, out of
memory, node lost) is retried once; the retry resumes from the job's last checkpoint when its
scratch folder survived (always on one machine; on SLURM with a node-local ``--scratch`` the
retry on another node starts the job again, which gives the same numbers). A job that fails
twice is marked failed with its error; a later run of the sweep tries it again. Local workers
die with the driver (Linux ``PR_SET_PDEATHSIG``), so a driver killed by SIGKILL leaves no
orphan writing to a scratch database that the rerun resumes.

Backends (:mod:`steepest.sweep_backends`): ``local`` (a pool of worker processes, one torch
thread each), ``ray`` (an existing cluster, or a local one), ``slurm`` (submitit; job arrays).
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write, atomic_write_text
from .config import ExperimentConfig, load_config
from .store import HEARTBEAT_EVERY_S, RunStore, default_db_path

__all__ = [
    "NETWORK_FILESYSTEMS",
    "PAYLOAD_FORMAT",
    "Job",
    "JobStatus",
    "SweepResult",
    "check_local_database",
    "filesystem_type",
    "import_payload",
    "job_marker",
    "plan_jobs",
    "prepare_sweep",
    "run_job",
    "run_sweep",
    "sweep_folder",
    "sweep_id",
    "sweep_status",
]

#: Version of the worker → driver payload (a dict saved with ``torch.save``; read back with
#: ``weights_only=True``: tensors, strings and numbers only).
PAYLOAD_FORMAT = 1
#: A failed job is tried this many times in all, per run of the sweep.
ATTEMPTS = 2
#: Finished statuses of a run (the engine's); anything else is unfinished.
_FINISHED = ("completed", "diverged")


@dataclass(frozen=True)
class Job:
    """One job: a config of at most ``runs_per_job`` runs, and the names of those runs."""

    id: str
    config: dict[str, Any]
    runs: tuple[str, ...]


def _config_key(cfg: ExperimentConfig) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.name)
    return f"{safe}-{cfg.config_hash()}"


def sweep_id(cfg: ExperimentConfig, runs_per_job: int) -> str:
    """``<name>-<config hash>-k<runs_per_job>``: the plan depends on both."""
    return f"{_config_key(cfg)}-k{runs_per_job}"


def sweep_folder(db: str | Path | None, sid: str, sweep_dir: str | Path | None = None) -> Path:
    """The sweep's folder: ``<db folder>/sweeps/<db file name>/<sweep id>`` by default (two
    databases in one folder never share a job's scratch), or with ``sweep_dir`` (a folder the
    workers can read, e.g. on a cluster's shared filesystem)
    ``<sweep_dir>/<db file stem>-<hash of the db's path>/<sweep id>``."""
    import hashlib

    db_path = (Path(db) if db is not None else default_db_path()).resolve()
    if sweep_dir is None:
        return db_path.parent / "sweeps" / db_path.name / sid
    tag = hashlib.sha256(str(db_path).encode()).hexdigest()[:8]
    return Path(sweep_dir).resolve() / f"{db_path.stem}-{tag}" / sid


def job_marker(sid: str, job: str) -> str:
    """The results database's mark that a job's runs are stored (``meta`` key)."""
    return f"sweep-job:{sid}:{job}"


def _run_name(cfg: ExperimentConfig, label: str, lr: float, seed: int) -> str:
    return f"{cfg.name}/{label}/lr={lr:g}/seed={seed}"  # as engine.train names its runs


def plan_jobs(cfg: ExperimentConfig, runs_per_job: int) -> list[Job]:
    """Split ``cfg`` into jobs of at most ``runs_per_job`` runs (module docstring)."""
    if isinstance(runs_per_job, bool) or not isinstance(runs_per_job, int) or runs_per_job < 1:
        raise ValueError(f"runs_per_job must be a positive integer, got {runs_per_job!r}")
    canon = cfg.canonical()
    seeds = list(cfg.seeds)
    if len(seeds) > runs_per_job and cfg.batch_size is not None:  # the warm start's too
        raise ValueError(
            f"runs_per_job {runs_per_job} < {len(seeds)} seeds with batch_size set: a batch draws "
            "its minibatch order from its first run's seed, so a job that starts at another "
            f"seed would not equal steepest train. Use --runs-per-job {len(seeds)} or more"
        )
    units: list[tuple[dict[str, Any], str, float]] = []  # (entry with one lr, label, lr)
    for entry, raw in zip(cfg.algorithms, canon["algorithms"], strict=True):
        label = entry.label or entry.algorithm
        for sched in entry.schedules():
            lr = float(sched.to_dict()["lr"])
            one = dict(raw)
            if entry.lr is not None:
                one["lr"] = lr
            units.append((one, label, lr))
    groups: list[tuple[list[tuple[dict[str, Any], str, float]], list[int]]] = []
    if len(seeds) <= runs_per_job:
        per = runs_per_job // len(seeds)
        groups = [(units[i : i + per], seeds) for i in range(0, len(units), per)]
    else:
        for unit in units:
            for i in range(0, len(seeds), runs_per_job):
                groups.append(([unit], seeds[i : i + runs_per_job]))
    jobs = []
    for n, (us, ss) in enumerate(groups):
        sub = {**canon, "algorithms": [u[0] for u in us], "seeds": ss}
        names = tuple(_run_name(cfg, label, lr, s) for _, label, lr in us for s in ss)
        jobs.append(Job(id=f"job-{n:05d}", config=sub, runs=names))
    return jobs


# --------------------------------------------------------------------------------------------
# The worker


def _job_runs(store: RunStore, cfg: ExperimentConfig) -> dict[str, list[Any]]:
    """This config's batches in a job's scratch database: batch id -> runs (by index)."""
    h = cfg.config_hash()
    batches: dict[str, list[Any]] = {}
    for r in store.list_runs(experiment=cfg.name):
        if r.info.get("config_hash") == h:
            batches.setdefault(str(r.info.get("batch", "")), []).append(r)
    return {b: sorted(rs, key=lambda r: r.info["index"]) for b, rs in batches.items()}


def _finished_batch(db: Path, cfg: ExperimentConfig, k: int) -> list[Any] | None:
    with RunStore(db, create=False) as store:
        done = [
            rs
            for rs in _job_runs(store, cfg).values()
            if len(rs) == k and all(r.status in _FINISHED for r in rs)
        ]
    return max(done, key=lambda rs: rs[0].id) if done else None


def _resumable_batch(db: Path, cfg: ExperimentConfig, k: int) -> bool:
    with RunStore(db, create=False) as store:
        return any(
            len(rs) == k and all("checkpoint" in r.info for r in rs)
            for rs in _job_runs(store, cfg).values()
        )


def _payload(db: Path, runs: list[Any], sid: str, job: str) -> bytes:
    """The job's runs, metric rows and checkpoint files, as ``torch.save`` bytes."""
    files: dict[str, torch.Tensor] = {}
    out_runs = []
    with RunStore(db, create=False) as store:
        for r in runs:
            m = store.metrics(r.id)
            ckpts = store.checkpoints(r.id)
            paths = [Path(c["path"]) for c in ckpts]
            if "checkpoint" in r.info:  # the engine's latest.pt, which resume and verify read
                paths.append(Path(r.info["checkpoint"]))
            for path in paths:
                if path.name not in files:
                    raw = path.read_bytes()
                    files[path.name] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            out_runs.append(
                {
                    "id": int(r.id),
                    "name": r.name,
                    "experiment": r.experiment or "",
                    "algorithm": r.algorithm,
                    "seed": int(r.seed),
                    "status": r.status,
                    "config": json.dumps(r.config),
                    "info": json.dumps(r.info),
                    "steps": torch.as_tensor(m["step"], dtype=torch.int64),
                    "metrics": {
                        k: torch.as_tensor(v, dtype=torch.float64)
                        for k, v in m.items()
                        if k != "step"
                    },
                    "checkpoints": [
                        {
                            "step": int(c["step"]),
                            "file": Path(c["path"]).name,
                            "log_loss": math.nan if c["log_loss"] is None else c["log_loss"],
                        }
                        for c in ckpts
                    ],
                }
            )
    payload = {
        "format": PAYLOAD_FORMAT,
        "sweep": sid,
        "job": job,
        "batch": str(runs[0].info.get("batch", "")),
        "runs": out_runs,
        "files": files,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def run_job(
    job_dir: str | Path, scratch: str | Path | None = None, *, spec: str | None = None
) -> bytes:
    """Train one job and return its payload (module docstring).

    ``spec`` is the text of the job's ``job.json`` (default: read from ``job_dir``; a worker on
    another machine gets it from the driver). The scratch database and checkpoints go to the
    job's folder, or with ``scratch`` to a folder under it named after the job's folder (so
    two sweeps never share one). A finished batch there is sent as it is; an unfinished one
    with checkpoints is resumed from its last checkpoint; otherwise the job starts. Runs in
    the calling process: the backends call it in a worker.
    """
    import hashlib

    from .engine import train
    from .plugins import load_plugin

    jd = Path(job_dir)
    job = json.loads(spec if spec is not None else (jd / "job.json").read_text())
    for module in job.get("plugins", ()):  # the driver's --plugin modules, before the config
        load_plugin(module)
    cfg = load_config(job["config"])
    if scratch is None:
        root = jd
    else:
        key = hashlib.sha256(str(jd).encode()).hexdigest()[:16]
        root = Path(scratch) / f"{job['job']}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    db = root / "job.db"
    k = len(cfg.run_specs())
    runs = _finished_batch(db, cfg, k) if db.is_file() else None
    if runs is None:
        resume = db.is_file() and _resumable_batch(db, cfg, k)
        train(cfg, db=db, resume=resume, progress=False)
        runs = _finished_batch(db, cfg, k)
    if runs is None:
        raise RuntimeError(f"job {job['job']}: training returned without a finished batch in {db}")
    return _payload(db, runs, job["sweep"], job["job"])


# --------------------------------------------------------------------------------------------
# The driver


@dataclass
class JobStatus:
    """One job's state in a sweep: "done", "running", "failed" or "pending"; ``failures``: its
    failed attempts in the latest run of the sweep; ``error``: the last error of a failed job."""

    job: str
    state: str
    runs: int
    failures: int = 0
    error: str = ""


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the sweep id and folder, every job's status, the run ids
    stored for each done job, and the seconds spent."""

    sweep: str
    folder: Path
    db: Path
    jobs: list[JobStatus]
    run_ids: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> list[JobStatus]:
        return [j for j in self.jobs if j.state == "failed"]


def _state_path(folder: Path, job: str) -> Path:
    return folder / "jobs" / job / "state.json"


def _read_state(folder: Path, job: str) -> dict[str, Any]:
    p = _state_path(folder, job)
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(folder: Path, job: str, **state: Any) -> None:
    atomic_write_text(_state_path(folder, job), json.dumps(state, sort_keys=True))


#: Filesystem types on which SQLite's locking (and WAL's shared memory) is not safe.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "fuse.sshfs", "ceph",
     "fuse.ceph", "glusterfs", "fuse.glusterfs", "panfs", "9p", "afs"}
)  # fmt: skip


def filesystem_type(path: str | Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem that holds ``path`` (the longest mount point above it in
    ``/proc/mounts``, or in ``mounts``, text in that format); None where it cannot be told."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = Path(path).resolve()
    best, kind = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (target == point or point in target.parents) and len(point.parts) > best:
            best, kind = len(point.parts), fields[2]
    return kind


def check_local_database(db_path: Path, mounts: str | None = None) -> None:
    """Refuse a results database on a network filesystem (SQLite must not run there)."""
    kind = filesystem_type(db_path.parent if not db_path.exists() else db_path, mounts)
    if kind in NETWORK_FILESYSTEMS:
        raise ValueError(
            f"the results database {db_path} is on a {kind} filesystem, where SQLite's locks are "
            "not safe; put --db on a local disk of the machine that runs the driver (e.g. under "
            "/tmp or the login node's scratch). The sweep's folder beside it holds only plain "
            "files, written atomically"
        )


def _plans(db_path: Path, cfg: ExperimentConfig) -> dict[int, str]:
    """The sweeps of this config recorded in the database: runs_per_job -> folder."""
    if not db_path.is_file():
        return {}
    with RunStore(db_path, create=False) as store:
        marks = store.marks(f"sweep-plan:{_config_key(cfg)}:")
    return {int(v["runs_per_job"]): str(v["folder"]) for v in marks.values()}


def prepare_sweep(
    config: Any,
    db: str | Path | None,
    runs_per_job: int | None = None,
    sweep_dir: str | Path | None = None,
):
    """(config, jobs, sweep id, database path, sweep folder, runs per job) of a sweep; writes
    nothing.

    ``runs_per_job`` None: the value of this config's sweep recorded in the database (1 if
    there is none). A different value than the recorded one is refused: its jobs would store
    the same runs again. The folder is the recorded one unless ``sweep_dir`` says otherwise."""
    from .data import USER_DATA
    from .models import USER_MODEL

    cfg = load_config(config)
    if cfg.model.name == USER_MODEL or cfg.data.name.lower() == USER_DATA:
        raise ValueError(
            "a sweep's workers rebuild the model and data from the config by name; "
            f"{USER_MODEL!r} stands for objects passed to steepest.train(...). Register them "
            "(steepest.register_model / register_dataset in a plug-in, loaded with --plugin) "
            "and name them in the config"
        )
    db_path = Path(db) if db is not None else default_db_path()
    plans = _plans(db_path, cfg)
    if runs_per_job is None:
        runs_per_job = next(iter(plans)) if len(plans) == 1 else 1
    elif plans and runs_per_job not in plans:
        raise ValueError(
            f"{db_path} already holds a sweep of this config with --runs-per-job "
            f"{', '.join(map(str, sorted(plans)))}; its jobs would store the same runs again. "
            "Use that value (or leave it out), or another --db"
        )
    jobs = plan_jobs(cfg, runs_per_job)
    sid = sweep_id(cfg, runs_per_job)
    folder = sweep_folder(db_path, sid, sweep_dir)
    if sweep_dir is None and runs_per_job in plans:
        folder = Path(plans[runs_per_job])
    elif runs_per_job in plans and Path(plans[runs_per_job]) != folder:
        raise ValueError(
            f"this sweep's folder is {plans[runs_per_job]} (its jobs' state and scratch); "
            "pass that --sweep-dir, or none"
        )
    return cfg, jobs, sid, db_path, folder, runs_per_job


def _write_plan(folder: Path, sid: str, jobs: list[Job]) -> None:
    from .plugins import loaded_plugins

    plugins = loaded_plugins()
    for job in jobs:
        jf = folder / "jobs" / job.id / "job.json"
        spec = {
            "sweep": sid,
            "job": job.id,
            "config": job.config,
            "runs": list(job.runs),
            "plugins": plugins,
        }
        text = json.dumps(spec, sort_keys=True, indent=1)
        if not jf.is_file() or jf.read_text() != text:
            atomic_write_text(jf, text)


def import_payload(
    store: RunStore, folder: Path, sid: str, job: str, blob: bytes, *, marker: str | None = None
) -> list[int]:
    """Store one job's payload (the driver's write): its checkpoint files go to
    ``folder/checkpoints/<batch>/`` (atomic), then its runs, metric rows, checkpoint records and
    the mark ``marker`` (default :func:`job_marker`) in ONE transaction. Returns the run ids;
    a mark already present means the job is stored, and nothing is written twice."""
    payload = torch.load(io.BytesIO(blob), weights_only=True)
    if payload.get("format") != PAYLOAD_FORMAT or (payload["sweep"], payload["job"]) != (sid, job):
        raise ValueError(
            f"job {job}: the worker's payload is for {payload.get('sweep')}/{payload.get('job')} "
            f"(format {payload.get('format')}), expected {sid}/{job} (format {PAYLOAD_FORMAT})"
        )
    ckpt_dir = folder / "checkpoints" / payload["batch"]
    for name, data in payload["files"].items():
        if Path(name).name != name:
            raise ValueError(f"job {job}: checkpoint file name {name!r} is not a plain name")
        raw = data.numpy().tobytes()
        atomic_write(ckpt_dir / name, lambda p, raw=raw: p.write_bytes(raw))
    runs = []
    for r in payload["runs"]:
        info = json.loads(r["info"])
        info["checkpoint_dir"] = str(ckpt_dir)
        if "checkpoint" in info:
            info["checkpoint"] = str(ckpt_dir / Path(info["checkpoint"]).name)
        # The checkpoint files name the runs by their ids in the job's database.
        info["sweep"] = {"id": sid, "job": job, "run_id_in_job": int(r["id"])}
        steps = r["steps"].tolist()
        cols = {k: v.tolist() for k, v in r["metrics"].items()}
        rows = []
        for i, s in enumerate(steps):
            row: dict[str, float] = {"step": s}
            row.update({k: v[i] for k, v in cols.items() if not math.isnan(v[i])})
            rows.append(row)
        runs.append(
            {
                "name": r["name"],
                "experiment": r["experiment"] or None,
                "algorithm": r["algorithm"],
                "seed": r["seed"],
                "status": r["status"],
                "config": json.loads(r["config"]),
                "info": info,
                "metrics": rows,
                "checkpoints": [
                    {
                        "step": c["step"],
                        "path": str(ckpt_dir / c["file"]),
                        "log_loss": None if math.isnan(c["log_loss"]) else c["log_loss"],
                    }
                    for c in r["checkpoints"]
                ],
            }
        )
    return store.import_runs(runs, marker=marker or job_marker(sid, job))


def run_sweep(
    config: Any,
    *,
    db: str | Path | None = None,
    runs_per_job: int | None = None,
    backend: Any = None,
    sweep_dir: str | Path | None = None,
    echo: Callable[[str], None] | None = None,
    poll_s: float = 0.2,
) -> SweepResult:
    """Run every job of ``config`` that is not done yet on ``backend`` (default: a local pool
    of one worker) and store the results; returns the sweep's :class:`SweepResult`.
    ``runs_per_job`` and ``sweep_dir`` as in :func:`prepare_sweep`."""
    from .sweep_backends import LocalBackend

    t0 = time.perf_counter()
    say = echo or (lambda _msg: None)
    cfg, jobs, sid, db_path, folder, runs_per_job = prepare_sweep(
        config, db, runs_per_job, sweep_dir
    )
    db_path.parent.mkdir(parents=True, exist_ok=True)
    check_local_database(db_path)
    backend = backend if backend is not None else LocalBackend(workers=1)
    by_id = {j.id: j for j in jobs}
    run_ids: dict[str, list[int]] = {}
    failures: dict[str, int] = {}
    errors: dict[str, str] = {}
    with RunStore(db_path) as store:
        marks = store.marks(f"sweep-job:{sid}:")
        pending = [j.id for j in jobs if job_marker(sid, j.id) not in marks]
        for j in jobs:
            if j.id not in pending:
                run_ids[j.id] = list(marks[job_marker(sid, j.id)])
        say(
            f"sweep {sid}: {len(jobs)} jobs ({len(jobs) - len(pending)} done), "
            f"{sum(len(j.runs) for j in jobs)} runs, backend {backend.name}"
        )
        in_flight: set[str] = set()
        lease = f"sweep:{sid}"
        store.acquire_lease(lease)  # one driver per sweep; a live one is named in the error
        beat = time.monotonic()
        try:
            _write_plan(folder, sid, jobs)  # only the lease holder writes the jobs' folders
            store.put_mark(
                f"sweep-plan:{_config_key(cfg)}:k{runs_per_job}",
                {"runs_per_job": runs_per_job, "folder": str(folder)},
            )
            backend.start()
            while pending or in_flight:
                batch = []
                while pending and len(in_flight) + len(batch) < backend.capacity:
                    jid = pending.pop(0)
                    _write_state(
                        folder,
                        jid,
                        state="running",
                        failures=failures.get(jid, 0),
                    )
                    batch.append((jid, folder / "jobs" / jid))
                backend.submit(batch)
                in_flight.update(jid for jid, _ in batch)
                for jid, blob, error in backend.poll():
                    in_flight.discard(jid)
                    if blob is not None:
                        try:
                            run_ids[jid] = import_payload(store, folder, sid, jid, blob)
                        except sqlite3.Error:
                            raise  # the database, not the job: stop; a rerun goes on from here
                        except Exception as exc:  # a payload is a worker's data: any defect
                            blob = None
                            error = f"could not store its results: {type(exc).__name__}: {exc}"
                    if blob is not None:
                        _write_state(folder, jid, state="done", failures=failures.get(jid, 0))
                        say(f"{jid} done ({len(by_id[jid].runs)} runs)")
                        continue
                    failures[jid] = failures.get(jid, 0) + 1
                    errors[jid] = error or "unknown error"
                    if failures[jid] < ATTEMPTS:
                        say(f"{jid} failed ({errors[jid]}); retrying from its last checkpoint")
                        pending.insert(0, jid)
                    else:
                        _write_state(
                            folder, jid, state="failed", failures=failures[jid], error=errors[jid]
                        )
                        say(f"{jid} FAILED after {failures[jid]} attempts: {errors[jid]}")
                if in_flight:
                    time.sleep(poll_s)
                if time.monotonic() - beat > HEARTBEAT_EVERY_S:
                    store.heartbeat(lease)
                    beat = time.monotonic()
        finally:
            backend.close()
            store.release_lease(lease)
    statuses = sweep_status(config, db=db_path, runs_per_job=runs_per_job, sweep_dir=sweep_dir).jobs
    return SweepResult(
        sweep=sid,
        folder=folder,
        db=db_path,
        jobs=statuses,
        run_ids=run_ids,
        seconds=time.perf_counter() - t0,
    )


def sweep_status(
    config: Any,
    *,
    db: str | Path | None = None,
    runs_per_job: int | None = None,
    sweep_dir: str | Path | None = None,
) -> SweepResult:
    """Every job of the sweep as done (stored), running (handed to a worker by a driver whose
    lease on the sweep is live), failed (twice, with its error) or pending. Reads the
    database; writes nothing. ``runs_per_job`` and ``sweep_dir`` as in :func:`prepare_sweep`."""
    cfg, jobs, sid, db_path, folder, _ = prepare_sweep(config, db, runs_per_job, sweep_dir)
    marks: dict[str, Sequence[int]] = {}
    driving = False
    if db_path.is_file():
        with RunStore(db_path, create=False) as store:
            marks = store.marks(f"sweep-job:{sid}:")
            lease = store.lease(f"sweep:{sid}")
            driving = lease is not None and not lease["stale"]
    out = []
    for j in jobs:
        st = _read_state(folder, j.id)
        if job_marker(sid, j.id) in marks:
            state = "done"
        elif st.get("state") == "failed":
            state = "failed"
        elif st.get("state") == "running" and driving:
            state = "running"
        else:
            state = "pending"
        out.append(
            JobStatus(
                job=j.id,
                state=state,
                runs=len(j.runs),
                failures=int(st.get("failures", 0)),
                error=str(st.get("error", "")) if state == "failed" else "",
            )
        )
    run_ids = {k.split(":")[-1]: list(v) for k, v in marks.items()}
    return SweepResult(sweep=sid, folder=folder, db=db_path, jobs=out, run_ids=run_ids)
