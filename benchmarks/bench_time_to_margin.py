"""Time to margin: steps and seconds to reach 0.99 and 0.999 γ*_N for each algorithm and schedule.

One run per (algorithm, schedule) on the same separable data (the `linear` reproduction's
default: sparse teacher, n = 40, d = 60, or ``--n/--d``), θ₀ = 0, through
``steepest.reproduce.linear.train_linear``, which steps the package's own rules and schedules.
Includes the anchors' way (constant-step unnormalized GD with η = 1/σ_max(X)², as Soudry et al.
and Gunasekar et al. ran it; Lyu & Li's loss-based GD), decaying normalized steps η₀t^-a,
steps proportional to ‖θ‖ (``norm_scaled``) and progressive norm rescaling (PRGD, Wang, Min & Wu
2023; loop only: the engine cannot rescale θ). Then two fixed relative steps of sign descent
(deep, and off the flow) and the flows themselves by implicit steps (``steepest.implicit``).

    python benchmarks/bench_time_to_margin.py            # 10^4 steps per run (anchors 2·10^5), ~2-4 min
    python benchmarks/bench_time_to_margin.py --quick    # 2,000 steps per run
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, parse_args  # noqa: E402  (puts src/ on the path, sets threads)

from steepest.reproduce.linear import (  # noqa: E402
    IMPLICIT_HEADERS,
    TTM_HEADERS,
    implicit_flow_rows,
    make_data,
    oracles,
    run_entries,
    time_to_margin_rows,
)
from steepest.tables import markdown_table  # noqa: E402

NORMS = ("l1", "l2", "linf", "l3")
OWN = {"l2": ("ngd", {}), "linf": ("sign", {}), "l1": ("cd", {}), "l3": ("lp", {"p": 3})}
# Decaying normalized steps: the findings' η_t = t^-1/2 and the per-norm settings of the
# linear reproduction; norm_scaled: the best settings of a 4×4 grid (lr, a) per norm on this data.
POWER = {
    "l2": [(1.0, 0.5)],
    "linf": [(1.0, 0.5), (0.1, 0.5), (0.05, 0.3)],
    "l1": [(1.0, 0.5), (1.0, 0.3)],
    "l3": [(1.0, 0.5)],
}
NORM_SCALED = {"l2": (0.5, 0.8), "linf": (0.2, 0.8), "l1": (0.5, 0.9), "l3": (0.5, 0.9)}
PRGD = {
    "l2": (0.5, 1.0, 1e-3),
    "l1": (0.5, 1.0, 1e-3),
    "linf": (0.01, 0.5, 1e-3),
    "l3": (0.5, 1.0, 1e-3),
}


def entries(anchor_steps: int) -> list[dict]:
    out = [
        {
            "label": "GD constant η=1/σ_max² (anchor)",
            "algorithm": "gd",
            "schedule": "constant",
            "lr": "inv_sigma_max_sq",
            "steps": anchor_steps,
        },
        {"label": "GD loss-based (Lyu-Li)", "algorithm": "gd", "schedule": "loss_based", "lr": 0.1},
    ]
    for n, (algo, opts) in OWN.items():
        for lr, a in POWER[n]:
            out.append(
                {
                    "label": f"{algo} power",
                    "algorithm": algo,
                    "options": opts,
                    "schedule": "power",
                    "lr": lr,
                    "a": a,
                }
            )
        lr, a = NORM_SCALED[n]
        out.append(
            {
                "label": f"{algo} norm_scaled",
                "algorithm": algo,
                "options": opts,
                "schedule": "norm_scaled",
                "lr": lr,
                "a": a,
            }
        )
        lr, a, k = PRGD[n]
        out.append(
            {
                "label": f"{algo} PRGD",
                "algorithm": algo,
                "options": opts,
                "schedule": "norm_scaled",
                "lr": lr,
                "a": a,
                "rescale": {"r0": 1.0, "kappa": k},
            }
        )
    for eps in (0.0, 1.0):
        out.append(
            {
                "label": f"adam eps={eps:g}",
                "algorithm": "adam",
                "options": {"eps": eps, "betas": (0.9, 0.9)},
                "schedule": "power",
                "lr": 0.03,
                "a": 0.2,
            }
        )
    return out


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        lambda p: (
            p.add_argument("--n", type=int, default=40),
            p.add_argument("--d", type=int, default=60),
            p.add_argument("--steps", type=int, default=None),
        ),
    )
    steps = args.steps or (2000 if args.quick else 10_000)
    anchor = steps if args.quick else 200_000
    header(
        f"time to margin: n={args.n}, d={args.d}, {steps} steps per run (constant-step GD anchor: {anchor})"
    )
    X, y = make_data(n=args.n, d=args.d)
    orc = oracles(X, y, NORMS)
    gam = {n: orc[n].gamma for n in NORMS}
    print("γ*:", ", ".join(f"{n} {g:.6g}" for n, g in gam.items()))
    traces = run_entries(X, y, entries(anchor), steps, gam)
    print(markdown_table(TTM_HEADERS, time_to_margin_rows(traces, orc)))
    goal = {
        n: min(
            (t.hit_steps[0.999] for t in traces if t.own == n and t.hit_steps[0.999] is not None),
            default=None,
        )
        for n in NORMS
    }
    print(
        "goal 0.999 γ*_N within 10,000 steps:",
        ", ".join(
            f"{n}: {'met at ' + str(s) if s is not None and s <= 10_000 else 'not met'}"
            for n, s in goal.items()
        ),
    )
    # Depth is not the limit: fixed relative steps (η = α‖θ‖∞) go far deeper and end far from
    # γ*_∞, because past the stability edge (α ≳ c/Q) the steps leave the flow.
    fixed = run_entries(
        X,
        y,
        [
            {
                "label": f"sign, η = {a:g}·‖θ‖",
                "algorithm": "sign",
                "schedule": "norm_scaled",
                "lr": a,
                "a": 0.0,
            }
            for a in (1e-3, 3e-3)
        ],
        steps,
        gam,
    )
    print(
        markdown_table(
            ["explicit, fixed relative step", "final log 𝓛", "final γ_∞/γ*_∞"],
            [[t.label, f"{t.log_loss[-1]:.4g}", f"{t.final['linf']:.4f}"] for t in fixed],
        )
    )
    # The flows themselves, by implicit steps (steepest.implicit).
    rows, flows = implicit_flow_rows(X, y, orc, {"norms": NORMS, "until_log_loss": -1e4})
    print(markdown_table(IMPLICIT_HEADERS, rows))
    print(
        "the flows (implicit steps) reach 0.999 γ*_N in:",
        ", ".join(f"{n}: {f['steps_0.999']} steps" for n, f in flows.items()),
    )


if __name__ == "__main__":
    main()
