"""Plug-ins from the CLI (issue 15): an installed package that declares a ``steepest.plugins``
entry point, and ``steepest --plugin MODULE``, let a YAML config name a user's norm, optimizer,
model and data set; ``steepest train`` and ``steepest verify`` run them in fresh processes.

The package is "installed" as a path entry point: a folder on PYTHONPATH with the package and a
``*.dist-info`` holding its METADATA and entry_points.txt, which is what ``importlib.metadata``
reads for a pip-installed wheel too (no network, no venv needed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from steepest.plugins import PluginError, load_plugin

PLUGIN = '''
"""A tiny plug-in: a scaled l2 norm, steepest descent w.r.t. it, a 2-homogeneous model and a
data set."""
import math

import torch
from torch import nn

import steepest
from steepest.algorithms import SteepestDescentRule
from steepest.norms import Norm, flat_params


class Halved(Norm):
    name = "toy-halved-l2"

    def __call__(self, xs):
        return flat_params(xs).norm() / 2

    def dual(self, gs):
        return 2 * flat_params(gs).norm()

    def direction_and_dual(self, gs):
        n = flat_params(gs).norm()
        return [2 * g / n for g in gs], 2 * n

    def direction(self, gs):
        return self.direction_and_dual(gs)[0]


class Net(nn.Module):
    def __init__(self, d, out=1, width=6, seed=0, dtype=torch.float64, init_scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(width, d, generator=g, dtype=dtype) / math.sqrt(d)
        v = torch.randn(width, generator=g, dtype=dtype) / math.sqrt(width)
        self.W, self.v = nn.Parameter(init_scale * W), nn.Parameter(init_scale * v)

    def forward(self, x):
        return torch.relu(x @ self.W.T) @ self.v


def blobs(n_train=None, n_test=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, m = n_train or 40, 20 if n_test is None else n_test
    X = torch.randn(n + m, 5, generator=g, dtype=torch.float64)
    y = torch.where(X[:, 0] + 0.2 * X[:, 1] > 0, 1.0, -1.0)
    return X[:n], y[:n], X[n:], y[n:]


def register():
    steepest.register_norm("toy-halved-l2", Halved)
    steepest.register_algorithm("toy-gd", lambda: SteepestDescentRule(Halved()))
    steepest.register_model("toy-net", Net)
    steepest.register_dataset("toy-blobs", blobs)
'''

CONFIG = """
name: plugin-run
data: {name: toy-blobs, n_train: 40, n_test: 10}
model: {name: toy-net, width: 6}
seeds: [0]
algorithms:
  - {algorithm: toy-gd, schedule: power, lr: 0.3, a: 0.5}
