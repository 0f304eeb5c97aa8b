"""The package's top level (``steepest/__init__.py``)."""

from __future__ import annotations


def test_every_submodule_is_reachable_after_import_steepest():
    """``steepest.NAME`` works after a bare ``import steepest`` (PEP 562), in a fresh process,
    without loading cvxpy (the oracles and KKT import it inside their functions)."""
    import subprocess
    import sys

    code = (
        "import sys, steepest\n"
        "names = ['adaptive', 'algorithms', 'losses', 'metrics', 'models', 'norms', 'optim',\n"
        "         *steepest._LAZY]\n"
        "mods = [getattr(steepest, n) for n in names]\n"
        "assert all(m.__name__ == 'steepest.' + n for m, n in zip(mods, names)), mods\n"
        "assert 'cvxpy' not in sys.modules\n"
        "print(len(mods))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import steepest

    assert int(out.stdout.strip()) == 7 + len(steepest._LAZY)
