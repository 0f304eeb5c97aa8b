"""The verify report: verdict tables as text and markdown, the summary line and the exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tables import format_value, markdown_table, text_table
from .checks import EXIT_FAILED, EXIT_NOT_CHECKED, EXIT_OK, VERDICTS, RunVerdict


def _fmt(v: Any) -> str:
    return format_value(v)


@dataclass
class VerifyReport:
    """Verdicts for several runs; :meth:`to_markdown` renders them, :attr:`failed` sums them up."""

    runs: list[RunVerdict]

    @property
    def failed(self) -> bool:
        """A prediction failed beyond tolerance in some run."""
        return any(r.failed for r in self.runs)

    @property
    def all_checked(self) -> bool:
        return all(r.checked for r in self.runs)

    @property
    def exit_code(self) -> int:
        if self.failed:
            return EXIT_FAILED
        return EXIT_OK if self.all_checked else EXIT_NOT_CHECKED

    def verdicts(self) -> dict[tuple[int | None, str], str]:
        return {(r.run_id, c.check): c.verdict for r in self.runs for c in r.checks}

    def _rows(self) -> list[list[str]]:
        rows = []
        for r in self.runs:
            rid = "-" if r.run_id is None else str(r.run_id)
            for c in r.checks:
                rows.append([rid, r.algorithm, r.own_norm, c.check, c.verdict, c.reason])
        return rows

    def to_text(self) -> str:
        """A plain-text verdict table (what ``steepest verify`` prints)."""
        headers = ["run", "algorithm", "norm", "check", "verdict", "reason"]
        table = text_table(headers, self._rows(), fmt=str, pad_last=False)  # reason: free text
        return "\n".join([table, "", self.summary()])

    def summary(self) -> str:
        n = {v: 0 for v in VERDICTS}
        for r in self.runs:
            for c in r.checks:
                if c.check != "preconditions":
                    n[c.verdict] += 1
        word = {EXIT_OK: "PASSED", EXIT_FAILED: "FAILED", EXIT_NOT_CHECKED: "NOT CHECKED"}[
            self.exit_code
        ]
        return (
            f"{word}: {n['pass']} pass, {n['fail']} fail, {n['not applicable']} not applicable "
            f"over {len(self.runs)} run(s)"
        )

    def to_markdown(self) -> str:
        """The verdict table, then per-run numbers and every violation with its size."""

        def cell(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")

        headers = ["run", "algorithm", "own norm", "check", "verdict", "reason"]
        lines = ["# Theorem checks (`steepest verify`)", "", self.summary(), ""]
        lines += markdown_table(headers, self._rows(), fmt=str, escape=True).splitlines()
        for r in self.runs:
            lines += ["", f"## run {'-' if r.run_id is None else r.run_id}: {cell(r.name)}", ""]
            for c in r.checks:
                if c.numbers:
                    nums = ", ".join(f"{k} = {_fmt(v)}" for k, v in c.numbers.items())
                    lines.append(f"- **{c.check}** ({c.verdict}): {cell(nums)}")
                if c.violations:
                    lines.append(f"  - violations of {c.check} ({len(c.violations)}):")
                    lines.append("")
                    keys = list(c.violations[0])
                    rows = [[v[k] for k in keys] for v in c.violations]
                    table = markdown_table(keys, rows, fmt=_fmt)
                    lines += ["    " + line for line in table.splitlines()]
                    lines.append("")
        return "\n".join(lines) + "\n"
