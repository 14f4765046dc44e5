"""Batch APIs (OpenAI's Batch and Files APIs, Anthropic's Message Batches): what each answer says, metered so
that every batch item is priced once.

A batch is billed per item, at the batch rate, for the items that ran; creating, polling and downloading cost
nothing. So (OpenAI API reference, "Batch" and "Files"; the ``openai`` SDK's ``types.Batch``):

* ``POST /v1/batches``, ``GET /v1/batches[/{id}]``, ``POST /v1/batches/{id}/cancel`` answer with batch objects
  (``{"id": "batch_…", "object": "batch", "endpoint": "/v1/chat/completions", "output_file_id": …,
  "error_file_id": …}``, a list in ``data``): free (``cost_source: zero``), and :class:`BatchNote` tells the
  proxy's batch registry (:mod:`modeltrack.batches`) which batch it is, who created it, and which files hold
  its results.
* ``GET /v1/files/{id}/content`` of a batch's output or error file is JSON Lines, one item per line
  (Batch guide, "Retrieving the results"): ``{"id": "batch_req_…", "custom_id": "…", "response":
  {"status_code": 200, "request_id": "…", "body": {…"model", "usage"…}}, "error": null}``.
  :class:`BatchOutputMeter` reads it line by line as it streams (one partial line buffered, never the file)
  and yields a :class:`BatchItem` per line; each becomes a cost event (``accounting``).
* Every other ``/v1/files`` call (uploads, listings, other files' content) is free and not read.
* Anthropic: ``/v1/messages/batches[/{id}]`` answer with message batch objects (``type: "message_batch"``), free;
  ``/v1/messages/batches/{id}/results`` is JSON Lines read by :class:`MessageBatchResultsMeter`. Its batch
  objects' ``results_url`` is pointed back at the proxy (:class:`ResultsURLView`), or the SDK would fetch the
  results from the API directly.

Tests: tests/test_batches.py (the real ``openai`` SDK through the proxy, on SQLite and the Firestore emulator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..usage import Usage
from .base import MeterResult, RequestInfo, error_code, loads, nonempty_str
from .meters import JSONBodyMeter

MAX_LINE = 16 * 1024 * 1024
"""A result line longer than this is counted as an item whose usage could not be read (``line_too_large``)."""


@dataclass(slots=True)
class BatchNote:
    """A batch object seen in an answer: its id, the endpoint its items call, the files of its results, and
    whether this answer created it (the creator's attribution is the batch's)."""

    batch_id: str
    endpoint: str | None
    files: tuple[str, ...]
    created: bool
    meta: dict[str, Any] | None = None
    """What a job's creation said that its completion will not (a Veo job's seconds per video), remembered with
    its creator's attribution."""


@dataclass(slots=True)
class BatchItem:
    custom_id: str
    status: int
    model: str | None
    usage: Usage | None
    error: str | None
    upstream_request_id: str | None


def _note(obj: Any, created: bool) -> BatchNote | None:
    if not isinstance(obj, dict) or not nonempty_str(obj.get("id")):
        return None
    if obj.get("type") == "message_batch":  # Anthropic: its results are found by the batch id itself
        return BatchNote(obj["id"], "/v1/messages", (), created)
    if obj.get("object") != "batch":
        return None
    files = tuple(f for f in (nonempty_str(obj.get("output_file_id")), nonempty_str(obj.get("error_file_id"))) if f)
    return BatchNote(obj["id"], nonempty_str(obj.get("endpoint")), files, created)


class BatchObjectMeter(JSONBodyMeter):
    """The batch endpoints (OpenAI's ``/v1/batches``, Anthropic's ``/v1/messages/batches``): free, and the batch
    object(s) noted for the registry."""

    def from_json(self, obj: Any) -> MeterResult:
        if isinstance(obj, dict) and "error" in obj and _note(obj, False) is None:
            return MeterResult(error=error_code(obj["error"]))
        created = self.info.method == "POST" and self.info.path.rstrip("/").endswith("/batches")
        notes = [_note(obj, created)]
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):  # GET /v1/batches: a page of them
            notes = [_note(o, False) for o in obj["data"]]
        found = [n for n in notes if n is not None]
        return MeterResult(usage=Usage(), usage_source="none", zero_cost=True, batch=found or None)


