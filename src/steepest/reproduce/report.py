"""The report every reproduction writes: claim, measured tables, figures, verdict."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .verdicts import VerifySection, verify_line

__all__ = ["Report", "verdict"]

SMOKE_REASON = "smoke size: a pipeline check, too short to test the claim."


def verdict(size: str, reproduced: bool, reason: str) -> tuple[bool | None, str]:
    """(reproduced, reason) for the report; a smoke-size run never claims either way."""
    if size == "smoke":
        return None, SMOKE_REASON
    return reproduced, reason


@dataclass
class Report:
    """A reproduction's outcome. ``reproduced`` is True, False, or None (inconclusive)."""

    name: str
    title: str
    claim: str
    size: str
    reproduced: bool | None
    reason: str
    tables: list[tuple[str, str]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    defaults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdicts_md: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    @classmethod
    def for_spec(
        cls,
        spec: dict[str, Any],
        size: str,
        reproduced: bool,
        reason: str,
        verify: Sequence[VerifySection] = (),
        **parts: Any,
    ) -> Report:
        """The report of experiment ``spec`` at ``size``: name, title, claim and defaults come from
        the spec, the verdict goes through :func:`verdict` (a smoke run never claims either way).

        ``verify`` holds the batches' theorem checks: their summary joins the verdict line, and a
        failed check turns a "yes" into "no", so a report never says yes above a FAILED verify."""
        failed, line = verify_line(list(verify))
        if failed and reproduced:
            claim = reason.rstrip(".")
            reproduced, reason = False, f"the claim's own numbers hold ({claim}), but {line}"
        elif line:
            reason = f"{reason.rstrip('.')}. {line}."
        ok, why = verdict(size, reproduced, reason)
        if verify and "verdicts_md" not in parts:
            parts["verdicts_md"] = "\n\n".join(v.markdown for v in verify)
        return cls(
            name=spec["name"],
            title=spec["title"],
            claim=spec["claim"],
            size=size,
            reproduced=ok,
            reason=why,
            defaults=list(spec.get("defaults", [])),
            **parts,
        )

    def to_markdown(self) -> str:
        verdict = {True: "yes", False: "**no**", None: "inconclusive"}[self.reproduced]
        lines = [f"# {self.title}", "", f"Experiment `{self.name}`, size `{self.size}`."]
        if self.seconds is not None:
            lines.append(f"Wall time: {self.seconds:.0f} s.")
        lines += [
            "",
            "## Claim",
            "",
            self.claim.strip(),
            "",
            f"**Reproduced?** {verdict}: {self.reason}",
            "",
        ]
        for caption, table in self.tables:
            lines += [f"## {caption}", "", table, ""]
        if self.figures:
            lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in self.figures] + [""]
        if self.verdicts_md:
            lines += ["## Theorem checks (`steepest verify`)", "", self.verdicts_md, ""]
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        if self.defaults:
            lines += (
                ["## Values that are our defaults (the paper's are not known)", ""]
                + [f"- {d}" for d in self.defaults]
                + [""]
            )
        return "\n".join(lines)

    def write(self, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out / "results.json",
            json.dumps(
                {
                    "name": self.name,
                    "size": self.size,
                    "reproduced": self.reproduced,
                    "reason": self.reason,
                    "numbers": self.numbers,
                    "seconds": self.seconds,
                },
                indent=2,
                sort_keys=True,
                default=float,
            ),
        )
        return atomic_write_text(out / "report.md", self.to_markdown())
