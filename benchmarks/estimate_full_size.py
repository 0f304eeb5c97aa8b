"""How long ``steepest reproduce NAME --size full`` would take on this machine (an estimate).

For every engine batch of every experiment at ``--size full``, builds the batch exactly as the
reproduction does (``steepest.reproduce.common.batch_configs``), times a few ``_Runner._step``
calls (logging stubbed, no warm start), and extrapolates: seconds per iteration × accepted steps
× iterations per accepted step (1 for the power/constant schedules; for the loss-based schedule,
1 + the rollback rate log(up)/log(down) of its equilibrium). Logging, warm starts, verify and
figures are not included, so the totals are lower bounds. linear's own 60-parameter loop is left
out (seconds).

Run: ``python benchmarks/estimate_full_size.py [--steps N] [--only NAME]``.
"""

from __future__ import annotations

import math
import time

from _common import header, make_runner, parse_args

from steepest.reproduce import experiment_names
from steepest.reproduce.common import batch_configs, load_spec


def _iterations_per_step(cfg: dict) -> float:
    worst = 1.0
    for a in cfg.get("algorithms", []):
        if a.get("schedule") == "loss_based":
            up, down = a.get("up", 2 ** 0.2), a.get("down", 2 ** 0.1)
            worst = max(worst, 1.0 + math.log(up) / math.log(down))
    return worst


def main() -> None:
    def extra(p):
        p.add_argument("--steps", type=int, default=3, help="timed steps per batch (after 1 warm-up step)")
        p.add_argument("--only", default=None, help="one experiment name")

    args = parse_args(__doc__.splitlines()[0], extra)
    header("estimate_full_size: --size full batches, seconds per step x steps (lower bounds)")
    print(f"   {'experiment/batch':<44} {'K':>3} {'params/run':>10} {'s/iter':>8} {'steps':>7} {'iter/step':>9} {'hours':>7}")
    totals: dict[str, float] = {}
    for name in experiment_names():
        if args.only and name != args.only:
            continue
        spec = load_spec(name)
        if name == "linear":
            continue
        for bname, cfg in batch_configs(spec, "full").items():
            cfg = {k: v for k, v in cfg.items() if k != "warm_start"}
            steps = int(cfg.get("stop", {}).get("steps", 1000))
            try:
                r = make_runner(cfg)
            except Exception as exc:  # report and go on: one bad batch should not hide the rest
                print(f"   {name + '/' + bname:<44} could not be built: {exc}")
                continue
            r._step()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                r._step()
            per = (time.perf_counter() - t0) / args.steps
            ips = _iterations_per_step(cfg)
            hours = per * steps * ips / 3600
            totals[name] = totals.get(name, 0.0) + hours
            n_par = sum(p[0].numel() for p in r.params)
            print(f"   {name + '/' + bname:<44} {r.e.K:>3} {n_par:>10} {per:>8.3f} {steps:>7} {ips:>9.2f} {hours:>7.2f}")
    print()
    for name, h in totals.items():
        print(f"estimated training time of `steepest reproduce {name} --size full`: {h:.1f} h on this machine (lower bound)")


if __name__ == "__main__":
    main()
