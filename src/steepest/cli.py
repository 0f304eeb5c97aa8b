"""The ``steepest`` command: train, list, show, plot and export runs.

Every command takes ``--db`` (default ``./steepest-runs/runs.db``, or ``$STEEPEST_DB``).
Errors in what the user typed (a config field, a run id, a metric name) print one line
naming the problem and exit with status 2; they never print a traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .tables import format_value, text_table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db", help="results database (default: $STEEPEST_DB or ./steepest-runs/runs.db)"
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device", help="auto | cpu | cuda | cuda:N (default: the config's device, auto)"
    ),
]


_DEBUG = {"on": os.environ.get("STEEPEST_DEBUG", "") not in ("", "0")}


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="show the full traceback of an error (also: STEEPEST_DEBUG=1)"
        ),
    ] = False,
    plugin: Annotated[
        list[str] | None,
        typer.Option(
            "--plugin",
            help="import this module first, so that configs can name its norms, "
            "optimizers, models and data sets (repeatable); installed plug-ins (entry points 'steepest.plugins') "
            "load by themselves",
        ),
    ] = None,
) -> None:
    """Implicit bias of steepest descent: train, verify, reproduce."""
    _DEBUG["on"] = debug or os.environ.get("STEEPEST_DEBUG", "") not in ("", "0")
    if plugin:
        from .plugins import PluginError, load_plugin

        try:
            for module in plugin:
                load_plugin(module)
        except PluginError as exc:
            if _DEBUG["on"]:
                raise
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(2) from None


def _one_line(exc: BaseException) -> str:
    """The error as one line; a full disk anywhere in the exception chain is named as such."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and not any(e is x for x in seen):
        seen.append(e)
        e = e.__cause__ or e.__context__
    for e in seen:
        text = str(e)
        if (
            (isinstance(e, OSError) and e.errno == errno.ENOSPC)
            or "disk is full" in text
            or "No space left" in text
        ):
            return (
                f"no space left on device ({' '.join(text.split())[:200]}); free some space, then "
                "`steepest train CONFIG --resume` continues from the last whole-step checkpoint"
            )
    return " ".join(str(exc).split()) or type(exc).__name__


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every expected error into one line on stderr and exit status 2 (130/143 for an
    interrupt); ``--debug`` re-raises with the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import sqlite3

        from .engine import Interrupted
        from .store import BatchBusyError, RunNotFoundError

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except Interrupted as exc:
            typer.echo(f"stopped: {exc}", err=True)
            raise typer.Exit(128 + exc.signum) from None
        except KeyboardInterrupt:
            typer.echo("stopped: interrupted", err=True)
            raise typer.Exit(130) from None
        except (
            RunNotFoundError,
            BatchBusyError,
            ValueError,
            OSError,
            ImportError,
            RuntimeError,
            sqlite3.Error,
        ) as exc:
            if _DEBUG["on"]:
                raise
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _store(db: Path | None, create: bool = False):
    """The results database; read commands never create one (a mistyped --db is an error)."""
    from .store import RunStore

    return RunStore(db, create=create)


def _fmt(v: Any) -> str:
    """A terminal cell: six significant digits (run metrics are read closely here)."""
    return format_value(v, g=6, e=4, sci_above=1e5)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    return text_table(headers, rows, fmt=_fmt)


