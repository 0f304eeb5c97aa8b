"""GPU ≡ CPU: every rule, 20 float64 steps on CUDA against the same steps on the CPU.

Run on a GPU machine with ``pytest -m gpu``; every test here skips without CUDA (CI has none).
Tolerance rtol 1e-10: the two devices sum in different orders (cuBLAS vs MKL GEMMs, CUDA
reductions), which moves float64 results by a few ulps per step; 20 steps of these rules
amplify that by far less than 10^5, and a wrong device placement or a dropped state would be
off by orders of magnitude more. Two rules miss 1e-10 on an H200 (measured 2026-12-04, see
docs/gpu.md): Shampoo (greatest relative difference 5.8e-8) and Muon-Adam (2.1e-7). They take
inverse roots or SVDs of small, nearly singular matrices, which amplify the devices' rounding
differences; they are held to 1e-6, which still catches a misplaced or dropped state.
"""

from __future__ import annotations

import pytest
import torch

from steepest.algorithms import algorithm_names
from steepest.engine import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

#: Options for the rules that need them; the test covers every registered rule.
OPTIONS = {"lp": {"p": 3}, "steepest": {"norm": "l1.5"}, "cd": {"normalized": False}}
#: Measured exceptions to rtol 1e-10 (module docstring).
RTOL = {"shampoo": 1e-6, "muon-adam": 1e-6}
LRS = {
    "gd": 0.05,
    "cd": 0.05,
    "sign": 0.01,
    "adam": 0.01,
    "signum": 0.01,
    "muon-adam": 0.01,
    "muon-signum": 0.01,
}


def _cfg(name: str, dtype: str = "float64") -> dict:
    sched = (
        {"schedule": "loss_based", "lr": 0.1}
        if name == "gd"
        else {"schedule": "power", "lr": LRS.get(name, 0.05), "a": 0.5}
    )
    return {
        "name": f"gpu-{name}",
        "data": {"name": "digits", "classes": [0, 1], "n_train": 100, "n_test": 40},
        "model": {"name": "mlp", "widths": [16], "init_scale": 0.5},
        "seeds": [0, 1],
        "dtype": dtype,
        "algorithms": [{"algorithm": name, "options": OPTIONS.get(name, {}), **sched}],
        "stop": {"steps": 20},
    }


@pytest.mark.parametrize("name", sorted(algorithm_names()))
def test_gpu_equals_cpu_float64(tmp_path, name):
    cpu = train(_cfg(name), db=tmp_path / "cpu.db", progress=False, device="cpu")
    gpu = train(_cfg(name), db=tmp_path / "gpu.db", progress=False, device="cuda")
    a = torch.load(cpu.checkpoint, weights_only=True, map_location="cpu")
    b = torch.load(
        gpu.checkpoint, weights_only=True, map_location="cpu"
    )  # saved on the GPU machine as CPU tensors
    assert a["t"].tolist() == b["t"].tolist() and a["rollbacks"].tolist() == b["rollbacks"].tolist()
    for pa, pb in zip(a["params"], b["params"], strict=True):
        torch.testing.assert_close(pb, pa, rtol=RTOL.get(name, 1e-10), atol=1e-300)
    torch.testing.assert_close(b["log_flow"], a["log_flow"], rtol=RTOL.get(name, 1e-10), atol=0.0)
    for fa, fb in zip(cpu.final, gpu.final, strict=True):
        for k in (
            "log_loss",
            "margin_own",
            "smoothed_own",
            "margin_l2",
            "margin_linf",
            "margin_spectral",
        ):
            assert fb[k] == pytest.approx(fa[k], rel=RTOL.get(name, 1e-10)), k


def test_float32_runs_on_gpu_and_measures_in_float64(tmp_path):
    r64 = train(_cfg("ngd"), db=tmp_path / "a.db", progress=False, device="cuda")
    r32 = train(_cfg("ngd", "float32"), db=tmp_path / "b.db", progress=False, device="cuda")
    for f64, f32 in zip(r64.final, r32.final, strict=True):
        # 20 float32 steps of normalized GD: the margins agree to float32 accuracy (~1e-7 per
        # step), far looser than float64 and far tighter than any algorithmic difference.
        assert f32["margin_l2"] == pytest.approx(f64["margin_l2"], rel=1e-4)
