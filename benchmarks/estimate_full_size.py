"""How long ``steepest reproduce NAME --size full`` would take on a device (an estimate).

For every engine batch of every experiment at ``--size full``, builds the batch exactly as the
reproduction does (``steepest.reproduce.common.batch_configs``) on ``--device``, counts the
FLOPs of one engine step with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
convolutions of the forward and backward passes and of the rules' SVD-free products; SVDs,
eigendecompositions and elementwise work are not counted), times a few ``BatchRunner.step``
calls (logging stubbed, no warm start), and extrapolates: seconds per iteration × accepted
steps × iterations per accepted step (1 for the power/constant schedules; for the loss-based
schedule, 1 + the rollback rate log(up)/log(down) of its equilibrium). Logging, warm starts,
verify and figures are not included, so the totals are lower bounds. linear's own
60-parameter loop is left out (seconds).

Run: ``python benchmarks/estimate_full_size.py [--device cuda] [--steps N] [--only NAME] [--json FILE]``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from _common import header, make_runner, parse_args, seconds_per_step
from torch.utils.flop_counter import FlopCounterMode

from steepest.reproduce import experiment_names
from steepest.reproduce.common import batch_configs, load_spec


def _iterations_per_step(cfg: dict) -> float:
    worst = 1.0
    for a in cfg.get("algorithms", []):
        if a.get("schedule") == "loss_based":
            up, down = a.get("up", 2**0.2), a.get("down", 2**0.1)
            worst = max(worst, 1.0 + math.log(up) / math.log(down))
    return worst


def main() -> None:
    def extra(p):
        p.add_argument(
            "--steps", type=int, default=3, help="timed steps per batch (after 2 warm-up steps)"
        )
        p.add_argument("--only", default=None, help="comma-separated experiment names")
        p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
        p.add_argument(
            "--json", default=None, help="also write the per-batch numbers to this JSON file"
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    header(
        f"estimate_full_size on {args.device}: --size full batches, seconds per step x steps (lower bounds)"
    )
    if args.device.startswith("cuda"):
        print(f"   GPU: {torch.cuda.get_device_name()}")
    print(
        f"   {'experiment/batch':<44} {'K':>4} {'params/run':>10} {'GFLOP/iter':>10} {'s/iter':>8} {'TFLOP/s':>7} "
        f"{'steps':>7} {'iter/step':>9} {'minutes':>8}"
    )
    only = set(args.only.split(",")) if args.only else None
    totals: dict[str, float] = {}
    rows = []
    for name in experiment_names():
        if (only and name not in only) or name == "linear":
            continue
        spec = load_spec(name)
        for bname, cfg in batch_configs(spec, "full").items():
            cfg = {k: v for k, v in cfg.items() if k != "warm_start"}
            steps = int(cfg.get("stop", {}).get("steps", 1000))
            try:
                r = make_runner(cfg, device=args.device)
                with FlopCounterMode(display=False) as fc:
                    r.step()
                flops = fc.get_total_flops()
                per = seconds_per_step(r, args.steps)
            except Exception as exc:  # report and go on: one bad batch should not hide the rest
                print(
                    f"   {name + '/' + bname:<44} could not be built or stepped: {type(exc).__name__}: {exc}"
                )
                rows.append(
                    {"experiment": name, "batch": bname, "error": f"{type(exc).__name__}: {exc}"}
                )
                continue
            ips = _iterations_per_step(cfg)
            minutes = per * steps * ips / 60
            totals[name] = totals.get(name, 0.0) + minutes
            n_par = sum(p[0].numel() for p in r.params)
            print(
                f"   {name + '/' + bname:<44} {r.e.K:>4} {n_par:>10} {flops / 1e9:>10.2f} {per:>8.4f} "
                f"{flops / per / 1e12:>7.2f} {steps:>7} {ips:>9.2f} {minutes:>8.2f}"
            )
            rows.append(
                {
                    "experiment": name,
                    "batch": bname,
                    "K": r.e.K,
                    "params_per_run": n_par,
                    "flops_per_iter": flops,
                    "seconds_per_iter": per,
                    "steps": steps,
                    "iterations_per_step": ips,
                    "minutes": minutes,
                }
            )
            del r
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print()
    for name, m in totals.items():
        print(
            f"estimated training time of `steepest reproduce {name} --size full` on {args.device}: "
            f"{m:.1f} min = {m / 60:.2f} h (lower bound)"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": args.device, "batches": rows, "minutes": totals}, indent=1)
        )


if __name__ == "__main__":
    main()
