"""Where a sweep's jobs run: a local process pool, a Ray cluster, or SLURM through submitit.

Every backend runs :func:`steepest.sweep.run_job` on a job's folder and hands the driver the
payload bytes, or the error of a job that ended without one. None of them opens the results
database. The interface (duck-typed): ``name``, ``capacity`` (jobs in flight at most),
``start()``, ``submit(jobs)`` with ``[(job id, job folder), ...]``, ``poll()`` returning
``[(job id, payload bytes or None, error or None), ...]`` for the jobs that ended, ``close()``.

Run as ``python -m steepest.sweep_backends --serve [--scratch DIR]``, this module is the local
backend's worker: it reads job folders on stdin, writes each payload to ``<job>/result.pt``
(atomically) and answers ``ok`` or ``error <why>`` on stdout, one line per job.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .atomic import atomic_write, atomic_write_text

__all__ = ["LocalBackend", "RayBackend", "SlurmBackend", "slurm_script"]

_ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM this worker when its driver dies (the engine then checkpoints and stops)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Slot:
    """One long-lived local worker process and the job it is running (None: idle)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.job: tuple[str, Path] | None = None


class LocalBackend:
    """``workers`` long-lived worker processes on this machine, one torch thread each.

    A worker imports torch and loads data once and then runs job after job (its caches stay
    warm); it takes a job folder on stdin and answers with one line on stdout. A worker that
    dies fails its job (the driver retries it) and is replaced by a new one.
    """

    name = "local"

    def __init__(self, workers: int = 1, scratch: str | Path | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.capacity = workers
        self.scratch = scratch
        if scratch is not None:  # a bad folder is one error now, not every job failing twice
            Path(scratch).mkdir(parents=True, exist_ok=True)
        self._slots: list[_Slot] = []

    def start(self) -> None:
        pass

    def _spawn(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "steepest.sweep_backends", "--serve"]
        if self.scratch is not None:
            cmd += ["--scratch", str(self.scratch)]
        return subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the worker sends each job's output to that job's worker.log
            env={**os.environ, **_ONE_THREAD},
            text=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )

    def submit(self, jobs: list[tuple[str, Path]]) -> None:
        for jid, job_dir in jobs:
            self._slots = [s for s in self._slots if s.job is not None or s.proc.poll() is None]
            slot = next((s for s in self._slots if s.job is None), None)
            if slot is None:
                slot = _Slot(self._spawn())
                self._slots.append(slot)
            (job_dir / "result.pt").unlink(missing_ok=True)
            slot.job = (jid, job_dir)
            assert slot.proc.stdin is not None
            try:
                slot.proc.stdin.write(f"{job_dir}\n")
                slot.proc.stdin.flush()
            except BrokenPipeError:
                pass  # it died while idle: poll() reports the job as failed

    def poll(self) -> list[tuple[str, bytes | None, str | None]]:
        import select

        out = []
        for slot in list(self._slots):
            if slot.job is None:
                continue
            jid, job_dir = slot.job
            rc = slot.proc.poll()
            assert slot.proc.stdout is not None
            ready = rc is None and select.select([slot.proc.stdout], [], [], 0)[0]
            if ready:
                answer = slot.proc.stdout.readline().strip()
                slot.job = None
                if not answer:  # EOF: it exited between the two checks
                    self._slots.remove(slot)
                    out.append((jid, None, "worker exited without an answer"))
                    continue
                result = job_dir / "result.pt"
                if answer == "ok" and result.is_file():
                    out.append((jid, result.read_bytes(), None))
                else:
                    out.append((jid, None, answer.removeprefix("error ") or "no answer"))
                continue
            if rc is None:
                continue
            self._slots.remove(slot)  # it died mid-job; a new worker takes the next job
            why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
            try:
                last = _last_line((job_dir / "worker.log").read_text(errors="replace"))
            except OSError:
                last = ""
            out.append((jid, None, f"worker {why}" + (f": {last}" if last else "")))
        return out

    def close(self) -> None:
        for slot in self._slots:  # idle workers read EOF and exit; busy ones are stopped
            if slot.job is not None:
                slot.proc.terminate()
            if slot.proc.stdin is not None:
                try:
                    slot.proc.stdin.close()
                except BrokenPipeError:
                    pass
        for slot in self._slots:
            try:
                slot.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                slot.proc.kill()
                slot.proc.wait()
        self._slots.clear()


def _ray_job(job_dir: str, spec: str, scratch: str | None) -> bytes:
    import tempfile

    import torch

    from .sweep import run_job

    torch.set_num_threads(1)
    if scratch is None and not Path(job_dir).is_dir():  # a node without the driver's disk
        scratch = str(Path(tempfile.gettempdir()) / "steepest-sweeps")
    return run_job(job_dir, scratch, spec=spec)