class FreeMeter:
    """An endpoint that is never billed (file uploads, listings, downloads): the body streams through unread;
    an error answer is read for its code."""

    # (No __slots__: SpeechMeter, compiled by scripts/compile, extends it, and mypyc refuses an inherited one.)

    ended = False

    def __init__(self, info: RequestInfo, status: int) -> None:
        self.info = info
        self.status = status
        self._error = b""

    def feed(self, chunk: bytes) -> None:
        if self.status >= 400 and len(self._error) < 65536:
            self._error += chunk

    def error_result(self, model: str | None = None) -> MeterResult:
        """An error answer (status ≥ 400): its code, from the JSON error object when there is one."""
        obj = loads(self._error) if self._error else None
        err = obj.get("error") if isinstance(obj, dict) else None
        return MeterResult(model=model, error=error_code(err) if err else f"http_{self.status}")

    def finish(self, complete: bool) -> MeterResult:
        if self.status >= 400:
            return self.error_result()
        return MeterResult(usage=Usage(), usage_source="none", zero_cost=True, error=None if complete else "truncated")


class BatchOutputMeter(FreeMeter):
    """The content of a batch's output or error file: one :class:`BatchItem` per complete line. The download
    itself is free. ``usage_of`` maps an item's response body to a ``Usage`` (the provider's own parser)."""

    __slots__ = ("_items", "_partial", "_skipping", "usage_of")

    def __init__(self, info: RequestInfo, status: int, usage_of: Any) -> None:
        super().__init__(info, status)
        self.usage_of = usage_of
        self._partial = b""
        self._skipping = False
        self._items: list[BatchItem] = []

    def feed(self, chunk: bytes) -> None:
        if self.status >= 400:
            return super().feed(chunk)
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                rest = chunk[start:]
                if not self._skipping:
                    if len(self._partial) + len(rest) > MAX_LINE:
                        self._skipping, self._partial = True, b""
                        self._items.append(BatchItem("", 0, None, None, "line_too_large", None))
                    else:
                        self._partial += rest
                return
            line = chunk[start:nl]
            if self._skipping:
                self._skipping = False
            else:
                self._line(self._partial + line if self._partial else line)
            self._partial = b""
            start = nl + 1

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        obj = loads(line)
        if not isinstance(obj, dict):
            self._items.append(BatchItem("", 0, None, None, "invalid_json", None))
            return
        custom_id = nonempty_str(obj.get("custom_id")) or nonempty_str(obj.get("id")) or ""
        response = obj.get("response")
        if not isinstance(response, dict):  # an item that failed before it ran (error file): not billed
            err = obj.get("error")
            self._items.append(BatchItem(custom_id, 0, None, Usage(), error_code(err) if err else "failed", None))
            return
        status = response.get("status_code")
        status = status if isinstance(status, int) and not isinstance(status, bool) else 0
        body = response.get("body")
        body = body if isinstance(body, dict) else {}
        err = body.get("error") if "error" in body else obj.get("error")
        usage = self.usage_of(body.get("usage"), body.get("service_tier")) if "usage" in body else None
        if usage is None and status >= 400:
            usage = Usage()  # a failed item: nothing billed for it
        self._items.append(
            BatchItem(
                custom_id,
                status,
                nonempty_str(body.get("model")),
                usage,
                error_code(err) if err else None,
                nonempty_str(response.get("request_id")),
            )
        )

    def finish(self, complete: bool) -> MeterResult:
        result = super().finish(complete)
        if self.status < 400:
            if complete and self._partial.strip():
                self._line(self._partial)  # a last line without its newline
            self._partial = b""
            result.items, self._items = self._items, []
        return result