stop: {steps: 300}
"""


def _path(first: Path) -> str:
    """PYTHONPATH with ``first`` ahead of what the test process had."""
    return os.pathsep.join([str(first), os.environ.get("PYTHONPATH", "")])


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "steepest.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def plugin_env(tmp_path):
    root = tmp_path / "site"
    (root / "steepest_toyplug").mkdir(parents=True)
    (root / "steepest_toyplug" / "__init__.py").write_text(PLUGIN)
    info = root / "steepest_toyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: steepest-toyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[steepest.plugins]\ntoy = steepest_toyplug:register\n")
    env = {**os.environ, "PYTHONPATH": _path(root)}
    (tmp_path / "plugin.yaml").write_text(CONFIG)
    return env


def test_an_installed_plugin_trains_and_verifies_from_the_cli(tmp_path, plugin_env):
    db = tmp_path / "runs.db"
    out = _run(["train", "plugin.yaml", "--db", str(db)], plugin_env, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    ver = _run(["verify", "all", "--db", str(db), "--no-kkt"], plugin_env, tmp_path)
    # verify rebuilt nothing by hand: the stored config names the plug-in's objects, and the
    # entry point loaded them again in this second process.
    assert ver.returncode == 0, ver.stdout[-2000:] + ver.stderr[-2000:]
    assert "toy-halved-l2" in ver.stdout and "margin_monotone" in ver.stdout
    assert "FAILED" not in ver.stdout


def test_without_the_plugin_the_config_names_are_unknown(tmp_path):
    (tmp_path / "plugin.yaml").write_text(CONFIG)
    out = _run(["train", "plugin.yaml", "--db", str(tmp_path / "r.db")], dict(os.environ), tmp_path)
    assert out.returncode == 2
    assert "unknown dataset 'toy-blobs'" in out.stderr and "Traceback" not in out.stderr


def test_plugin_option_loads_a_module_by_name(tmp_path):
    # tests/user_plugin.py defines register(): --plugin imports it and calls it once.
    cfg = tmp_path / "user.yaml"
    cfg.write_text(
        textwrap.dedent("""
        name: user-plugin
        data: {name: digits, classes: [0, 1], n_train: 40, n_test: 10}
        model: {name: user-two-layer, width: 6}
        seeds: [0]
        algorithms:
          - {algorithm: user-scaled-gd, schedule: power, lr: 0.5, a: 0.5}
        stop: {steps: 20}
    """)
    )
    env = {**os.environ, "PYTHONPATH": _path(Path(__file__).parent)}
    db = str(tmp_path / "r.db")
    out = _run(["--plugin", "user_plugin", "train", str(cfg), "--db", db], env, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    bad = _run(["--plugin", "no_such_plugin_module", "runs", "--db", db], env, tmp_path)
    assert bad.returncode == 2
    assert "plug-in 'no_such_plugin_module' cannot be imported" in bad.stderr


def test_load_plugin_names_the_failure():
    with pytest.raises(PluginError, match="cannot be imported"):
        load_plugin("no_such_plugin_module_either")
    with pytest.raises(PluginError, match="module name"):
        load_plugin("")


def test_a_failing_entry_point_is_named_and_the_others_still_load(tmp_path, plugin_env):
    # A second installed plug-in that breaks on import: the working one still registers (the
    # config trains), and a config naming only unknown things gets an error naming the broken one.
    root = Path(plugin_env["PYTHONPATH"].split(os.pathsep)[0])
    (root / "steepest_broken").mkdir()
    (root / "steepest_broken" / "__init__.py").write_text(
        "raise RuntimeError('broken on purpose')\n"
    )
    info = root / "steepest_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: steepest-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[steepest.plugins]\nbroken = steepest_broken\n")
    out = _run(["train", "plugin.yaml", "--db", str(tmp_path / "r.db")], plugin_env, tmp_path)
    assert out.returncode == 2
    assert "broken" in out.stderr and "broken on purpose" in out.stderr
    assert "Traceback" not in out.stderr
    code = (
        "import steepest.plugins as p\n"
        "try:\n    p.load_entry_points()\nexcept p.PluginError as e:\n    print('error', e)\n"
        "import steepest\nprint('toy-gd' in steepest.algorithm_names())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=plugin_env, timeout=120
    )
    assert "error" in run.stdout and run.stdout.strip().endswith("True"), run.stdout + run.stderr


def test_a_plugin_norm_named_only_in_options_loads_its_plugin(tmp_path, plugin_env):
    # The 'steepest' algorithm takes a norm by name: a plug-in's norm there loads the plug-in.
    (tmp_path / "opt.yaml").write_text(
        CONFIG.replace("algorithm: toy-gd,", "algorithm: steepest, options: {norm: toy-halved-l2},")
    )
    out = _run(["train", "opt.yaml", "--db", str(tmp_path / "r.db")], plugin_env, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_plugin_that_raises_on_import_is_a_plugin_error(tmp_path, monkeypatch):
    (tmp_path / "steepest_raises_mod.py").write_text("x = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="failed while importing: ZeroDivisionError"):
        load_plugin("steepest_raises_mod")


def test_a_broken_plugin_does_not_hide_the_real_error(monkeypatch):
    # A config error caught before the plug-ins were loaded keeps its own message; the plug-in
    # failure is added to it, not put in its place.
    import steepest.plugins as plugins
    from steepest.config import ConfigError, load_config

    class Broken:
        name, value = "broken", "nowhere:register"

        def load(self):
            raise RuntimeError("boom")

    monkeypatch.setattr(plugins, "_loaded_entry_points", None)
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [Broken()])
    cfg = {
        "name": "x",
        "data": {"name": "digits"},
        "algorithms": [{"algorithm": "adam", "lr": 0.1, "options": {"beta": 0.9}}],
    }
    with pytest.raises(ConfigError, match="does not take 'beta'.*also, plug-in entry points"):
        load_config(cfg)
