"""What a block budget reserves and what a refusal says, on both stores (issue M, items 1 and 2): a model with
no price never reserves zero, and a refusal while requests are in flight is temporary, with a truthful
``Retry-After``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from modeltrack.pricing import Bounds, Pricing

from .test_spend_controls import MINI_COST, MINI_STREAM, call, mini_body, write_controls

UNPRICED = "router/auto-no-such-model"  # a model no price list has, answered by a priced one (gpt-4o-mini)


def test_the_dearest_bound_covers_every_priced_model_of_the_provider() -> None:
    pricing = Pricing.load()
    bounds = Bounds(pricing)
    now = time.time()
    dearest = bounds.dearest_bound("openai", 1000, 100, now)
    assert dearest is not None and dearest > 0
    for model in pricing.model_ids("openai"):
        bound = bounds.bound("openai", model, 1000, 100, now)
        assert bound is None or bound <= dearest + 1e-12, model
    # A provider with no price data of its own reserves at the dearest rates known.
    anywhere = bounds.dearest_bound("local", 1000, 100, now)
    assert anywhere is not None and anywhere >= dearest


async def _flood(url: str, n: int, model: str) -> list[tuple[int, Any, bytes]]:
    async with aiohttp.ClientSession() as s:
        return await asyncio.gather(*(call(s, url, mini_body(model=model)) for _ in range(n)))


@pytest.mark.parametrize("unpriced_usd", [None, 2.5 * MINI_COST])
async def test_a_model_with_no_price_cannot_spend_past_a_block_budget(
    store_url: str, replay: Any, make_proxy: Any, tmp_path: Path, unpriced_usd: float | None
) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    upstream.delay = 0.002  # the 24 requests are in flight together
    limit = 4 * MINI_COST
    doc: dict[str, Any] = {"budgets": [{"name": "auto", "period": "daily", "limit_usd": limit}]}
    if unpriced_usd is not None:
        doc["reserve"] = {"unpriced_usd": unpriced_usd}
    proxy = await make_proxy(upstream_url, controls_file=write_controls(tmp_path, doc), store=store_url)
    answers = await _flood(proxy.url + "/v1/chat/completions", 24, UNPRICED)
    statuses = [status for status, _, _ in answers]
    events = [e for e in await proxy.events() if e.status == 200]
    spent = sum(e.cost_usd or 0 for e in events)
    assert all(e.model and e.model.startswith("gpt-4o-mini") and e.cost_usd for e in events)  # priced answers
    assert spent <= limit + 1e-12, f"{len(events)} admitted, ${spent} of ${limit}"
    assert statuses.count(429) >= 24 - 4
    if unpriced_usd is None:
        # The dearest OpenAI model's bound for this request is far above the limit: nothing is admitted.
        assert statuses.count(200) == 0
        err = orjson.loads(answers[0][2])["error"]
        assert "Budget 'auto'" in err["message"]
    else:
        assert statuses.count(200) >= 1  # the configured worst case lets some through, never past the limit


async def test_a_refusal_while_requests_are_in_flight_is_temporary(
    replay: Any, make_proxy: Any, tmp_path: Path
) -> None:
    upstream, upstream_url = replay
    upstream.current = MINI_STREAM
    upstream.delay = 0.02  # each stream takes about a second: the first requests hold the budget while in flight
    reserve = 1.5 * MINI_COST
    doc = {
        "refresh_seconds": 0.5,
        "reserve": {"unpriced_usd": reserve},
        "budgets": [{"name": "room", "period": "monthly", "limit_usd": 10 * MINI_COST}],
    }
    proxy = await make_proxy(upstream_url, controls_file=write_controls(tmp_path, doc))
    url = proxy.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        first = [asyncio.create_task(call(s, url, mini_body(model=UNPRICED))) for _ in range(6)]
        await asyncio.sleep(0.3)
        status, headers, body = await call(s, url, mini_body(model=UNPRICED))
        assert status == 429, status
        err = orjson.loads(body)["error"]
        assert err["type"] == "budget_busy", err  # not budget_exceeded: the budget is not spent
        assert "in flight" in err["message"]
        retry = int(headers["Retry-After"])
        assert 1 <= retry <= 5, retry  # seconds until a reservation can free up, not the end of the month
        await asyncio.gather(*first)
        deadline = time.monotonic() + retry + 3
        while True:
            status, _, _ = await call(s, url, mini_body(model=UNPRICED))
            if status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert status == 200  # admitted once the requests in flight ended, as Retry-After said


async def test_the_lease_is_reserved_from_without_awaiting() -> None:
    """``admit_now`` reserves from this process's lease with no ledger call, and declines (reserving nothing)
    whenever :meth:`Budgets.admit` has work to do: a state never read, a lease that cannot cover the request, a
    spent budget. Used as the proxy uses it (``admit_now(...) or await admit(...)``), a budget admits exactly
    what awaiting ``admit`` alone admits, and asks the ledger once per lease."""
    from dataclasses import replace

    from modeltrack.controls.budgets import Budgets
    from modeltrack.controls.leases import LEASE_FRACTION
    from modeltrack.controls.ledger import MemoryLedger
    from modeltrack.controls.match import Scope
    from modeltrack.controls.spec import Budget
    from modeltrack.metrics import Metrics

    from .test_pipeline import make_event

    class Counting(MemoryLedger):
        takes = 0

        async def take(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
            Counting.takes += 1
            return await super().take(*args, **kwargs)

    limit_nano, need = 1_000_000, 1_000
    budget = Budget(name="b", scope=Scope(), period="daily", timezone="UTC", limit_usd=limit_nano / 1e9)
    outcomes: list[list[bool]] = []
    for fast in (False, True):
        Counting.takes = 0
        b = Budgets([budget], Counting(), None, Metrics(), 60.0)
        matched = b.matching({})
        assert b.admit_now(matched, need) is None  # never read from the store: the awaited path reads it
        admitted = []
        for _ in range(2_500):
            before = b.state(budget).used
            adm = b.admit_now(matched, need) if fast else None
            if adm is None:
                assert b.state(budget).used == before  # a declined fast path reserved nothing
                adm = await b.admit(matched, need)
            admitted.append(adm.refusal is None)
            if adm.refusal is None:
                b.settle(adm, replace(make_event(0), cost_usd=need / 2 / 1e9, status=200))
        await b.background.drain()
        outcomes.append(admitted)
        lease = round(limit_nano * LEASE_FRACTION)
        assert Counting.takes <= limit_nano // lease + 3, Counting.takes  # one ledger call per lease
    assert outcomes[0] == outcomes[1]
    assert 1_990 <= outcomes[1].count(True) <= 2_000  # half of each reservation settles: up to the limit, no more


async def test_an_idle_lease_goes_back_to_the_ledger() -> None:
    """A process keeps the unreserved part of its lease while it admits requests, and returns it to the ledger at
    the first tick a second after its last admission: what it holds then is only what requests in flight
    reserved. A settle is not a use (the lease is idle once admissions stop, whatever settles after)."""
    from datetime import UTC, datetime, timedelta

    from modeltrack.controls.budgets import Budgets
    from modeltrack.controls.leases import LEASE_IDLE_SECONDS
    from modeltrack.controls.ledger import MemoryLedger
    from modeltrack.controls.match import Scope
    from modeltrack.controls.spec import Budget
    from modeltrack.metrics import Metrics

    t = [datetime(2026, 12, 6, 12, tzinfo=UTC)]
    budget = Budget(name="b", scope=Scope(), period="daily", timezone="UTC", limit_usd=1.0)
    ledger = MemoryLedger()
    b = Budgets([budget], ledger, None, Metrics(), 60.0, clock=lambda: t[0])
    matched = b.matching({})
    st = b.state(budget)
    first = await b.admit(matched, 1_000)  # reads the (empty) store, takes a lease from the ledger
    assert first.refusal is None and st.granted > 1_000 and await ledger.allocated(st.key) == st.granted
    t[0] += timedelta(seconds=0.5)
    second = b.admit_now(matched, 1_000, now=0.0)  # (``now`` is the budgets' clock's when one is given)
    assert second is not None and second.refusal is None
    b.settle_nano(first, 400)
    t[0] += timedelta(seconds=LEASE_IDLE_SECONDS)  # a second after the first admission, half after the second
    await b.tick()
    assert await ledger.allocated(st.key) == st.granted > 1_400  # kept: admitted half a second ago
    t[0] += timedelta(seconds=0.6)
    b.settle_nano(second, 300)  # a settle after the last admission: not a use
    await b.tick()
    assert st.granted == st.used == 700 and await ledger.allocated(st.key) == 700  # the rest went back
    await b.close()


async def test_deciding_without_awaiting_reaches_the_awaited_decision(tmp_path: Path) -> None:
    """The proxy asks ``Controls.decide_now`` first and awaits ``longway.decide`` only when it declines. Over the
    same requests (a block budget that runs out, with a warning threshold), both ways admit and refuse the same
    requests, reserve the same amounts and send the same headers; and ``decide_now`` declines, reserving
    nothing, whenever the long way has more to do: a routing rule, a cache rule or a cache header, an unpriced model,
    a budget state never read."""
    from dataclasses import replace

    from modeltrack.controls.engine import Controls
    from modeltrack.controls.longway import decide
    from modeltrack.controls.parse import parse
    from modeltrack.metrics import Metrics
    from modeltrack.pricing import Pricing
    from modeltrack.sinks import open_sink

    from .test_pipeline import make_event

    body = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
    parsed = orjson.loads(body)
    doc = {
        "budgets": [
            {"name": "t", "match": {"team": "t"}, "period": "daily", "limit_usd": 0.02, "warn_at": [50]},
        ],
        "routes": [{"name": "r", "match": {"team": "routed"}, "action": "downgrade", "to": "gpt-4o-mini"}],
        "cache": {"rules": [{"match": {"team": "cached"}}]},
    }
    pricing = Pricing.load()
    seen: list[list[tuple[bool, int, bytes]]] = []

    async def slow() -> Any:
        return await decide(
            controls,
            plan,
            provider="openai",
            method="POST",
            path="/v1/chat/completions",
            query="",
            headers=[],
            client_key=b"",
            body=body,
            parsed=parsed,
            model="gpt-4o-mini",
            attrs={"team": "t"},
            wall=time.time(),
        )

    for fast in (False, True):
        store = f"sqlite:///{tmp_path}/{fast}.db"
        sink = open_sink(store)
        await sink.open()
        controls = Controls(parse(doc), store_url=store, sink=sink, pricing=pricing, metrics=Metrics())
        try:
            plan = controls.plan("openai", "gpt-4o-mini", {"team": "t"})
            assert plan is not None
            args = ("openai", "/v1/chat/completions", body, parsed, "gpt-4o-mini", {"team": "t"}, time.time())
            assert controls.decide_now(plan, *args) is None  # the budget's state was never read
            await controls.start()
            taken = await slow()  # takes this process's first lease from the ledger
            assert taken.first is not None
            controls.budgets.release(taken)
            first = controls.decide_now(plan, *args)  # what each decline below is compared with
            assert first is not None and first.first is not None
            controls.budgets.release(first)
            for attrs, model in (
                ({"team": "routed"}, "gpt-4o-mini"),
                ({"team": "cached"}, "gpt-4o-mini"),
                ({"team": "t", "cache": "on"}, "gpt-4o-mini"),
                ({"team": "t"}, "no-such-model-anywhere"),
            ):
                p = controls.plan("openai", model, attrs)
                assert p is not None
                st = controls.budgets.state(controls.budgets.budgets[0])
                used = st.used
                assert controls.decide_now(p, "openai", "/v1/x", body, parsed, model, attrs, time.time()) is None
                assert st.used == used
            outcomes = []
            for _ in range(120):
                d = controls.decide_now(plan, *args) if fast else None
                if d is None:
                    d = await slow()
                held = d.held
                outcomes.append((d.refusal is None, held, d.head))
                if d.refusal is None:
                    ev = replace(make_event(0), team="t", cost_usd=0.0003, status=200)
                    controls.on_recorded(ev)
                    controls.finished(d, ev, None)
            seen.append(outcomes)
        finally:
            await controls.close()
            await sink.close()
    assert seen[0] == seen[1]
    admitted = [ok for ok, _, _ in seen[1]]
    assert 0 < admitted.count(True) < len(admitted)  # the budget ran out within the run: refusals compared too
    assert any(head for _, _, head in seen[1])  # the warning header was sent, the same way


def test_a_refusal_says_what_is_spent_what_is_held_and_when_to_retry() -> None:
    """The two refusals a block budget gives, in words a caller can act on: ``budget_exceeded`` names the spend,
    the limit and the reset, and its Retry-After is the seconds until the period resets; ``budget_busy`` names what
    requests in flight hold, and its Retry-After is the wait it was given, rounded up."""
    from datetime import UTC, datetime

    from modeltrack.controls.budgetstate import BudgetState, busy, exhausted
    from modeltrack.controls.spec import Budget, Scope
    from modeltrack.controls.spend import Period

    budget = Budget(name="team-a", scope=Scope(), period="daily", timezone="UTC", limit_usd=2.0)
    now = datetime(2026, 3, 4, 18, 0, tzinfo=UTC)
    st = BudgetState(budget, Period.of(budget, now))
    st.store_spent = 1_500_000_000  # $1.50 of $2.00

    spent = exhausted(st, now)
    assert (spent.status, spent.kind, spent.budget) == (429, "budget_exceeded", "team-a")
    assert spent.message == (
        "Budget 'team-a' is exhausted: $1.500000 spent of $2.00 this day; it resets at 2026-03-05T00:00:00Z."
    )
    assert spent.retry_after == 6 * 3600
    too_big = exhausted(st, now, need=700_000_000)
    assert "cannot cover this request (up to $0.700000; $0.500000 is left)" in too_big.message

    st.room = 100_000_000  # the ledger has $0.10 left: $0.40 is held by requests in flight
    held = busy(st, 200_000_000, 1.2)
    assert (held.kind, held.retry_after) == ("budget_busy", 2)
    assert held.message == (
        "Budget 'team-a' cannot cover this request right now (up to $0.200000): $1.500000 of $2.00 is spent this "
        "day and $0.400000 is held by requests in flight; retry in 2 s."
    )
