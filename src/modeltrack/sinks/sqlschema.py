"""The SQLite store's schema, the SQL that adds a batch to its rollups and sessions, and the migration of a
database written by an earlier version (:func:`migrate`): what :class:`modeltrack.sinks.sqlite.SQLiteSink`
runs, kept apart from how it binds and writes a batch.

The rollups are aggregated *by SQLite* from the rows a transaction inserted (their rowids are contiguous): the
events are summed once, by the hourly key, into a per-batch delta (an in-memory temp table), and the hourly and
both day rollups are added from it. Every derived table carries the org, so one org's sums never merge with
another's. Held by tests/test_pipeline.py (``test_an_older_database_is_migrated_in_place``, the exactly-once
tests) and by every query test that compares the rollups with the events.
"""

from __future__ import annotations

import sqlite3

from ..rollups import (
    DAILY_SUMS,
    HISTOGRAMS,
    HOURLY_DIMENSIONS,
    LATENCY_BUCKETS,
    SUMS,
    TOKENS,
    TTFT_BUCKETS,
    latency_bucket,
)
from ..sqlitedb import STORE_CHECKPOINT_PAGES

EVENT_COLUMNS = (
    "request_id",
    "timestamp",
    "provider",
    "model",
    "team",
    "app",
    "feature",
    "user",
    "session_id",
    "status",
    "error",
    "cache_hit",
    "cost_usd",
    "saved_usd",
    *TOKENS,
    "latency_ms",
    "org",
    "key_id",
    "prompt_id",
    "processing",
    "lat_bucket",
    "ft_bucket",
    "doc",
)
"""Every field a reader filters, groups or sums on is a column; ``doc`` is the whole event (JSON)."""

_FIRST_COLUMNS = ("request_id", "timestamp", "provider", "model", "team", "app", "feature", "cost_usd", "doc")
"""The events table of the first version (``SCHEMA`` still creates it so): every other column was added since."""
_ADDED_COLUMNS = {
    c: (
        "INTEGER"
        if c in ("status", "cache_hit", "lat_bucket", *TOKENS)
        else "INTEGER NOT NULL DEFAULT -1"
        if c == "ft_bucket"
        else "REAL"
        if c.endswith(("_usd", "_ms"))
        else "TEXT"
    )
    for c in EVENT_COLUMNS
    if c not in _FIRST_COLUMNS
}
"""Event columns added after the first version: a database without them gets them, filled from ``doc``."""

SCHEMA = f"""
PRAGMA journal_mode=WAL;
PRAGMA synchronous=NORMAL;
PRAGMA wal_autocheckpoint={STORE_CHECKPOINT_PAGES};
CREATE TABLE IF NOT EXISTS events (
    request_id TEXT PRIMARY KEY,
    timestamp TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT,
    team TEXT, app TEXT, feature TEXT,
    cost_usd REAL,
    doc BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rollup_daily (
    day TEXT NOT NULL, team TEXT NOT NULL, app TEXT NOT NULL, feature TEXT NOT NULL,
    provider TEXT NOT NULL, model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0, cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost_nano_usd INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, team, app, feature, provider, model)
);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    at TEXT NOT NULL
);
"""
"""``claims``: once-only markers shared by every process and replica on this store (a budget threshold's
alert, a period's report): the first to insert a key owns the action."""

