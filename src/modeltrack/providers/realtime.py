"""Meters for the WebSocket APIs: one :class:`Turn` (one cost event) per response a session produces.

A socket meter is fed whole messages (``wire.websocket``) from both directions and reports each response's
usage when the provider's own end-of-response message says it:

* **OpenAI Realtime** (``/v1/realtime``): ``response.done`` carries ``response.usage``
  (https://platform.openai.com/docs/api-reference/realtime-server-events/response/done): ``input_tokens``
  INCLUDES ``input_token_details.cached_tokens``; ``input_token_details.{text,audio,image}_tokens`` split the
  input by modality and ``cached_tokens_details.{text,audio,image}_tokens`` split the cached part, so cached
  audio is priced at the cached-audio rate; ``output_token_details.{text,audio}_tokens`` split the output. The
  model is the URL's ``model=``, then whatever ``session.created``/``session.updated`` say. The input audio's
  transcription, when the session asks for one, is billed apart at the transcription model's prices:
  ``conversation.item.input_audio_transcription.completed`` carries its ``usage`` (tokens, or seconds), one event
  each, with the model the session configured.
* **OpenAI Responses over WebSocket** (``/v1/responses``): the streaming events of the Responses API as messages;
  ``response.completed|incomplete|failed`` carries ``response.usage`` and ``response.model``
  (https://platform.openai.com/docs/guides/websocket-mode).
* **Gemini Live** (``/ws/google.ai.generativelanguage.*.GenerativeService.BidiGenerateContent``): the client's
  ``setup.model`` names the model; a server message's ``usageMetadata`` reports the turn it ends, with
  ``responseTokenCount``/``responseTokensDetails`` where ``generateContent`` says ``candidates``
  (https://ai.google.dev/api/live#UsageMetadata). Vertex AI Live (``/vertex/ws/google.cloud.aiplatform.*.
  LlmBidiService/BidiGenerateContent``) speaks the same messages; its ``setup.model`` is a resource name
  (``projects/P/locations/L/publishers/google/models/M``) whose project and region are checked against the
  allow-list before the message goes on.

A message is decoded only when its bytes contain the marker of one of these (a delta with audio is never
decoded), and then its ``type`` is checked, so a marker inside generated text counts nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from ..usage import Usage, as_int
from .azure import Azure
from .base import MeterResult, Provider, RequestInfo, error_code, has, loads, nonempty_str
from .gemini import Gemini, gemini_usage
from .openai import OpenAI, openai_usage, transcription_usage
from .vertex import Vertex, is_live


@dataclass(slots=True)
class Turn:
    """One response of a session, for one cost event."""

    result: MeterResult
    response_id: str | None
    started: float | None  # when its ``response.created`` (or first message) was seen; None: not seen
    first_output: float | None = None


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def realtime_usage(u: Any) -> Usage | None:
    """A Realtime ``response.usage`` onto the ledger (see the module docstring for the subset relations)."""
    if not isinstance(u, dict):
        return None
    inp, out = as_int(u.get("input_tokens")), as_int(u.get("output_tokens"))
    idt, odt = _obj(u.get("input_token_details")), _obj(u.get("output_token_details"))
    cached = as_int(idt.get("cached_tokens"))
    cd = _obj(idt.get("cached_tokens_details"))
    details = {f"cache_{m}_read_tokens": n for m in ("text", "audio", "image") if (n := as_int(cd.get(f"{m}_tokens")))}
    return Usage(
        input_tokens=max(inp - cached, 0),
        output_tokens=out,
        cache_read_tokens=cached,
        input_audio_tokens=as_int(idt.get("audio_tokens")),
        output_audio_tokens=as_int(odt.get("audio_tokens")),
        input_image_tokens=as_int(idt.get("image_tokens")),
        details=details or None,
    )


_VERTEX_MODEL = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/publishers/google/models/[^/]+")


def live_usage(u: Any) -> Usage | None:
    """Gemini Live's ``usageMetadata``: ``generateContent``'s, with ``response*`` for ``candidates*``."""
    if not isinstance(u, dict):
        return None
    u = dict(u)
    if "responseTokenCount" in u:
        u["candidatesTokenCount"] = u.pop("responseTokenCount")
    if "responseTokensDetails" in u:
        u["candidatesTokensDetails"] = u.pop("responseTokensDetails")
    return gemini_usage(u)


class SocketMeter:
    """Base: tracks the model and the response under way; subclasses read their provider's messages."""

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.open: dict[str, float] = {}  # response id -> when it was created
        self.first_output: dict[str, float] = {}
        self.pending: float | None = None  # a response under way whose id is not known (Gemini turns)
        self.refused: str | None = None  # set by a client message that must not go on: the tunnel closes first

    def from_client(self, msg: bytes, now: float) -> None:
        return None

    def from_server(self, msg: bytes, now: float) -> Turn | None:
        raise NotImplementedError

    def under_way(self) -> bool:
        """A response was started and its usage not yet reported: a cut now loses its usage."""
        return bool(self.open) or self.pending is not None

    def _created(self, msg: bytes, now: float) -> bool:
        """A ``response.created`` (both OpenAI socket APIs send one): the response's clock starts."""
        if not has(msg[:512], b'"response.created"'):
            return False
        obj = loads(msg)
        if isinstance(obj, dict) and obj.get("type") == "response.created":
            resp = obj.get("response")
            rid = resp.get("id") if isinstance(resp, dict) else None
            if isinstance(rid, str) and len(self.open) < 64:
                self.open.setdefault(rid, now)
        return True

    def _ended(self, rid: Any) -> tuple[float | None, float | None]:
        if not isinstance(rid, str):
            return None, None
        return self.open.pop(rid, None), self.first_output.pop(rid, None)


