"""Sweeps (steepest.sweep): the plan, one writer, real backends, real kills.

Every backend test compares the sweep's runs with ``steepest.train`` of the whole config, run
by run (matched by name), on every stored metric except ``wall_time``: ≤ 1e-12 relative (the
engine steps each run of a batch on its own, so a different split must not change a run).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from steepest import train
from steepest.config import load_config
from steepest.store import RunStore
from steepest.sweep import job_marker, plan_jobs, run_sweep, sweep_status
from steepest.sweep_backends import LocalBackend, RayBackend, SlurmBackend, slurm_script

CONFIG = {
    "name": "sw",
    "data": {"name": "gaussian_clusters", "n_train": 40, "n_test": 40, "options": {"d": 5}},
    "model": {"name": "mlp", "widths": [8], "init_scale": 0.5},
    "seeds": [0, 1],
    "algorithms": [
        {"algorithm": "ngd", "lr": [0.1, 0.05], "schedule": "constant"},
        {"algorithm": "sign", "schedule": "flow"},
    ],
    "stop": {"steps": 150},
    "logging": {"checkpoint_every": 50},
}


def write(folder: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def runs_by_name(db: Path) -> dict[str, list[tuple[str, dict]]]:
    out: dict[str, list[tuple[str, dict]]] = {}
    with RunStore(db, create=False) as st:
        for r in st.list_runs():
            out.setdefault(r.name, []).append((r.status, st.metrics(r.id)))
    return out


def assert_same_runs(db: Path, ref: Path) -> None:
    """Same run names, each once, same status, same metric rows (≤ 1e-12 relative)."""
    a, b = runs_by_name(db), runs_by_name(ref)
    assert sorted(a) == sorted(b)
    for name in a:
        assert len(a[name]) == 1, f"run {name} stored {len(a[name])} times"
        (sa, ma), (sb, mb) = a[name][0], b[name][0]
        assert sa == sb, name
        assert set(ma) == set(mb), name
        np.testing.assert_array_equal(ma["step"], mb["step"], err_msg=name)
        for k in ma:
            if k in ("step", "wall_time"):
                continue
            np.testing.assert_allclose(ma[k], mb[k], rtol=1e-12, atol=0, err_msg=f"{name} {k}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The whole config trained in one batch by ``steepest.train``: (config, database)."""
    folder = tmp_path_factory.mktemp("ref")
    cfg = write(folder, CONFIG)
    train(cfg, db=folder / "ref.db", progress=False)
    return cfg, folder / "ref.db"


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7])
def test_plan_covers_every_run_once_in_jobs_of_at_most_k(k):
    cfg = load_config({**CONFIG, "seeds": [0, 1, 2]})
    jobs = plan_jobs(cfg, k)
    names = [n for j in jobs for n in j.runs]
    expected = [f"sw/{sp.label}/lr={sp.schedule['lr']:g}/seed={sp.seed}" for sp in cfg.run_specs()]
    assert sorted(names) == sorted(expected) and len(set(names)) == len(names)
    for j in jobs:
        assert 1 <= len(j.runs) <= k
        sub = load_config(j.config)  # every job is an ordinary config with exactly its runs
        got = [f"sw/{sp.label}/lr={sp.schedule['lr']:g}/seed={sp.seed}" for sp in sub.run_specs()]
        assert got == list(j.runs)
    with pytest.raises(ValueError, match="runs_per_job"):
        plan_jobs(cfg, 0)


def test_import_is_one_transaction_and_idempotent(tmp_path):
    run = {
        "name": "x",
        "algorithm": "gd",
        "seed": 0,
        "status": "completed",
        "config": {},
        "info": {},
        "metrics": [{"step": 0, "log_loss": -1.0}, {"step": 5, "log_loss": -2.0}],
        "checkpoints": [{"step": 5, "path": "a.pt", "log_loss": -2.0}],
    }
    with RunStore(tmp_path / "r.db") as st:
        bad = {**run, "metrics": [{"step": 0, "log_loss": float("nan")}]}
        with pytest.raises(ValueError, match="NaN"):
            st.import_runs([run, bad], marker="m")
        assert st.list_runs() == [] and st.marks("m") == {}  # nothing half-written
        ids = st.import_runs([run, run], marker="m")
        assert st.import_runs([run, run], marker="m") == ids  # again: nothing new
        assert len(st.list_runs()) == 2 and st.marks("m") == {"m": ids}
        np.testing.assert_array_equal(st.metrics(ids[0])["log_loss"], [-1.0, -2.0])
        assert st.checkpoints(ids[1])[0]["path"] == "a.pt"


