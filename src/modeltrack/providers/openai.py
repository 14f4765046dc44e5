"""OpenAI: Chat Completions, Responses, Embeddings, legacy Completions (stream and not).

Usage mapping (written once, here):

* Chat/Completions/Embeddings: ``prompt_tokens`` INCLUDES ``prompt_tokens_details.cached_tokens`` and
  ``prompt_tokens_details.cache_write_tokens``; so uncached input = prompt - cached - cache_write.
  ``completion_tokens`` INCLUDES ``completion_tokens_details.reasoning_tokens``.
  DeepSeek reports ``prompt_cache_hit_tokens`` (a subset of ``prompt_tokens``) instead of/besides cached_tokens.
  Groq (older API) nests usage under ``x_groq.usage``. OpenRouter adds ``usage.cost`` (USD, provider-reported).
* Responses: ``input_tokens`` INCLUDES ``input_tokens_details.cached_tokens``; ``output_tokens`` INCLUDES
  ``output_tokens_details.reasoning_tokens``. Usage arrives on ``response.completed|incomplete|failed``.

Streams: we never JSON-decode a delta. The first event is decoded once (for the model); afterwards only events
whose bytes contain a non-null ``"usage"`` or an ``"error"`` key are kept, and only the last usage-bearing one is
decoded at the end.
"""

from __future__ import annotations

from typing import Any, Final

from mypy_extensions import mypyc_attr

from ..usage import Usage, as_int
from ..wire.multipart import file_part, text_field
from ..wire.sse import SSEEvent
from .audio import audio_seconds
from .base import BodyView, Meter, MeterResult, Provider, RequestInfo, error_code, has, loads, nonempty_str
from .batches import BatchObjectMeter, BatchOutputMeter, FreeMeter
from .meters import JSONBodyMeter, SSEMeter, dig
from .stream_usage import WithheldUsage, inject
from .videos import VideoMeter

_USAGE_MARKERS: Final[tuple[bytes, ...]] = (b'"usage":{', b'"usage": {')
_RESPONSES_TERMINAL: Final[tuple[bytes, ...]] = (b"response.completed", b"response.incomplete", b"response.failed")


def openai_usage(u: Any, service_tier: Any = None) -> Usage | None:
    if not isinstance(u, dict):
        return None
    details: dict[str, int] | None = None
    if "prompt_tokens" in u or "completion_tokens" in u:
        prompt = as_int(u.get("prompt_tokens"))
        output = as_int(u.get("completion_tokens"))
        pd = u.get("prompt_tokens_details") or {}
        cd = u.get("completion_tokens_details") or {}
        cached = as_int(pd.get("cached_tokens")) if isinstance(pd, dict) else 0
        if "prompt_cache_hit_tokens" in u:  # DeepSeek
            cached = as_int(u.get("prompt_cache_hit_tokens"))
        cache_write = as_int(pd.get("cache_write_tokens")) if isinstance(pd, dict) else 0
        reasoning = as_int(cd.get("reasoning_tokens")) if isinstance(cd, dict) else 0
        in_audio = as_int(pd.get("audio_tokens")) if isinstance(pd, dict) else 0
        out_audio = as_int(cd.get("audio_tokens")) if isinstance(cd, dict) else 0
        in_image = as_int(pd.get("image_tokens")) if isinstance(pd, dict) else 0
    elif "input_tokens" in u or "output_tokens" in u:  # Responses API
        prompt = as_int(u.get("input_tokens"))
        output = as_int(u.get("output_tokens"))
        idt = u.get("input_tokens_details") or {}
        odt = u.get("output_tokens_details") or {}
        cached = as_int(idt.get("cached_tokens")) if isinstance(idt, dict) else 0
        cache_write = as_int(idt.get("cache_write_tokens")) if isinstance(idt, dict) else 0
        reasoning = as_int(odt.get("reasoning_tokens")) if isinstance(odt, dict) else 0
        in_audio = out_audio = 0
        in_image = as_int(idt.get("image_tokens")) if isinstance(idt, dict) else 0
        # gpt-image-*: image output tokens are priced apart from text output (``output_image_mtok``)
        out_image = as_int(odt.get("image_tokens")) if isinstance(odt, dict) else 0
        if out_image:
            details = {"output_image_tokens": out_image}
    else:
        return None
    cost = u.get("cost")
    return Usage(
        input_tokens=max(prompt - cached - cache_write, 0),
        output_tokens=output,
        cache_read_tokens=cached,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        input_audio_tokens=in_audio,
        output_audio_tokens=out_audio,
        input_image_tokens=in_image,
        details=details,
        reported_cost_usd=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
        service_tier=service_tier if isinstance(service_tier, str) else None,
    )


