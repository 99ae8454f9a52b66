"""Fixed-width text tables for the terminal, and Markdown tables for reports."""
from __future__ import annotations

import math


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    cols = [headers] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def not_finite(x) -> str | None:
    """Why a value cannot be shown ("n/a (NaN)", "n/a (inf)"); None for a finite number. results.json
    holds null there (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a (NaN)" if math.isnan(x) else ("n/a (inf)" if x > 0 else "n/a (-inf)")
    return None


def num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else not_finite(x) or f"{x:,.{digits}f}"


def times(x: float | None, digits: int = 2, suffix: str = "x") -> str:
    """A ratio, e.g. 1.23x."""
    return "-" if x is None else not_finite(x) or f"{x:.{digits}f}{suffix}"


def signed(x: float | None, digits: int = 2) -> str:
    """A change, e.g. +0.12."""
    return "-" if x is None else not_finite(x) or f"{x:+.{digits}f}"
