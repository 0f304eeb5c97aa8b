"""What ``dtype: float32`` costs on the flavors-f1 quick runs, against float64.

Trains every batch of ``steepest reproduce flavors-f1 --size quick`` twice, with ``dtype:
float64`` (the default) and ``dtype: float32`` (forward and backward passes and the rules in
float32; the loss and margins in log space; the metrics recomputed in float64 from a float64
copy at each event; both from the same float64-drawn initialization), and prints, per run, the
relative difference of the final margins γ_1, γ_2, γ_∞ and of the final log-loss, and per batch
whether the flavor matrix's winners (the largest γ_N per column) agree.

Run: ``python benchmarks/float32_error.py [--device cpu|cuda] [--out DIR]`` (~5 min on 2 CPU cores).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, parse_args  # noqa: E402

from steepest.engine import train  # noqa: E402
from steepest.reproduce.common import batch_configs, load_spec  # noqa: E402

NORMS = ("l1", "l2", "linf")


def main() -> None:
    def extra(p):
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", default=None, help="write the numbers as JSON here")

    args = parse_args(__doc__.splitlines()[0], extra)
    header(f"float32_error on {args.device}: flavors-f1 quick, float32 vs float64")
    spec = load_spec("flavors-f1")
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bname, cfg in batch_configs(spec, "quick").items():
            res = {
                dt: train(
                    {**cfg, "dtype": dt},
                    db=Path(tmp) / f"{dt}.db",
                    progress=False,
                    device=args.device,
                )
                for dt in ("float64", "float32")
            }
            rows = []
            for lab, f64, f32 in zip(
                res["float64"].labels, res["float64"].final, res["float32"].final, strict=True
            ):
                rel = {
                    n: abs(f32[f"margin_{n}"] - f64[f"margin_{n}"]) / abs(f64[f"margin_{n}"])
                    for n in NORMS
                }
                rel["log_loss"] = abs(f32["log_loss"] - f64["log_loss"]) / abs(f64["log_loss"])
                rows.append(
                    {
                        "label": lab,
                        "rel": rel,
                        "log_loss64": f64["log_loss"],
                        "log_loss32": f32["log_loss"],
                    }
                )
                print(
                    f"   {bname:<22} {lab:<14} "
                    + " ".join(f"{k} {v:.2e}" for k, v in rel.items())
                    + f"   log-loss {f64['log_loss']:.6g} vs {f32['log_loss']:.6g}"
                )
            winners = {}
            for dt in res:
                labs = res[dt].labels
                means = {lab: {n: [] for n in NORMS} for lab in labs}
                for lab, f in zip(labs, res[dt].final, strict=True):
                    for n in NORMS:
                        means[lab][n].append(f[f"margin_{n}"])
                winners[dt] = {
                    n: max(labs, key=lambda lab: sum(means[lab][n]) / len(means[lab][n]))
                    for n in NORMS
                }
            print(
                f"   {bname}: flavor-matrix winners float64 {winners['float64']}"
                f" / float32 {winners['float32']}"
            )
            result[bname] = {"runs": rows, "winners": winners}
    worst = max(
        v
        for b in result.values()
        for r in b["runs"]
        for k, v in r["rel"].items()
        if k != "log_loss"
    )
    print(f"largest relative difference of a final margin: {worst:.3e}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