def _usage_of(obj: Any) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    usage = openai_usage(obj.get("usage"), obj.get("service_tier"))
    if usage is None:
        usage = openai_usage(dig(obj, "x_groq", "usage"), obj.get("service_tier"))
    return usage


class OpenAIJSONMeter(JSONBodyMeter):
    def from_json(self, obj: Any) -> MeterResult:
        if not isinstance(obj, dict):
            return MeterResult(error="unexpected_json")
        if obj.get("object") == "response" or (
            "output" in obj and "usage" in obj and "input_tokens" in (obj.get("usage") or {})
        ):
            err = obj.get("error")
            usage = _usage_of(obj)
            return MeterResult(
                model=nonempty_str(obj.get("model")),
                usage=usage,
                usage_source=_source(usage),
                error=error_code(err) if err else None,
            )
        if "error" in obj and obj["error"] is not None and "usage" not in obj:
            return MeterResult(error=error_code(obj["error"]))
        usage = _usage_of(obj)
        return MeterResult(
            model=nonempty_str(obj.get("model")),
            usage=usage,
            usage_source="provider" if usage and usage.reported_cost_usd is not None else _source(usage),
            error=error_code(obj["error"]) if obj.get("error") else None,
        )


class OpenAIStreamMeter(SSEMeter):
    """Chat/legacy completions streams: ``data: {json}`` ... ``data: [DONE]``."""

    def __init__(self, info: RequestInfo, status: int) -> None:
        super().__init__(info, status)
        self._last_usage: bytes | None = None
        self._prev_usage: bytes | None = None  # the one before: a stream cut mid-event leaves a torn last one
        self._seen_first = False

    def on_event(self, ev: SSEEvent) -> None:
        data = ev.data
        if data == b"[DONE]":
            self.ended = True
            return
        if ev.event == b"error":
            self.error_from(data)
            return
        if not self._seen_first:
            self._seen_first = True
            obj = loads(data)
            if isinstance(obj, dict):
                self.model = nonempty_str(obj.get("model"))
        if has(data, b'"usage"') and (has(data, _USAGE_MARKERS[0]) or has(data, _USAGE_MARKERS[1])):
            self._prev_usage, self._last_usage = self._last_usage, data
        if has(data, b'"error"'):
            obj = loads(data)
            if isinstance(obj, dict) and obj.get("error"):
                self.error = error_code(obj["error"])

    def result(self, complete: bool) -> MeterResult:
        usage = None
        model = self.model
        if self._last_usage is not None:
            obj = loads(self._last_usage)
            if not isinstance(obj, dict) and self._prev_usage is not None:
                obj = loads(self._prev_usage)  # torn by the cut: the one before is the latest usage
            usage = _usage_of(obj)
            if isinstance(obj, dict) and isinstance(obj.get("model"), str):
                model = obj["model"]
        if usage is None:
            return MeterResult(model=model, usage_source="missing")
        src = "stream" if complete else "partial"
        if usage.reported_cost_usd is not None:
            src = "provider"
        return MeterResult(model=model, usage=usage, usage_source=src)


class ResponsesStreamMeter(SSEMeter):
    """Responses API: only ``response.created`` (model) and the terminal event (usage) are decoded."""

    def __init__(self, info: RequestInfo, status: int) -> None:
        super().__init__(info, status)
        self._terminal: bytes | None = None

    def on_event(self, ev: SSEEvent) -> None:
        name = ev.event
        data = ev.data
        if not name:
            # Some servers omit ``event:``; the type is the first key of the data.
            head = data[:64]
            for t in (*_RESPONSES_TERMINAL, b"response.created", b'"error"'):
                if has(head, t):
                    name = t.strip(b'"')
                    break
        if name in _RESPONSES_TERMINAL:
            self._terminal = data
            self.ended = True
        elif name == b"response.created" and self.model is None:
            obj = loads(data)
            self.model = nonempty_str(dig(obj, "response", "model"))
        elif name == b"error":
            self.error_from(data)

    def error_from(self, data: bytes) -> None:
        obj = loads(data)
        if isinstance(obj, dict):
            err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
            self.error = error_code(
                {"code": err.get("code"), "type": err.get("type")} if isinstance(err, dict) else err
            )

    def result(self, complete: bool) -> MeterResult:
        if self._terminal is None:
            return MeterResult(model=self.model, usage_source="missing")
        obj = loads(self._terminal)
        resp = obj.get("response") if isinstance(obj, dict) else None
        if not isinstance(resp, dict):
            return MeterResult(model=self.model, error="invalid_json")
        usage = _usage_of(resp)
        err = None
        if resp.get("status") == "failed":
            err = error_code(resp.get("error")) if resp.get("error") else "response_failed"
        elif resp.get("status") == "incomplete":
            reason = dig(resp, "incomplete_details", "reason")
            err = f"incomplete:{error_code(reason)}" if reason else None
        return MeterResult(
            model=nonempty_str(resp.get("model")) or self.model,
            usage=usage,
            usage_source=_source(usage, "stream"),
            error=err,
        )


