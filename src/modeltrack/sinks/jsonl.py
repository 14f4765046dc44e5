"""JSON Lines store: one event per line, for piping into other tools. Idempotent on ``request_id`` per process
(a set of ids written), which covers the pipeline's retries; dedupe on read covers restarts."""

from __future__ import annotations

import asyncio
import os

import orjson

from ..events import CostEvent


class JSONLSink:
    name = "jsonl"

    def __init__(self, path: str) -> None:
        self.path = path
        self._dir = os.path.dirname(os.path.abspath(path))
        self._written: set[str] = set()

    async def open(self) -> None:
        await asyncio.to_thread(os.makedirs, self._dir, exist_ok=True)
        # Remember what is already stored, so replaying a journal after a restart does not duplicate lines.
        self._written = {e.request_id for e in await self.read()}

    def _write(self, events: list[CostEvent]) -> None:
        lines = [e.to_line() for e in events if e.request_id not in self._written]
        if not lines:
            return
        with open(self.path, "ab") as f:
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
        self._written.update(e.request_id for e in events)

    async def write(self, events: list[CostEvent]) -> None:
        await asyncio.to_thread(self._write, events)

    def _read(self, since: str | None, limit: int | None) -> list[CostEvent]:
        if not os.path.exists(self.path):
            return []
        seen: dict[str, CostEvent] = {}
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip():
                    ev = CostEvent.from_dict(orjson.loads(line))
                    if since is None or ev.timestamp >= since:
                        seen.setdefault(ev.request_id, ev)
        out = sorted(seen.values(), key=lambda e: e.timestamp)
        return out[-limit:] if limit else out

    async def read(self, since: str | None = None, limit: int | None = None) -> list[CostEvent]:
        return await asyncio.to_thread(self._read, since, limit)

    def _claim(self, key: str, at: str) -> bool:
        """Claims live in ``PATH.claims``, one key per line, appended under an exclusive lock."""
        import fcntl

        with open(self.path + ".claims", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            f.seek(0)
            if key.encode() + b"\n" in f.read().splitlines(keepends=True):
                return False
            f.write(key.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
            with open(self.path + ".claims.values", "ab") as v:  # what each claim was made with (``recall``)
                v.write(orjson.dumps({"key": key, "at": at}) + b"\n")
            return True

    def _recall(self, key: str) -> str | None:
        try:
            with open(self.path + ".claims.values", "rb") as f:
                for line in f:
                    doc = orjson.loads(line) if line.strip() else None
                    if isinstance(doc, dict) and doc.get("key") == key:
                        return str(doc.get("at"))
        except (OSError, orjson.JSONDecodeError):
            return None
        return None

    async def recall(self, key: str) -> str | None:
        return await asyncio.to_thread(self._recall, key)

    async def claim(self, key: str, at: str) -> bool:
        return await asyncio.to_thread(self._claim, key, at)

    async def ping(self) -> bool:
        return await asyncio.to_thread(os.access, self._dir, os.W_OK)

    async def close(self) -> None:
        return None
