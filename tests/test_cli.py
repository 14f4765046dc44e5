"""The command line a newcomer meets: `modeltrack events` (from any directory, real dates, filters, formats),
read-only commands that never create anything, `modeltrack pricing`, and one-line errors instead of
tracebacks."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from modeltrack.sinks.sqlite import SQLiteSink

from .test_pipeline import make_event


def mt(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELTRACK_") or k == "MODELTRACK_FIXTURES"}
    return subprocess.run(
        [sys.executable, "-m", "modeltrack", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=60,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Twelve events, two hours apart from 2026-11-01T00:00Z, with rotating attribution and statuses."""
    path = tmp_path_factory.mktemp("cli") / "events.db"
    sink = SQLiteSink(str(path))
    events = []
    for i in range(12):
        ev = make_event(i)
        events.append(
            replace(
                ev,
                timestamp=f"2026-11-01T{2 * i:02d}:00:00.000Z",
                team=("search", "ads", "infra")[i % 3],
                user=f"u{i % 2}",
                status=(200, 200, 429, 500)[i % 4],
                model=("gpt-4o-mini", "claude-sonnet-4-5")[i % 2],
                provider=("openai", "anthropic")[i % 2],
                session_id=f"s-{i // 4}",
            )
        )
    sink.write_sync(events)
    return f"sqlite:///{path}"


def lines(out: str) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in out.splitlines() if x.strip()]