def _source(usage: Usage | None, present: str = "response") -> str:
    return present if usage is not None else "missing"


def is_sse(headers: Any) -> bool:
    return "text/event-stream" in (headers.get("Content-Type") or "").lower()


class ModerationMeter(JSONBodyMeter):
    """``/v1/moderations`` is free (OpenAI bills moderation at $0): an explicit ``zero``, never ``no_usage``.
    The response carries ``id``, ``model`` and ``results`` and no usage (openai SDK
    ``types.ModerationCreateResponse``; API reference, "Moderations")."""

    def from_json(self, obj: Any) -> MeterResult:
        if isinstance(obj, dict) and "error" in obj and "results" not in obj:
            return MeterResult(error=error_code(obj["error"]))
        model = obj.get("model") if isinstance(obj, dict) else None
        return MeterResult(model=nonempty_str(model), usage=Usage(), usage_source="none", zero_cost=True)


_AUDIO_IN: Final[tuple[str, ...]] = ("/audio/transcriptions", "/audio/translations")
_TEXT_FORMATS: Final[tuple[str, ...]] = ("text", "srt", "vtt")


def transcription_usage(u: Any, duration: Any = None) -> Usage | None:
    """A transcription's ``usage`` (``{"type": "tokens", …}`` or ``{"type": "duration", "seconds"}``, or an older
    top-level ``duration``): the same object in ``/v1/audio/transcriptions`` answers and in a Realtime session's
    ``conversation.item.input_audio_transcription.completed``. Seconds are billed rounded to the nearest one."""
    if isinstance(u, dict) and u.get("type") == "tokens":
        d = u.get("input_token_details")
        audio = as_int(d.get("audio_tokens")) if isinstance(d, dict) else 0
        return Usage(
            input_tokens=as_int(u.get("input_tokens")),
            input_audio_tokens=audio,
            output_tokens=as_int(u.get("output_tokens")),
        )
    seconds = u.get("seconds") if isinstance(u, dict) and u.get("type") == "duration" else duration
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0:
        return Usage(details={"audio_seconds": round(seconds)})
    return None


class TranscriptionMeter(JSONBodyMeter):
    """``/v1/audio/transcriptions`` and ``/translations`` (API reference, "Create transcription": the JSON and
    ``verbose_json`` answers carry ``usage``, ``{"type": "duration", "seconds": …}`` for models billed by the
    second such as ``whisper-1``, or ``{"type": "tokens", "input_tokens", "input_token_details": {"audio_tokens",
    "text_tokens"}, "output_tokens"}`` for ``gpt-4o-transcribe``; an older ``verbose_json`` has a top-level
    ``duration``). Seconds are billed rounded to the nearest second (genai-prices' ``audio_seconds``). A text,
    SRT or VTT answer has no usage: it is priced by the uploaded audio's own length (:mod:`.audio`) where that
    can be read, else the request is ``unpriced``, never $0. The model is the request's (read from
    the multipart form), as the answer names none."""

    def finish(self, complete: bool) -> MeterResult:
        head = self._chunks[0].lstrip()[:1] if self._chunks else b""
        if complete and self.status < 400 and head not in (b"{", b"["):
            # response_format text, srt or vtt: a transcript with no usage. Priced by the audio's own length
            # when it could be read (a per-second model; a per-token one stays unpriced), never $0.
            self._chunks = []
            seconds = self.info.extra.get("audio_seconds")
            if isinstance(seconds, float):
                usage = Usage(details={"audio_seconds": round(seconds)})
                return MeterResult(model=self.info.model, usage=usage, usage_source="request")
            return MeterResult(model=self.info.model, usage_source="missing")
        return super().finish(complete)

    def from_json(self, obj: Any) -> MeterResult:
        if not isinstance(obj, dict):
            return MeterResult(model=self.info.model, usage_source="missing")
        if "error" in obj:
            return MeterResult(model=self.info.model, error=error_code(obj["error"]))
        usage = transcription_usage(obj.get("usage"), obj.get("duration"))
        return MeterResult(
            model=self.info.model, usage=usage, usage_source="response" if usage is not None else "missing"
        )


