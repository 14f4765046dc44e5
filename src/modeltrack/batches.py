"""The batch registry: who created each Batch API job, which files hold its results, and whether its items have
been priced, kept in the store beside the events (its ``claims``), so every replica knows.

Guarantees (tests/test_batches.py, on SQLite and the Firestore emulator):

* **Attributed to its creator.** The batch is remembered, under its org, with the attribution of the request
  that created it (team, app, feature, user, key, …); its items carry that attribution, whoever downloads them.
* **Every item priced once**, at the batch rate, when its results are first read. An item's event id is a digest
  of (provider, batch id, ``custom_id``), so reading the results again, or a retry, stores nothing twice (the
  sinks are idempotent on ``request_id``); once a complete read was metered, later reads are not metered at all.
  Polling the batch's status is free and never prices anything.
* **Never in the way.** The registry is asked before a file download is forwarded, with a short deadline; a
  store that does not answer lets the download through unmetered (logged), and the items are priced on a later
  read. What is remembered is written in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import orjson

from .controls.tasks import Background
from .events import rfc3339
from .providers.batches import BatchNote

if TYPE_CHECKING:
    from .http.message import Request
    from .providers import RequestInfo

log = logging.getLogger("modeltrack.batches")

KEPT = ("team", "app", "feature", "user", "session_id", "prompt_id", "properties", "key_id", "org")
"""The creator's attribution that a batch's items inherit."""
LOOKUP_SECONDS = 2.0
_HOST = re.compile(rb"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")
"""A ``Host`` header that may go into a ``results_url``: a name or an IP literal, and a port."""


def item_request_id(provider: str, batch_id: str, custom_id: str) -> str:
    """The event id of one batch item: the same on every read of the results (``req_`` + 24 hex, as any id)."""
    return "req_" + hashlib.sha256(f"{provider}\0{batch_id}\0{custom_id}".encode()).hexdigest()[:24]


class BatchRegistry:
    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.background = Background()

    @staticmethod
    def _key(kind: str, org: str | None, provider: str, ident: str) -> str:
        return f"batch-{kind}\0{org or ''}\0{provider}\0{ident}"

    async def context(
        self, org: str | None, provider: str, file_id: str | None = None, batch_id: str | None = None
    ) -> dict[str, Any] | None:
        """What the proxy needs to meter a download of a batch's results: of ``file_id`` (OpenAI: None when it is
        no batch's result file), or of the batch ``batch_id`` itself (Anthropic). None too when the store did
        not answer in time."""
        if batch_id is not None:
            file_id = batch_id  # the results are the batch's own: what "priced" is remembered for
        assert file_id is not None
        try:
            async with asyncio.timeout(LOOKUP_SECONDS):
                if batch_id is None:
                    batch_id = await self.sink.recall(self._key("file", org, provider, file_id))
                if batch_id is None and self.background.pending:
                    # The answer that named this file (a status poll a moment ago) may still be being remembered.
                    await self.background.drain()
                    batch_id = await self.sink.recall(self._key("file", org, provider, file_id))
                if batch_id is None:
                    return None
                doc = await self.sink.recall(self._key("job", org, provider, batch_id))
                priced = await self.sink.recall(self._key("priced", org, provider, file_id))
        except Exception as exc:  # noqa: BLE001 - the download goes on; its items are priced on a later read
            log.warning("batch registry unavailable (%s): file %s downloaded unmetered", type(exc).__name__, file_id)
            return None
        job = orjson.loads(doc) if doc else {}
        return {
            "batch_id": batch_id,
            "file_id": file_id,
            "endpoint": job.get("endpoint"),
            "attrs": job.get("attrs"),
            "meta": job.get("meta"),
            "priced": priced is not None,
        }

    def note(self, org: str | None, provider: str, notes: list[BatchNote], attrs: dict[str, Any]) -> None:
        """Batch objects seen in an answer: remember a new batch's creator, and which files hold its results."""
        now = rfc3339(time.time())
        for n in notes:
            if n.created:
                kept = {k: attrs[k] for k in KEPT if attrs.get(k) is not None}
                doc = orjson.dumps({"endpoint": n.endpoint, "attrs": kept, "at": now, "meta": n.meta}).decode()
                self.background.spawn(self._claim(self._key("job", org, provider, n.batch_id), doc))
            for f in n.files:
                self.background.spawn(self._claim(self._key("file", org, provider, f), n.batch_id))

    def priced(self, org: str | None, provider: str, file_id: str) -> None:
        """A complete read of ``file_id`` was metered: later reads are not metered again."""
        self.background.spawn(self._claim(self._key("priced", org, provider, file_id), rfc3339(time.time())))

    async def _claim(self, key: str, value: str) -> None:
        try:
            await self.sink.claim(key, value)
        except Exception as exc:  # noqa: BLE001
            log.warning("batch registry: could not remember %s (%s)", key.split("\0", 1)[0], type(exc).__name__)

    async def drain(self) -> None:
        await self.background.drain()


async def request_context(
    registry: BatchRegistry | None,
    req: Request,
    provider: str,
    info: RequestInfo,
    path: str,
    up_path: str,
    fixed: dict[str, str] | None,
    tls: bool,
) -> None:
    """A Batch API call, before it is forwarded: a download of a batch's results learns which batch it is, so its
    items are metered; an answer with Anthropic's ``results_url`` learns the origin the client used (``tls``: the
    scheme clients reach the proxy by)."""
    file_id, batch_id = info.extra.get("file_id"), info.extra.get("batch_results")
    if registry is not None and (file_id is not None or batch_id is not None):
        org = fixed.get("org") if fixed else None
        job = await registry.context(org, provider, file_id=file_id, batch_id=batch_id)
        if job is not None:
            info.extra["batch"] = job
    answers_objects = info.extra.get("batch_api") and batch_id is None  # not the results themselves
    host = req.header(b"host") if provider == "anthropic" and answers_objects else None
    if host is not None and _HOST.fullmatch(host):
        prefix = path[: len(path) - len(up_path)] if path.endswith(up_path) else ""
        scheme = "https" if tls else "http"
        info.extra["public_base"] = f"{scheme}://{host.decode('ascii')}{prefix}"
