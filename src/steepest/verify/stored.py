"""Theorem checks on stored runs: rebuild their models from checkpoints, KKT points, the
flavor check across a batch or sweep, ``verify_runs``, and ``steepest verify``'s entry point."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write_text
from ..checkpoints import load_checkpoint
from ..kkt import NotSeparatedError, kkt_residual, norm_kind
from ..norms import get_norm
from ..store import RunRecord, RunStore
from ..tables import format_value
from .checks import (
    CROSS_NORMS,
    LOSS_SCOPE,
    CheckResult,
    RunVerdict,
    Tolerances,
    check_trajectory,
    not_applicable,
    own_column,
)
from .report import VerifyReport

# --------------------------------------------------------------------------------------------
# stored runs


def _engine_private():
    """The engine's private helpers used here, in one place (the lead may make them public)."""
    from ..engine import Engine, load_experiment_data

    return Engine, load_experiment_data


class _Loader:
    """Rebuilds data and models of stored runs; caches per config hash and checkpoint file."""

    def __init__(self, store: RunStore):
        self.store = store
        self._engines: dict[str, Any] = {}
        self._files: dict[str, dict[str, Any]] = {}

    def engine(self, rec: RunRecord):
        from ..config import load_config

        key = str(rec.info.get("config_hash") or rec.id)
        if key not in self._engines:
            Engine, load_data = _engine_private()
            cfg = load_config(rec.config)
            data = load_data(cfg)
            self._engines[key] = Engine(cfg, cfg.run_specs(), data)
        return self._engines[key]

    def file(self, path: str | Path) -> dict[str, Any]:
        key = str(path)
        if key not in self._files:
            self._files[key] = load_checkpoint(key, require=("params", "run_ids"))
        return self._files[key]

    def model_at(self, rec: RunRecord, path: str | Path) -> tuple[nn.Module, int]:
        eng = self.engine(rec)
        sd = self.file(path)
        run_ids = list(sd["run_ids"])
        # A run stored by a sweep's driver is named in its checkpoints by its id in the job's
        # own database (steepest.sweep).
        rid = int((rec.info.get("sweep") or {}).get("run_id_in_job", rec.id))
        if rid not in run_ids:
            raise KeyError(f"run {rid} is not in checkpoint {path} (it holds runs {run_ids})")
        i = run_ids.index(rid)
        model = eng.model_for_seed(rec.seed).to(torch.float64)
        names = [n for n, _ in model.named_parameters()]
        if list(sd["names"]) != names:
            raise ValueError(
                f"checkpoint {path} parameters {list(sd['names'])} do not match the model {names}"
            )
        with torch.no_grad():
            for (_, p), stacked in zip(model.named_parameters(), sd["params"], strict=True):
                p.copy_(stacked[i].to(torch.float64))
        return model, int(sd["t"][i])

    def data(self, rec: RunRecord) -> tuple[Tensor, Tensor]:
        eng = self.engine(rec)
        X = eng.X.to(torch.float64)
        y = eng.y.to(torch.float64) if eng.y.is_floating_point() else eng.y
        return X, y


def load_run(
    store: RunStore, run_id: int, checkpoint: int | str | Path | None = None
) -> tuple[nn.Module, Tensor, Tensor]:
    """(model, X_train, y_train) of a stored run, the model holding the run's parameters.

    ``checkpoint``: None → the run's last recorded checkpoint; an int → the recorded checkpoint
    at that step; a path → that checkpoint file. The model is rebuilt from the stored config (so
    it is the same architecture the engine trained) in float64.
    """
    rec = store.get_run(run_id)
    loader = _Loader(store)
    cks = store.checkpoints(run_id)
    if checkpoint is None or isinstance(checkpoint, (int, np.integer)):
        if not cks:
            raise ValueError(f"run {run_id} has no recorded checkpoints")
        if checkpoint is None:
            path = cks[-1]["path"]
        else:
            match = [c for c in cks if c["step"] == int(checkpoint)]
            if not match:
                raise ValueError(
                    f"run {run_id} has no checkpoint at step {checkpoint}; "
                    f"steps: {[c['step'] for c in cks]}"
                )
            path = match[0]["path"]
    else:
        path = str(checkpoint)
    model, _ = loader.model_at(rec, path)
    X, y = loader.data(rec)
    return model, X, y