@app.command()
@_user_errors
def train(
    config: Annotated[Path, typer.Argument(help="experiment YAML")],
    db: DbOpt = None,
    resume: Annotated[
        bool, typer.Option(help="continue the latest interrupted batch of this config")
    ] = False,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="progress bar (default: only on a terminal)"),
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Train every run of CONFIG (algorithms x lrs x seeds) and store the results."""
    from .engine import train as run_train

    res = run_train(
        config, db=db, resume=resume, progress=progress, device=device
    )  # writes: may create the db
    rows = [
        [rid, lab, st, f.get("step"), f.get("log_loss"), f.get("margin_own"), f.get("train_acc")]
        for rid, lab, st, f in zip(res.run_ids, res.labels, res.statuses, res.final, strict=True)
    ]
    typer.echo(
        _table(["run", "algorithm", "status", "step", "log_loss", "margin_own", "train_acc"], rows)
    )
    typer.echo(f"database: {res.db}")


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
@_user_errors
def sweep(
    args: Annotated[
        list[str],
        typer.Argument(
            help="CONFIG to run the sweep, or: status CONFIG", metavar="[status] CONFIG"
        ),
    ],
    db: DbOpt = None,
    runs_per_job: Annotated[
        int | None,
        typer.Option(
            "--runs-per-job",
            "-k",
            help="runs stepped together in one job (default: the value this config's sweep in "
            "the database was started with, else 1)",
        ),
    ] = None,
    sweep_dir: Annotated[
        Path | None,
        typer.Option(
            help="where the jobs' folders go (default: beside the database); on SLURM a folder "
            "the compute nodes can read"
        ),
    ] = None,
    backend: Annotated[str, typer.Option(help="local | ray | slurm")] = "local",
    workers: Annotated[
        int | None,
        typer.Option(help="local: worker processes (default 1); ray: CPUs of a local cluster"),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="ray: an existing cluster (ray://host:port or auto)")
    ] = None,
    scratch: Annotated[
        Path | None,
        typer.Option(
            help="workers' scratch folder (default: each job's folder); on SLURM a node-local one"
        ),
    ] = None,
    partition: Annotated[str | None, typer.Option(help="slurm: partition")] = None,
    time_min: Annotated[int, typer.Option("--time", help="slurm: minutes per job")] = 60,
    gpus: Annotated[int, typer.Option(help="slurm: GPUs per job")] = 0,
    mem_gb: Annotated[
        float | None, typer.Option("--mem", help="slurm: GB of memory per job")
    ] = None,
    cpus: Annotated[int, typer.Option(help="slurm: CPUs per job")] = 1,
    max_parallel: Annotated[
        int, typer.Option(help="slurm: jobs running at once (the array's % limit)")
    ] = 256,
    max_array: Annotated[
        int, typer.Option(help="slurm: jobs per array at most (the cluster's MaxArraySize - 1)")
    ] = 1000,
    setup: Annotated[
        list[str] | None,
        typer.Option(help="slurm: a shell line to run before each job (repeatable)"),
    ] = None,
    slurm_local: Annotated[
        bool,
        typer.Option(help="slurm: run the same protocol with submitit's local executor (a test)"),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="slurm: write the sbatch script of the array and submit nothing")
    ] = False,
) -> None:
    """Split CONFIG's runs into jobs and run them on a process pool, a Ray cluster or SLURM;
    one driver writes the database. Run again to resume; `sweep status CONFIG` shows the jobs."""
    from . import sweep as sw
    from . import sweep_backends as sb

    if len(args) == 2 and args[0] == "status":
        res = sw.sweep_status(Path(args[1]), db=db, runs_per_job=runs_per_job, sweep_dir=sweep_dir)
        rows = [[j.job, j.state, j.runs, j.failures, j.error] for j in res.jobs]
        typer.echo(_table(["job", "state", "runs", "failures", "error"], rows))
        counts = {
            s: sum(j.state == s for j in res.jobs) for s in ("done", "running", "failed", "pending")
        }
        typer.echo(f"sweep {res.sweep}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        return
    if len(args) != 1:
        raise ValueError("usage: steepest sweep CONFIG [options], or steepest sweep status CONFIG")
    config = Path(args[0])
    if backend not in ("local", "ray", "slurm"):
        raise ValueError(f"unknown backend {backend!r}; valid: local, ray, slurm")
    given = {  # options that one backend reads and the others would silently ignore
        "--workers": (workers is not None, ("local", "ray")),
        "--address": (address is not None, ("ray",)),
        "--partition": (partition is not None, ("slurm",)),
        "--time": (time_min != 60, ("slurm",)),
        "--gpus": (gpus != 0, ("slurm",)),
        "--mem": (mem_gb is not None, ("slurm",)),
        "--cpus": (cpus != 1, ("slurm",)),
        "--max-parallel": (max_parallel != 256, ("slurm",)),
        "--max-array": (max_array != 1000, ("slurm",)),
        "--setup": (bool(setup), ("slurm",)),
        "--slurm-local": (slurm_local, ("slurm",)),
        "--dry-run": (dry_run, ("slurm",)),
    }
    for opt, (used, backends) in given.items():
        if used and backend not in backends:
            raise ValueError(f"{opt} applies to --backend {' or '.join(backends)}, not {backend}")
    scratch_s = None if scratch is None else str(scratch)
    if backend == "local":
        impl: Any = sb.LocalBackend(workers=1 if workers is None else workers, scratch=scratch_s)
    elif backend == "ray":
        impl = sb.RayBackend(address=address, workers=workers, scratch=scratch_s)
    else:
        cfg, jobs, sid, db_path, folder, _ = sw.prepare_sweep(config, db, runs_per_job, sweep_dir)
        impl = sb.SlurmBackend(
            folder / "slurm",
            partition=partition,
            time_min=time_min,
            gpus=gpus,
            mem_gb=mem_gb,
            cpus=cpus,
            max_parallel=max_parallel,
            max_array=max_array,
            scratch=scratch_s,
            setup=setup,
            local=slurm_local,
        )
        if dry_run:
            from .atomic import atomic_write_text

            script = sb.slurm_script(impl, len(jobs))
            path = atomic_write_text(folder / "slurm" / "sweep.sbatch", script)
            typer.echo(script)
            typer.echo(f"{len(jobs)} jobs; sbatch script written to {path} (nothing submitted)")
            return
    res = sw.run_sweep(
        config,
        db=db,
        runs_per_job=runs_per_job,
        backend=impl,
        sweep_dir=sweep_dir,
        echo=typer.echo,
    )
    counts = {s: sum(j.state == s for j in res.jobs) for s in ("done", "failed", "pending")}
    typer.echo(
        f"sweep {res.sweep}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f" in {res.seconds:.1f} s; database: {res.db}"
    )
    if res.failed:
        raise typer.Exit(1)


@app.command()
@_user_errors
def runs(
    db: DbOpt = None,
    experiment: Annotated[str | None, typer.Option(help="only this experiment")] = None,
    mark_failed: Annotated[
        list[int] | None,
        typer.Option(
            "--mark-failed", help="settle these runs (ids) as failed; their rows are kept"
        ),
    ] = None,
) -> None:
    """List stored runs. A "running" run whose batch has no live owner is shown as an orphan
    (its process died); settle it with --mark-failed ID or `steepest gc`, or continue it with
    `steepest train CONFIG --resume`."""
    with _store(db) as store:
        if mark_failed:
            for rid in mark_failed:
                rec = store.get_run(rid)
                if rec.status not in ("running", "interrupted"):
                    raise ValueError(
                        f"run {rid} is {rec.status!r}; only running or interrupted runs can be marked failed"
                    )
                lease = store.lease(str(rec.info.get("batch", "")))
                if rec.status == "running" and lease is not None and not lease["stale"]:
                    raise ValueError(
                        f"run {rid} is being trained by pid {lease['pid']} on {lease['host']}; stop it first"
                    )
                store.update_run(rid, status="failed", info={"error": "marked failed by the user"})
                typer.echo(f"run {rid}: marked failed (rows kept)")
            return
        orphans = {r.id for r in store.orphans()}
        recs = store.list_runs(experiment=experiment)
        rows = [
            [
                r.id,
                r.experiment or "",
                r.info.get("label", r.algorithm),
                r.seed,
                "running (orphan: no live owner)" if r.id in orphans else r.status,
                r.created_at[:19],
            ]
            for r in recs
        ]
        typer.echo(_table(["run", "experiment", "algorithm", "seed", "status", "created"], rows))
        if orphans:
            typer.echo(
                f"{len(orphans)} orphaned run(s): `steepest gc` marks them failed (keeping their rows), "
                "or `steepest train CONFIG --resume` continues their batch"
            )


@app.command()
@_user_errors
def gc(
    db: DbOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Settle orphaned runs: "running" runs whose process died. They are marked failed; their
    metric rows and checkpoints are kept. Only the temp files of checkpoint writes that a kill
    cut short are removed."""
    with _store(db) as store:
        orphans = store.orphans()
        if not orphans:
            typer.echo("no orphaned runs")
            return
        typer.echo(
            _table(
                ["run", "name", "batch"], [[r.id, r.name, r.info.get("batch", "")] for r in orphans]
            )
        )
        if not yes and not typer.confirm(
            f"mark these {len(orphans)} run(s) failed and remove their half-written "
            "checkpoint temp files? (rows and checkpoints are kept)"
        ):
            typer.echo("nothing changed")
            return
        from .checkpoints import remove_stale_temps

        removed = []
        for r in orphans:
            store.update_run(
                r.id,
                status="failed",
                info={"error": "orphaned: its process died (settled by steepest gc)"},
            )
            if r.info.get("checkpoint_dir"):
                removed += remove_stale_temps(
                    Path(r.info["checkpoint_dir"])
                )  # half-written files of dead writers
        typer.echo(
            f"marked {len(orphans)} run(s) failed"
            + (f"; removed {len(removed)} half-written checkpoint file(s)" if removed else "")
        )