class SpeechMeter(FreeMeter):
    """``/v1/audio/speech`` (text to speech) is billed per character of the request's ``input`` (genai-prices'
    ``input_characters`` unit: tts-1 $15 and tts-1-hd $30 per million). The answer is audio, with no usage: the
    count comes from the request (extracted in :meth:`OpenAI.request_info`; the body itself is never kept), and
    the audio streams through unread. An error answer is JSON and is read for its code."""

    def finish(self, complete: bool) -> MeterResult:
        if self.status >= 400:
            return self.error_result(self.info.model)
        chars = self.info.extra.get("input_characters")
        if not isinstance(chars, int):
            return MeterResult(model=self.info.model, usage_source="missing")
        usage = Usage(details={"input_characters": chars})
        return MeterResult(
            model=self.info.model,
            usage=usage,
            usage_source="request" if complete else "partial",
            error=None if complete else "truncated",
        )


@mypyc_attr(allow_interpreted_subclasses=True)  # (scripts/compile: the providers' plug-ins subclass it)
class OpenAI(Provider):
    name = "openai"
    default_base_url = "https://api.openai.com"
    inject_stream_usage_default = True

    def rewrite_body(self, info: RequestInfo, raw: bytes, body: Any) -> bytes:
        """Ask for usage on chat/completions streams that did not ask, so stream costs are exact
        (:mod:`.stream_usage`: spliced in, every other byte as sent). An audio upload's model is read here, where
        the raw multipart form is at hand (the body is sent as it came)."""
        if info.model is None and body is None and info.path.endswith(_AUDIO_IN):
            info.model = text_field(raw, b"model")
            if text_field(raw, b"response_format") in _TEXT_FORMATS:
                # The answer will name no duration: the audio's own length is what a per-second model bills.
                audio = file_part(raw, b"file")
                seconds = audio_seconds(audio) if audio is not None else None
                if seconds is not None:
                    info.extra["audio_seconds"] = seconds
        if not (self.inject_stream_usage and info.stream and isinstance(body, dict)):
            return raw
        if not info.path.endswith("/completions"):
            return raw  # the Responses API always reports usage; embeddings do not stream
        return inject(info, raw, body)

    def client_view(self, info: RequestInfo, status: int, encoding: str | None) -> BodyView | None:
        """Undo, on the way back, what asking for usage changed (:class:`.stream_usage.WithheldUsage`)."""
        if info.extra.get("stream_usage_injected") and 200 <= status < 300 and encoding is None:
            return WithheldUsage()
        return None

    def request_info(self, method: str, path: str, query: str, body: Any) -> RequestInfo:
        info = super().request_info(method, path, query, body)
        if path.endswith("/audio/speech") and isinstance(body, dict) and isinstance(body.get("input"), str):
            info.extra["input_characters"] = len(body["input"])  # Unicode characters, as billed
        elif "/videos" in path:
            rest = path.split("/videos", 1)[1].strip("/").split("/")
            if method == "GET" and len(rest) == 1 and rest[0].startswith("video_"):
                # A poll of a video job: the registry says whether its completion was billed (modeltrack.batches)
                info.extra["batch_results"] = rest[0]
        elif method == "GET" and path.endswith("/content") and "/files/" in path:
            # Perhaps a batch's results: the proxy asks its batch registry before forwarding (modeltrack.batches).
            file_id = path.rsplit("/", 2)[-2]
            if file_id:
                info.extra["file_id"] = file_id
        return info

    def meter(self, info: RequestInfo, status: int, headers: Any) -> Meter:
        if info.path.endswith("/audio/speech"):
            return SpeechMeter(info, status)
        if "/batches" in info.path:
            return BatchObjectMeter(info, status)
        if "/videos" in info.path:
            return FreeMeter(info, status) if info.path.endswith("/content") else VideoMeter(info, status)
        if "/files" in info.path:
            job = info.extra.get("batch")
            if job is not None and not job["priced"]:  # (already priced: streamed through unread)
                return BatchOutputMeter(info, status, openai_usage)
            return FreeMeter(info, status)
        if info.path.endswith("/moderations"):
            return ModerationMeter(info, status)
        if info.path.endswith(_AUDIO_IN):
            return TranscriptionMeter(info, status)
        if is_sse(headers):
            if "/responses" in info.path:
                return ResponsesStreamMeter(info, status)
            return OpenAIStreamMeter(info, status)
        return OpenAIJSONMeter(info, status)
