"""flavors-f1: the pipeline at smoke size, and the theory's prediction at quick size (slow)."""

from __future__ import annotations

import json
import math

import pytest

from steepest.reproduce import reproduce
from steepest.reproduce.common import batch_configs, load_spec
from steepest.reproduce.flavors import DIAGONAL, LATE_PHASE


def test_flavors_f1_smoke_writes_report_figures_and_finite_tables(tmp_path):
    report = reproduce("flavors-f1", size="smoke", out=tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Claim" in text and "**Reproduced?** inconclusive" in text
    assert "Theorem checks" in text and "Flavor matrix, one-hidden-layer (L = 2)" in text
    assert "Flavor matrix, two-hidden-layer (L = 3)" in text
    assert len(report.figures) == 6 and all(p.exists() and p.stat().st_size > 1000 for p in report.figures)
    res = json.loads((tmp_path / "results.json").read_text())
    for batch in ("one-hidden-layer", "two-hidden-layer"):
        mat = res["numbers"][batch]["matrix"]
        assert set(DIAGONAL.values()) <= set(mat)
        assert all(math.isfinite(v[0]) for row in mat.values() for v in row.values())


def test_full_size_configs_validate():
    from steepest.config import load_config

    for cfg in batch_configs(load_spec("flavors-f1"), "full").values():
        c = load_config(cfg)
        assert c.data.n_train == 800 and c.stop.steps >= 20000  # CD batches get 30000


@pytest.mark.slow
def test_flavors_f1_quick_diagonal_dominates_in_the_late_phase(tmp_path):
    """The claim itself (spec §5 item 9): read once every run has log-loss ≤ −100."""
    report = reproduce("flavors-f1", size="quick", out=tmp_path)
    for batch, nums in report.numbers.items():
        assert nums["worst_final_log_loss"] <= LATE_PHASE, batch
        assert all(nums["diagonal_dominates"].values()), (batch, nums["matrix"])
    assert report.reproduced is True
