"""The README's examples run as written: every ``python`` block, and the example config (trained
for a few steps). The two set-up commands at its top are what CI runs (``.ci/run``). So does
the worked example of docs/extending.md."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

README = Path(__file__).resolve().parents[1] / "README.md"
EXTENDING = README.parent / "docs" / "extending.md"


def _blocks(lang: str, doc: Path = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)


def test_every_python_example_in_the_readme_runs(tmp_path, monkeypatch, capsys):
    blocks = _blocks("python")
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    margin = float(re.findall(r"tensor\(([-0-9.e]+)", printed)[-1])
    assert margin > 0  # 300 sign-descent steps separate digits 0 vs 1: a positive ℓ∞ margin


def test_the_readme_example_config_trains(tmp_path):
    from steepest.config import load_config
    from steepest.engine import train

    configs = [yaml.safe_load(b) for b in _blocks("yaml")]
    configs = [c for c in configs if isinstance(c, dict) and "algorithms" in c]
    assert configs, "the README has no example config"
    for cfg in configs:
        load_config(cfg)  # valid as written
        short = {**cfg, "seeds": cfg["seeds"][:1], "stop": {"steps": 3}, "device": "cpu"}
        res = train(short, db=tmp_path / "runs.db", progress=False)
        assert len(res.run_ids) == len(load_config(short).run_specs())
        assert all(st == "completed" for st in res.statuses)


def test_the_extending_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/extending.md: a user's norm, optimizer, model and data, trained and verified. Each
    optimizer has the larger margin in its own norm, as the theory predicts (a real outcome of
    the run, not a property of the page)."""
    blocks = _blocks("python", EXTENDING)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "extending_example"}
    for code in blocks:
        exec(compile(code, str(EXTENDING), "exec"), namespace)
    finals = dict(zip(namespace["result"].labels, namespace["result"].final, strict=True))
    assert (
        finals["layer-weighted-gd"]["margin_layer-weighted-l2"]
        > finals["ngd"]["margin_layer-weighted-l2"]
    )
    assert finals["ngd"]["margin_l2"] > finals["layer-weighted-gd"]["margin_l2"]
    verdicts = {
        (r.algorithm, c.check): c.verdict for r in namespace["report"].runs for c in r.checks
    }
    assert verdicts[("layer-weighted-gd", "margin_monotone")] == "pass"
    assert "margin in its own norm" in capsys.readouterr().out
