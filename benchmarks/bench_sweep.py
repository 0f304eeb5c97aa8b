"""What a sweep costs against ``steepest train``, and how fast one driver can write.

Workload (the late-phase benchmark's): MNIST 2 vs 7, n = 200, a bias-free ReLU MLP of width 64,
normalized GD, 4 learning rates × 4 seeds = 16 runs of ``--steps`` steps (default 500), metrics
on the default log-spaced schedule, checkpoints every 100 steps.

1. **Throughput** (run-steps per second of wall time, process start-up included):
   ``steepest.train`` of all 16 runs in one batch in this process (torch's default threads),
   then ``steepest sweep`` with the local backend (1 worker, one job of 16; 2 workers, two jobs
   of 8; 2 workers, 16 jobs of 1) and with Ray (a local 2-CPU cluster started by the backend,
   two jobs of 8 and 16 jobs of 1). Per-job overhead = (time with 16 jobs − time with 2 jobs)
   / 14 · workers.
2. **The driver's write rate.** One real job's payload (its runs, every metric row and its
   checkpoint files) is imported again and again into a fresh database under new marks, and
   so is the same payload without checkpoint files: seconds per import, logged run-steps per
   second, MB per second.

Usage: ``python benchmarks/bench_sweep.py [--steps 500] [--imports 20] [--no-ray]``
(about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from steepest import train
from steepest.store import RunStore
from steepest.sweep import import_payload, job_marker, run_job, run_sweep
from steepest.sweep_backends import LocalBackend, RayBackend


def config(steps: int) -> dict:
    return {
        "name": "bench-sweep",
        "data": {"name": "mnist", "classes": [2, 7], "n_train": 200, "n_test": 200},
        "model": {"name": "mlp", "widths": [64], "init_scale": 0.05},
        "seeds": [0, 1, 2, 3],
        "algorithms": [{"algorithm": "ngd", "lr": [0.02, 0.05, 0.1, 0.2], "schedule": "constant"}],
        "stop": {"steps": steps},
        "logging": {"checkpoint_every": 100},
    }


def logged_run_steps(db: Path) -> int:
    with RunStore(db, create=False) as st:
        return sum(len(st.metrics(r.id)["step"]) for r in st.list_runs())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--imports", type=int, default=20)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument(
        "--simulate",
        type=int,
        default=1000,
        help="then import this many metrics-only job payloads into one database (a driver's "
        "whole sweep) and report how the import time and the database grow",
    )
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(args.steps)))
    run_steps = 16 * args.steps
    rows = []

    t0 = time.perf_counter()
    train(cfg, db=root / "train.db", progress=False)
    base = time.perf_counter() - t0
    rows.append(("steepest train, one batch of 16", 1, base))

    cases = [("local", 1, 16), ("local", 2, 8), ("local", 2, 1)]
    if not args.no_ray:
        cases += [("ray", 2, 8), ("ray", 2, 1)]
    times: dict[tuple[str, int], float] = {}
    for backend, workers, k in cases:
        db = root / f"{backend}-{workers}-{k}.db"
        impl = LocalBackend(workers=workers) if backend == "local" else RayBackend(workers=workers)
        t0 = time.perf_counter()
        res = run_sweep(cfg, db=db, runs_per_job=k, backend=impl)
        wall = time.perf_counter() - t0
        assert not res.failed, res.failed
        times[(backend, k)] = wall
        rows.append(
            (f"sweep {backend}, {workers} worker(s), {16 // k} job(s) of {k}", workers, wall)
        )

    print(f"# throughput: 16 runs x {args.steps} steps = {run_steps} run-steps")
    print("| how | workers | wall s | run-steps/s | vs train |")
    print("|---|---|---|---|---|")
    for how, workers, wall in rows:
        print(f"| {how} | {workers} | {wall:.1f} | {run_steps / wall:.0f} | {base / wall:.2f}x |")
    for backend in ("local", "ray"):
        if (backend, 1) in times and (backend, 8) in times:
            per_job = (times[(backend, 1)] - times[(backend, 8)]) / 14 * 2
            print(f"{backend}: overhead per job ≈ {per_job:.2f} s (16 jobs of 1 vs 2 jobs of 8)")

    # 2. the driver's write rate, with a real payload
    job_dir = next((root / "sweeps").glob("*/*-k8/jobs/job-00000"))
    blob = run_job(job_dir)
    payload = torch.load(io.BytesIO(blob), weights_only=True)
    light = dict(payload, files={})
    for r in light["runs"]:
        r["checkpoints"] = []
        info = json.loads(r["info"])
        info.pop("checkpoint", None)
        r["info"] = json.dumps(info)
    buf = io.BytesIO()
    torch.save(light, buf)
    variants = [("with checkpoint files", blob), ("metrics only", buf.getvalue())]
    logged = sum(len(r["steps"]) for r in payload["runs"])
    cols = sum(len(r["metrics"]) for r in payload["runs"]) / len(payload["runs"])
    print(
        f"\n# driver: one job = {len(payload['runs'])} runs, {logged} logged run-steps "
        f"({cols:.0f} metric columns each), {len(payload['files'])} checkpoint files"
    )
    print("| payload | MB | s per import | logged run-steps/s | MB/s |")
    print("|---|---|---|---|---|")
    for what, data in variants:
        db = root / f"driver-{what[:5]}.db"
        folder = root / f"driver-{what[:5]}"
        with RunStore(db) as st:
            t0 = time.perf_counter()
            for i in range(args.imports):
                sid = payload["sweep"]
                import_payload(
                    st, folder, sid, payload["job"], data, marker=job_marker(f"{sid}#{i}", "x")
                )
            wall = (time.perf_counter() - t0) / args.imports
        mb = len(data) / 2**20
        print(f"| {what} | {mb:.1f} | {wall:.3f} | {logged / wall:.0f} | {mb / wall:.0f} |")
    if args.simulate:
        db = root / "simulated.db"
        light_blob = variants[1][1]
        marks = [100, 250, 500, 750, args.simulate]
        print(
            f"\n# simulated driver: {args.simulate} jobs like this one, metrics only, one database"
        )
        print("| jobs stored | s per import (last block) | database MB |")
        print("|---|---|---|")
        with RunStore(db) as st:
            done, t_block = 0, time.perf_counter()
            for upto in marks:
                while done < upto:
                    import_payload(
                        st, root / "sim", payload["sweep"], payload["job"], light_blob,
                        marker=job_marker(f"sim#{done}", "x"),
                    )  # fmt: skip
                    done += 1
                per = (time.perf_counter() - t_block) / (
                    upto - (marks[marks.index(upto) - 1] if marks.index(upto) else 0)
                )
                t_block = time.perf_counter()
                size = sum(p.stat().st_size for p in root.glob("simulated.db*")) / 2**20
                print(f"| {upto} | {per:.3f} | {size:.0f} |")
    print(f"\n(temporary files in {root})")


if __name__ == "__main__":
    main()