def test_local_sweep_equals_train_and_a_rerun_skips_finished_jobs(tmp_path, reference):
    cfg, ref = reference
    db = tmp_path / "runs.db"
    res = run_sweep(cfg, db=db, runs_per_job=2, backend=LocalBackend(workers=2))
    assert [j.state for j in res.jobs] == ["done"] * 3, [(j.job, j.error) for j in res.jobs]
    assert_same_runs(db, ref)
    with RunStore(db, create=False) as st:  # checkpoints were copied beside the database
        r = st.list_runs()[0]
        assert Path(r.info["checkpoint"]).is_file()
        assert all(Path(c["path"]).is_file() for c in st.checkpoints(r.id))
        assert r.info["sweep"]["job"].startswith("job-")
    again = run_sweep(cfg, db=db, runs_per_job=2, backend=LocalBackend(workers=2))
    assert again.run_ids == res.run_ids
    assert_same_runs(db, ref)  # nothing duplicated
    # verify reads a sweep's runs as train's: checkpoints (named by the jobs' run ids), KKT
    # points, and the flavor check across the sweep's jobs; every verdict is the same.
    assert verdicts(db) == verdicts(ref)


def verdicts(db: Path) -> dict[tuple[str, str], str]:
    from steepest.verify import verify_runs

    with RunStore(db, create=False) as st:
        names = {r.id: r.name for r in st.list_runs()}
        report = verify_runs(st, sorted(names))
    out = {(names[rv.run_id], c.check): c.verdict for rv in report.runs for c in rv.checks}
    assert "not applicable" not in {v for (_, chk), v in out.items() if chk in ("kkt", "flavor")}
    return out


def _wait(pred, what: str, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _checkpoint_past_zero(job_dir: Path) -> bool:
    return any(
        int(re.findall(r"\d+", p.name)[0]) > 0 for p in job_dir.glob("checkpoints/*/iter-*.pt")
    )


LONG = {**CONFIG, "algorithms": [CONFIG["algorithms"][0]], "stop": {"steps": 1500}}
LONG["logging"] = {"checkpoint_every": 50}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "steepest.cli", *args]


def test_a_killed_worker_is_retried_from_its_last_checkpoint(tmp_path):
    cfg = write(tmp_path, LONG)
    db = tmp_path / "runs.db"
    driver = subprocess.Popen(_cli("sweep", str(cfg), "--db", str(db), "-k", "4"))
    sid_dir = next(iter(_glob_wait(tmp_path, "sweeps/*/*/jobs/job-00000")))
    _wait(
        lambda: (sid_dir / "worker.pid").is_file() and _checkpoint_past_zero(sid_dir),
        "a checkpoint",
    )
    os.kill(int((sid_dir / "worker.pid").read_text()), signal.SIGKILL)
    assert driver.wait(timeout=300) == 0
    state = json.loads((sid_dir / "state.json").read_text())
    assert state == {"failures": 1, "state": "done"}
    with RunStore(sid_dir / "job.db", create=False) as st:
        assert len(st.list_runs()) == 4  # the retry resumed the batch; it did not start another
    ref = tmp_path / "ref.db"
    train(cfg, db=ref, progress=False)
    assert_same_runs(db, ref)


def _glob_wait(root: Path, pattern: str) -> list[Path]:
    _wait(lambda: any(root.glob(pattern)), pattern)
    return list(root.glob(pattern))


