"""Leaderboard tables as Markdown and as LaTeX (booktabs), from one description.

A `Table` holds text cells and `Stat` cells (a mean with its standard error and interval); the
report decides what goes in them, this module only writes them out. The LaTeX is a fragment to
`\\input` in a document that loads `booktabs`; text is escaped (`%`, `_`, `&`, ...) and `±`, `↑`,
`↓` become math.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field


@dataclass
class Stat:
    """`mean ± se [low, high]` in display units (value × scale, `digits` decimals). No `se`: no
    ± part (one seed). `interval` None with `expects_interval`: `[—]`, the interval could not be
    computed (no per-query results)."""

    mean: float | None
    se: float | None = None
    interval: tuple[float, float] | None = None
    scale: float = 1.0
    digits: int = 2
    expects_interval: bool = False
    bold: bool = False
    signed: bool = False  # a difference: "+1.0"

    def number(self, value: float) -> str:
        return f"{value * self.scale:{'+' if self.signed else ''}.{self.digits}f}"

    def parts(self) -> tuple[str, str, str]:
        """(mean, ' ± se' or '', ' [low, high]' or ' [—]' or '')."""
        if self.mean is None:
            return "–", "", ""
        se = "" if self.se is None else f" ± {self.se * self.scale:.{self.digits}f}"
        if self.interval is not None:
            low, high = (f"{v * self.scale:.{self.digits}f}" for v in self.interval)
            interval = f" [{low}, {high}]"
        else:
            interval = " [—]" if self.expects_interval else ""
        return self.number(self.mean), se, interval


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str | Stat]]
    notes: list[str] = field(default_factory=list)


def mark_best(table: Table, column: int, higher_is_better: bool | None) -> None:
    """Bold the best mean of `column` (every row that ties at the shown precision); no direction: none."""
    if higher_is_better is None:
        return
    cells = [row[column] for row in table.rows if isinstance(row[column], Stat) and row[column].mean is not None]
    if not cells:
        return
    shown = [float(cell.number(cell.mean)) for cell in cells]
    best = max(shown) if higher_is_better else min(shown)
    for cell, value in zip(cells, shown):
        cell.bold = value == best


def markdown(table: Table) -> str:
    def cell(value: str | Stat) -> str:
        if isinstance(value, str):
            return value
        mean, se, interval = value.parts()
        return (f"**{mean}**" if value.bold else mean) + se + interval

    lines = [f"## {table.title}", "", "| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
    for note in table.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "−": r"$-$",
        "×": r"$\times$", "—": "---", "–": "--", "…": r"\dots{}"}


def tex_escape(text: str) -> str:
    """Plain text as LaTeX text; `code` spans become \\texttt, `**bold**` \\textbf."""
    out = []
    for i, piece in enumerate(re.split(r"(`[^`]*`|\*\*[^*]+\*\*)", text)):
        if piece.startswith("`") and piece.endswith("`") and len(piece) > 1:
            out.append(r"\texttt{" + "".join(_TEX.get(c, c) for c in piece[1:-1]) + "}")
        elif piece.startswith("**") and piece.endswith("**") and len(piece) > 4:
            out.append(r"\textbf{" + "".join(_TEX.get(c, c) for c in piece[2:-2]) + "}")
        else:
            out.append("".join(_TEX.get(c, c) for c in piece))
    return "".join(out)


def latex(table: Table) -> str:
    def cell(value: str | Stat) -> str:
        if isinstance(value, str):
            return tex_escape(value)
        mean, se, interval = (tex_escape(part) for part in value.parts())
        return (rf"\textbf{{{mean}}}" if value.bold else mean) + se + interval

    lines = [r"\begin{table}[htbp]", r"\centering", r"\small", rf"\caption{{{tex_escape(table.title)}}}",
             r"\begin{tabular}{l" + "r" * (len(table.header) - 1) + "}", r"\toprule",
             " & ".join(tex_escape(h) for h in table.header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize"]
        lines += [tex_escape(note) + r"\par" for note in table.notes]
        lines += [r"\end{minipage}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    return buffer.getvalue()
