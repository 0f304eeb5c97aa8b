"""Theorem-check verdicts for a reproduction's runs (``steepest verify`` on them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VerifySection", "verify_markdown", "verify_line"]


@dataclass(frozen=True)
class VerifySection:
    """``steepest verify`` on one batch: the markdown for the report, whether a prediction
    failed, the one-line summary, and the failing checks by name with their counts."""

    markdown: str
    failed: bool
    summary: str
    failing: dict[str, int]


def verify_markdown(
    db: Path, run_ids: Sequence[int], heading: str | None = None, kkt: bool = True
) -> VerifySection:
    """Verify ``run_ids`` and render the result as markdown under ``### heading`` (verify's
    title dropped: the report has its own heading for this section)."""
    from ..store import RunStore
    from ..verify import verify_runs

    with RunStore(db) as store:
        rep = verify_runs(store, list(run_ids), kkt=kkt)
    lines = rep.to_markdown().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    if heading:
        lines = [f"### {heading}", ""] + lines
    failing = Counter(c.check for r in rep.runs for c in r.checks if c.verdict == "fail")
    return VerifySection("\n".join(lines).strip(), rep.failed, rep.summary(), dict(failing))


def verify_line(sections: Sequence[VerifySection]) -> tuple[bool, str]:
    """(any prediction failed, one sentence for the report's verdict line)."""
    if not sections:
        return False, ""
    failing: Counter[str] = Counter()
    for s in sections:
        failing.update(s.failing)
    parts = "; ".join(s.summary for s in sections)
    if failing:
        which = ", ".join(f"{k} in {v} run(s)" for k, v in sorted(failing.items()))
        return True, f"`steepest verify` FAILED ({which}) — {parts}"
    return False, f"`steepest verify`: {parts}"
