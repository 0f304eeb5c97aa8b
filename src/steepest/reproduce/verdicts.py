"""Theorem-check verdicts for a reproduction's runs (``steepest verify`` on them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def verify_markdown(db: Path, run_ids: Sequence[int]) -> str:
    """The verify table for ``run_ids`` as markdown."""
    from ..store import RunStore
    from ..verify import verify_runs

    with RunStore(db) as store:
        md = verify_runs(store, list(run_ids)).to_markdown()
    # The report has its own heading for this section: drop verify's top-level title.
    lines = md.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip()
