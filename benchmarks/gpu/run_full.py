"""Run as many ``steepest reproduce NAME --size full`` as fit in a time budget on one device.

Reads the per-experiment training estimates that ``estimate_full_size.py --json`` measured on
the same device in the same session, and goes through the experiments from the cheapest
estimate up. An experiment starts only if ``safety × estimate + overhead`` fits the time left
(its warm start, metrics, verify and figures are not in the estimate); each runs as its own
``steepest reproduce`` process under a hard timeout of the time left, so one that overruns is
killed and recorded as such instead of eating the budget of the rest. Each one's report.md,
results.json and PNG figures go into ``OUT/NAME/``; a summary (status, seconds, verdict line,
estimate) into ``OUT/summary.json``.

Run: ``python benchmarks/gpu/run_full.py --estimates est.json --out DIR --budget 300
[--device cuda] [--size full]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

KEEP = ("report.md", "results.json")


def _copy_store(src: Path, dst: Path, limit: int = 15 * 2**20) -> None:
    """A consistent copy of a SQLite store through the backup API: it includes the rows still
    in the write-ahead log (a plain file copy of runs.db alone misses them, and did once: a
    killed reproduction came back with an empty runs table)."""
    import sqlite3

    if not src.exists():
        return
    with (
        sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30) as a,
        sqlite3.connect(dst) as b,
    ):
        a.backup(b)
    if dst.stat().st_size > limit:  # the device tool brings back files up to 16 MB
        dst.unlink()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--estimates", required=True, help="JSON written by estimate_full_size.py --json"
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--work",
        default=None,
        help="scratch folder for runs.db and checkpoints (default OUT/../full-work)",
    )
    p.add_argument(
        "--budget", type=float, required=True, help="seconds for all reproductions together"
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="full")
    p.add_argument("--safety", type=float, default=1.6, help="multiplies each training estimate")
    p.add_argument(
        "--overhead",
        type=float,
        default=25.0,
        help="seconds added per experiment (start-up, verify, figures)",
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated names (default: every experiment in the estimates)",
    )
    args = p.parse_args()
    deadline = time.monotonic() + args.budget
    est = json.loads(Path(args.estimates).read_text())
    minutes: dict[str, float] = dict(est["minutes"])
    failed = {b["experiment"] for b in est["batches"] if "error" in b}
    names = sorted(minutes, key=minutes.get)
    if args.only:
        names = [n for n in names if n in set(args.only.split(","))]
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / "full-work"
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name in names + sorted(failed - set(names)):
        left = deadline - time.monotonic()
        need = args.safety * minutes.get(name, float("inf")) * 60 + args.overhead
        entry = {
            "experiment": name,
            "estimate_training_s": minutes.get(name, float("nan")) * 60,
            "needed_s": need,
        }
        if name in failed:
            entry.update(
                status="not run",
                why="a batch could not be built or stepped on this device (estimate)",
            )
        elif need > left:
            entry.update(
                status="not run",
                why=f"needs ~{need:.0f} s (safety {args.safety} x estimate + "
                f"{args.overhead:.0f} s), {left:.0f} s left",
            )
        else:
            dest = work / name
            if dest.exists():
                shutil.rmtree(dest)
            cmd = [
                sys.executable,
                "-m",
                "steepest.cli",
                "reproduce",
                name,
                "--size",
                args.size,
                "--out",
                str(dest),
                "--device",
                args.device,
            ]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, left))
                rc, text = proc.returncode, proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as exc:

                def _s(x):
                    return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")

                rc, text = 124, _s(exc.stdout) + _s(exc.stderr)
            secs = time.perf_counter() - t0
            verdict = next((ln for ln in text.splitlines() if ln.startswith("reproduced?")), "")
            entry.update(
                status="done"
                if rc == 0
                else ("killed at the time limit" if rc == 124 else f"failed (exit {rc})"),
                seconds=secs,
                verdict=verdict,
                tail=text[-1500:] if rc != 0 else "",
            )
            keep = out / name
            keep.mkdir(exist_ok=True)
            for f in list(dest.glob("*.png")) + [dest / k for k in KEEP]:
                if f.exists():
                    shutil.copy2(f, keep / f.name)
            (keep / "reproduce.log").write_text(text)
            # The trajectories, even of a reproduction killed at the limit (checkpoints stay behind:
            # at full size they are tens of MB each).
            _copy_store(dest / "runs.db", keep / "runs.db")
        print(json.dumps({k: v for k, v in entry.items() if k != "tail"}), flush=True)
        summary.append(entry)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