@app.command()
@_user_errors
def show(run: Annotated[int, typer.Argument(help="run id")], db: DbOpt = None) -> None:
    """Print a run's final metrics."""
    with _store(db) as store:
        rec = store.get_run(run)
        fin = store.final_metrics(run)
        typer.echo(
            f"run {rec.id}: {rec.name}  [{rec.status}]  algorithm={rec.algorithm} seed={rec.seed} "
            f"own norm={rec.info.get('own_norm')} L={rec.info.get('degree')}"
        )
        if rec.info.get("separated_at") is not None:
            typer.echo(f"first separated step: {rec.info['separated_at']}")
        typer.echo(_table(["metric", "value"], [[k, v] for k, v in sorted(fin.items())]))


@app.command()
@_user_errors
def plot(
    run: Annotated[list[int], typer.Argument(help="run ids")],
    metric: Annotated[
        str, typer.Option(help="metric column, e.g. margin_own, smoothed_linf, log_loss")
    ] = "margin_own",
    x: Annotated[str, typer.Option(help="step | flow_time | neg_log_loss")] = "step",
    out: Annotated[Path, typer.Option(help="PNG to write")] = Path("plot.png"),
    db: DbOpt = None,
) -> None:
    """Plot a metric of one or more runs to a PNG."""
    from .plots import plot_runs

    with _store(db) as store:
        path = plot_runs(store, run, metric, x=x, out=out)
    typer.echo(f"wrote {path}")


