"""OpenTelemetry export (issue N): one span per stored cost event with the GenAI semantic conventions, the
client's W3C trace continued, no prompt, response or key in any attribute, an exporter outage that never slows
the request path, and OTLP metrics equal to the Prometheus ones.

The receiver is a real OTLP/HTTP endpoint built on the official ``opentelemetry-proto`` messages (no Collector
binary can be installed here): it decodes what the OpenTelemetry SDK's exporter sends. The spans are compared
with the stored events field by field, through a mapping written here, independently of the exporter's code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from modeltrack.config import ConfigError, Settings
from modeltrack.metrics import Metrics
from modeltrack.otel import MetricsMirror, SpanExport, Target
from modeltrack.sched import CpuShare

from .test_spend_controls import CLAUDE, MINI_STREAM, mini_body

# What each stored event field is called on its span (None: not a span attribute, checked otherwise).
FIELD_TO_ATTRIBUTE = {
    "request_id": "modeltrack.request_id",
    "upstream_request_id": "modeltrack.upstream_request_id",
    "endpoint": "modeltrack.endpoint",
    "model": "gen_ai.response.model",
    "requested_model": "gen_ai.request.model",
    "status": "http.response.status_code",
    "stream": "modeltrack.stream",
    "input_tokens": "modeltrack.input_tokens",
    "output_tokens": "gen_ai.usage.output_tokens",
    "cache_read_tokens": "gen_ai.usage.cache_read.input_tokens",
    "cache_write_tokens": "gen_ai.usage.cache_creation.input_tokens",
    "reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
    "cost_usd": "modeltrack.cost_usd",
    "cost_source": "modeltrack.cost_source",
    "usage_source": "modeltrack.usage_source",
    "latency_ms": "modeltrack.latency_ms",
    "ttft_ms": "modeltrack.ttft_ms",
    "team": "modeltrack.team",
    "app": "modeltrack.app",
    "feature": "modeltrack.feature",
    "user": "modeltrack.user",
    "session_id": "modeltrack.session_id",
    "prompt_id": "modeltrack.prompt_id",
    "cache_hit": "modeltrack.cache_hit",
    "routed": "modeltrack.routed",
    "route_rule": "modeltrack.route_rule",
    "saved_usd": "modeltrack.saved_usd",
    "service_tier": "modeltrack.service_tier",
    "error": "error.type",
    "org": "modeltrack.org",
    "key_id": "modeltrack.key_id",
    "provider": None,  # gen_ai.provider.name, in the conventions' spelling (checked below)
    "timestamp": None,  # the span's start time
    "traceparent": None,  # the span's parent
    "properties": None,  # modeltrack.property.<name> each
    "cache_write_1h_tokens": None,  # within cache_write_tokens
    "web_search_requests": None,
    "stream_usage_injected": None,
}


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver:
    """An OTLP/HTTP receiver: decodes each export request with the official protobuf messages."""

    def __init__(self, hang: bool = False) -> None:
        self.spans: list[dict[str, Any]] = []
        self.metrics: dict[str, list[tuple[dict[str, Any], float]]] = {}
        self.raw = bytearray()
        self.hang = hang
        self.release = asyncio.Event()  # a hanging receiver answers once the test is done with it
        self.arrived = 0  # export requests received (a hanging receiver counts them before it hangs)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self.traces)
        app.router.add_post("/v1/metrics", self.metric)
        return app

    async def traces(self, request: web.Request) -> web.Response:
        self.arrived += 1
        if self.hang:
            await self.release.wait()
        body = await request.read()
        self.raw += body
        self.take_traces(ExportTraceServiceRequest.FromString(body))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def take_traces(self, req: ExportTraceServiceRequest) -> None:
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        {
                            "name": s.name,
                            "kind": s.kind,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "status": s.status.code,
                            "attributes": {a.key: _value(a.value) for a in s.attributes},
                            "resource": resource,
                        }
                    )

    async def metric(self, request: web.Request) -> web.Response:
        self.take_metrics(ExportMetricsServiceRequest.FromString(await request.read()))
        return web.Response(
            body=ExportMetricsServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def take_metrics(self, req: ExportMetricsServiceRequest) -> None:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    points = m.sum.data_points if m.HasField("sum") else m.gauge.data_points
                    self.metrics[m.name] = [
                        (
                            {a.key: _value(a.value) for a in p.attributes},
                            p.as_double if p.HasField("as_double") else float(p.as_int),
                        )
                        for p in points
                    ]


class GrpcReceiver(Receiver):
    """The same receiver over OTLP/gRPC: a real gRPC server with the official trace and metrics services; it
    keeps each call's metadata (where OTEL_EXPORTER_OTLP_HEADERS arrive)."""

    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[dict[str, str]] = []
        self.server: Any = None

    def start(self) -> int:
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

        receiver = self

        class Traces(tgrpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                receiver.metadata.append(dict(context.invocation_metadata()))
                receiver.raw += request.SerializeToString()
                receiver.take_traces(request)
                return ExportTraceServiceResponse()

        class Metrics_(mgrpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                receiver.metadata.append(dict(context.invocation_metadata()))
                receiver.take_metrics(request)
                return ExportMetricsServiceResponse()

        self.server = grpc.server(ThreadPoolExecutor(4))
        tgrpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        mgrpc.add_MetricsServiceServicer_to_server(Metrics_(), self.server)
        port = int(self.server.add_insecure_port("127.0.0.1:0"))
        self.server.start()
        return port


async def spans_of(receiver: Receiver, events: list[Any]) -> dict[str, dict[str, Any]]:
    """The receiver's spans by request id, once it has one per stored event (two here), and no other."""
    assert len(events) == 2
    await _wait_for(lambda: len(receiver.spans) >= 2)
    spans = {sp["attributes"]["modeltrack.request_id"]: sp for sp in receiver.spans}
    assert set(spans) == {e.request_id for e in events}
    return spans


def assert_span_is_the_event(sp: dict[str, Any], ev: Any, service_name: str = "modeltrack") -> None:
    """Every stored field, on its attribute (FIELD_TO_ATTRIBUTE), and the span's name, kind, times, resource."""
    attrs = sp["attributes"]
    for name, attribute in FIELD_TO_ATTRIBUTE.items():
        value = getattr(ev, name)
        if attribute is None:
            continue
        if value is None:
            assert attribute not in attrs, (name, attrs.get(attribute))
        elif isinstance(value, float):
            assert attrs[attribute] == pytest.approx(value, rel=1e-12), name
        else:
            assert attrs[attribute] == value, name
    assert attrs["gen_ai.usage.input_tokens"] == ev.input_tokens + ev.cache_read_tokens + ev.cache_write_tokens
    assert attrs["gen_ai.provider.name"] == ev.provider and attrs["gen_ai.operation.name"] == "chat"
    for prop, value in (ev.properties or {}).items():
        assert attrs[f"modeltrack.property.{prop}"] == value
    assert sp["kind"] == 3  # SPAN_KIND_CLIENT
    assert sp["name"] == f"chat {ev.requested_model}"
    assert sp["resource"]["service.name"] == service_name
    started = datetime.fromisoformat(ev.timestamp.replace("Z", "+00:00")).timestamp()
    assert sp["start"] / 1e9 == pytest.approx(started, abs=1e-6)
    assert (sp["end"] - sp["start"]) / 1e6 == pytest.approx(ev.latency_ms, abs=0.001)


async def _wait_for(pred: Any, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_one_span_per_stored_event_equal_field_by_field_in_the_clients_trace(
    replay: Any, make_proxy: Any, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    upstream, upstream_url = replay
    proxy = await make_proxy(upstream_url, otel_endpoint=str(server.make_url("")).rstrip("/"))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    prompt_canary, key_canary = "PROMPTCANARY7y8", "sk-KEYCANARY9z1"
    async with aiohttp.ClientSession() as s:
        upstream.current = MINI_STREAM
        headers = {
            "Authorization": f"Bearer {key_canary}",
            "traceparent": f"00-{trace_id}-{parent_id}-01",
            "X-ModelTrack-Team": "search",
            "X-ModelTrack-Session-Id": "run-1",
            "X-ModelTrack-Property-Env": "prod",
        }
        body = orjson.loads(mini_body())
        body["messages"][0]["content"] = prompt_canary
        async with s.post(proxy.url + "/v1/chat/completions", data=orjson.dumps(body), headers=headers) as r:
            assert r.status == 200 and await r.read()
        upstream.current = CLAUDE
        async with s.post(
            proxy.url + "/v1/messages",
            data=orjson.dumps(CLAUDE.request_body),
            headers={"x-api-key": key_canary, "traceparent": "not-a-traceparent"},
        ) as r:
            assert r.status == 200 and await r.read()
        async with s.post(proxy.url + "/nowhere/at/all", data=b"{}") as r:
            assert r.status == 404  # no provider: no event, so no span
    events = await proxy.events()
    spans = await spans_of(receiver, events)
    for ev in events:
        assert_span_is_the_event(spans[ev.request_id], ev)
    mini = next(e for e in events if e.provider == "openai")
    claude = next(e for e in events if e.provider == "anthropic")
    assert mini.traceparent == f"00-{trace_id}-{parent_id}-01" and claude.traceparent is None
    assert spans[mini.request_id]["trace_id"] == trace_id
    assert spans[mini.request_id]["parent_span_id"] == parent_id  # the proxy's span sits in the client's trace
    assert spans[claude.request_id]["parent_span_id"] == ""  # a malformed traceparent is not continued
    assert spans[claude.request_id]["trace_id"] != trace_id
    assert mini.cost_usd and mini.output_tokens and claude.cache_read_tokens + claude.cache_write_tokens > 0
    for canary in (prompt_canary, key_canary):
        assert canary.encode() not in receiver.raw  # no prompt, response or key in any attribute
    registry = proxy.service.metrics.registry
    # The exporter's thread counts a batch once the receiver's answer is back, a moment after the receiver
    # stored it: wait for two, then check there are not more.
    await _wait_for(
        lambda: (registry.get_sample_value("modeltrack_otel_spans_total", {"outcome": "exported"}) or 0) >= 2
    )
    assert registry.get_sample_value("modeltrack_otel_spans_total", {"outcome": "exported"}) == 2


async def test_an_exporter_outage_never_blocks_and_drops_are_counted(
    replay: Any, make_proxy: Any, aiohttp_server: Any
) -> None:
    """A receiver that accepts and never answers: every request is served as usual; the export queue is
    bounded, so what does not fit is dropped and counted, never waited for."""
    receiver = Receiver(hang=True)
    server = await aiohttp_server(receiver.app())
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    proxy = await make_proxy(upstream_url, otel_endpoint=str(server.make_url("")).rstrip("/"))
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            async with s.post(proxy.url + "/v1/chat/completions", data=mini_body()) as r:
                assert r.status == 200 and await r.read()
    assert len(await proxy.events()) == 5  # stored; the exporter's thread is stuck on the first batch
    # The queue itself, on an exporter of its own, to a second receiver that never answers either.
    stuck = Receiver(hang=True)
    target = Target(endpoint=str((await aiohttp_server(stuck.app())).make_url("")).rstrip("/"))
    metrics = Metrics()
    export = SpanExport(target, metrics, max_queued_batches=2, timeout=30)
    events = await proxy.events()
    export.offer(events[:1])
    await _wait_for(lambda: stuck.arrived == 1)  # the worker sent it, and waits for the answer
    for ev in events[1:]:
        export.offer([ev])  # returns at once, whatever the receiver does
    count = metrics.registry.get_sample_value
    dropped = count("modeltrack_otel_spans_total", {"outcome": "dropped"})
    assert dropped == len(events) - 3  # one in the hung export, two queued, the rest dropped
    assert count("modeltrack_otel_spans_total", {"outcome": "exported"}) is None  # none so far
    receiver.release.set()
    stuck.release.set()
    await asyncio.to_thread(export.close)
    assert count("modeltrack_otel_spans_total", {"outcome": "exported"}) == 3  # what was queued, once it answered


async def test_a_shutdown_with_a_hung_receiver_counts_what_is_left_and_says_so_once(
    aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """close() does not wait past its timeout for a receiver that never answers: the batch in flight and the
    queued ones are counted failed, and one line says how many (not one line a batch)."""
    from .test_pipeline import make_event

    stuck = Receiver(hang=True)
    target = Target(endpoint=str((await aiohttp_server(stuck.app())).make_url("")).rstrip("/"))
    metrics = Metrics()
    export = SpanExport(target, metrics, max_queued_batches=3, timeout=30)
    try:
        export.offer([make_event(0)])
        await _wait_for(lambda: stuck.arrived == 1)  # the worker holds it, waiting for the answer
        for i in range(1, 4):
            export.offer([make_event(i), make_event(i + 10)])  # three batches queued: the queue is full
        caplog.set_level(logging.WARNING, logger="modeltrack.otel")
        started = time.monotonic()
        await asyncio.to_thread(export.close, 0.3)
        took = time.monotonic() - started
    finally:
        stuck.release.set()
    count = metrics.registry.get_sample_value
    assert count("modeltrack_otel_spans_total", {"outcome": "failed"}) == 7
    assert count("modeltrack_otel_spans_total", {"outcome": "exported"}) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "modeltrack.otel"]
    assert lines == ["otel: 7 spans still queued at shutdown were not exported (counted failed)"], lines
    assert took < 3.0 and export.worker is None


async def test_metrics_mirror_the_prometheus_ones(aiohttp_server: Any) -> None:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    metrics = Metrics()
    metrics.events_written.inc(7)
    metrics.otel_spans.labels("dropped").inc(3)
    metrics.batch_size.observe(12)
    mirror = MetricsMirror(Target(endpoint=str(server.make_url("")).rstrip("/")), metrics.registry, interval=3600)
    await asyncio.to_thread(mirror.flush)
    await _wait_for(lambda: "modeltrack_events_written_total" in receiver.metrics)
    assert receiver.metrics["modeltrack_events_written_total"] == [({}, 7.0)]
    assert receiver.metrics["modeltrack_otel_spans_total"] == [({"outcome": "dropped"}, 3.0)]
    assert receiver.metrics["modeltrack_batch_size_count"] == [({}, 1.0)]
    assert receiver.metrics["modeltrack_batch_size_sum"] == [({}, 12.0)]
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            mirrored = receiver.metrics.get(sample.name)
            assert mirrored is not None, sample.name
            assert (dict(sample.labels), float(sample.value)) in mirrored, sample.name
    await asyncio.to_thread(mirror.close)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"otel_metrics": True}, "needs an OTLP endpoint"),
        ({"otel_endpoint": "collector:4318"}, "write the collector's OTLP URL"),
        ({"otel_endpoint": "http://user:secret@collector:4318"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        (
            {"otel_env": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}},
            "write http/protobuf .* or grpc",
        ),
        (
            {"otel_env": {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://u:secret@c:4318/v1/traces"}},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://c...: write",
        ),
        (
            {"otel_endpoint": "http://c:4317/otlp", "otel_env": {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}},
            "OTLP over gRPC does not use",
        ),
    ],
)
def test_a_bad_otel_setting_is_refused_with_what_to_write(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as err:
        Settings.load(env={}, overrides=overrides)
    assert "secret" not in str(err.value)


async def test_grpc_and_the_standard_variables(replay: Any, make_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configured only with the standard OTEL_* variables, as any OpenTelemetry SDK is: OTLP over gRPC to the
    endpoint they name, their headers on every call, their service name; spans equal the stored events field by
    field, and the mirrored metrics arrive over gRPC too. The headers' credential reaches the receiver and
    nothing else: not the span data, not the worker's command line."""
    receiver = GrpcReceiver()
    port = receiver.start()
    canary = "otelcanary5q4"
    variables = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-tenant=acme,authorization=Bearer%20{canary}",
        "OTEL_SERVICE_NAME": "proxy-eu",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)  # the metrics mirror's exporter reads the process's own environment
    try:
        upstream, upstream_url = replay
        upstream.current = MINI_STREAM
        proxy = await make_proxy(upstream_url, otel_env=variables, otel_metrics=True)
        target = proxy.service.settings.otel
        assert target is not None and target.protocol == "grpc" and target.endpoint is None
        async with aiohttp.ClientSession() as s:
            for team in ("search", "ads"):
                async with s.post(
                    proxy.url + "/v1/chat/completions", data=mini_body(), headers={"X-ModelTrack-Team": team}
                ) as r:
                    assert r.status == 200 and await r.read()
        events = await proxy.events()
        spans = await spans_of(receiver, events)
        for ev in events:
            assert_span_is_the_event(spans[ev.request_id], ev, service_name="proxy-eu")
        assert receiver.metadata and all(
            m.get("x-tenant") == "acme" and m.get("authorization") == f"Bearer {canary}" for m in receiver.metadata
        )
        assert canary.encode() not in receiver.raw
        worker = proxy.service.spans.worker
        assert worker is not None and canary not in " ".join(worker.args)
        mirror = proxy.service.metrics_mirror
        assert mirror is not None
        await asyncio.to_thread(mirror.flush)
        await _wait_for(lambda: "modeltrack_events_written_total" in receiver.metrics)
        assert receiver.metrics["modeltrack_events_written_total"] == [({}, 2.0)]
    finally:
        receiver.server.stop(0)


async def test_a_worker_that_dies_is_replaced_and_its_batch_counted(aiohttp_server: Any) -> None:
    """The worker process is killed while it holds a batch (its receiver has not answered): that batch is
    counted failed, and the next batch goes to a new worker and is exported."""
    from .test_pipeline import make_event

    receiver = Receiver(hang=True)
    server = await aiohttp_server(receiver.app())
    metrics = Metrics()
    count = metrics.registry.get_sample_value
    export = SpanExport(Target(endpoint=str(server.make_url("")).rstrip("/")), metrics, timeout=30)
    try:
        export.offer([make_event(1), make_event(2)])
        await _wait_for(lambda: receiver.arrived == 1)  # the worker holds the batch: it waits for the answer
        first = export.worker
        assert first is not None
        first.kill()
        await _wait_for(lambda: count("modeltrack_otel_spans_total", {"outcome": "failed"}) == 2)
        receiver.release.set()
        later = make_event(3)
        export.offer([later])
        await _wait_for(lambda: count("modeltrack_otel_spans_total", {"outcome": "exported"}) == 1)
        assert export.worker is not None and export.worker is not first
        assert [sp["attributes"]["modeltrack.request_id"] for sp in receiver.spans] == [later.request_id]
    finally:
        receiver.release.set()
        await asyncio.to_thread(export.close)
    assert export.worker is None


def _policies(pid: int) -> set[int]:
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
async def test_the_export_waits_for_a_busy_proxy_and_catches_up_when_it_falls_behind(
    aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker gets only CPU time nothing else wants (SCHED_IDLE), and while the proxy is busy a batch waits.
    When batches pile up behind it, the next goes whatever the load, on a worker restarted at the normal policy;
    once the worker has kept up for ``normal_for``, it is set idle again, in place. Nothing is lost."""
    from .test_pipeline import make_event

    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    metrics = Metrics()
    count = metrics.registry.get_sample_value
    target = Target(endpoint=str(server.make_url("")).rstrip("/"))
    busy = threading.Event()
    busy.set()
    export = SpanExport(
        target, metrics, max_queued_batches=8, timeout=30, behind_after=2, normal_for=1.0, busy=busy.is_set
    )
    exported = lambda: count("modeltrack_otel_spans_total", {"outcome": "exported"}) or 0  # noqa: E731
    caplog.set_level(logging.WARNING, logger="modeltrack.otel")
    events = [make_event(i) for i in range(4)]
    try:
        export.offer(events[:1])
        await asyncio.sleep(1.5)  # gathered (0.5 s), then held: the proxy is busy
        assert receiver.arrived == 0 and exported() == 0
        first = export.worker
        assert first is not None and _policies(first.pid) == {os.SCHED_IDLE}
        export.offer(events[1:2])
        export.offer(events[2:3])  # two batches wait behind the held one: it goes, busy or not
        await _wait_for(lambda: exported() == 1)
        second = export.worker
        assert second is not None and second is not first and first.poll() is not None
        assert _policies(second.pid) == {os.SCHED_OTHER}
        lines = [r.getMessage() for r in caplog.records if r.name == "modeltrack.otel"]
        assert lines == ["otel: stored batches waiting for export: 2; the exporter restarted at nice 19 for 1 s"], lines
        await asyncio.sleep(1.5)  # the other two, gathered into one batch: held again (nothing waits behind it)
        assert exported() == 1
        busy.clear()
        await _wait_for(lambda: exported() == 3)
        await asyncio.sleep(1.2)  # kept up for normal_for
        export.offer(events[3:])
        await _wait_for(lambda: exported() == 4)
        assert export.worker is second and _policies(second.pid) == {os.SCHED_IDLE}
        ids = sorted(sp["attributes"]["modeltrack.request_id"] for sp in receiver.spans)
        assert ids == sorted(ev.request_id for ev in events)
        assert count("modeltrack_otel_spans_total", {"outcome": "failed"}) is None
    finally:
        await asyncio.to_thread(export.close)


def test_cpu_share_sees_a_busy_process() -> None:
    """The default signal a batch waits on: the share of a core this process used since the last look."""
    share = CpuShare()
    time.sleep(0.2)
    assert share() < 0.5  # asleep
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert share() > 0.75  # a core kept busy


def test_export_is_off_by_default_and_when_the_sdk_is_disabled() -> None:
    assert Settings.load(env={}).otel is None
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert Settings.load(env={}, overrides={"otel_env": on}).otel == Target("http/protobuf", None, "modeltrack")
    off = {**on, "OTEL_SDK_DISABLED": "true"}
    assert Settings.load(env={}, overrides={"otel_env": off}).otel is None
