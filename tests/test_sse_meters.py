"""Pure parsers and meters, no network: chunking invariance (hypothesis), garbage tolerance, recorded streams."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltrack.providers import build_providers
from modeltrack.wire.eventstream import EventStreamDecoder, encode_frame
from modeltrack.wire.jsonstream import JSONArraySplitter
from modeltrack.wire.sse import SSEEvent, SSESplitter

from .expected import EXPECTED, provider_of
from .replay import Recording, all_recordings, load

PROVIDERS = build_providers({"azure": "https://example.openai.azure.com"})
STREAMS = [r for r in all_recordings() if r.body[:6] in (b"data: ", b"event:") or r.body[:1] == b":"]


def gemini_events(body: bytes) -> list[bytes]:
    s = SSESplitter()
    return [e.data for e in s.feed(body) + s.close()]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def parse(chunks: list[bytes]) -> list[SSEEvent]:
    s = SSESplitter()
    events: list[SSEEvent] = []
    for c in chunks:
        events += s.feed(c)
    return events + s.close()


# --- SSE splitter --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rec", STREAMS, ids=lambda r: f"{r.name[:50]}[{r.index}]")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=10**9), max_size=60))
def test_recorded_streams_split_identically_under_any_chunking(rec: Recording, cuts: list[int]) -> None:
    assert parse(split_at(rec.body, cuts)) == parse([rec.body])


_field_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)


@st.composite
def sse_streams(draw: Any) -> tuple[bytes, list[SSEEvent]]:
    """An independent model: generate events, serialise them with random line endings and noise."""
    events = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["", "message_delta", "error", "ping"]), st.lists(_field_text, min_size=1, max_size=3)
            ),
            max_size=8,
        )
    )
    out = b""
    expected = []
    for name, lines in events:
        eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"])).__add__(b"")
        if draw(st.booleans()):
            out += b": keep-alive" + eol
        if name:
            out += b"event: " + name.encode() + eol
        if draw(st.booleans()):
            out += b"id: 42" + eol + b"retry: 1000" + eol
        for line in lines:
            # "data:x" and "data: x" are the same field; a value that itself starts with a space needs ": ".
            sep = b": " if draw(st.booleans()) or line.startswith(" ") else b":"
            out += b"data" + sep + line.encode() + eol
        out += eol
        expected.append(SSEEvent(name.encode(), b"\n".join(x.encode() for x in lines)))
    return out, expected


@settings(max_examples=300, deadline=None)
@given(stream=sse_streams(), cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=30))
def test_sse_splitter_against_model(stream: tuple[bytes, list[SSEEvent]], cuts: list[int]) -> None:
    data, expected = stream
    assert parse(split_at(data, cuts)) == expected


def test_sse_missing_final_blank_line_and_split_crlf() -> None:
    assert parse([b"data: a\r", b"\ndata: b\r\n\r", b"\ndata: c"]) == [SSEEvent(b"", b"a\nb"), SSEEvent(b"", b"c")]
    assert parse([b"data: \xe2\x82", b"\xac\n\n"]) == [SSEEvent(b"", "€".encode())]


# --- meters on every recording, chunked awkwardly ------------------------------------------------------------


def meter_for(rec: Recording) -> Any:
    provider = PROVIDERS[provider_of(rec.uri)]
    path_qs = rec.path_qs
    if provider.name in ("groq",):
        path_qs = path_qs.removeprefix("/openai")
    if provider.name == "openrouter":
        path_qs = path_qs.removeprefix("/api")
    path, _, query = path_qs.partition("?")
    info = provider.request_info(rec.method, path, query, rec.request_body)
    from multidict import CIMultiDict

    return provider.meter(info, rec.status, CIMultiDict(rec.headers))


@pytest.mark.parametrize("rec", all_recordings(), ids=lambda r: f"{r.name[:50]}[{r.index}]")
@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10**9), max_size=80))
def test_meter_results_independent_of_chunking(rec: Recording, cuts: list[int]) -> None:
    expected = EXPECTED[(rec.name, rec.index)]
    m = meter_for(rec)
    for chunk in split_at(rec.body, cuts):
        m.feed(chunk)
    res = m.finish(True)
    got: dict[str, Any] = {"model": res.model, "error": res.error, "usage_source": res.usage_source}
    if res.usage:
        got.update(res.usage.as_dict())
    for key in (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "web_search_requests",
        "model",
        "error",
        "usage_source",
    ):
        if key in expected:
            assert got.get(key, 0 if key.endswith(("tokens", "requests")) else None) == expected[key], key


@pytest.mark.parametrize("rec", STREAMS[:6], ids=lambda r: f"{r.name[:50]}[{r.index}]")
def test_cut_stream_is_partial_not_zero(rec: Recording) -> None:
    m = meter_for(rec)
    m.feed(rec.body[: len(rec.body) * 2 // 3])
    res = m.finish(False)
    assert res.usage_source in ("partial", "missing")
    # Cut short: "truncated", unless the stream's own error (a provider error event) came before the cut.
    own = EXPECTED[(rec.name, rec.index)].get("error")
    assert res.error in ({"truncated", own} if own else {"truncated"}), res.error


@pytest.mark.parametrize("rec", all_recordings()[::3], ids=lambda r: f"{r.name[:50]}[{r.index}]")
@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10))
def test_garbage_never_raises_out_of_a_meter(rec: Recording, garbage: bytes, cuts: list[int]) -> None:
    m = meter_for(rec)
    for chunk in split_at(garbage, cuts):
        m.feed(chunk)
    res = m.finish(True)
    assert res.usage is None or res.usage_source != "missing"
    if res.usage is None:
        assert res.usage_source in ("missing", "none")


# --- Gemini JSON array ---------------------------------------------------------------------------------------

GEMINI = load("test_google__test_google_stream_usage_is_live_mid_stream")
ARRAY = b"[" + b",\r\n".join(gemini_events(GEMINI.body)) + b"]"


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=40))
def test_json_array_splitter_any_chunking(cuts: list[int]) -> None:
    s = JSONArraySplitter()
    elements = [e for c in split_at(ARRAY, cuts) for e in s.feed(c)]
    assert elements == gemini_events(GEMINI.body)
    assert s.complete and s.error is None


def test_gemini_array_stream_meter() -> None:
    provider = PROVIDERS["gemini"]
    info = provider.request_info("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "", None)
    from multidict import CIMultiDict

    m = provider.meter(info, 200, CIMultiDict({"Content-Type": "application/json"}))
    for c in split_at(ARRAY, list(range(0, len(ARRAY), 7))):
        m.feed(c)
    res = m.finish(True)
    assert res.usage is not None
    assert (res.usage.input_tokens, res.usage.output_tokens, res.usage.reasoning_tokens) == (18, 115, 35)
    assert res.usage_source == "stream"


@given(st.binary(max_size=300))
def test_json_array_garbage(data: bytes) -> None:
    s = JSONArraySplitter()
    s.feed(data)


# --- AWS event stream ----------------------------------------------------------------------------------------

BEDROCK = load("test_bedrock__test_bedrock_model_stream")


def frames(chunks: list[bytes]) -> tuple[list[Any], str | None]:
    d = EventStreamDecoder()
    out = [f for c in chunks for f in d.feed(c)]
    return out, d.error


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=40))
def test_eventstream_any_chunking(cuts: list[int]) -> None:
    whole, err = frames([BEDROCK.body])
    assert err is None and whole[-1].headers[":event-type"] == "metadata"
    assert frames(split_at(BEDROCK.body, cuts)) == (whole, None)


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(min_value=0, max_value=len(BEDROCK.body) - 1), flip=st.integers(min_value=1, max_value=255))
def test_eventstream_detects_corruption(pos: int, flip: int) -> None:
    data = bytearray(BEDROCK.body)
    data[pos] ^= flip
    got, err = frames([bytes(data)])
    assert err is not None  # every byte is covered by a CRC (or the length fields)
    assert len(got) < len(frames([BEDROCK.body])[0]) + 1


def test_eventstream_roundtrip_and_garbage() -> None:
    frame = encode_frame({":event-type": "metadata", ":message-type": "event"}, b'{"usage":{}}')
    got, err = frames([frame[:5], frame[5:]])
    assert err is None and got[0].payload == b'{"usage":{}}'
    assert frames([b"\x00" * 64])[1] is not None


@given(st.binary(max_size=300))
def test_eventstream_garbage_never_raises(data: bytes) -> None:
    frames([data])


def test_a_gemini_stream_that_ends_before_its_finish_reason_is_truncated() -> None:
    """Issue M, item 5: the HTTP framing ends cleanly (the upstream closed its chunked body) one event before the
    ``finishReason`` chunk. The usage seen so far is partial: recorded as truncated, and so never cached."""
    from multidict import CIMultiDict

    provider = PROVIDERS["gemini"]
    info = provider.request_info("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "alt=sse", None)
    events = gemini_events(GEMINI.body)
    assert b'"finishReason"' in events[-1] and not any(b'"finishReason"' in e for e in events[:-1])
    sse = CIMultiDict({"Content-Type": "text/event-stream"})
    cut = provider.meter(info, 200, sse)
    for data in events[:-1]:
        cut.feed(b"data: " + data + b"\r\n\r\n")
    assert not cut.ended
    res = cut.finish(True)  # complete framing, no end signal
    assert res.usage_source == "partial" and res.error == "truncated"
    whole = provider.meter(info, 200, sse)
    for data in events:
        whole.feed(b"data: " + data + b"\r\n\r\n")
    assert whole.ended
    res = whole.finish(True)
    assert res.usage_source == "stream" and res.error is None
