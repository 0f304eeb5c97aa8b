"""Learning-rate schedules in log space."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steepest.schedules import schedule


def test_constant_and_power():
    assert schedule("constant", lr=0.3)(t=17) == pytest.approx(0.3, rel=1e-15)
    s = schedule("power", lr=0.5, a=0.8)
    for t in (1, 10, 1000):
        assert s(t) == pytest.approx(0.5 * t**-0.8, rel=1e-14)


def test_loss_based_is_lyu_li_and_finite_at_tiny_losses():
    """η = α·𝓛₀/𝓛 with 𝓛₀ = log 10 (Lyu & Li's LossBasedLRv1)."""
    s = schedule("loss_based", lr=0.1)
    assert s(t=5, log_loss=math.log(0.01)) == pytest.approx(0.1 * math.log(10) / 0.01, rel=1e-13)
    # At 𝓛 = e^-10000, η itself is e^{~10000}: only its log is representable.
    lg = s.log_lr(torch.tensor(3.0), torch.tensor(-10000.0))
    assert float(lg) == pytest.approx(math.log(0.1) + math.log(math.log(10)) + 10000, rel=1e-15)
    assert s.adaptive and s.up == pytest.approx(2**0.2) and s.down == pytest.approx(2**0.1)


def test_norm_scaled():
    s = schedule("norm_scaled", lr=0.01, a=0.5)
    assert s(t=4, norm=30.0) == pytest.approx(0.01 * 4**-0.5 * 30.0, rel=1e-14)


def test_vectorized_over_runs():
    s = schedule("power", lr=0.2, a=0.5)
    t = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    torch.testing.assert_close(torch.exp(s.log_lr(t)), 0.2 / torch.sqrt(t), rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    "name,kw,msg",
    [
        ("cosine", {"lr": 1}, "valid names"),
        ("power", {"lr": 1, "a": 1.5}, r"\(0, 1\]"),
        ("constant", {"lr": -1}, "positive"),
        ("constant", {"lr": 1, "a": 0.5}, "does not take 'a'"),
    ],
)
def test_errors(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        schedule(name, **kw)


def test_bundle_retries_are_a_flow_option_only():
    from steepest.config import load_config

    base = {
        "name": "x",
        "data": {"name": "digits", "classes": [0, 1]},
        "model": {"name": "mlp", "widths": [8]},
    }
    cd_flow = {"algorithm": "cd", "schedule": "flow"}
    cfg = load_config({**base, "algorithms": [{**cd_flow, "bundle": True}]})
    assert cfg.run_specs()[0].schedule["bundle"] is True
    plain = load_config({**base, "algorithms": [cd_flow]})
    assert plain.run_specs()[0].schedule["bundle"] is False
    # configs that do not set it keep their hash (batches started before it still resume)
    before = {k: v for k, v in plain.canonical().items() if k != "device"}
    before["algorithms"] = [
        {k: v for k, v in a.items() if k not in ("tol", "bundle")} for a in before["algorithms"]
    ]
    import hashlib

    blob = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert plain.config_hash() == hashlib.sha256(blob.encode()).hexdigest()[:16]
    with pytest.raises(ValueError, match="bundle applies to schedule 'flow' only"):
        power = {"algorithm": "cd", "schedule": "power", "lr": 0.1, "a": 0.5, "bundle": True}
        load_config({**base, "algorithms": [power]})