class MessageBatchResultsMeter(BatchOutputMeter):
    """Anthropic's ``GET /v1/messages/batches/{id}/results`` (API reference, "Retrieve Message Batch results";
    the ``anthropic`` SDK's ``MessageBatchIndividualResponse``): JSON Lines of ``{"custom_id", "result":
    {"type": "succeeded", "message": {…"model", "usage"…}}}``, or a result of type ``errored`` (with an
    ``error``), ``canceled`` or ``expired``, which are not billed."""

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        obj = loads(line)
        result = obj.get("result") if isinstance(obj, dict) else None
        if not isinstance(result, dict):
            self._items.append(BatchItem("", 0, None, None, "invalid_json", None))
            return
        custom_id = nonempty_str(obj.get("custom_id")) or ""
        kind = result.get("type")
        if kind == "succeeded" and isinstance(result.get("message"), dict):
            message = result["message"]
            usage = self.usage_of(message.get("usage"))
            self._items.append(
                BatchItem(
                    custom_id, 200, nonempty_str(message.get("model")), usage, None, nonempty_str(message.get("id"))
                )
            )
            return
        err = result.get("error")
        if isinstance(err, dict) and isinstance(err.get("error"), dict):
            err = err["error"]  # an ErrorResponse: {"type": "error", "error": {"type", "message"}}
        code = error_code(err) if err else (kind if isinstance(kind, str) and kind else "failed")
        self._items.append(BatchItem(custom_id, 0, None, Usage(), code, None))


class ResultsURLView:
    """Anthropic's batch objects name where their results are (``results_url``, an absolute URL at the API's
    own origin), and the ``anthropic`` SDK fetches exactly that URL: left alone, the results would bypass the
    proxy and never be metered. So, on batch answers only, each ``results_url`` is given the origin (and route
    prefix) the client used to reach ModelTrack; the path is kept. The body is held (a batch object is small,
    at most ``limit`` bytes; a larger one passes unchanged) and rewritten once. Every other byte is the
    upstream's."""

    __slots__ = ("_buf", "_passing", "base", "limit")

    def __init__(self, base: str, limit: int = 1 << 20) -> None:
        self.base = base
        self.limit = limit
        self._buf = b""
        self._passing = False

    def feed(self, data: bytes) -> bytes:
        if self._passing:
            return data
        self._buf += data
        if len(self._buf) > self.limit:
            self._passing = True
            out, self._buf = self._buf, b""
            return out
        return b""

    def flush(self) -> bytes:
        raw, self._buf = self._buf, b""
        obj = loads(raw) if raw else None
        found = [obj] if isinstance(obj, dict) else []
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            found += obj["data"]
        for o in found:
            url = o.get("results_url") if isinstance(o, dict) else None
            at = url.find("/v1/messages/batches/") if isinstance(url, str) else -1
            if at >= 0:
                assert isinstance(url, str)
                raw = raw.replace(orjson.dumps(url), orjson.dumps(self.base + url[at:]))
        return raw