def _kkt_points_for_run(loader: _Loader, rec: RunRecord, norm: str, tol: Tolerances, L: float):
    """KKT residual at the earliest separated checkpoint and at the last one."""

    def points(sep_steps: np.ndarray) -> list[tuple[int, Any]]:
        cks = [
            c
            for c in loader.store.checkpoints(rec.id)
            if len(sep_steps) and c["step"] >= int(sep_steps[0])
        ]
        if len(cks) < 2:
            return []
        X, y = loader.data(rec)
        out: list[tuple[int, Any]] = []
        for c in cks:
            model, step = loader.model_at(rec, c["path"])
            try:
                out.append((step, kkt_residual(model, X, y, norm, L=L, tau=tol.kkt_tau)))
            except NotSeparatedError:
                continue
            break
        if not out:
            return []
        model, step = loader.model_at(rec, cks[-1]["path"])
        if step == out[0][0]:
            return out
        out.append((step, kkt_residual(model, X, y, norm, L=L, tau=tol.kkt_tau)))
        return out

    return points


def _comparison_group(info: dict[str, Any]) -> str:
    """The runs a flavor check compares: one ``train`` call's batch, or one sweep (whose jobs
    are batches of the same config; steepest.sweep)."""
    sweep = info.get("sweep") or {}
    return f"sweep:{sweep['id']}" if "id" in sweep else f"batch:{info.get('batch')}"


def _flavor(
    report_runs: list[RunVerdict], records: dict[int, RunRecord], store: RunStore, tol: Tolerances
) -> None:
    """Append the ``flavor`` check to each run (compares batch mates of the same seed)."""
    batch_cache: dict[tuple[str | None, str], list[RunRecord]] = {}
    finals: dict[int, dict[str, float]] = {}

    def final(rid: int) -> dict[str, float]:
        if rid not in finals:
            finals[rid] = store.final_metrics(rid)
        return finals[rid]

    for rv in report_runs:
        rec = records[rv.run_id]  # type: ignore[index]
        if not rv.checked:
            rv.checks.append(
                not_applicable("flavor", "precondition: " + rv.get("preconditions").reason)
            )
            continue
        if "flavor" not in LOSS_SCOPE.get(rec.info.get("loss", ""), ()):
            rv.checks.append(
                not_applicable("flavor", f"not covered for the {rec.info.get('loss')} loss")
            )
            continue
        col = own_column(rec.info)
        if col not in CROSS_NORMS:
            rv.checks.append(
                not_applicable(
                    "flavor",
                    f"own norm {rec.info.get('own_norm')!r} has no margin column in other runs "
                    f"(metric norms: {', '.join(CROSS_NORMS)})",
                )
            )
            continue
        key = (rec.experiment, _comparison_group(rec.info))
        if key not in batch_cache:
            batch_cache[key] = [
                r
                for r in store.list_runs(experiment=rec.experiment)
                if _comparison_group(r.info) == key[1]
            ]
        rivals = [
            r
            for r in batch_cache[key]
            if r.id != rec.id and r.seed == rec.seed and own_column(r.info) != col
        ]
        if not rivals:
            rv.checks.append(
                not_applicable(
                    "flavor",
                    "no run with another algorithm flavor in the same batch (or sweep) and seed",
                )
            )
            continue
        mine = final(rec.id).get(f"margin_{col}", math.nan)
        theirs = {r.id: final(r.id).get(f"margin_{col}", math.nan) for r in rivals}
        best_id = max(theirs, key=lambda k: -math.inf if math.isnan(theirs[k]) else theirs[k])
        best = theirs[best_id]
        nums = {
            "norm": col,
            "own_margin": mine,
            "best_other": best,
            "best_other_run": best_id,
            "others": ", ".join(f"{k}: {format_value(v)}" for k, v in theirs.items()),
        }
        limit = best - tol.flavor_rtol * abs(best)
        if math.isnan(mine):
            rv.checks.append(
                CheckResult(
                    "flavor", "not applicable", f"margin_{col} missing in the final row", nums
                )
            )
        elif mine >= limit:
            rv.checks.append(
                CheckResult(
                    "flavor",
                    "pass",
                    f"γ_{col} {mine:.4g} ≥ best other algorithm {best:.4g} (run {best_id})",
                    nums,
                )
            )
        else:
            rv.checks.append(
                CheckResult(
                    "flavor",
                    "fail",
                    f"γ_{col} {mine:.4g} < {best:.4g} reached by run {best_id} "
                    f"({rivals[[r.id for r in rivals].index(best_id)].algorithm})",
                    nums,
                )
            )


def _param_shapes(rec: RunRecord, cache: dict[str, list[tuple[int, ...]]]) -> list[tuple[int, ...]]:
    """Parameter shapes of a stored run, read from its latest checkpoint (stacked over runs).

    The K runs of a batch share one checkpoint file: ``cache`` loads it once per file.
    """
    path = rec.info.get("checkpoint")
    if not path:
        return []
    if path not in cache:
        sd = load_checkpoint(path, require=("params",))
        cache[path] = [tuple(p.shape[1:]) for p in sd["params"]]
    return cache[path]