@app.command()
@_user_errors
def export(
    run: Annotated[int, typer.Argument(help="run id")],
    format: Annotated[str, typer.Option("--format", help="csv | parquet")] = "csv",
    out: Annotated[
        Path | None, typer.Option(help="file to write (default: run-<id>.<format>)")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Export a run's metric rows."""
    with _store(db) as store:
        path = store.export(run, out or Path(f"run-{run}.{format}"), fmt=format)
    typer.echo(f"wrote {path}")


@app.command()
@_user_errors
def verify(
    runs: Annotated[list[str], typer.Argument(help="run ids, experiment names, or 'all'")],
    db: DbOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="also write the verdict table as markdown")
    ] = None,
    kkt: Annotated[
        bool, typer.Option("--kkt/--no-kkt", help="compute KKT residuals at checkpoints")
    ] = True,
) -> None:
    """Check the theorems on stored runs. Exit 0: every applicable prediction held; 1: a
    prediction failed beyond tolerance; 3: nothing failed but some run could not be checked."""
    from .verify import main as verify_main

    code = verify_main(runs, db=db, out_markdown=out, kkt=kkt, echo=typer.echo)
    raise typer.Exit(code)


@app.command()
@_user_errors
def reproduce(
    name: Annotated[
        str,
        typer.Argument(
            help="experiment: flavors-f1, flavors-f2, flavors-f3, gronich-vardi, lyu-li, linear"
        ),
    ],
    size: Annotated[str, typer.Option(help="smoke | quick | full")] = "quick",
    out: Annotated[
        Path | None, typer.Option(help="output folder (default ./reproduce/NAME)")
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Reproduce a figure of the paper (or a neighbour's): train, verify, write PNGs and report.md."""
    from .reproduce import reproduce as run_reproduce

    report = run_reproduce(name, size=size, out=out, device=device)
    for caption, table in report.tables:
        typer.echo(f"\n{caption}\n{table}")
    verdict = {True: "yes", False: "NO", None: "inconclusive"}[report.reproduced]
    typer.echo(f"\nreproduced? {verdict}: {report.reason}")
    folder = out if out is not None else Path("reproduce") / name
    typer.echo(f"report: {folder / 'report.md'} ({len(report.figures)} figures)")


@app.command()
@_user_errors
def fingerprint(
    optimizer: Annotated[
        str,
        typer.Argument(
            help="import path module:Name (torch.optim:Adam, pytorch_optimizer:Lion) or "
            "steepest:NAME (a registered rule)"
        ),
    ],
    options: Annotated[
        str, typer.Option(help='keyword options as JSON, e.g. \'{"lr": 0.001, "eps": 0}\'')
    ] = "{}",
    out: Annotated[
        Path | None, typer.Option(help="write report.md, results.json and profile.png here")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="steps per problem (default 6000)")] = None,
    c: Annotated[
        float, typer.Option(help="step rule: relative steps c/(-log L); 0: the optimizer's own lr")
    ] = 0.05,
) -> None:
    """Which margin does an optimizer maximize? Runs it on separable problems whose max-margin
    solutions differ by norm and prints γ_N/γ*_N for every norm, with the verdict."""
    import json

    from . import fingerprints as fpm

    try:
        opts = json.loads(options)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--options is not valid JSON ({exc.msg}): {options!r}") from None
    if not isinstance(opts, dict):
        raise ValueError(f"--options must be a JSON object, got {options!r}")
    if c < 0:
        raise ValueError(f"--c must be >= 0 (0: the optimizer's own lr), got {c}")
    make = fpm.load_optimizer(optimizer, opts)
    rule = fpm.ConstantSteps() if c == 0 else fpm.LossScaledSteps(c)
    n_steps = steps if steps is not None else fpm.DEFAULT_STEPS
    fp = fpm.fingerprint(make, name=make.__name__, steps=n_steps, step_rule=rule)
    typer.echo(fp.table())
    for line in fp.failures():
        typer.echo(f"not ok: {line}")
    typer.echo(f"\n{fp.verdict}")
    if out is not None:
        paths = fpm.write_report(fp, out)
        typer.echo(f"report: {paths[1]}")


DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "data": {"name": "mnist", "classes": [2, 7], "n_train": 100, "n_test": 200},
    "model": {"name": "mlp", "widths": [32], "init_scale": 0.5},
    "seeds": [0],
    "warm_start": {"algorithm": "ngd", "lr": 0.05, "until_log_loss": -2.0},
    "algorithms": [
        {"algorithm": "ngd", "schedule": "power", "lr": 0.1, "a": 0.5, "label": "ngd (l2)"},
        {"algorithm": "sign", "schedule": "power", "lr": 0.01, "a": 0.5, "label": "sign (linf)"},
        {"algorithm": "cd", "schedule": "power", "lr": 0.5, "a": 0.3, "label": "cd (l1)"},
    ],
    "stop": {"steps": 1500},
}


@app.command()
@_user_errors
def demo(db: DbOpt = None) -> None:
    """Train normalized GD, sign descent and coordinate descent on real MNIST 2 vs 7 and print
    the flavor matrix: each algorithm's margin in the l1, l2 and linf norms."""
    from .engine import train as run_train

    res = run_train(DEMO_CONFIG, db=db, progress=False)
    norms = ["l1", "l2", "linf"]
    rows = [
        [lab] + [f.get(f"margin_{n}") for n in norms] + [f.get("log_loss")]
        for lab, f in zip(res.labels, res.final, strict=True)
    ]
    typer.echo(
        "normalized margins q_min / ||theta||^2 after 1500 steps from a common separated start:"
    )
    typer.echo(_table(["algorithm", "margin_l1", "margin_l2", "margin_linf", "log_loss"], rows))
    for j, n in enumerate(norms, start=1):
        best = max(rows, key=lambda r: r[j])[0]
        typer.echo(f"largest {n} margin: {best}")
    typer.echo(
        f"runs stored in {res.db}; try: steepest plot {' '.join(map(str, res.run_ids))} --metric margin_own --db {res.db}"
    )


def main() -> None:
    app(prog_name="steepest")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