_SUM_COLUMNS = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in (*SUMS, *HISTOGRAMS))
DERIVED = {
    "rollup_hourly": f"""CREATE TABLE IF NOT EXISTS rollup_hourly (
    hour TEXT NOT NULL, team TEXT NOT NULL, app TEXT NOT NULL, feature TEXT NOT NULL, user TEXT NOT NULL,
    provider TEXT NOT NULL, model TEXT NOT NULL, status INTEGER NOT NULL, cache_hit INTEGER NOT NULL,
    org TEXT NOT NULL, key_id TEXT NOT NULL, error TEXT NOT NULL, prompt_id TEXT NOT NULL,
    processing TEXT NOT NULL, {_SUM_COLUMNS},
    PRIMARY KEY (hour, team, app, feature, user, provider, model, status, cache_hit, org, key_id, error, prompt_id,
                 processing)
) WITHOUT ROWID""",
    "rollup_day_attr": f"""CREATE TABLE IF NOT EXISTS rollup_day_attr (
    day TEXT NOT NULL, team TEXT NOT NULL, app TEXT NOT NULL, feature TEXT NOT NULL,
    provider TEXT NOT NULL, model TEXT NOT NULL, status INTEGER NOT NULL, cache_hit INTEGER NOT NULL,
    org TEXT NOT NULL, key_id TEXT NOT NULL, error TEXT NOT NULL, prompt_id TEXT NOT NULL,
    processing TEXT NOT NULL, {_SUM_COLUMNS},
    PRIMARY KEY (day, team, app, feature, provider, model, status, cache_hit, org, key_id, error, prompt_id, processing)
) WITHOUT ROWID""",
    "rollup_day_user": f"""CREATE TABLE IF NOT EXISTS rollup_day_user (
    day TEXT NOT NULL, user TEXT NOT NULL, cache_hit INTEGER NOT NULL, org TEXT NOT NULL, {_SUM_COLUMNS},
    PRIMARY KEY (day, user, cache_hit, org)
) WITHOUT ROWID""",
    "sessions": f"""CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT NOT NULL, org TEXT NOT NULL,
    first_ts TEXT NOT NULL, last_ts TEXT NOT NULL,
    team TEXT, app TEXT, feature TEXT, user TEXT,
    requests INTEGER NOT NULL DEFAULT 0,
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in (*TOKENS, "cost_nano_usd"))},
    latency_ms REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, org)
)""",
}
"""What is derived from the events, exactly once with them: rebuilt from the events when its shape changes
(:func:`migrate`). Every one carries the org, so one org's sums and sessions never merge with another's."""


def _declared(create: str) -> set[str]:
    """The column names a ``CREATE TABLE`` above declares (to tell a table of an older shape)."""
    body = create[create.index("(") + 1 : create.rindex("PRIMARY KEY")]
    return {part.split()[0] for part in body.replace("\n", " ").split(",") if part.strip()}


_INDEXES = """
CREATE INDEX IF NOT EXISTS events_ts ON events(timestamp);
CREATE INDEX IF NOT EXISTS events_attr ON events(team, app, feature, timestamp);
CREATE INDEX IF NOT EXISTS events_session ON events(session_id, timestamp);
CREATE INDEX IF NOT EXISTS events_user ON events(user, timestamp);
CREATE INDEX IF NOT EXISTS sessions_cost ON sessions(last_ts, cost_nano_usd);
"""


def _bucket_sql() -> list[str]:
    """``lt_NN`` and ``ft_NN`` sums: each event's histogram buckets are computed once, when it is bound
    (``lat_bucket``; ``ft_bucket``, -1 without a first token), so a rollup adds integer comparisons per event,
    not float ones."""
    return [
        *(f"SUM(lat_bucket = {i}) AS {name}" for i, name in enumerate(LATENCY_BUCKETS)),
        *(f"SUM(ft_bucket = {i}) AS {name}" for i, name in enumerate(TTFT_BUCKETS)),
    ]


_ERROR_SQL = "SUM(CASE WHEN status >= 400 OR status = 0 OR error IS NOT NULL THEN 1 ELSE 0 END)"
_UNPRICED_SQL = "SUM(CASE WHEN cost_usd IS NULL AND status BETWEEN 200 AND 399 THEN 1 ELSE 0 END)"
_NANO = "CAST(ROUND(COALESCE({0}, 0) * 1e9) AS INTEGER)"
_TEXT_KEY = "COALESCE({0}, '')"
_KEYS_H = ", ".join(
    (
        "substr(timestamp, 1, 13)",
        *(_TEXT_KEY.format(c) for c in ("team", "app", "feature", "user")),
        "provider",
        _TEXT_KEY.format("model"),
        "status",
        "cache_hit",
        _TEXT_KEY.format("org"),
        _TEXT_KEY.format("key_id"),
        _TEXT_KEY.format("error"),
        _TEXT_KEY.format("prompt_id"),
        _TEXT_KEY.format("processing"),
    )
)
_KEYS_D = ", ".join(
    (
        "substr(timestamp, 1, 10)",
        *(_TEXT_KEY.format(c) for c in ("team", "app", "feature")),
        "provider",
        "COALESCE(model, '')",
    )
)


