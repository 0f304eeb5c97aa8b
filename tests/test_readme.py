"""The README's examples run as written: every ``python`` block, and the example config (trained
for a few steps). The two set-up commands at its top are what CI runs (``.ci/run``)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


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