_TYPE = re.compile(rb'"type"\s*:\s*"([A-Za-z0-9_.]{1,80})"')
_REALTIME_READ = frozenset(
    {
        b"response.created",
        b"response.done",
        b"session.created",
        b"session.updated",
        b"conversation.item.input_audio_transcription.completed",
    }
)


def event_type(msg: bytes) -> bytes | None:
    """The message's own ``type`` when its head shows it unambiguously (the first ``"type"`` before any nested
    object opens), else None: the caller then reads the message the slow, certain way."""
    m = _TYPE.search(msg, 0, 256)
    if m is None or msg.find(b"{", 1, m.start()) >= 0:
        return None
    return m.group(1)


class OpenAIRealtimeMeter(SocketMeter):
    def __init__(self, model: str | None) -> None:
        super().__init__(model)
        self.transcriber: str | None = None  # the session's input audio transcription model, if it has one

    def from_server(self, msg: bytes, now: float) -> Turn | None:
        kind = event_type(msg)
        if kind is not None and kind not in _REALTIME_READ:
            if kind.endswith(b".delta") and len(self.first_output) < len(self.open):
                self._first_output(msg, now)
            return None  # (an audio delta, most messages: one short regex over its head, nothing else)
        return self._read(msg, now)

    def _first_output(self, msg: bytes, now: float) -> None:
        """The first output of a response (its time to first token): decoded only while a response under way has
        none yet, so one decode per response, not one per audio delta."""
        obj = loads(msg)
        rid = obj.get("response_id") if isinstance(obj, dict) else None
        if isinstance(rid, str) and rid in self.open and rid not in self.first_output:
            self.first_output[rid] = now

    def _read(self, msg: bytes, now: float) -> Turn | None:
        head = msg[:96]
        if self._created(msg, now):
            return None
        if len(self.first_output) < len(self.open) and has(head, b"delta") and has(msg, b'"response_id"'):
            # The first output of a response (its time to first token): decoded only while a response under way
            # has none yet, so one decode per response, not one per audio delta.
            obj = loads(msg)
            rid = obj.get("response_id") if isinstance(obj, dict) else None
            if isinstance(rid, str) and rid in self.open and rid not in self.first_output:
                self.first_output[rid] = now
            return None
        if has(msg, b'"session.created"') or has(msg, b'"session.updated"'):
            obj = loads(msg)
            if isinstance(obj, dict) and obj.get("type") in ("session.created", "session.updated"):
                session = _obj(obj.get("session"))
                self.model = nonempty_str(session.get("model")) or self.model
                # The input transcription model (GA: audio.input.transcription; beta: input_audio_transcription)
                asr = _obj(_obj(_obj(session.get("audio")).get("input")).get("transcription"))
                asr = asr or _obj(session.get("input_audio_transcription"))
                self.transcriber = nonempty_str(asr.get("model")) or self.transcriber
            return None
        if has(msg, b'"conversation.item.input_audio_transcription.completed"'):
            obj = loads(msg)
            if not isinstance(obj, dict) or obj.get("type") != "conversation.item.input_audio_transcription.completed":
                return None
            # Billed at the transcription model's prices, not the realtime model's (the event's own reference).
            usage = transcription_usage(obj.get("usage"))
            source = "stream" if usage else "missing"
            return Turn(MeterResult(model=self.transcriber, usage=usage, usage_source=source), None, None)
        if not has(msg, b'"response.done"'):
            return None
        obj = loads(msg)
        if not isinstance(obj, dict) or obj.get("type") != "response.done":
            return None
        resp = _obj(obj.get("response"))
        rid = resp.get("id")
        started, first = self._ended(rid)
        usage = realtime_usage(resp.get("usage"))
        error = None
        if resp.get("status") == "failed":
            details = resp.get("status_details")
            err = details.get("error") if isinstance(details, dict) else None
            error = error_code(err) if err else "response_failed"
        return Turn(
            MeterResult(model=self.model, usage=usage, usage_source="stream" if usage else "missing", error=error),
            nonempty_str(rid),
            started,
            first,
        )


