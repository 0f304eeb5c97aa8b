"""Gronich & Vardi (GV1): momentum / adaptive methods each maximize the margin of their own norm.

docs/theory.md §4.4, A.3, §5 items 12 and 15. One batch per activation (squared ReLU, L = 3, the smooth
setting of the theory; ReLU, L = 2, their ablation), each training NGD, MomentumGD, Signum,
Adam (ε = 1e-20), Muon and Muon–Adam on MNIST odd vs even with η_t = η0·t^-0.8 for a fixed
step budget. The paper stops each run when the mean logistic loss reaches 1e-8; that is early in
the late phase (log 𝓛 ≈ −13 at n = 200), so the runs go on past it, and the report reads both
points. It gives, per algorithm, the final normalized margins

    γ_N = q_min / ‖θ‖_N^L,   N ∈ {ℓ2, ℓ∞, max-spectral, hybrid max{a‖W‖_msp, ‖u‖_∞}},

and the directional-convergence cosine cos(θ_{T/2}, θ_T) = ⟨θ_{T/2}, θ_T⟩/(‖θ_{T/2}‖₂‖θ_T‖₂)
read from the engine's checkpoints (GV's Figure 1b: > 0.99 at the end), with T the last step
and, beside it, with T = T* the step at which the run reached the paper's stopping loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adaptive import HybridNorm
from ..checkpoints import load_checkpoint
from ..metrics import directional_cosine
from ..store import RunStore
from ..tables import markdown_table
from .common import BatchRuns, final_value, load_spec, plot_margin_panels, run_batches
from .report import Report
from .verdicts import verify_markdown

__all__ = [
    "run",
    "checkpoint_params",
    "directional_cosines",
    "hybrid_margins",
    "column_winners",
    "PREDICTED",
    "COSINE_THRESHOLD",
    "first_step_at",
    "paper_stop_log_loss",
    "single_thread",
]

COSINE_THRESHOLD = 0.99  # GV Figure 1b
PAPER_MEAN_LOSS = 1e-8  # GV stop each run at this mean training loss
#: column -> the algorithm labels predicted to have its largest margin (docs/theory.md §4.4)
PREDICTED: dict[str, tuple[str, ...]] = {
    "l2": ("NGD", "MomentumGD"),
    "linf": ("Signum", "Adam"),
    "spectral": ("Muon",),
    "hybrid": ("Muon-Adam",),
}
COLUMN_NAMES = {"l2": "γ_2", "linf": "γ_∞", "spectral": "γ_msp", "hybrid": "γ_hyb"}


@contextlib.contextmanager
def single_thread(enabled: bool = True) -> Iterator[None]:
    """Run torch on one thread inside the block, restoring the previous count afterwards.

    On a shared 2-core machine, torch's intra-op threads oversubscribe the cores: the quick
    GV batch took about 20× longer with the default thread count than with one thread.
    """
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def checkpoint_params(path: str | Path, run_id: int) -> list[torch.Tensor]:
    """The parameters of run ``run_id`` in an engine checkpoint (stacked (K, ...) → run's slice)."""
    sd = load_checkpoint(path, require=("params", "run_ids"))
    ids = list(sd["run_ids"])
    if run_id not in ids:
        raise ValueError(f"run_id {run_id} is not in checkpoint {path} (runs: {ids})")
    k = ids.index(run_id)
    return [p[k].to(torch.float64) for p in sd["params"]]


def _nearest(cks: Sequence[dict[str, Any]], step: float) -> dict[str, Any]:
    """The checkpoint nearest ``step`` (the earlier one on a tie)."""
    return min(cks, key=lambda c: (abs(c["step"] - step), c["step"]))


def directional_cosines(
    db: str | Path,
    run_ids: Sequence[int],
    fractions: Sequence[float] = (0.25, 0.5),
    ends: dict[int, int] | None = None,
) -> dict[int, dict[str, Any]]:
    """cos(θ_t, θ_T) per run for the checkpoints nearest t = f·T (f in ``fractions``) and at the
    first separated step, with T the run's last checkpointed step (docs/theory.md §5 item 15), or, for
    the runs in ``ends``, the checkpoint nearest ``ends[run_id]``.

    Returns {run_id: {"T", "steps": {f: step}, "cos": {f: cosine}, "sep_step", "cos_sep"}}.
    """
    out: dict[int, dict[str, Any]] = {}
    with RunStore(db) as store:
        for rid in run_ids:
            cks = store.checkpoints(rid)
            if not cks:
                raise ValueError(f"run {rid} has no checkpoints in {db}")
            if ends is not None and rid in ends:
                last = _nearest(cks, ends[rid])
                T = last["step"]
                cks = [c for c in cks if c["step"] <= T]
            else:
                T = max(c["step"] for c in cks)
                last = [c for c in cks if c["step"] == T][-1]
            theta_T = checkpoint_params(last["path"], rid)
            steps, cos = {}, {}
            for f in fractions:
                c = _nearest(cks, f * T)
                steps[f] = int(c["step"])
                cos[f] = float(directional_cosine(checkpoint_params(c["path"], rid), theta_T))
            sep = store.get_run(rid).info.get("separated_at")
            sep_step, cos_sep = None, float("nan")
            if sep:
                c = _nearest(cks, sep)
                sep_step = int(c["step"])
                cos_sep = float(directional_cosine(checkpoint_params(c["path"], rid), theta_T))
            out[rid] = {
                "T": int(T),
                "steps": steps,
                "cos": cos,
                "sep_step": sep_step,
                "cos_sep": cos_sep,
            }
    return out


def hybrid_margins(db: str | Path, batch: BatchRuns, a: float) -> list[float]:
    """γ_hyb = q_min / max{a‖W‖_msp, ‖u‖_∞}^L for every run of ``batch`` at its last checkpoint
    (the Muon–Adam norm of GV Theorem 3.7, W = hidden matrices, u = the output row)."""
    norm = HybridNorm(a)
    L = float(batch.infos[0]["degree"])
    out = []
    with RunStore(db) as store:
        for i, rid in enumerate(batch.result.run_ids):
            cks = store.checkpoints(rid)
            T = max(c["step"] for c in cks)
            theta = checkpoint_params([c for c in cks if c["step"] == T][-1]["path"], rid)
            qmin = final_value(batch.metrics[i], "q_min")
            out.append(qmin / float(norm(theta)) ** L)
    return out


def column_winners(values: dict[str, dict[str, float]], columns: Sequence[str]) -> dict[str, str]:
    """For each column, the label with the largest value (``values[label][column]``)."""
    return {c: max(values, key=lambda lab: values[lab][c]) for c in columns}


def _lr_ratio(batch: BatchRuns) -> float:
    for info in batch.infos:
        if "lr_ratio" in (info.get("options") or {}):
            return float(info["options"]["lr_ratio"])
    return 1.0


def paper_stop_log_loss(n_train: int, mean_loss: float = PAPER_MEAN_LOSS) -> float:
    """log 𝓛 at the paper's stopping rule: the *mean* loss reaches ``mean_loss``, and the
    package's 𝓛 is the summed loss, so log 𝓛 = log n + log(mean_loss) (−13.1 at n = 200)."""
    return float(np.log(n_train) + np.log(mean_loss))


def first_step_at(cols: dict[str, np.ndarray], target: float) -> int | None:
    """The step at which log 𝓛 first reaches ``target``, interpolated linearly between the two
    logged rows around the crossing (rows are log-spaced, 26% apart at 10 per decade; log 𝓛
    falls smoothly between them); None if the run never got there."""
    steps, ll = cols["step"], cols["log_loss"]
    hit = np.flatnonzero(ll <= target)
    if not hit.size:
        return None
    i = int(hit[0])
    if i == 0 or not ll[i - 1] > ll[i]:
        return int(steps[i])
    frac = (ll[i - 1] - target) / (ll[i - 1] - ll[i])
    return int(round(steps[i - 1] + frac * (steps[i] - steps[i - 1])))


def _analyse(batch: BatchRuns, db: Path, target: float) -> dict[str, Any]:
    a = _lr_ratio(batch)
    hyb = hybrid_margins(db, batch, a)
    cos = directional_cosines(db, batch.result.run_ids)
    ids = batch.result.run_ids
    at_stop = {rid: first_step_at(batch.metrics[i], target) for i, rid in enumerate(ids)}
    reached = all(s is not None for s in at_stop.values())
    reached_ids = [r for r, s in at_stop.items() if s is not None]  # the others have no T*
    cos_stop = directional_cosines(
        db, reached_ids, fractions=(0.5,), ends={r: at_stop[r] for r in reached_ids}
    )
    per_label: dict[str, dict[str, float]] = {}
    groups = batch.by_label()
    for lab, idx in groups.items():
        row: dict[str, float] = {}
        for n in ("l2", "linf", "spectral", "own"):
            row[n] = float(np.mean([final_value(batch.metrics[i], f"margin_{n}") for i in idx]))
        row["hybrid"] = float(np.mean([hyb[i] for i in idx]))
        row["log_loss"] = float(max(final_value(batch.metrics[i], "log_loss") for i in idx))
        row["T"] = float(np.mean([cos[batch.result.run_ids[i]]["T"] for i in idx]))
        row["cos_half"] = float(min(cos[batch.result.run_ids[i]]["cos"][0.5] for i in idx))
        row["cos_quarter"] = float(min(cos[batch.result.run_ids[i]]["cos"][0.25] for i in idx))
        row["cos_sep"] = float(min(cos[batch.result.run_ids[i]]["cos_sep"] for i in idx))
        stops = [at_stop[batch.result.run_ids[i]] for i in idx]
        row["T_stop"] = float(np.mean(stops)) if None not in stops else float("nan")
        row["cos_half_stop"] = (
            float(min(cos_stop[batch.result.run_ids[i]]["cos"][0.5] for i in idx))
            if None not in stops
            else float("nan")
        )
        row["n_seeds"] = float(len(idx))
        per_label[lab] = row
    winners = column_winners(per_label, list(PREDICTED))
    ok_cols = {
        c: winners[c] in PREDICTED[c]
        for c in PREDICTED
        if all(p in per_label for p in PREDICTED[c])
    }
    cos_ok = all(r["cos_half"] > COSINE_THRESHOLD for r in per_label.values())
    return {
        "a": a,
        "L": batch.infos[0]["degree"],
        "per_label": per_label,
        "winners": winners,
        "ok_columns": ok_cols,
        "reached_target": reached,
        "stop_log_loss": target,
        "cosines_ok": cos_ok,
        "cosines": {str(k): v["cos"][0.5] for k, v in cos.items()},
        "cosines_at_stop": {str(k): v["cos"][0.5] for k, v in cos_stop.items()},
    }


def _secondary_note(name: str, per: dict[str, dict[str, float]]) -> str:
    """GV's secondary observations as ratios (reported, not part of the verdict)."""

    def ratio(a: str, b: str, col: str) -> str:
        if a in per and b in per and per[b][col] != 0:
            return f"{per[a][col] / per[b][col]:.3g}"
        return "—"

    return (
        f"{name}: secondary observations (GV: Signum slightly above Adam on γ_∞; momentum on/off makes little "
        f"difference; NGD not far behind Muon on γ_msp): γ_∞(Signum)/γ_∞(Adam) = {ratio('Signum', 'Adam', 'linf')}, "
        f"γ_2(MomentumGD)/γ_2(NGD) = {ratio('MomentumGD', 'NGD', 'l2')}, "
        f"γ_msp(NGD)/γ_msp(Muon) = {ratio('NGD', 'Muon', 'spectral')}."
    )


def _table(res: dict[str, Any], own_names: dict[str, str]) -> str:
    per, win = res["per_label"], res["winners"]
    rows = []
    for lab, r in per.items():
        row: list[Any] = [lab]
        for c in PREDICTED:
            cell = f"{r[c]:.4g}"
            row.append(f"**{cell}**" if win[c] == lab else cell)
        row += [
            f"{r['own']:.4g} ({own_names.get(lab, '?')})",
            f"{r['log_loss']:.3g}",
            int(r["T"]),
            f"{r['cos_sep']:.4f}",
            f"{r['cos_quarter']:.4f}",
            f"{r['cos_half']:.5f}",
            "—" if np.isnan(r["T_stop"]) else int(r["T_stop"]),
            "—" if np.isnan(r["cos_half_stop"]) else f"{r['cos_half_stop']:.5f}",
        ]
        rows.append(row)
    heads = (
        ["algorithm"]
        + [COLUMN_NAMES[c] for c in PREDICTED]
        + [
            "own (norm)",
            "final log 𝓛",
            "T",
            "cos(θ_sep, θ_T)",
            "cos(θ_T/4, θ_T)",
            "cos(θ_T/2, θ_T)",
            "T* (paper's stop)",
            "cos(θ_T*/2, θ_T*)",
        ]
    )
    return markdown_table(heads, rows)


def run(size: str, out: Path, device: str | None = None) -> Report:
    """Train both GV1 batches at ``size`` into ``out/runs.db`` and build the report."""
    spec = load_spec("gronich-vardi")
    mean_loss = float(spec.get("paper_stop_mean_loss", PAPER_MEAN_LOSS))
    with single_thread(size in ("smoke", "quick")):
        batches, seconds = run_batches(spec, size, out, device=device)
        db = out / "runs.db"
        tables, figures, notes, numbers, reasons, verdict_parts = [], [], [], {}, [], []
        ok_all = True
        for batch in batches:
            target = paper_stop_log_loss(int(batch.config["data"]["n_train"]), mean_loss)
            res = _analyse(batch, db, target)
            own_names = {
                lab: batch.infos[idx[0]]["own_norm"] for lab, idx in batch.by_label().items()
            }
            L = res["L"]
            tables.append(
                (
                    f"{batch.name} (L = {L}, hybrid a = {res['a']:g}): final normalized margins "
                    f"(mean over seeds; bold = largest in the column) and directional cosines (min over seeds)",
                    _table(res, own_names),
                )
            )
            numbers[batch.name] = res
            notes.append(_secondary_note(batch.name, res["per_label"]))
            per = res["per_label"].items()
            unreached = [lab for lab, r in per if np.isnan(r["T_stop"])]
            early = [
                lab
                for lab, r in per
                if lab not in unreached and r["cos_half_stop"] <= COSINE_THRESHOLD
            ]
            notes.append(
                f"{batch.name}: at the paper's stopping loss (log 𝓛 ≤ {target:.3g}, step T*) "
                + (
                    f"cos(θ_T*/2, θ_T*) ≤ {COSINE_THRESHOLD} for {', '.join(early)}"
                    if early
                    else f"every cos(θ_T*/2, θ_T*) > {COSINE_THRESHOLD}"
                )
                + (f" ({', '.join(unreached)} never reached it)" if unreached else "")
                + "; the verdict reads the cosines at the last step T, deeper in the late phase."
            )
            if not res["reached_target"]:
                notes.append(
                    f"{batch.name}: not every run reached the paper's stopping loss "
                    f"(log 𝓛 ≤ {target:.3g}); "
                    "those runs' margins are read before the late phase."
                )
                reasons.append(f"{batch.name}: some runs did not reach the stopping loss")
            for c, good in res["ok_columns"].items():
                if not good:
                    reasons.append(
                        f"{batch.name}: the largest {COLUMN_NAMES[c]} belongs to {res['winners'][c]}, "
                        f"not to {' / '.join(PREDICTED[c])}"
                    )
            if not res["cosines_ok"]:
                bad = [
                    lab for lab, r in res["per_label"].items() if r["cos_half"] <= COSINE_THRESHOLD
                ]
                reasons.append(
                    f"{batch.name}: cos(θ_T/2, θ_T) ≤ {COSINE_THRESHOLD} for {', '.join(bad)}"
                )
            ok_all = (
                ok_all
                and res["reached_target"]
                and all(res["ok_columns"].values())
                and res["cosines_ok"]
            )
            stem = batch.name.replace(" ", "-")
            figures.append(
                plot_margin_panels(
                    batch,
                    ["l2", "linf", "spectral"],
                    "step",
                    out / f"{stem}-margins-vs-step.png",
                    f"{batch.name}: normalized margins vs step (seed {batch.config['seeds'][0]})",
                )
            )
            verdict_parts.append(verify_markdown(db, batch.result.run_ids, heading=batch.name))
    width = batches[0].config["model"]["widths"][0] if batches else None
    notes.append(
        f"hidden width {width} (the paper: 2048); n_train = {batches[0].config['data'].get('n_train')} "
        "(the paper: the full MNIST training set)."
    )
    notes.append(
        "γ_hyb is measured with the Muon–Adam run's lr_ratio a for every algorithm; a Muon–Adam run's "
        "'own' column is the same quantity, computed by the engine."
    )
    if ok_all:
        reason = (
            "in both networks every run reached the paper's stopping loss "
            f"(mean loss {mean_loss:g}) and went on to the step budget T; at T the largest γ_2 belongs to (momentum) NGD, "
            "γ_∞ to Signum/Adam, γ_msp to Muon, the hybrid margin to Muon–Adam, and every "
            f"cos(θ_T/2, θ_T) > {COSINE_THRESHOLD}."
        )
    else:
        reason = "; ".join(reasons) + "."
    return Report.for_spec(
        spec,
        size,
        ok_all,
        reason,
        tables=tables,
        figures=figures,
        notes=notes,
        verify=verdict_parts,
        numbers=numbers,
        seconds=seconds,
    )