_HOURLY_COLUMNS = ("hour", *HOURLY_DIMENSIONS)
_SUMMED_COLUMNS = (*SUMS, *HISTOGRAMS)

_DELTA_CREATE = f"""CREATE TEMP TABLE IF NOT EXISTS rollup_delta ({", ".join((*_HOURLY_COLUMNS, *_SUMMED_COLUMNS))})"""
"""A batch's events summed by the hourly key, once: the three rollups are added from it. The day rollups then
group a batch's few hourly rows, not its events again, and the 142 histogram sums are taken over the events
once, not three times."""

_DELTA_FILL = f"""
INSERT INTO temp.rollup_delta
SELECT {_KEYS_H}, COUNT(*), {_ERROR_SQL}, {_UNPRICED_SQL}, {", ".join(f"SUM({t})" for t in TOKENS)},
       SUM({_NANO.format("cost_usd")}), SUM({_NANO.format("saved_usd")}), {", ".join(_bucket_sql())}
FROM events WHERE rowid > ? GROUP BY {_KEYS_H}
"""


def _roll(table: str, columns: tuple[str, ...], keys: tuple[str, ...]) -> str:
    """Add the batch's delta to a rollup with the full sums and histograms, grouped by ``keys`` (expressions on
    the delta's columns, in the order of ``columns``, the table's primary key)."""
    return f"""
INSERT INTO {table} ({", ".join((*columns, *_SUMMED_COLUMNS))})
SELECT {", ".join(keys)}, {", ".join(f"SUM({c})" for c in _SUMMED_COLUMNS)}
FROM temp.rollup_delta GROUP BY {", ".join(keys)}
ON CONFLICT({", ".join(columns)}) DO UPDATE SET
  {", ".join(f"{c} = {c} + excluded.{c}" for c in _SUMMED_COLUMNS)}
"""


_ROLL_HOURLY = f"""
INSERT INTO rollup_hourly ({", ".join((*_HOURLY_COLUMNS, *_SUMMED_COLUMNS))})
SELECT * FROM temp.rollup_delta WHERE true
ON CONFLICT({", ".join(_HOURLY_COLUMNS)}) DO UPDATE SET
  {", ".join(f"{c} = {c} + excluded.{c}" for c in _SUMMED_COLUMNS)}
"""
# Two daily rollups a reader uses for whole UTC days: without the user (few rows a day: a 30-day breakdown by
# team, app, feature, model or status reads hundreds of rows, not the hourly table's one per user and hour),
# and by user alone (a breakdown by user).
_DAY_ATTR = tuple(d for d in HOURLY_DIMENSIONS if d != "user")
_ROLL_DAY_ATTR = _roll("rollup_day_attr", ("day", *_DAY_ATTR), ("substr(hour, 1, 10)", *_DAY_ATTR))
_ROLL_DAY_USER = _roll(
    "rollup_day_user", ("day", "user", "cache_hit", "org"), ("substr(hour, 1, 10)", "user", "cache_hit", "org")
)


def roll_up(conn: sqlite3.Connection, after: int) -> None:
    """Add the events stored after rowid ``after`` to the hourly and both day rollups (inside the caller's
    transaction)."""
    conn.execute(_DELTA_CREATE)
    conn.execute("DELETE FROM temp.rollup_delta")
    conn.execute(_DELTA_FILL, (after,))
    conn.execute(_ROLL_HOURLY)
    conn.execute(_ROLL_DAY_ATTR)
    conn.execute(_ROLL_DAY_USER)


ROLL_DAILY = f"""
INSERT INTO rollup_daily (day, team, app, feature, provider, model, {", ".join(DAILY_SUMS)})
SELECT {_KEYS_D}, COUNT(*), {", ".join(f"SUM({t})" for t in TOKENS)}, SUM({_NANO.format("cost_usd")})
FROM events WHERE rowid > ? GROUP BY {_KEYS_D}
ON CONFLICT(day, team, app, feature, provider, model) DO UPDATE SET
  {", ".join(f"{c} = {c} + excluded.{c}" for c in DAILY_SUMS)}
"""