_RESPONSES_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_TERMINAL_MARKERS = tuple(b'"%s"' % t.encode() for t in _RESPONSES_TERMINAL)
_TERMINAL_TYPES = frozenset(t.encode() for t in _RESPONSES_TERMINAL)


class OpenAIResponsesSocketMeter(SocketMeter):
    def _first_output(self, now: float) -> None:
        """Responses deltas carry no response id: the first delta after a creation is that one's first token."""
        if len(self.first_output) < len(self.open):
            for open_id in self.open:
                self.first_output.setdefault(open_id, now)

    def from_client(self, msg: bytes, now: float) -> None:
        if has(msg[:256], b'"response.create"'):
            obj = loads(msg)
            if isinstance(obj, dict) and obj.get("type") == "response.create":
                self.model = nonempty_str(obj.get("model")) or self.model

    def from_server(self, msg: bytes, now: float) -> Turn | None:
        kind = event_type(msg)
        head = msg[:96]
        if kind is not None and kind != b"response.created" and kind not in _TERMINAL_TYPES:
            if kind.endswith(b".delta"):
                self._first_output(now)
            return None  # (most messages: one short regex over the head)
        if self._created(msg, now):
            return None
        if len(self.first_output) < len(self.open) and has(head, b"delta"):
            self._first_output(now)
            return None
        if not any(has(msg, t) for t in _TERMINAL_MARKERS):
            return None
        obj = loads(msg)
        if not isinstance(obj, dict) or obj.get("type") not in _RESPONSES_TERMINAL:
            return None
        resp = _obj(obj.get("response"))
        rid = resp.get("id")
        started, first = self._ended(rid)
        usage = openai_usage(resp.get("usage"), resp.get("service_tier"))
        err = resp.get("error")
        model = nonempty_str(resp.get("model")) or self.model
        return Turn(
            MeterResult(
                model=model,
                usage=usage,
                usage_source="stream" if usage else "missing",
                error=error_code(err) if err else None,
            ),
            nonempty_str(rid),
            started,
            first,
        )


class GeminiLiveMeter(SocketMeter):
    def __init__(self, model: str | None, allowed: tuple[frozenset[str], str] | None = None) -> None:
        super().__init__(model)
        self.allowed = allowed  # Vertex AI: (projects, region) a session's model may name

    def from_client(self, msg: bytes, now: float) -> None:
        if self.model is None and has(msg[:64], b'"setup"'):
            obj = loads(msg)
            setup = obj.get("setup") if isinstance(obj, dict) else None
            model = nonempty_str(setup.get("model")) if isinstance(setup, dict) else None
            if model is not None:
                self.model = model.rsplit("/", 1)[-1]  # "models/gemini-..." (or a Vertex resource name)
            if self.allowed is not None:
                projects, region = self.allowed
                m = _VERTEX_MODEL.fullmatch(model or "")
                if m is None or unquote(m["project"]) not in projects or m["region"] != region:
                    self.refused = "location_not_allowed"

    def from_server(self, msg: bytes, now: float) -> Turn | None:
        if not has(msg, b'"usageMetadata"'):
            if self.pending is None and has(msg[:64], b'"serverContent"'):
                self.pending = now  # the turn's first output
            return None
        obj = loads(msg)
        if not isinstance(obj, dict) or "usageMetadata" not in obj:
            return None
        started, self.pending = self.pending, None
        usage = live_usage(obj.get("usageMetadata"))
        return Turn(
            MeterResult(model=self.model, usage=usage, usage_source="stream" if usage else "missing"),
            None,
            started,
            started,
        )


def socket_meter(provider: Provider, info: RequestInfo) -> SocketMeter | None:
    """The meter of the WebSocket API at ``info.path``; None: the path is not one, and its upgrade is refused."""
    path = info.path
    if isinstance(provider, OpenAI):  # Azure OpenAI too: ``/openai/realtime?deployment=`` or ``?model=``
        if path.endswith("/realtime"):
            query = parse_qs(info.query)
            named = query.get("model") or query.get("deployment")
            model = named[0] if named else None
            if model is not None and isinstance(provider, Azure):
                model = provider.deployments.get(model, model)  # MODELTRACK_AZURE_DEPLOYMENTS names its model
            return OpenAIRealtimeMeter(info.model or model)
        if path.endswith("/responses"):
            return OpenAIResponsesSocketMeter(info.model)
    elif isinstance(provider, Vertex):
        if is_live(path) and len(provider.regions) == 1:
            return GeminiLiveMeter(None, allowed=(provider.projects, provider.regions[0]))
    elif isinstance(provider, Gemini):
        if path.startswith("/ws/google.ai.generativelanguage.") and path.endswith(
            (".BidiGenerateContent", ".BidiGenerateContentConstrained")
        ):
            return GeminiLiveMeter(None)
    return None