def test_driver_sigkill_then_rerun_completes_the_sweep_exactly(tmp_path):
    cfg = write(tmp_path, LONG)
    db = tmp_path / "runs.db"
    args = _cli("sweep", str(cfg), "--db", str(db), "-k", "2")  # two jobs, one worker
    driver = subprocess.Popen(args)
    job0 = next(iter(_glob_wait(tmp_path, "sweeps/*/*/jobs/job-00000")))
    _wait(lambda: (job0 / "worker.pid").is_file(), "job 0 running")
    # one driver per sweep (asked while both jobs are ahead, so the first is surely alive)
    second = subprocess.run(args, capture_output=True, text=True)
    assert second.returncode == 2 and f"pid {driver.pid}" in second.stderr, second.stderr
    job1 = job0.parent / "job-00001"
    _wait(lambda: (job1 / "worker.pid").is_file() and _checkpoint_past_zero(job1), "job 1 running")
    assert [j.state for j in sweep_status(cfg, db=db).jobs] == ["done", "running"]  # k recorded
    driver.kill()  # SIGKILL: no clean-up; the worker gets SIGTERM from the kernel
    driver.wait()
    worker = int((job1 / "worker.pid").read_text())
    _wait(lambda: not Path(f"/proc/{worker}").exists() or _zombie(worker), "the worker to stop")
    status = sweep_status(cfg, db=db, runs_per_job=2)
    assert [j.state for j in status.jobs] == ["done", "pending"]
    assert subprocess.run(args, check=False).returncode == 0
    with RunStore(job1 / "job.db", create=False) as st:
        assert len(st.list_runs()) == 2  # resumed from its checkpoint, not started again
    ref = tmp_path / "ref.db"
    train(cfg, db=ref, progress=False)
    assert_same_runs(db, ref)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_job_that_fails_twice_is_marked_failed_with_its_error(tmp_path):
    bad = {**CONFIG, "warm_start": {"algorithm": "ngd", "lr": 1e-9, "max_steps": 2}}
    cfg = write(tmp_path, bad)
    db = tmp_path / "runs.db"
    out = subprocess.run(
        _cli("sweep", str(cfg), "--db", str(db), "-k", "6"), capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "FAILED after 2 attempts" in out.stdout and "warm start did not reach" in out.stdout
    status = subprocess.run(
        _cli("sweep", "status", str(cfg), "--db", str(db), "-k", "6"),
        capture_output=True,
        text=True,
    )
    assert "1 failed" in status.stdout and "warm start did not reach" in status.stdout
    with RunStore(db, create=False) as st:
        assert st.list_runs() == []  # a failed job writes nothing


def test_ray_sweep_on_a_local_two_cpu_cluster_equals_train(tmp_path, reference):
    pytest.importorskip("ray")
    cfg, ref = reference
    db = tmp_path / "runs.db"
    res = run_sweep(cfg, db=db, runs_per_job=2, backend=RayBackend(workers=2))
    assert [j.state for j in res.jobs] == ["done"] * 3, [(j.job, j.error) for j in res.jobs]
    assert_same_runs(db, ref)


def test_slurm_protocol_with_submitits_local_executor_equals_train(tmp_path, reference):
    pytest.importorskip("submitit")
    cfg, ref = reference
    db = tmp_path / "runs.db"
    res = run_sweep(
        cfg,
        db=db,
        runs_per_job=4,
        backend=SlurmBackend(tmp_path / "slurm", local=True, max_parallel=2, max_array=1),
    )
    assert [j.state for j in res.jobs] == ["done", "done"], [
        (j.job, j.error) for j in res.jobs
    ]  # two arrays of one job each
    arrays = {p.read_text().split("_")[0] for p in tmp_path.glob("sweeps/*/*/jobs/*/slurm_job_id")}
    assert len(arrays) == 2
    assert_same_runs(db, ref)


# The long options of sbatch (Slurm 24.05 man page) that a script of ours may use.
SBATCH_OPTIONS = {
    "array", "account", "constraint", "cpus-per-task", "error", "gpus-per-node", "job-name",
    "mem", "nodes", "ntasks-per-node", "open-mode", "output", "partition", "signal", "time",
    "wckey", "qos", "gres", "exclude",
}  # fmt: skip


def parse_sbatch(script: str) -> dict[str, str]:
    """The ``#SBATCH --key=value`` directives, in the header (before the first command)."""
    out: dict[str, str] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            m = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line.strip())
            assert m, f"malformed directive: {line!r}"
            out[m.group(1)] = m.group(2) or ""
        elif line.strip() and not line.startswith("#"):
            break
    return out


