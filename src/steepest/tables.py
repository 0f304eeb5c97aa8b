"""Tables for people: plain text for the terminal (``steepest runs``, ``steepest verify``) and
markdown for reports, with one way of writing numbers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["format_value", "markdown_table", "text_table"]


def format_value(
    v: Any, *, g: int = 4, e: int = 3, sci_above: float = 1e4, nan: str = "nan"
) -> str:
    """A cell: booleans and integers as they are; a float with ``g`` significant digits, or in
    scientific notation with ``e`` decimals when |v| ≥ ``sci_above`` or |v| < 1e-3 (and v ≠ 0);
    NaN as ``nan``; anything else by ``str``."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return nan
        if math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) >= sci_above or abs(v) < 1e-3):
            return f"{v:.{e}e}"
        return f"{v:.{g}g}"
    return str(v)


def text_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    fmt: Callable[[Any], str] = format_value,
    pad_last: bool = True,
) -> str:
    """Columns aligned with two spaces between them, a rule of dashes under the header.
    ``pad_last=False`` leaves the last column (free text) unpadded and strips trailing blanks."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    if not pad_last:
        widths[-1] = len(headers[-1])

    def line(parts: Sequence[str]) -> str:
        text = "  ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True))
        return text if pad_last else text.rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in cells)])


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    fmt: Callable[[Any], str] | None = None,
    escape: bool = False,
) -> str:
    """A markdown table; ``fmt`` writes each cell (default: :func:`format_value` with NaN as
    "—"); ``escape`` protects "|" and line breaks inside cells."""
    fmt = fmt or (lambda v: format_value(v, nan="—"))

    def cell(v: Any) -> str:
        s = fmt(v)
        return s.replace("|", "\\|").replace("\n", " ") if escape else s

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