class RayBackend:
    """Ray: the cluster at ``address`` (``ray://host:port`` or ``auto``), or a local one with
    ``workers`` CPUs that this backend starts and stops. One CPU per job. The job's spec
    travels with the task; a node that does not see the driver's disk keeps its scratch under
    its temp folder (a retry resumes from a checkpoint only on the same node)."""

    name = "ray"

    def __init__(
        self, address: str | None = None, workers: int | None = None, scratch: str | None = None
    ) -> None:
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.address, self.workers, self.scratch = address, workers, scratch
        self.capacity = workers or 1
        self._refs: dict[Any, str] = {}
        self._started = False

    def start(self) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError("the ray backend needs Ray: pip install 'steepest[cluster]'") from exc
        if not ray.is_initialized():
            if self.address is not None:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers or 1, include_dashboard=False, log_to_driver=False)
            self._started = True
        if self.workers is None:
            self.capacity = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._fn = ray.remote(num_cpus=1, max_retries=0)(_ray_job)

    def submit(self, jobs: list[tuple[str, Path]]) -> None:
        for jid, job_dir in jobs:
            spec = (job_dir / "job.json").read_text()
            self._refs[self._fn.remote(str(job_dir), spec, self.scratch)] = jid

    def poll(self) -> list[tuple[str, bytes | None, str | None]]:
        import ray

        if not self._refs:
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
        out = []
        for ref in ready:
            jid = self._refs.pop(ref)
            try:
                out.append((jid, ray.get(ref), None))
            except ray.exceptions.RayError as exc:
                out.append((jid, None, f"{type(exc).__name__}: {_last_line(str(exc))}"))
        return out

    def close(self) -> None:
        if not self._refs and not self._started:
            return  # never started (or nothing to stop): Ray need not even be installed
        import ray

        for ref in self._refs:
            ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started:
            ray.shutdown()


def _run_job(job_dir: str, spec: str, scratch: str | None) -> bytes:
    import tempfile

    from .sweep import run_job

    if scratch is None and "SLURM_JOB_ID" in os.environ:  # a node: keep SQLite off the shared disk
        scratch = str(Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "steepest-sweeps")
    return run_job(job_dir, scratch, spec=spec)


