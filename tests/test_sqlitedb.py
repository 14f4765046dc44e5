"""The side tables' connection (modeltrack.sqlitedb.SideDB) leaves the WAL's checkpoints to the store's writer, and
still bounds the WAL of a store nobody else writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from modeltrack.sinks.sqlschema import SCHEMA
from modeltrack.sqlitedb import SIDE_CHECKPOINT_PAGES, STORE_CHECKPOINT_PAGES, SideDB

PAGE = 4096


def _fill(path: Path, pages: int, autocheckpoint: int | None = None) -> sqlite3.Connection:
    """Commit about ``pages`` pages of rows into the WAL through a connection set up as the store's writer is
    (its schema, so its ``wal_autocheckpoint``), or with ``autocheckpoint`` instead. It stays open: the last
    connection to close checkpoints the whole WAL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SCHEMA)
    if autocheckpoint is not None:
        db.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
    db.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)")
    for _ in range(0, pages, 500):
        db.execute("BEGIN")
        db.executemany("INSERT INTO filler VALUES (?)", ((b"x" * 3000,) for _ in range(500)))
        db.execute("COMMIT")
    return db


def _side_commit(path: Path) -> None:
    side = SideDB(str(path), "CREATE TABLE IF NOT EXISTS side (x INTEGER)")
    try:
        side.transaction(lambda c: c.execute("INSERT INTO side VALUES (1)"))
    finally:
        side.close()


def test_a_side_commit_leaves_the_checkpoint_to_the_store_writer(tmp_path: Path) -> None:
    assert SIDE_CHECKPOINT_PAGES > STORE_CHECKPOINT_PAGES
    path = tmp_path / "store.db"
    writer = _fill(path, 3_000)  # past SQLite's default threshold (1,000 pages), below the store's own
    try:
        wal = path.with_name("store.db-wal")
        before = path.stat().st_size, wal.stat().st_size
        assert before[1] > 2_500 * PAGE  # the rows are in the WAL: the store's writer did not checkpoint them yet
        _side_commit(path)
        assert path.stat().st_size == before[0], "the side connection copied the WAL into the database"
    finally:
        writer.close()


def test_a_wal_that_nothing_else_checkpoints_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    writer = _fill(path, SIDE_CHECKPOINT_PAGES + 1_000, autocheckpoint=0)  # a writer that never checkpoints
    try:
        size = path.stat().st_size
        _side_commit(path)
        assert path.stat().st_size > size + SIDE_CHECKPOINT_PAGES * PAGE // 2  # the side commit checkpointed
    finally:
        writer.close()