ROLL_SESSIONS = f"""
INSERT INTO sessions (session_id, org, first_ts, last_ts, team, app, feature, user, requests,
                      {", ".join(TOKENS)}, cost_nano_usd, latency_ms)
SELECT s.session_id, s.org, s.first_ts, s.last_ts, f.team, f.app, f.feature, f.user, s.requests,
       {", ".join(f"s.{t}" for t in TOKENS)}, s.cost, s.latency
FROM (SELECT session_id, COALESCE(org, '') AS org, MIN(timestamp) AS first_ts, MAX(timestamp) AS last_ts,
             COUNT(*) AS requests, {", ".join(f"SUM({t}) AS {t}" for t in TOKENS)},
             SUM({_NANO.format("cost_usd")}) AS cost, SUM(latency_ms) AS latency
      FROM events WHERE rowid > ?1 AND session_id IS NOT NULL GROUP BY session_id, COALESCE(org, '')) AS s
JOIN (SELECT session_id, COALESCE(org, '') AS org, MIN(timestamp), team, app, feature, user
      FROM events WHERE rowid > ?1 AND session_id IS NOT NULL GROUP BY session_id, COALESCE(org, '')) AS f
  USING (session_id, org)
WHERE true
ON CONFLICT(session_id, org) DO UPDATE SET
  team = CASE WHEN excluded.first_ts < first_ts THEN excluded.team ELSE team END,
  app = CASE WHEN excluded.first_ts < first_ts THEN excluded.app ELSE app END,
  feature = CASE WHEN excluded.first_ts < first_ts THEN excluded.feature ELSE feature END,
  user = CASE WHEN excluded.first_ts < first_ts THEN excluded.user ELSE user END,
  first_ts = MIN(first_ts, excluded.first_ts), last_ts = MAX(last_ts, excluded.last_ts),
  requests = requests + excluded.requests,
  {", ".join(f"{c} = {c} + excluded.{c}" for c in (*TOKENS, "cost_nano_usd"))},
  latency_ms = latency_ms + excluded.latency_ms
"""
"""A session's attribution is its first request's (the one bare ``MIN(timestamp)`` picks: SQLite takes a lone
min()'s bare columns from its row), so the list and a session's detail name the same team and user."""


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database of any earlier version to this schema, in one transaction (idempotent): event columns
    added since are added and filled from each event's stored JSON; derived tables of an older shape (before
    the org dimension, or missing) are rebuilt from every stored event, so their sums stay exactly the
    events' (tests/test_pipeline.py::test_an_older_database_is_migrated_in_place)."""
    before = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.executescript(SCHEMA)
    for create in DERIVED.values():
        conn.execute(create)
    missing = [c for c in _ADDED_COLUMNS if c not in _columns(conn, "events")]
    stale = [t for t, create in DERIVED.items() if t not in before or _columns(conn, t) != _declared(create)]
    if missing or stale:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for c in missing:
                conn.execute(f"ALTER TABLE events ADD COLUMN {c} {_ADDED_COLUMNS[c]}")
            from_doc = [c for c in missing if c not in ("lat_bucket", "ft_bucket")]
            if from_doc:
                fills = ", ".join(
                    f"{c} = "
                    + (
                        f"CASE WHEN json_extract(CAST(doc AS TEXT), '$.{c}') THEN 1 ELSE 0 END"
                        if c == "cache_hit"
                        else f"json_extract(CAST(doc AS TEXT), '$.{c}')"
                    )
                    for c in from_doc
                )
                conn.execute(f"UPDATE events SET {fills}")
            if "lat_bucket" in missing:  # (after latency_ms, which an old store may have just gained)
                conn.create_function("modeltrack_latency_bucket", 1, latency_bucket, deterministic=True)
                conn.execute("UPDATE events SET lat_bucket = modeltrack_latency_bucket(COALESCE(latency_ms, 0))")
            if "ft_bucket" in missing:
                conn.create_function("modeltrack_latency_bucket", 1, latency_bucket, deterministic=True)
                conn.execute(
                    "UPDATE events SET ft_bucket = modeltrack_latency_bucket(json_extract(CAST(doc AS TEXT), "
                    "'$.ttft_ms')) WHERE json_extract(CAST(doc AS TEXT), '$.ttft_ms') IS NOT NULL"
                )
            # Every derived table is rebuilt from the events at once: what they would hold had they always
            # had this shape.
            for table, create in DERIVED.items():
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute(create)
            roll_up(conn, 0)
            conn.execute(ROLL_SESSIONS, (0,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.executescript(_INDEXES)