class SlurmBackend:
    """SLURM through submitit: all pending jobs go out as one job array. ``local=True`` uses
    submitit's local executor (same files and protocol, processes on this machine).

    partition, time_min, gpus (per node), mem_gb, cpus (per task), max_parallel (the array's
    ``%`` limit: jobs running at once), scratch (default on a SLURM node: ``$TMPDIR`` or the
    temp folder, node-local, so that the job's SQLite scratch never lives on the shared disk;
    a retry on another node then starts its job again), max_array (jobs per array at most: Slurm's default
    ``MaxArraySize`` of 1001 allows indices 0–1000), setup (shell lines before the job, e.g. ``module load``).
    """

    name = "slurm"

    def __init__(
        self,
        folder: str | Path,
        *,
        partition: str | None = None,
        time_min: int = 60,
        gpus: int = 0,
        mem_gb: float | None = None,
        cpus: int = 1,
        max_parallel: int = 256,
        max_array: int = 1000,
        scratch: str | None = None,
        setup: list[str] | None = None,
        local: bool = False,
    ) -> None:
        checks = (("time_min", time_min), ("cpus", cpus), ("max_parallel", max_parallel))
        for arg, val in (*checks, ("max_array", max_array)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{arg} must be a positive integer, got {val!r}")
        if not isinstance(gpus, int) or gpus < 0:
            raise ValueError(f"gpus must be a non-negative integer, got {gpus!r}")
        if mem_gb is not None and not (isinstance(mem_gb, int | float) and mem_gb > 0):
            raise ValueError(f"mem (GB) must be positive, got {mem_gb!r}")
        self.folder, self.local, self.scratch = Path(folder), local, scratch
        # Everything pending goes out as one array; SLURM runs max_parallel of it at a time
        # (the array's % limit), so the driver does not hold jobs back and call sbatch per job.
        self.capacity = 10**9
        self.max_array = max_array
        self.params: dict[str, Any] = {
            "timeout_min": time_min,
            "cpus_per_task": cpus,
            "slurm_array_parallelism": max_parallel,
        }
        if gpus:  # "--gpus-per-node=0" is refused by clusters without GPU resources
            self.params["gpus_per_node"] = gpus
        if partition is not None:
            self.params["slurm_partition"] = partition
        if mem_gb is not None:
            self.params["mem_gb"] = mem_gb
        if setup:
            self.params["slurm_setup"] = list(setup)
        self._jobs: dict[str, Any] = {}
        self._refused: list[tuple[str, bytes | None, str | None]] = []

    def start(self) -> None:
        try:
            import submitit
        except ImportError as exc:
            raise ImportError(
                "the slurm backend needs submitit: pip install 'steepest[cluster]'"
            ) from exc
        cluster = "local" if self.local else "slurm"
        self._ex = submitit.AutoExecutor(folder=self.folder / "submitit", cluster=cluster)
        params = dict(self.params)
        if self.local:  # the local executor knows only the generic parameters
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
            params.pop("gpus_per_node", None)
        self._ex.update_parameters(name="steepest-sweep", **params)

    def submit(self, jobs: list[tuple[str, Path]]) -> None:
        for i in range(0, len(jobs), self.max_array):  # one sbatch per array
            chunk = jobs[i : i + self.max_array]
            try:
                with self._ex.batch():
                    handles = [
                        self._ex.submit(
                            _run_job, str(d), (d / "job.json").read_text(), self.scratch
                        )
                        for _, d in chunk
                    ]
            except Exception as exc:  # sbatch refused this array: its jobs failed, not the rest
                why = f"submission failed: {type(exc).__name__}: {_last_line(str(exc))}"
                self._refused.extend((jid, None, why) for jid, _ in chunk)
                continue
            for (jid, job_dir), handle in zip(chunk, handles, strict=True):
                self._jobs[jid] = handle
                atomic_write_text(job_dir / "slurm_job_id", str(handle.job_id))

    def poll(self) -> list[tuple[str, bytes | None, str | None]]:
        out, self._refused = self._refused, []
        for jid, handle in list(self._jobs.items()):
            if not handle.done():
                continue
            del self._jobs[jid]
            try:
                out.append((jid, handle.result(), None))
            except Exception as exc:  # submitit re-raises the job's error, or its own
                out.append((jid, None, f"{type(exc).__name__}: {_last_line(str(exc))}"))
        return out

    def close(self) -> None:
        for handle in self._jobs.values():
            handle.cancel(check=False)
        self._jobs.clear()


def slurm_script(backend: SlurmBackend, n_jobs: int) -> str:
    """The sbatch script that submitit writes for an array of ``n_jobs`` jobs of ``backend``
    (what ``steepest sweep --backend slurm --dry-run`` shows; nothing is submitted). More jobs
    than ``backend.max_array`` go out as several such arrays; this is the first."""
    from submitit.slurm.slurm import _make_sbatch_string  # submitit==1.5.4: the writer it uses

    p = backend.params
    folder = backend.folder / "submitit" / "%j"
    kw: dict[str, Any] = {
        "job_name": "steepest-sweep",
        "time": p["timeout_min"],
        "cpus_per_task": p["cpus_per_task"],
        "array_parallelism": p["slurm_array_parallelism"],
        "map_count": min(n_jobs, backend.max_array),
    }
    if "gpus_per_node" in p:
        kw["gpus_per_node"] = p["gpus_per_node"]
    if "slurm_partition" in p:
        kw["partition"] = p["slurm_partition"]
    if "mem_gb" in p:  # as submitit writes it
        gb = p["mem_gb"]
        kw["mem"] = f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"
    if "slurm_setup" in p:
        kw["setup"] = p["slurm_setup"]
    command = " ".join(
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))]
    )
    return _make_sbatch_string(command=command, folder=folder, **kw)


def _serve(scratch: str | None) -> int:
    """The local worker's loop: a job folder per stdin line, ``ok`` or ``error <why>`` back.

    The answers go to a private copy of the original stdout; while a job runs, file
    descriptors 1 and 2 point at its ``worker.log``, so nothing a library prints (from C too)
    can get into the answers."""
    import traceback

    import torch

    from .sweep import run_job

    torch.set_num_threads(1)
    answer = os.fdopen(os.dup(1), "w")
    saved = os.dup(1), os.dup(2)
    for line in sys.stdin:
        job_dir = Path(line.strip())
        atomic_write_text(job_dir / "worker.pid", str(os.getpid()))
        with open(job_dir / "worker.log", "a") as log:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                blob = run_job(job_dir, scratch)
                atomic_write(job_dir / "result.pt", lambda p, b=blob: p.write_bytes(b))
                reply = "ok"
            except Exception as exc:  # the job failed, not the worker: report and go on
                traceback.print_exc()
                reply = "error " + " ".join(f"{type(exc).__name__}: {exc}".split())
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        answer.write(reply + "\n")
        answer.flush()
    return 0


def _worker_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m steepest.sweep_backends")
    ap.add_argument("--serve", action="store_true", help="run the local backend's worker loop")
    ap.add_argument("--scratch", default=None)
    args = ap.parse_args(argv)
    if not args.serve:
        ap.error("this module is the local sweep backend's worker; run it with --serve")
    return _serve(args.scratch)


if __name__ == "__main__":
    sys.exit(_worker_main())
