"""Markdown tables of result rows, as the README holds them (summary and bench print them)."""

from __future__ import annotations

Row = dict[str, int | float | str]


def format_table(rows: list[Row]) -> str:
    """Markdown table; ints get thousands separators, floats 2 decimals (3 below 1)."""

    def cell(v: int | float | str) -> str:
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 1 else f"{v:,.2f}"
        return v

    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r[k]) for k in header) + " |" for r in rows]
    return "\n".join(lines)
