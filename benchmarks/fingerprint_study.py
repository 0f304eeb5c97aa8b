"""Fingerprints of torch.optim's and pytorch-optimizer's optimizers (docs/fingerprints.md).

Each optimizer is fingerprinted with the defaults of ``steepest.fingerprint`` (the five default
problems, 6,000 steps each, relative steps c/Q with c = 0.05), from its own default options except
where the table says otherwise. Writes a markdown table and a JSON file.

    python benchmarks/fingerprint_study.py --out /tmp/study            # ~5 min, 2 workers
    python benchmarks/fingerprint_study.py --only "torch SGD" "Lion"   # a few rows
    python benchmarks/fingerprint_study.py --network 2000               # the network flavor matrix
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# (label, import path, options, predicted norm, reference for the prediction)
STUDY: list[tuple[str, str, dict, str, str]] = [
    ("torch SGD", "torch.optim:SGD", {"lr": 0.1}, "l2 / frobenius", "Soudry et al. 2018"),
    (
        "torch SGD momentum 0.9",
        "torch.optim:SGD",
        {"lr": 0.1, "momentum": 0.9},
        "l2 / frobenius",
        "Gunasekar et al. 2018; Wang et al. 2022",
    ),
    ("torch Adam", "torch.optim:Adam", {}, "linf / max", "Zhang, Zou & Cao 2024"),
    (
        "torch Adam β2=0.99 ε=0",
        "torch.optim:Adam",
        {"betas": [0.9, 0.99], "eps": 0.0},
        "linf / max",
        "Zhang, Zou & Cao 2024",
    ),
    ("torch AdamW", "torch.optim:AdamW", {}, "linf / max (ℓ∞-bounded)", "Xie & Li 2024"),
    ("torch Adamax", "torch.optim:Adamax", {}, "—", ""),
    ("torch NAdam", "torch.optim:NAdam", {}, "—", ""),
    ("torch RAdam", "torch.optim:RAdam", {}, "—", ""),
    ("torch Adagrad", "torch.optim:Adagrad", {}, "no single norm", "Qian & Qian 2019"),
    ("torch RMSprop", "torch.optim:RMSprop", {}, "—", ""),
    ("torch Rprop", "torch.optim:Rprop", {}, "—", ""),
    ("torch Adadelta", "torch.optim:Adadelta", {}, "—", ""),
    ("Lion", "pytorch_optimizer:Lion", {}, "linf / max", "Chen et al. 2024 (ℓ∞-constrained)"),
    ("SignSGD", "pytorch_optimizer:SignSGD", {"momentum": 0.0}, "linf / max", "sign descent"),
    ("Signum (SignSGD momentum 0.9)", "pytorch_optimizer:SignSGD", {}, "—", ""),
    (
        "Muon",
        "pytorch_optimizer:Muon",
        {"group": {"use_muon": True}},
        "spectral (matrix)",
        "Fan et al. 2025",
    ),
    ("SOAP", "pytorch_optimizer:SOAP", {}, "—", ""),
    ("Shampoo", "pytorch_optimizer:Shampoo", {}, "—", ""),
    ("Adan", "pytorch_optimizer:Adan", {}, "—", ""),
    ("Prodigy", "pytorch_optimizer:Prodigy", {}, "—", ""),
    ("Schedule-Free AdamW", "pytorch_optimizer:ScheduleFreeAdamW", {}, "—", ""),
    ("AdEMAMix", "pytorch_optimizer:AdEMAMix", {}, "—", ""),
    ("Tiger", "pytorch_optimizer:Tiger", {}, "—", ""),
    ("LaProp", "pytorch_optimizer:LaProp", {}, "—", ""),
    ("AdaBelief", "pytorch_optimizer:AdaBelief", {}, "—", ""),
    ("ADOPT", "pytorch_optimizer:ADOPT", {}, "—", ""),
    ("Lamb", "pytorch_optimizer:Lamb", {}, "—", ""),
    ("MADGRAD", "pytorch_optimizer:MADGRAD", {}, "—", ""),
]


def _one(row: tuple[str, str, dict, str, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    from steepest.fingerprints import fingerprint, load_optimizer

    label, path, opts, pred, ref = row
    t0 = time.perf_counter()
    try:
        fp = fingerprint(load_optimizer(path, opts), name=label)
        out = fp.to_dict()
        for r in out["results"]:
            r.pop("trajectory")
        out["failures"] = fp.failures()
    except Exception as exc:  # an optimizer that cannot even be built is a row too
        out = {"optimizer": label, "error": f"{type(exc).__name__}: {exc}"}
    out.update(path=path, options=opts, prediction=pred, reference=ref)
    out["wall"] = time.perf_counter() - t0
    return out


def _cell(d: dict, key: str) -> str:
    v = d.get("ratios", {}).get(key)
    return f"{v[0]:.3f}" if v else "—"


def table(rows: list[dict]) -> str:
    from steepest.tables import markdown_table

    head = [
        "optimizer",
        "options",
        "vector verdict",
        "ℓ1",
        "ℓ2",
        "ℓ∞",
        "best ℓp (ratio)",
        "matrix verdict",
        "spectral",
        "frobenius",
        "max",
        "predicted",
        "s",
    ]
    out = []
    for d in rows:
        if "error" in d:
            out.append([d["optimizer"], json.dumps(d["options"]), d["error"]] + [""] * 10)
            continue
        vec = {k: v for k, v in d["ratios"].items() if not k.startswith("matrix:")}
        best = max(vec, key=lambda k: vec[k][0]) if vec else None
        pred = d["prediction"] + (f" ({d['reference']})" if d["reference"] else "")
        out.append(
            [
                d["optimizer"],
                json.dumps(d["options"]) if d["options"] else "defaults",
                str(d["norm"]),
                _cell(d, "l1"),
                _cell(d, "l2"),
                _cell(d, "linf"),
                f"{best} ({vec[best][0]:.3f})" if best else "—",
                str(d["matrix_norm"]),
                _cell(d, "matrix:spectral"),
                _cell(d, "matrix:frobenius"),
                _cell(d, "matrix:max"),
                pred,
                f"{d['seconds']:.0f}",
            ]
        )
    return markdown_table(head, out)


# The surprises of the linear study, on the network, beside GD, sign and CD (docs/fingerprints.md).
NETWORK: list[tuple[str, str, dict]] = [
    ("GD (steepest:ngd)", "steepest:ngd", {"lr": 0.1}),
    ("sign (steepest:sign)", "steepest:sign", {"lr": 1e-3}),
    ("CD (steepest:cd)", "steepest:cd", {"lr": 1e-3}),
    ("torch Adam", "torch.optim:Adam", {}),
    ("MADGRAD", "pytorch_optimizer:MADGRAD", {}),
    ("torch Rprop", "torch.optim:Rprop", {}),
    ("AdaBelief", "pytorch_optimizer:AdaBelief", {}),
    ("ADOPT", "pytorch_optimizer:ADOPT", {}),
    ("Muon (pytorch-optimizer)", "pytorch_optimizer:Muon", {"group": {"use_muon": True}}),
    ("SOAP", "pytorch_optimizer:SOAP", {}),
]


def network_table(steps: int) -> str:
    from steepest.fingerprints import load_optimizer, network_flavor_matrix
    from steepest.tables import markdown_table

    def factory(path: str, opts: dict):
        try:
            return load_optimizer(path, opts)
        except Exception as exc:  # a missing package or a bad option is one row, not a crash
            message = f"{type(exc).__name__}: {exc}"

            def fail(ps):
                raise RuntimeError(message)

            return fail

    runs = network_flavor_matrix(
        {label: factory(path, opts) for label, path, opts in NETWORK}, steps=steps
    )
    best = {
        n: max((r.margins[n] for r in runs if r.status == "ok"), default=None)
        for n in ("l1", "l2", "linf")
    }
    rows = []
    for r in runs:
        cells = []
        for n in ("l1", "l2", "linf"):
            v = r.margins.get(n)
            cells.append("—" if v is None else (f"**{v:.4g}**" if v == best[n] else f"{v:.4g}"))
        rows.append([r.optimizer, *cells, f"{r.log_loss:.4g}", r.status, f"{r.seconds:.0f}"])
    return markdown_table(["optimizer", "γ_ℓ1", "γ_ℓ2", "γ_ℓ∞", "final log 𝓛", "status", "s"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write study.md and study.json here")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="labels to run")
    ap.add_argument(
        "--network",
        type=int,
        default=None,
        metavar="STEPS",
        help="instead: the network flavor matrix (MNIST 2 vs 7, width 64) with STEPS steps",
    )
    args = ap.parse_args()
    if args.network is not None:
        t0 = time.perf_counter()
        text = network_table(args.network)
        print(text)
        print(f"\n{len(NETWORK)} optimizers, {time.perf_counter() - t0:.0f} s")
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "network.md").write_text(text + "\n")
        return
    rows = [r for r in STUDY if args.only is None or r[0] in args.only]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_one, rows))
    text = table(results)
    print(text)
    print(
        f"\n{len(results)} optimizers, {time.perf_counter() - t0:.0f} s with {args.workers} workers"
    )
    for d in results:
        for f in d.get("failures", []):
            print(f"not ok: {d['optimizer']}: {f}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "study.md").write_text(text + "\n")
        (args.out / "study.json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