def verify_runs(
    store: RunStore,
    run_ids: Sequence[int],
    *,
    kkt: bool = True,
    tolerances: Tolerances | None = None,
) -> VerifyReport:
    """Check the theory's predictions on stored runs (the docstring of steepest.verify lists the checks)."""
    tol = tolerances or Tolerances()
    loader = _Loader(store)
    shape_cache: dict[str, list[tuple[int, ...]]] = {}
    out: list[RunVerdict] = []
    records: dict[int, RunRecord] = {}
    for rid in run_ids:
        rec = store.get_run(int(rid))
        records[rec.id] = rec
        info = rec.info
        degree = info.get("degree")
        own = str(info.get("own_norm", "?"))
        n_train = (info.get("dataset") or {}).get("n_train")
        kpts = None
        not_hom = None
        unavailable = None
        if degree is None:
            not_hom = info.get("not_homogeneous") or "no homogeneity degree stored with the run"
        if (
            kkt
            and degree is not None
            and "own_norm_kkt_program" in info
            and info["own_norm_kkt_program"] is None
        ):
            unavailable = (
                f"KKT residual unavailable: the own norm {own!r} has no KKT program "
                "(Norm.kkt_program is None); the trajectory checks need only its value, dual and direction"
            )
        elif kkt and degree is not None:
            try:
                kind, _ = norm_kind(get_norm(own))
                n_params = sum(int(math.prod(v)) for v in _param_shapes(rec, shape_cache))
                if kind in ("lp", "spectral") and n_params > tol.kkt_max_conic_params:
                    raise ValueError(
                        f"the {own} program has {n_params} variables (> kkt_max_conic_params = "
                        f"{tol.kkt_max_conic_params}); the conic solver would take minutes per checkpoint"
                    )
                kpts = _kkt_points_for_run(loader, rec, own, tol, float(degree))
            except ValueError as exc:
                unavailable = f"KKT residual unavailable: {exc}"
        checks = check_trajectory(
            store.metrics(rec.id),
            degree=degree,
            loss=str(info.get("loss", "exponential")),
            normalized=info.get("normalized"),
            n_train=n_train,
            kkt_points=kpts,
            not_homogeneous=not_hom,
            tolerances=tol,
            kkt_unavailable=unavailable,
        )
        out.append(RunVerdict(rec.id, rec.name, rec.algorithm, own, checks))
    _flavor(out, records, store, tol)
    return VerifyReport(out)


# --------------------------------------------------------------------------------------------
# command line


def resolve_runs(store: RunStore, selectors: Iterable[str | int]) -> list[int]:
    """Run ids from selectors: an id ("12"), an experiment name (all its runs), or "all"."""
    ids: list[int] = []
    sels = list(selectors)
    if not sels:
        raise ValueError("no runs given: pass run ids, experiment names, or 'all'")
    for s in sels:
        if isinstance(s, (int, np.integer)) or (isinstance(s, str) and s.strip().isdigit()):
            rid = int(s)
            store.get_run(rid)  # RunNotFoundError names the id
            ids.append(rid)
        elif str(s) == "all":
            ids += [r.id for r in store.list_runs()]
        else:
            runs = store.list_runs(experiment=str(s))
            if not runs:
                names = sorted({r.experiment for r in store.list_runs() if r.experiment})
                raise ValueError(
                    f"{s!r} is neither a run id nor an experiment in {store.path}; "
                    f"experiments: {', '.join(names) or '(none)'}"
                )
            ids += [r.id for r in runs]
    seen: set[int] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]


def main(
    run_ids: Sequence[str | int],
    db: str | Path | None = None,
    out_markdown: str | Path | None = None,
    *,
    kkt: bool = True,
    echo: Callable[[str], Any] | None = None,
) -> int:
    """``steepest verify RUN... [--db] [--out FILE]``: print the verdict table, write markdown.

    Selectors: run ids, experiment names, or "all". Returns the exit code: 0 all applicable
    predictions passed, 1 a prediction failed beyond tolerance, 3 nothing failed but some run
    could not be checked (never separated, not homogeneous, loss outside the theorem).
    """
    echo = echo or (lambda s: print(s, file=sys.stdout))
    with RunStore(db, create=False) as store:
        ids = resolve_runs(store, run_ids)
        report = verify_runs(store, ids, kkt=kkt)
    echo(report.to_text())
    if out_markdown is not None:
        atomic_write_text(Path(out_markdown), report.to_markdown())
    return report.exit_code