def test_events_from_any_directory_with_the_store_url(store: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = mt("events", "--store", store, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    got = lines(done.stdout)
    assert len(got) == 12 and [e["timestamp"] for e in got] == sorted(e["timestamp"] for e in got)
    same = mt("events", cwd=elsewhere, env={"MODELTRACK_STORE": store})  # resolved as `serve` resolves it
    assert same.stdout == done.stdout


def test_since_and_until_compare_instants_whatever_the_offset(store: str) -> None:
    utc = lines(mt("events", "--store", store, "--since", "2026-11-01T10:00:00Z").stdout)
    paris = lines(mt("events", "--store", store, "--since", "2026-11-01T11:00:00+01:00").stdout)
    assert utc == paris and [e["timestamp"][11:13] for e in utc] == ["10", "12", "14", "16", "18", "20", "22"]
    window = lines(
        mt("events", "--store", store, "--since", "2026-11-01T04:00Z", "--until", "2026-11-01T08:00Z").stdout
    )
    assert [e["timestamp"][11:13] for e in window] == ["04", "06"]  # until is exclusive
    day = lines(mt("events", "--store", store, "--since", "2026-11-01", "--until", "2026-11-01").stdout)
    assert len(day) == 12  # a plain --until date includes that whole day
    tokyo = lines(mt("events", "--store", store, "--until", "2026-11-01", "--tz", "Asia/Tokyo").stdout)
    assert [e["timestamp"][11:13] for e in tokyo] == ["00", "02", "04", "06", "08", "10", "12", "14"]  # < 15:00Z


@pytest.mark.parametrize(
    ("args", "count"),
    [
        (("--team", "ads"), 4),
        (("--user", "u1"), 6),
        (("--model", "claude-sonnet-4-5"), 6),
        (("--provider", "openai"), 6),
        (("--session", "s-2"), 4),
        (("--status", "429"), 3),
        (("--status", "5xx"), 3),
        (("--team", "search", "--status", "2xx"), 2),
        (("--limit", "3"), 3),
    ],
)
def test_filters(store: str, args: tuple[str, ...], count: int) -> None:
    done = mt("events", "--store", store, *args)
    assert done.returncode == 0, done.stderr
    assert len(lines(done.stdout)) == count


def test_formats(store: str) -> None:
    jsonl = lines(mt("events", "--store", store, "--team", "ads").stdout)
    rows = list(csv.DictReader(io.StringIO(mt("events", "--store", store, "--team", "ads", "--format", "csv").stdout)))
    assert [r["request_id"] for r in rows] == [e["request_id"] for e in jsonl]
    assert rows[0]["cost_usd"] == str(jsonl[0]["cost_usd"]) and rows[0]["cache_hit"] == "false"
    table = mt("events", "--store", store, "--team", "ads", "--format", "table").stdout.splitlines()
    assert table[0].split()[:3] == ["timestamp", "provider", "model"] and len(table) == 6  # header, rule, 4 rows
    assert "$0.0000" in table[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "'yesterday' is not a date or time"),
        (("--until", "2026-13-45"), "is not a date or time"),
        (("--limit", "0"), "0 is not a positive number"),
        (("--limit", "-1"), "-1 is not a positive number"),
        (("--status", "teapot"), "--status 'teapot'"),
        (("--tz", "Mars/Olympus"), "unknown time zone"),
    ],
)
def test_bad_values_are_errors_not_empty_answers(store: str, args: tuple[str, ...], message: str) -> None:
    done = mt("events", "--store", store, *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_read_only_commands_never_create_a_database_or_a_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "events.db"
    for args in (("events",), ("events", "--format", "table")):
        done = mt(*args, "--store", f"sqlite:///{missing}", cwd=tmp_path)
        assert done.returncode == 2 and f"no database at {missing}" in done.stderr
    done = mt("events", cwd=tmp_path)  # the default store, relative to this directory
    assert done.returncode == 2 and f"no database at {tmp_path}/data/modeltrack.db" in done.stderr
    assert list(tmp_path.iterdir()) == [], "nothing was created"


def test_firestore_without_credentials_is_one_line(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}  # no gcloud configuration, no GOOGLE_APPLICATION_CREDENTIALS
    clean = {
        k: v for k, v in os.environ.items() if k not in ("FIRESTORE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")
    }
    done = subprocess.run(
        [sys.executable, "-m", "modeltrack", "events", "--store", "firestore://some-project"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("modeltrack: no Google credentials for Firestore")
    assert len(done.stderr.strip().splitlines()) == 1


def test_pricing_show_is_readable() -> None:
    out = mt("pricing", "show", "gpt-4o-mini-2024-07-18", "--provider", "openai").stdout
    assert "openai/gpt-4o-mini" in out and "input:" in out and "$0.15 per 1M tokens" in out
    assert "{" not in out and "input_mtok" not in out, "no Python reprs, no raw keys"
    assert not any(line.strip() in ("when", "when:") for line in out.splitlines())
    tiered = mt("pricing", "show", "claude-sonnet-4-5").stdout
    assert "anthropic/claude-sonnet-4-5" in tiered and "above 200,000 input tokens $6" in tiered
    deepseek = mt("pricing", "show", "deepseek-chat").stdout
    assert deepseek.startswith("deepseek-chat → deepseek/"), "a model's own provider comes first"


def test_bare_pricing_lists_its_subcommands() -> None:
    done = mt("pricing")
    assert done.returncode == 2 and all(c in done.stdout for c in ("show", "check", "update"))


def test_an_unknown_model_points_to_the_pricing_file() -> None:
    done = mt("pricing", "show", "my-fine-tune-v7")
    assert done.returncode == 1 and "MODELTRACK_PRICING_FILE" in done.stderr and "unpriced" in done.stderr


def test_pricing_check_and_a_bad_override_file(tmp_path: Path) -> None:
    ok = mt("pricing", "check")
    assert ok.returncode == 0 and "genai-prices" in ok.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": [{"model": "m", "prices": {"input_mtok": "abc"}}]}')
    res = mt("pricing", "check", env={"MODELTRACK_PRICING_FILE": str(bad)})
    assert res.returncode == 2 and "entry #1 (m)" in res.stderr and "Traceback" not in res.stderr


def test_pricing_update_without_genai_prices_is_one_line(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['genai_prices'] = None\n"
        "from modeltrack.cli import main\n"
        f"raise SystemExit(main(['pricing', 'update', '--output', {str(tmp_path / 'p.json')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "genai-prices is not installed: pip install genai-prices" in done.stderr
    assert not (tmp_path / "p.json").exists()


# --- issue M, item 18 ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3,000 events (2 MB of JSON Lines, far more than a pipe holds) with names longer than any fixed column."""
    path = tmp_path_factory.mktemp("cli-big") / "events.db"
    long_team = "search-and-discovery-platform-team"
    long_model = "gpt-4o-mini-2024-07-18"
    SQLiteSink(str(path)).write_sync(
        [replace(make_event(i), team=(long_team, "ads")[i % 2], model=long_model) for i in range(3000)]
    )
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    "command",
    [
        "modeltrack events --store {store}",
        "modeltrack events --store {store} --format csv",
        "modeltrack pricing search a",
    ],
)
def test_a_closed_pipe_is_no_traceback(big_store: str, command: str) -> None:
    cmd = command.format(store=big_store).replace("modeltrack", f"{sys.executable} -m modeltrack", 1)
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -1"], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    # 141 as any program ended by the reader going away; 0 when the whole output fitted in the pipe first.
    assert done.returncode in (0, 141), done.returncode


def test_the_table_format_cuts_no_name_or_value(big_store: str) -> None:
    out = mt("events", "--store", big_store, "--format", "table", "--limit", "4").stdout.splitlines()
    assert out[0].split() == [
        "timestamp",
        "provider",
        "model",
        "team",
        "app",
        "status",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "latency_ms",
        "error",
    ]
    assert set(out[1]) <= {"-", " "}
    assert sum("search-and-discovery-platform-team" in line for line in out) == 2
    assert all("gpt-4o-mini-2024-07-18" in line for line in out[2:])


def test_report_prints_the_column_it_sorts_by(big_store: str) -> None:
    out = mt("report", "--store", big_store, "--by", "team", "--sort", "latency").stdout
    header = next(line for line in out.splitlines() if line.startswith("team"))
    assert "p95 ms" in header and "search-and-discovery-platform-team" in out  # not cut at 28 characters


def test_pricing_search_finds_models_by_part_of_a_name() -> None:
    done = mt("pricing", "search", "SONNET-4-5", "--provider", "anthropic")
    assert done.returncode == 0, done.stderr
    assert "anthropic/claude-sonnet-4-5" in done.stdout.splitlines()
    assert all("sonnet-4-5" in line for line in done.stdout.splitlines())
    missing = mt("pricing", "show", "gpt-4o-mnii")
    assert missing.returncode == 1 and "did you mean openai/gpt-4o-mini" in missing.stderr
    assert mt("pricing", "search", "zzz-no-such").returncode == 1