class GeminiBatchMeter(JSONBodyMeter):
    """The Gemini API's batch mode (API reference, "Batch Mode": ``models/{model}:batchGenerateContent`` creates
    a batch and answers with its operation; ``GET batches/{id}`` polls it; the ``google-genai`` SDK's
    ``_BatchJob_from_mldev``): ``{"name": "batches/…", "metadata": {"model", "state", "output":
    {"inlinedResponses": {"inlinedResponses": [{"response": {…"usageMetadata", "modelVersion"…}, "metadata":
    {"key"}}, …]}}}, "done", "response"}``. Free calls; once the batch has succeeded, its inlined responses are its
    items, one event each, keyed by their ``key`` (else their position). ``usage_of`` is the Gemini usage parser."""

    def __init__(self, info: RequestInfo, status: int, usage_of: Any) -> None:
        super().__init__(info, status)
        self.usage_of = usage_of

    def from_json(self, obj: Any) -> MeterResult:
        if not isinstance(obj, dict) or not nonempty_str(obj.get("name")):
            err = obj.get("error") if isinstance(obj, dict) else None
            return MeterResult(error=error_code(err) if err else "unexpected_json")
        created = self.info.method == "POST" and ":batchGenerateContent" in self.info.path
        raw_meta = obj.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        found = None
        files: tuple[str, ...] = ()
        for holder in (meta.get("output"), obj.get("response")):
            if not isinstance(holder, dict):
                continue
            # A batch built from an input file answers in a file (GenerateContentBatchOutput.responsesFile):
            # remembered, so its download is metered (GeminiBatchFileMeter).
            responses_file = nonempty_str(holder.get("responsesFile"))
            if responses_file is not None:
                files = (responses_file,)
            inlined = holder.get("inlinedResponses")
            if isinstance(inlined, dict) and isinstance(inlined.get("inlinedResponses"), list):
                found = inlined["inlinedResponses"]
                break
        note = BatchNote(obj["name"], ":generateContent", files, created)
        result = MeterResult(usage=Usage(), usage_source="none", zero_cost=True, batch=[note])
        if found is None or self.info.extra.get("batch") is None:
            return result
        model = nonempty_str(meta.get("model"))
        items = []
        for i, entry in enumerate(found):
            entry = entry if isinstance(entry, dict) else {}
            key = entry.get("metadata", {}).get("key") if isinstance(entry.get("metadata"), dict) else None
            custom_id = key if isinstance(key, str) and key else f"#{i}"
            response = entry.get("response")
            if not isinstance(response, dict):
                err = entry.get("error")
                items.append(BatchItem(custom_id, 0, None, Usage(), error_code(err) if err else "failed", None))
                continue
            usage = self.usage_of(response.get("usageMetadata"))
            served = nonempty_str(response.get("modelVersion")) or (model.removeprefix("models/") if model else None)
            items.append(BatchItem(custom_id, 200, served, usage, None, nonempty_str(response.get("responseId"))))
        result.items = items
        return result


class GeminiBatchFileMeter(BatchOutputMeter):
    """The responses file of a Gemini batch built from an input file (API reference, "Batch Mode":
    ``GenerateContentBatchOutput.responsesFile``, "a JSONL file with a single response per line … in the same
    order as the input requests"; the batch guide: each line "is either a GenerateContentResponse or a status
    object"), downloaded with ``GET files/{id}:download?alt=media`` (``google-genai``'s ``files.download``). A line
    is ``{"key", "response": {…"usageMetadata", "modelVersion"…}}``, a bare ``GenerateContentResponse``, or a
    status (``{"key", "error"|"status": {…}}``: not billed). An item is keyed by its ``key``, else by its
    position, as the inlined answers are (GeminiBatchMeter)."""

    __slots__ = ("_n",)

    def __init__(self, info: RequestInfo, status: int, usage_of: Any) -> None:
        super().__init__(info, status, usage_of)
        self._n = 0

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        position, self._n = self._n, self._n + 1
        obj = loads(line)
        if not isinstance(obj, dict):
            self._items.append(BatchItem(f"#{position}", 0, None, None, "invalid_json", None))
            return
        custom_id = nonempty_str(obj.get("key")) or f"#{position}"
        response = obj.get("response") if isinstance(obj.get("response"), dict) else None
        if response is None and ("usageMetadata" in obj or "candidates" in obj):
            response = obj  # a bare GenerateContentResponse
        if response is None:
            err = obj.get("error") or obj.get("status")
            self._items.append(BatchItem(custom_id, 0, None, Usage(), error_code(err) if err else "failed", None))
            return
        usage = self.usage_of(response.get("usageMetadata"))
        model = nonempty_str(response.get("modelVersion"))
        self._items.append(BatchItem(custom_id, 200, model, usage, None, nonempty_str(response.get("responseId"))))
