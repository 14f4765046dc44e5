"""The per-request series are tallied and folded at read time (modeltrack.metrics): what a reader sees must be
what observing each request directly on prometheus-client's instruments gives, sample for sample."""

from __future__ import annotations

import bisect
import math
import random
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram

from modeltrack.events import CostEvent, new_request_id, rfc3339
from modeltrack.metrics import Metrics, exposition
from modeltrack.tally import (
    DUR_BOUNDS,
    DURATION_BUCKETS,
    OVER_BOUNDS,
    OVERHEAD_BUCKETS,
    TTFT_BOUNDS,
    TTFT_BUCKETS,
    slot,
)

ATTR = ("provider", "model", "team", "app", "feature")


def event(rng: random.Random) -> CostEvent:
    priced = rng.random() < 0.8
    stream = rng.random() < 0.5
    return CostEvent(
        timestamp=rfc3339(time.time()),
        request_id=new_request_id(),
        upstream_request_id=None,
        provider=rng.choice(("openai", "anthropic")),
        endpoint="/v1/chat/completions",
        model=rng.choice(("gpt-4o-mini", "claude-x", None)),
        status=rng.choice((200, 200, 429, 0)),
        stream=stream,
        input_tokens=rng.choice((0, 12, 1_000)),
        output_tokens=rng.choice((0, 7)),
        cache_read_tokens=rng.choice((0, 0, 64)),
        cache_write_tokens=rng.choice((0, 0, 32)),
        reasoning_tokens=rng.choice((0, 5)),
        cost_usd=rng.choice((0.0, 1.5e-6, 0.25)) if priced else None,
        # Values on, under and over the bucket bounds, +Inf included.
        latency_ms=rng.choice((50.0, 0.001, 99.0, 700_000.0, 1_000.0)),
        ttft_ms=rng.choice((10.0, 3.0, 90_000.0)) if stream else None,
        team=rng.choice(("a", "b", None)),
        app=rng.choice(("x", None)),
        feature=None,
        session_id=None,
        cache_hit=False,
        routed=False,
        usage_source="response",
        error=None,
        cost_source="priced" if priced else "unpriced",
        saved_usd=rng.choice((None, 0.5)),
    )


def direct(events: list[tuple[CostEvent, float, float]]) -> CollectorRegistry:
    """The same families, observed one request at a time: how the proxy counted before the tallies."""
    r = CollectorRegistry()
    requests = Counter("modeltrack_requests", "", (*ATTR, "endpoint", "status_class", "stream"), registry=r)
    tokens = Counter("modeltrack_tokens", "", (*ATTR, "kind"), registry=r)
    cost = Counter("modeltrack_cost_usd", "", ATTR, registry=r)
    savings = Counter("modeltrack_cache_savings_usd", "", ATTR, registry=r)
    prompt = Counter("modeltrack_prompt_cache_savings_usd", "", ATTR, registry=r)
    unpriced = Counter("modeltrack_unpriced_requests", "", ("provider", "model"), registry=r)
    duration = Histogram(
        "modeltrack_request_duration_seconds", "", ("provider", "stream"), buckets=DURATION_BUCKETS, registry=r
    )
    ttft = Histogram("modeltrack_time_to_first_token_seconds", "", ("provider",), buckets=TTFT_BUCKETS, registry=r)
    overhead = Histogram("modeltrack_proxy_overhead_seconds", "", ("provider",), buckets=OVERHEAD_BUCKETS, registry=r)
    for ev, over, prompt_savings in events:
        labels = (ev.provider, ev.model or "unknown", ev.team or "", ev.app or "", ev.feature or "")
        stream = "true" if ev.stream else "false"
        status_class = f"{ev.status // 100}xx" if ev.status else "error"
        requests.labels(*labels, "chat", status_class, stream).inc()
        for kind in ("input", "output", "cache_read", "cache_write", "reasoning"):
            n = getattr(ev, f"{kind}_tokens")
            if n:
                tokens.labels(*labels, kind).inc(n)
        if ev.cost_usd:
            cost.labels(*labels).inc(ev.cost_usd)
        if ev.saved_usd:
            savings.labels(*labels).inc(ev.saved_usd)
        if prompt_savings:
            prompt.labels(*labels).inc(prompt_savings)
        if ev.cost_source == "unpriced":
            unpriced.labels(labels[0], labels[1]).inc()
        duration.labels(ev.provider, stream).observe(ev.latency_ms / 1000)
        if ev.ttft_ms is not None:
            ttft.labels(ev.provider).observe(ev.ttft_ms / 1000)
        overhead.labels(ev.provider).observe(over)
    return r


