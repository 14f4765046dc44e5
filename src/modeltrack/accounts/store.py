"""Where the organisation model lives: beside the events, in the same store (SQLite tables; Firestore
collections), so a deployment has one thing to back up and every replica sees one truth.

Every change is one atomic write of three things: the record, its audit entry, and the store's version counter.
Proxies poll the counter (one tiny read every ``refresh_seconds``) and reload the keys only when it moved
(:mod:`.keyring`), which is what bounds how long a revoked key keeps working. ``touch`` (a key's last use) is the
only write without an audit entry or a new version: it changes nothing a proxy enforces.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol

import orjson

from ..sqlitedb import SideDB

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    kind TEXT NOT NULL, id TEXT NOT NULL, org_id TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS accounts_org ON accounts(kind, org_id);
CREATE TABLE IF NOT EXISTS accounts_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL,
    org_id TEXT NOT NULL, before TEXT, after TEXT
);
CREATE INDEX IF NOT EXISTS accounts_audit_org ON accounts_audit(org_id, seq);
CREATE TABLE IF NOT EXISTS accounts_version (one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL);
INSERT OR IGNORE INTO accounts_version (one, n) VALUES (1, 0);
"""


class AccountStore(Protocol):
    async def get(self, kind: str, id: str) -> dict[str, Any] | None: ...

    async def records(self, kind: str, org_id: str | None = None) -> list[dict[str, Any]]: ...

    async def write(
        self, kind: str, record_id: str, org_id: str, doc: dict[str, Any] | None, audit: dict[str, Any]
    ) -> None:
        """Put ``doc`` (None: delete), append ``audit`` and bump the version, atomically."""
        ...

    async def version(self) -> int: ...

    async def audit(self, org_id: str | None, limit: int, before: int | None = None) -> list[dict[str, Any]]: ...

    async def touch(self, last_used: dict[str, str]) -> None:
        """Record keys' last use (key id → instant): no audit entry, no new version."""
        ...

    async def close(self) -> None: ...


class SQLiteAccounts:
    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.db = SideDB(path, SCHEMA, busy_timeout)

    async def get(self, kind: str, id: str) -> dict[str, Any] | None:
        def go(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT doc FROM accounts WHERE kind = ? AND id = ?", (kind, id)).fetchone()
            return None if row is None else dict(orjson.loads(row[0]))

        result: dict[str, Any] | None = await self.db.arun(go)
        return result

    async def records(self, kind: str, org_id: str | None = None) -> list[dict[str, Any]]:
        def go(db: sqlite3.Connection) -> list[dict[str, Any]]:
            if org_id is None:
                rows = db.execute("SELECT doc FROM accounts WHERE kind = ? ORDER BY id", (kind,))
            else:
                rows = db.execute("SELECT doc FROM accounts WHERE kind = ? AND org_id = ? ORDER BY id", (kind, org_id))
            return [dict(orjson.loads(r[0])) for r in rows]

        result: list[dict[str, Any]] = await self.db.arun(go)
        return result

    async def write(
        self, kind: str, record_id: str, org_id: str, doc: dict[str, Any] | None, audit: dict[str, Any]
    ) -> None:
        def text(value: Any) -> str | None:
            return None if value is None else orjson.dumps(value).decode()

        def go(db: sqlite3.Connection) -> None:
            if doc is None:
                db.execute("DELETE FROM accounts WHERE kind = ? AND id = ?", (kind, record_id))
            else:
                db.execute(
                    "INSERT INTO accounts (kind, id, org_id, doc) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (kind, id) DO UPDATE SET org_id = excluded.org_id, doc = excluded.doc",
                    (kind, record_id, org_id, text(doc)),
                )
            db.execute(
                "INSERT INTO accounts_audit (ts, actor, action, kind, id, org_id, before, after) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    audit["ts"],
                    audit["actor"],
                    audit["action"],
                    kind,
                    record_id,
                    org_id,
                    text(audit.get("before")),
                    text(audit.get("after")),
                ),
            )
            db.execute("UPDATE accounts_version SET n = n + 1 WHERE one = 1")

        await self.db.atransaction(go)

    async def version(self) -> int:
        def go(db: sqlite3.Connection) -> int:
            return int(db.execute("SELECT n FROM accounts_version WHERE one = 1").fetchone()[0])

        result: int = await self.db.arun(go)
        return result

    async def audit(self, org_id: str | None, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        def go(db: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = "SELECT seq, ts, actor, action, kind, id, org_id, before, after FROM accounts_audit"
            where: list[str] = []
            args: list[Any] = []
            if org_id is not None:
                where.append("org_id = ?")
                args.append(org_id)
            if before is not None:
                where.append("seq < ?")
                args.append(before)
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY seq DESC LIMIT ?"
            rows = db.execute(sql, (*args, limit)).fetchall()
            return [
                {
                    "seq": r[0],
                    "ts": r[1],
                    "actor": r[2],
                    "action": r[3],
                    "kind": r[4],
                    "id": r[5],
                    "org_id": r[6],
                    "before": None if r[7] is None else orjson.loads(r[7]),
                    "after": None if r[8] is None else orjson.loads(r[8]),
                }
                for r in rows
            ]

        result: list[dict[str, Any]] = await self.db.arun(go)
        return result

    async def touch(self, last_used: dict[str, str]) -> None:
        def go(db: sqlite3.Connection) -> None:
            for key_id, at in last_used.items():
                db.execute(
                    "UPDATE accounts SET doc = json_set(doc, '$.last_used', ?) WHERE kind = 'keys' AND id = ?",
                    (at, key_id),
                )

        await self.db.atransaction(go)

    async def close(self) -> None:
        self.db.close()


def open_accounts(store_url: str, sink: Any = None) -> AccountStore | None:
    """The account store beside the events of ``store_url``; None for a store that has none (JSON Lines)."""
    if store_url.startswith("sqlite://"):
        from ..sinks import _fs_path

        return SQLiteAccounts(_fs_path(store_url, "sqlite://"))
    if store_url.startswith("firestore://"):
        from ..sinks import open_sink
        from .firestore import FirestoreAccounts

        return FirestoreAccounts(sink if sink is not None else open_sink(store_url))
    return None
