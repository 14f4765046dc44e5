"""A Firestore store's warehouse: every stored event, one row each, in a BigQuery table (``?bigquery=DATASET`` on
the ``firestore://`` store URL). It answers the questions Firestore's slices cannot hold within the goal of
issue N (two dimensions besides one pinned team, app, feature or model: by user of one app, by model of one key,
a user's page broken down by anything): a ``GROUP BY`` over a month's rows is one query, where the hourly
rollups would be streamed whole (:mod:`modeltrack.query.bigquery` reads it).

Guarantees (tests/test_warehouse.py, against a real BigQuery emulator and the real ``google-cloud-bigquery``
client):

* **Exactly the stored events.** Rows are inserted by the Firestore sink's write, after the events' commit, in
  the same batch: a batch is not done until both hold it. An insert that fails fails the batch, which the
  pipeline retries (Firestore keeps one document per ``request_id``, so only the rows are written again).
* **Each event counted once.** A row carries its event's ``request_id`` as BigQuery's ``insertId`` and as a
  column; since a retried batch can insert a row twice (``insertId`` de-duplication is best effort), every read
  keeps one row per ``request_id``.
* **The same sums as the rollups.** A row is the event's own hourly-rollup row (:func:`modeltrack.rollups.event_row`),
  its latency and TTFT buckets as indexes: summed, rows give exactly what the rollups and SQLite give.
* **Nothing else.** A row holds the rollups' dimensions and sums: no prompt, response or key, as everywhere.

Where the warehouse starts: a store's ``_meta`` marks (:mod:`.slicemeta`, ``warehouse``) say from which hour it
holds every event; ``modeltrack admin migrate`` copies the events before it.

Credentials are Application Default Credentials, as Firestore's; ``BIGQUERY_EMULATOR_HOST`` (``host:port``)
points the client at an emulator instead, as ``FIRESTORE_EMULATOR_HOST`` does for Firestore.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from ..events import CostEvent
from ..rollups import HOURLY_DIMENSIONS, SUMS, event_row, latency_bucket

INTS = frozenset({"status", "cache_hit", *SUMS, "lt", "ft"})
COLUMNS = ("request_id", "ts", "hour", *HOURLY_DIMENSIONS, *SUMS, "lt", "ft")
"""``ts``: the event's hour as a timestamp (the table is partitioned by its day); ``hour``: the same as the
rollups write it (``YYYY-MM-DDTHH``); ``lt`` and ``ft``: the latency and TTFT bucket indexes (``ft`` null without
a first token)."""
CLUSTERING = ["org", "app", "key_id", "user"]
INSERT_ROWS = 5_000
"""Rows per streaming insert: BigQuery takes up to 50,000 rows or 10 MB a request; a row here is ~400 bytes."""


class WarehouseError(RuntimeError):
    """Rows the warehouse refused; the batch is retried (:func:`modeltrack.sinks.base.is_transient`)."""

    transient = True


def warehouse_row(ev: CostEvent) -> dict[str, Any]:
    """One event as its warehouse row."""
    row = event_row(ev)
    out: dict[str, Any] = {k: row[k] for k in ("hour", *HOURLY_DIMENSIONS, *SUMS)}
    out["request_id"] = ev.request_id
    out["ts"] = row["hour"] + ":00:00Z"
    out["lt"] = latency_bucket(ev.latency_ms)  # the bucket event_row counted the event in
    out["ft"] = latency_bucket(ev.ttft_ms) if ev.ttft_ms is not None else None
    return out


def client_for(project: str) -> Any:
    """A BigQuery client: the emulator's at ``BIGQUERY_EMULATOR_HOST``, else Google's with ADC."""
    from google.cloud import bigquery

    host = os.environ.get("BIGQUERY_EMULATOR_HOST")
    if not host:
        return bigquery.Client(project=project)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=f"http://{host}"),
    )


class Warehouse:
    """The events table ``PROJECT.DATASET.COLLECTION_events``; created on first use."""

    def __init__(self, project: str, dataset: str, collection: str, timeout: float = 10.0) -> None:
        """``timeout``: seconds a call may take, its retries included (the client's own default is 600 s: a
        writer would hold its batch that long before the pipeline could retry or spool it)."""
        if "." in dataset:
            project, _, dataset = dataset.partition(".")
        self.project = project
        self.dataset = dataset
        self.table = f"{project}.{dataset}.{collection}_events"
        self.timeout = timeout
        self._client: Any = None
        self._ready = False

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client_for(self.project)
        return self._client

    def describe(self) -> str:
        where = os.environ.get("BIGQUERY_EMULATOR_HOST")
        return f"bigquery table={self.table}" + (f" (emulator {where})" if where else "")

    async def open(self) -> None:
        await asyncio.to_thread(self._guarded, self._create)

    @staticmethod
    def _guarded(work: Any, *args: Any) -> None:
        """Any failure of the warehouse (unreachable, a permission, a quota) as a :class:`WarehouseError`: the
        batch is retried, never dead-lettered, since Firestore holds it already; only the error's type is told
        (a message can quote a row)."""
        try:
            work(*args)
        except WarehouseError:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            raise WarehouseError(f"bigquery: {type(exc).__name__}") from None

    def _create(self) -> None:
        from google.cloud import bigquery

        client = self.client
        bounded = {"retry": bigquery.DEFAULT_RETRY.with_deadline(self.timeout), "timeout": self.timeout}
        client.create_dataset(f"{self.project}.{self.dataset}", exists_ok=True, **bounded)
        kinds = {"ts": "TIMESTAMP"} | {c: "INT64" for c in INTS}
        schema = [
            bigquery.SchemaField(c, kinds.get(c, "STRING"), mode="NULLABLE" if c == "ft" else "REQUIRED")
            for c in COLUMNS
        ]
        table = bigquery.Table(self.table, schema=schema)
        table.time_partitioning = bigquery.TimePartitioning(field="ts")
        table.clustering_fields = CLUSTERING
        client.create_table(table, exists_ok=True, **bounded)
        self._ready = True

    async def insert(self, events: Iterable[CostEvent]) -> None:
        rows = [warehouse_row(ev) for ev in events]
        if rows:
            await asyncio.to_thread(self._guarded, self.insert_rows, rows)

    def insert_rows(self, rows: list[dict[str, Any]]) -> None:
        """Rows as :func:`warehouse_row` makes them (blocking: called on a worker thread)."""
        from google.cloud import bigquery

        if not self._ready:
            self._create()
        retry = bigquery.DEFAULT_RETRY.with_deadline(self.timeout)
        for i in range(0, len(rows), INSERT_ROWS):
            part = rows[i : i + INSERT_ROWS]
            ids = [r["request_id"] for r in part]
            errors = self.client.insert_rows_json(self.table, part, row_ids=ids, retry=retry, timeout=self.timeout)
            if errors:
                # Only the reasons: a row's values are attribution, never in a log line.
                reasons = sorted({e.get("reason", "?") for err in errors for e in err.get("errors", [])})
                raise WarehouseError(f"bigquery: {len(errors)} of {len(part)} rows refused ({', '.join(reasons)})")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
