"""The small interface every provider plug-in implements.

A provider knows four things: which routes are its own, where its upstream lives, how to name the model of a
request, and how to meter a response. Meters are pure and synchronous: they are fed the exact bytes the client
receives (decompressed copies when the upstream compressed them) and report a ``MeterResult`` at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson
from mypy_extensions import mypyc_attr

from ..usage import Usage


@dataclass(slots=True, init=False)
class MeterResult:
    # mypyc compiles a dataclass's methods, but not the ``__init__`` the dataclasses module writes at run time:
    # built per request, that interpreted ``__init__`` cost ~3,800 CPU instructions (callgrind, bench/README.md).

    model: str | None = None
    usage: Usage | None = None
    usage_source: str = "missing"
    """``response`` (a JSON body), ``stream`` (a complete stream), ``partial`` (stream cut short), ``headers``
    (Bedrock's ``x-amzn-bedrock-*``), ``provider`` (provider-reported cost), ``none`` (an endpoint that is
    never billed per token, e.g. count_tokens), or ``missing``."""
    error: str | None = None
    """Error *type/code* only, never message text (it can echo prompt content)."""
    zero_cost: bool = False
    batch: Any = None
    """A Batch API object the answer described (``providers.batches.BatchNote``): remembered in the store."""
    items: Any = None
    """The items of a batch's results (``list[providers.batches.BatchItem]``): one cost event each."""
    variant: tuple[tuple[str, str], ...] = ()
    """Price context the answer fixed beyond the model (a video's ``(("size", "1792x1024"),)``)."""
    settles: str | None = None
    """An async job (a video) this answer bills, once: its event id is the job's, and the job is remembered as
    priced (modeltrack.batches), so a later poll bills nothing."""

    def __init__(
        self,
        model: str | None = None,
        usage: Usage | None = None,
        usage_source: str = "missing",
        error: str | None = None,
        zero_cost: bool = False,
        batch: Any = None,
        items: Any = None,
        variant: tuple[tuple[str, str], ...] = (),
        settles: str | None = None,
    ) -> None:
        self.model = model
        self.usage = usage
        self.usage_source = usage_source
        self.error = error
        self.zero_cost = zero_cost
        self.batch = batch
        self.items = items
        self.variant = variant
        self.settles = settles


@dataclass(slots=True, init=False)
class RequestInfo:
    """What a meter may know about the request: never the body, only what was extracted from it."""

    # mypyc compiles a dataclass's methods, but not the ``__init__`` the dataclasses module writes at run time:
    # built per request, that interpreted ``__init__`` cost ~2,600 CPU instructions (callgrind, bench/README.md).

    method: str
    path: str
    query: str
    model: str | None = None
    stream: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        model: str | None = None,
        stream: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.model = model
        self.stream = stream
        self.extra = {} if extra is None else extra


class Meter(Protocol):
    @property
    def ended(self) -> bool:
        """The response's own end marker was seen (``[DONE]``, ``message_stop``, a terminal event, the closing
        ``]``): the usage is final even if the connection is cut right after (the sync OpenAI SDK hangs up
        straight after ``[DONE]``)."""
        ...

    def feed(self, chunk: bytes) -> None: ...

    def finish(self, complete: bool) -> MeterResult:
        """``complete`` is False when the stream was cut (upstream reset, client disconnect)."""
        ...


class BodyView(Protocol):
    """A transform of the body bytes the client sees; the meter always sees the upstream's bytes."""

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # (scripts/compile: the providers' plug-ins subclass it)
class Provider:
    """Base class; subclasses override what differs. Instances are stateless and shared across requests."""

    name: ClassVar[str] = "base"
    default_base_url: ClassVar[str] = ""
    multi_origin: bool = False
    """More than one upstream origin (Vertex AI's regions, Azure resources): the path picks one of the
    configured pools (:meth:`locate`)."""
    inject_stream_usage_default: ClassVar[bool] = False

    def __init__(self, base_url: str | None = None, inject_stream_usage: bool | None = None) -> None:
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.inject_stream_usage = (
            self.inject_stream_usage_default if inject_stream_usage is None else inject_stream_usage
        )

    def request_info(self, method: str, path: str, query: str, body: Any) -> RequestInfo:
        """Extract model and stream flag from the decoded JSON body (``body`` may be None)."""
        model = body.get("model") if isinstance(body, dict) else None
        stream = bool(body.get("stream")) if isinstance(body, dict) else False
        return RequestInfo(method, path, query, model if isinstance(model, str) else None, stream)

    def rewrite_body(self, info: RequestInfo, raw: bytes, body: Any) -> bytes:
        """Return the body to send upstream. Default: the client's bytes, untouched."""
        return raw

    def origins(self) -> dict[str, str]:
        """Pool name → origin (configuration only, never a request)."""
        return {self.name: self.base_url} if self.base_url else {}

    def locate(self, path: str) -> tuple[str, str] | None:
        """(the pool a request to ``path`` goes to, the path to send upstream); None: refused (:meth:`refusal`
        says why). Only providers with ``multi_origin`` are asked."""
        return self.name, path

    def refusal(self, path: str) -> str:
        return "This path is not served."

    def meter(self, info: RequestInfo, status: int, headers: Any) -> Meter:
        raise NotImplementedError

    def client_view(self, info: RequestInfo, status: int, encoding: str | None) -> BodyView | None:
        """How the client's copy of the response body differs from the upstream's (default: it does not)."""
        return None

    def error_body(self, status: int, kind: str, message: str) -> bytes:
        """An error generated by the proxy itself, in this provider's error shape (OpenAI's by default)."""
        return orjson.dumps({"error": {"message": message, "type": kind, "code": kind, "param": None}})


def nonempty_str(value: Any) -> str | None:
    """A JSON field that must be a non-empty string (an id, a model name), else None."""
    return value if isinstance(value, str) and value else None


def has(data: bytes, needle: bytes) -> bool:
    """``needle in data``, for the meters' byte checks, without CPython's detour: ``bytes.__contains__`` first
    tries its argument as an integer (``0x7B in data`` is legal), and for a bytes needle that raises, formats and
    clears a TypeError before it searches: ~5,000 instructions a check under callgrind, where ``find`` takes the
    buffer at once. A stream's every event passes two to four such checks (bench/README.md, twenty-seventh
    session)."""
    return data.find(needle) >= 0


def loads(data: bytes) -> Any:
    """orjson.loads that never raises: a meter must survive garbage."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def error_code(err: Any) -> str:
    """Turn an upstream error object into a short type/code string, never including its message.

    Preference: a string ``code`` (most specific: ``tool_use_failed``), then ``type``, then ``status``
    (Gemini's ``INVALID_ARGUMENT``), then a numeric ``code``.
    """
    if isinstance(err, dict):
        code = err.get("code")
        if isinstance(code, str) and code:
            return _clean(code)
        for key in ("type", "status"):
            val = err.get(key)
            if isinstance(val, str) and val:
                return _clean(val)
        if isinstance(code, int) and not isinstance(code, bool):
            return str(code)
        return "error"
    if isinstance(err, (str, int)) and not isinstance(err, bool):
        return _clean(str(err))
    return "error"


def _clean(code: str) -> str:
    return "".join(ch for ch in code[:64] if ch.isalnum() or ch in "._-:") or "error"