def samples(r: CollectorRegistry, names: set[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in r.collect():
        if family.name in names:
            for s in family.samples:
                if not s.name.endswith("_created"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_tallies_fold_into_the_same_exposition() -> None:
    rng = random.Random(7)
    events = [(event(rng), rng.choice((0.0, 30e-6, 0.1, 2.0)), rng.choice((0.0, 0.01))) for _ in range(3_000)]
    metrics = Metrics()
    half = len(events) // 2
    for ev, over, prompt_savings in events[:half]:
        metrics.observe(ev, over, "chat", prompt_savings)
    exposition(metrics)  # a scrape in between: the second half is folded onto the first
    for ev, over, prompt_savings in events[half:]:
        metrics.observe(ev, over, "chat", prompt_savings)
    reference = direct(events)
    names = {f.name for f in reference.collect()}
    want, got = samples(reference, names), samples(metrics.registry, names)
    assert len(want) > 200
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-9 * max(1.0, abs(v)), k
    # The exposition text carries them too (a scrape reads through the same fold).
    text = exposition(metrics).decode()
    assert 'modeltrack_request_duration_seconds_bucket{le="+Inf",provider="openai",stream="true"}' in text


def test_a_value_finds_the_bucket_bisect_finds() -> None:
    """``slot`` replaces ``bisect_left`` on the request path: the same bucket for every bound, a hair either side of
    it, zero, a negative (a clock step), +Inf and NaN."""
    for bounds in (DUR_BOUNDS, OVER_BOUNDS, TTFT_BOUNDS):
        finite = bounds[:-1]
        values = [0.0, -1.0, float("inf"), float("nan"), *finite]
        values += [math.nextafter(b, -math.inf) for b in finite] + [math.nextafter(b, math.inf) for b in finite]
        for x in values:
            assert slot(bounds, x) == bisect.bisect_left(bounds, x), (bounds, x)


def test_a_fold_from_another_thread_loses_nothing() -> None:
    """The OpenTelemetry metrics reader collects the registry on its own thread while the loop counts."""
    rng = random.Random(3)
    ev = event(rng)
    metrics = Metrics()
    n = 20_000
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            metrics.registry.collect()
            list(metrics.registry.collect())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(n):
            metrics.observe(ev, 1e-4, "chat")
    finally:
        stop.set()
        t.join()
    status_class = f"{ev.status // 100}xx" if ev.status else "error"
    labels = {
        "provider": ev.provider,
        "model": ev.model or "unknown",
        "team": ev.team or "",
        "app": ev.app or "",
        "feature": "",
        "endpoint": "chat",
        "status_class": status_class,
        "stream": "true" if ev.stream else "false",
    }
    assert metrics.registry.get_sample_value("modeltrack_requests_total", labels) == n
    count = metrics.registry.get_sample_value("modeltrack_proxy_overhead_seconds_count", {"provider": ev.provider})
    assert count == n


def test_by_org_two_orgs_teams_of_one_name_stay_apart() -> None:
    """Hosted multi-tenant mode: two orgs' teams named alike are two series, each with its own org's sums; the
    default (one org) exposes no ``org`` label at all."""
    rng = random.Random(11)
    events = []
    for i in range(400):
        ev = event(rng)
        ev.org, ev.team = ("org_a" if i % 3 else "org_b"), "ml"
        events.append(ev)
    metrics = Metrics(by_org=True)
    for ev in events:
        metrics.observe(ev, 1e-4, "chat")
    for org in ("org_a", "org_b"):
        mine = [e for e in events if e.org == org]
        requests = sum(
            s.value
            for f in metrics.registry.collect()
            if f.name == "modeltrack_requests"
            for s in f.samples
            if s.name == "modeltrack_requests_total" and s.labels["org"] == org and s.labels["team"] == "ml"
        )
        assert requests == len(mine) > 100
        cost = sum(
            s.value
            for f in metrics.registry.collect()
            if f.name == "modeltrack_cost_usd"
            for s in f.samples
            if s.name == "modeltrack_cost_usd_total" and s.labels["org"] == org
        )
        assert abs(cost - sum(e.cost_usd or 0 for e in mine)) < 1e-9
    # Past the cap, orgs fold into __other__ and are counted like any other label's: with a cap of one, the
    # first org keeps its name and the next two events (org_a) fold.
    capped = Metrics(label_cap=1, by_org=True)
    for ev in events[:3]:
        capped.observe(ev, 1e-4, "chat")
    text = exposition(capped).decode()
    assert [e.org for e in events[:3]] == ["org_b", "org_a", "org_a"]
    assert 'org="org_b"' in text and 'org="__other__"' in text and 'org="org_a"' not in text
    assert 'modeltrack_label_values_folded_total{label="org"} 2.0' in text
    single = Metrics()
    for ev in events[:3]:
        single.observe(ev, 1e-4, "chat")
    assert "org=" not in exposition(single).decode()
