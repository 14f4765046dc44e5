"""CSV cells and lines, the one writer behind every CSV ModelTrack produces (the API's export, ``report --format
csv``, ``events --format csv``).

Attribution values come from request headers, so a cell may hold whatever a client sent. A text cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to a spreadsheet
(``=HYPERLINK(…)``); as OWASP advises for CSV injection, such a cell is written with a leading ``'`` so it is
shown as text. Numbers are never changed (a negative amount stays a number). Held by tests/test_csv_safety.py
(the API's export, ``report`` and ``events``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        value = orjson.dumps(value).decode()
    elif isinstance(value, bool):
        return "true" if value else "false"
    elif value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_lines(header: Sequence[str], rows: Iterable[dict[str, Any]], with_header: bool) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if with_header:
        w.writerow(header)
    for r in rows:
        w.writerow([csv_cell(r.get(k)) for k in header])
    return buf.getvalue().encode()


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """A plain-text table whose columns are as wide as their widest cell: no name or value is ever cut.
    ``right`` marks the columns aligned right (numbers)."""
    body = [list(r) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]
    align = [bool(right[i]) if i < len(right) else False for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if a else c.ljust(w) for c, w, a in zip(cells, widths, align, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)]) + "\n"