def test_dry_run_writes_a_valid_array_script_and_submits_nothing(tmp_path):
    pytest.importorskip("submitit")
    cfg = write(tmp_path, CONFIG)
    db = tmp_path / "runs.db"
    out = subprocess.run(
        _cli(
            "sweep", str(cfg), "--db", str(db), "--backend", "slurm", "--dry-run",
            "--partition", "gpu", "--time", "90", "--gpus", "1", "--mem", "16",
            "--cpus", "4", "--max-parallel", "2",
        ),
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    script = next(tmp_path.glob("sweeps/*/*/slurm/sweep.sbatch")).read_text()
    d = parse_sbatch(script)
    assert set(d) <= SBATCH_OPTIONS, set(d) - SBATCH_OPTIONS
    assert d["array"] == "0-5%2"  # six jobs of one run, two at a time
    assert (d["partition"], d["time"], d["gpus-per-node"], d["cpus-per-task"]) == (
        "gpu", "90", "1", "4",
    )  # fmt: skip
    assert d["mem"] == "16GB"  # as submitit writes it
    assert "submitit.core._submit" in script
    assert not db.exists() and not list(tmp_path.glob("sweeps/*/*/slurm/submitit/*"))
    # the same script from the API
    backend = SlurmBackend(tmp_path / "x", time_min=5)
    assert parse_sbatch(slurm_script(backend, 3))["array"] == "0-2%3"
    capped = SlurmBackend(tmp_path / "x", max_array=2, max_parallel=1)
    assert parse_sbatch(slurm_script(capped, 5))["array"] == "0-1%1"  # the first of 3 arrays
    assert job_marker("s", "job-00000") == "sweep-job:s:job-00000"


def test_the_readmes_sweep_commands_run_as_written_where_they_are_cheap(tmp_path):
    """The README's sweep block, on the README's example config: the dry run writes a valid
    array script and `status` lists every job as pending (the training lines would take
    minutes; the backends' tests above run the same code)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Sweeps.*?```bash\n(.*?)```", readme, flags=re.S).group(1)
    example = next(
        c
        for c in map(yaml.safe_load, re.findall(r"```yaml\n(.*?)```", readme, flags=re.S))
        if isinstance(c, dict) and "algorithms" in c
    )
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(example))
    lines = [ln.split("#")[0].split() for ln in block.splitlines() if ln.startswith("steepest")]
    cheap = [ln for ln in lines if "--dry-run" in ln or ln[:3] == ["steepest", "sweep", "status"]]
    assert len(cheap) == 2
    n_runs = len(load_config(example).run_specs())
    for ln in cheap:
        out = subprocess.run(
            _cli(*ln[1:], "--db", str(tmp_path / "runs.db")),
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
    script = next(tmp_path.glob("sweeps/*/*/slurm/sweep.sbatch")).read_text()
    n_jobs = len(plan_jobs(load_config(example), 8))
    assert parse_sbatch(script)["array"] == f"0-{n_jobs - 1}%{min(n_jobs, 256)}"
    assert out.stdout.count("pending") == n_jobs + 1 and n_runs > n_jobs  # rows + summary


def test_a_sweep_loads_the_drivers_plugins_in_its_workers(tmp_path):
    cfg = {
        **CONFIG,
        "model": {"name": "user-two-layer", "width": 6},
        "algorithms": [{"algorithm": "user-scaled-gd", "schedule": "power", "lr": 0.5, "a": 0.5}],
        "stop": {"steps": 20},
    }
    path = write(tmp_path, cfg)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    out = subprocess.run(
        _cli("--plugin", "user_plugin", "sweep", str(path), "--db", str(tmp_path / "r.db")),
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    with RunStore(tmp_path / "r.db", create=False) as st:
        runs = st.list_runs()
    assert len(runs) == 2 and {r.algorithm for r in runs} == {"user-scaled-gd"}


def test_objects_cannot_be_swept_and_bad_options_are_one_line(tmp_path):
    user = write(tmp_path, {**CONFIG, "model": {"name": "user"}})
    with pytest.raises(ValueError, match="register_model"):
        run_sweep(user, db=tmp_path / "r.db")
    cfg = write(tmp_path, CONFIG, "ok.yaml")
    for args, msg in (
        (["-k", "0"], "runs_per_job must be a positive integer"),
        (["--backend", "mpi"], "unknown backend 'mpi'"),
        (["--dry-run"], "--dry-run applies to --backend slurm, not local"),
        (["--partition", "gpu"], "--partition applies to --backend slurm, not local"),
        (["--backend", "slurm", "--workers", "2"], "--workers applies to --backend local or ray"),
        (["--backend", "slurm", "--dry-run", "--mem", "-3"], "mem (GB) must be positive"),
        (["--workers", "0"], "workers must be a positive integer"),
    ):
        out = subprocess.run(
            _cli("sweep", str(cfg), "--db", str(tmp_path / "r.db"), *args),
            capture_output=True, text=True,
        )  # fmt: skip
        assert out.returncode == 2 and msg in out.stderr and "Traceback" not in out.stderr, args


def test_scratch_keeps_each_jobs_database_apart_and_results_equal(tmp_path, reference):
    cfg, ref = reference
    scratch = tmp_path / "node-local"
    for name in ("a.db", "b.db"):  # two databases, one scratch folder: no job shares a db
        res = run_sweep(
            cfg, db=tmp_path / name, runs_per_job=6, backend=LocalBackend(1, scratch=scratch)
        )
        assert [j.state for j in res.jobs] == ["done"], [(j.job, j.error) for j in res.jobs]
        assert_same_runs(tmp_path / name, ref)
    assert len(list(scratch.glob("job-00000-*/job.db"))) == 2
    assert not list(tmp_path.glob("sweeps/*/*/jobs/*/job.db"))


def test_a_results_database_on_a_network_filesystem_is_refused():
    from steepest.sweep import check_local_database, filesystem_type

    mounts = (
        "/dev/vda / ext4 rw 0 0\n"
        "server:/export/home /home nfs4 rw 0 0\n"
        "/dev/vdb /home/me/local ext4 rw 0 0\n"
    )
    assert filesystem_type("/home/me/runs/x.db", mounts) == "nfs4"
    assert filesystem_type("/home/me/local/x.db", mounts) == "ext4"  # the longest mount wins
    assert filesystem_type("/tmp/x.db", mounts) == "ext4"
    with pytest.raises(ValueError, match="on a nfs4 filesystem"):
        check_local_database(Path("/home/me/runs/x.db"), mounts)
    check_local_database(Path("/home/me/local/x.db"), mounts)
    check_local_database(Path("/tmp/x.db"))  # this machine's real mount table: a local disk


def test_minibatch_sweeps_equal_train_and_a_job_must_hold_every_seed(tmp_path):
    cfg = {**CONFIG, "batch_size": 10, "algorithms": [CONFIG["algorithms"][0]]}
    cfg["stop"] = {"steps": 60}
    path = write(tmp_path, cfg)
    with pytest.raises(ValueError, match="minibatch order"):
        run_sweep(path, db=tmp_path / "r.db", runs_per_job=1)
    res = run_sweep(path, db=tmp_path / "r.db", runs_per_job=2, backend=LocalBackend(2))
    assert [j.state for j in res.jobs] == ["done", "done"], [(j.job, j.error) for j in res.jobs]
    train(path, db=tmp_path / "ref.db", progress=False)
    assert_same_runs(tmp_path / "r.db", tmp_path / "ref.db")


def test_one_k_per_config_and_database_and_a_shared_sweep_dir(tmp_path):
    cfg = write(
        tmp_path, {**CONFIG, "algorithms": [CONFIG["algorithms"][1]], "stop": {"steps": 30}}
    )
    db, shared = tmp_path / "local" / "r.db", tmp_path / "shared"
    res = run_sweep(cfg, db=db, runs_per_job=1, sweep_dir=shared)
    assert [j.state for j in res.jobs] == ["done", "done"] and shared in res.folder.parents
    # status and a rerun find the recorded k and folder by themselves
    assert sweep_status(cfg, db=db).folder == res.folder
    assert run_sweep(cfg, db=db).run_ids == res.run_ids
    with pytest.raises(ValueError, match="runs-per-job 1; its jobs would store the same runs"):
        run_sweep(cfg, db=db, runs_per_job=2)
    with pytest.raises(ValueError, match="pass that --sweep-dir"):
        run_sweep(cfg, db=db, sweep_dir=tmp_path / "elsewhere")
    assert len(runs_by_name(db)) == 2 and all(len(v) == 1 for v in runs_by_name(db).values())
