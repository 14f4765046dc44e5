"""Spend controls: budgets, routing and the response cache, called by the proxy at two defined points.

* :meth:`Controls.decide_now`, else :func:`.longway.decide`, once the request's body is read and before anything
  is sent upstream: client-token attribution is already applied; a routing rule may refuse or downgrade the
  request; the response cache may answer it; the budgets admit it (reserving its worst-case cost) or refuse it.
* :meth:`Controls.finished`, when its event is recorded: the reservation is settled to the real cost, and a
  complete 2xx response captured for the cache is stored.

Everything is driven by the controls file (:mod:`.spec`), reloaded when it changes (mtime, checked every second)
or on SIGHUP. A new file applies to requests that start after it is loaded; requests in flight finish under the
rules they started with. An invalid new file keeps the old rules and logs why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from ..events import CostEvent
from ..metrics import Metrics
from ..pricing.bounds import Bounds
from ..rounding import nearest
from ..spent import Spent
from .alerts import Notifier, send_due_reports
from .budgets import Budgets
from .cache import Backend, Entry, MemoryCache, entry_meta, open_backend
from .decision import Decision, Plan, header_value
from .estimate import bound_tokens
from .ledger import open_ledger
from .parse import load
from .spec import Budget, ControlsError, ControlsSpec
from .tasks import Background

if TYPE_CHECKING:
    from ..pricing import Pricing
    from ..query import Reader

__all__ = ["Controls"]

log: Final = logging.getLogger("modeltrack.controls")

RELOAD_CHECK_SECONDS: Final = 1.0
REPORT_CHECK_SECONDS: Final = 60.0


class Controls:
    def __init__(
        self,
        spec: ControlsSpec,
        *,
        store_url: str,
        sink: Any,
        pricing: Pricing,
        metrics: Metrics,
        egress: Mapping[str, str] | None = None,
        path: str | None = None,
        multi_tenant: bool = False,
    ) -> None:
        self.multi_tenant = multi_tenant
        if multi_tenant:
            spec.check_tenancy()
        self.spec = spec
        self.file_spec = spec  # the controls file's rules; ``spec`` adds the store's budgets (set_store_budgets)
        self.store_budgets: tuple[Budget, ...] = ()
        self.path = path
        self.store_url = store_url
        self.pricing = pricing
        self.bounds = Bounds(pricing)
        self.metrics = metrics
        self.ledger = open_ledger(store_url, sink)
        self.notifier = Notifier(spec.webhooks, sink.claim, metrics, egress)
        self.reader: Reader | None = None
        self._sink = sink
        self.budgets = Budgets(
            spec.budgets, self.ledger, None, metrics, spec.refresh_seconds, on_alert=self.notifier.budget_alert
        )
        self.cache: Backend | None = self._open_cache(spec)
        self._mtime = _mtime(path)
        self._tasks: list[asyncio.Task[None]] = []
        self._plans: dict[tuple[str | None, ...], Plan] = {}
        self._last_plan_key: tuple[str | None, ...] | None = None  # the last request's combination, and its plan
        self._last_plan: Plan | None = None
        self.background = Background()

    @classmethod
    def from_file(cls, path: str, **kwargs: Any) -> Controls:
        return cls(load(path), path=path, **kwargs)

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """After the store is open: a reader for spend, a first read of every budget, the background loops."""
        self.reader = self._open_reader()
        self.budgets.reader = self.reader
        await self.budgets.tick()
        self.budgets.start()
        self._tasks.append(asyncio.create_task(self._watch(), name="modeltrack-controls-reload"))
        if self.spec.reports:
            self._tasks.append(asyncio.create_task(self._reports(), name="modeltrack-reports"))

    def _open_reader(self) -> Reader | None:
        from ..query import StoreMissing, open_reader

        if self.store_url.startswith("firestore://"):
            from ..query.firestore import FirestoreReader

            return FirestoreReader(self._sink)  # the sink's client: one connection pool per process
        try:
            return open_reader(self.store_url)
        except StoreMissing:
            return None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        await self.budgets.close()
        await self.notifier.close()
        await self.background.drain()
        if self.cache is not None:
            await self.cache.close()
        await self.ledger.close()
        if self.reader is not None and not self.store_url.startswith("firestore://"):
            await self.reader.close()

    # -- reload -----------------------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Load the file again; keep the old rules if it is invalid. True when new rules are in force."""
        if self.path is None:
            return False
        self._mtime = _mtime(self.path)
        try:
            spec = load(self.path)
            if self.multi_tenant:
                spec.check_tenancy()
        except ControlsError as exc:
            self.metrics.controls_reloads.labels("invalid").inc()
            log.error("controls file changed but is invalid; the previous rules stay in force: %s", exc)
            return False
        self.apply(spec)
        self.metrics.controls_reloads.labels("ok").inc()
        log.info("controls reloaded: %s", spec.summary())
        return True

    def set_store_budgets(self, budgets: tuple[Budget, ...]) -> None:
        """Budgets managed in the store (admin API, CLI), in force beside the file's from the next request;
        a budget whose scope and period did not change keeps its spend and lease (Budgets.replace)."""
        if budgets != self.store_budgets:
            self.store_budgets = budgets
            self.apply(self.file_spec)
            log.info("budgets from the store: %d in force", len(budgets))

    def apply(self, spec: ControlsSpec) -> None:
        self.file_spec = spec
        if self.store_budgets:
            spec = replace(spec, budgets=spec.budgets + self.store_budgets)
        old = self.spec
        self.budgets.replace(spec.budgets, spec.refresh_seconds)
        self.notifier.webhooks = dict(spec.webhooks)
        if (spec.cache is None) != (old.cache is None) or (
            spec.cache is not None and old.cache is not None and spec.cache.backend != old.cache.backend
        ):
            previous, self.cache = self.cache, self._open_cache(spec)
            if previous is not None:
                self.background.spawn(previous.close())
        elif spec.cache is not None and isinstance(self.cache, MemoryCache):
            self.cache.max_bytes = spec.cache.max_bytes  # applies from the next store
        self.spec = spec

    def _open_cache(self, spec: ControlsSpec) -> Backend | None:
        if spec.cache is None:
            return None
        return open_backend(spec.cache.backend, spec.cache.max_bytes, self.metrics.response_cache_bytes)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_CHECK_SECONDS)
            if self.path is not None and _mtime(self.path) != self._mtime:
                self.reload()

    async def _reports(self) -> None:
        while True:
            if self.reader is not None and self.spec.reports:
                with contextlib.suppress(Exception):
                    await send_due_reports(self.spec.reports, self.reader, self.notifier)
            await asyncio.sleep(REPORT_CHECK_SECONDS)

    # -- the request path -------------------------------------------------------------------------------------
    def plan(self, provider: str, model: str | None, attrs: dict[str, Any]) -> Plan | None:
        """Which rules a request's attribution, provider and model fall under, or None when none can apply: the
        proxy then treats it as if no controls were loaded. Memoised per combination (bounded, and rebuilt after
        a reload), so a deployment whose rules match few requests pays one dictionary lookup for the rest. (A
        ``dict``, not a ``Mapping``: compiled, its reads are C calls, not method calls.)"""
        key = (
            provider,
            model,
            attrs.get("team"),
            attrs.get("app"),
            attrs.get("feature"),
            attrs.get("user"),
            attrs.get("org"),
            attrs.get("key_id"),
        )
        spec = self.spec
        last_key = self._last_plan_key
        p = self._last_plan
        # The last request's combination (a busy key): compared, mostly identical strings, where hashing the
        # 8-tuple and looking it up costs ~900 CPU instructions (bench/README.md, twenty-fourth session).
        if p is None or key != last_key:
            p = self._plans.get(key)
        if p is None or p.spec is not spec:
            if len(self._plans) >= 4096 or (p is not None and p.spec is not spec):
                self._plans.clear()
            names = ("provider", "model", "team", "app", "feature", "user", "org", "key_id")
            values = dict(zip(names, key, strict=True))
            ttl = None
            if spec.cache is not None:
                ttl = next(
                    (r.ttl_seconds or spec.cache.ttl_seconds for r in spec.cache.rules if r.scope.matches(values)), None
                )
            routes = tuple(r for r in spec.routes if r.scope.matches(values))
            budgets = self.budgets.matching(values)
            empty = not routes and not budgets and ttl is None
            blocks = any(b.action == "block" for b in budgets)
            p = self._plans[key] = Plan(spec, routes, budgets, ttl, empty, blocks)
        self._last_plan_key = key  # (two fields, not a pair: no tuple to build and free per request)
        self._last_plan = p
        if p.empty and not (spec.cache is not None and attrs.get("cache")):
            return None
        return p

    def decide_now(
        self,
        p: Plan,
        provider: str,
        path: str,
        body: bytes,
        parsed: Any,
        model: str | None,
        attrs: dict[str, Any],
        wall: float,
        bounds: tuple[int, int] | None = None,
    ) -> Decision | None:
        """The decision without awaiting, for the usual controlled request: no routing rule applies, the response
        cache is not asked, the model has a price, and the budgets admit it from this process's lease
        (:meth:`Budgets.admit_now`). None otherwise, with nothing reserved: the caller then awaits
        :func:`.longway.decide`, which reaches the same outcome the long way
        (tests/test_budget_bounds.py::test_deciding_without_awaiting_reaches_the_awaited_decision). ``bounds`` is
        the request's token bound when the caller already has it (a TPM limit), computed with this spec's
        ``reserve``."""
        if p.routes or p.cache_ttl is not None or attrs.get("cache"):
            return None
        reserve = 0
        if p.blocks:
            inp, out = bounds if bounds is not None else bound_tokens(len(body), parsed, p.spec.reserve)
            bound = self.bounds.bound(provider, model, inp, out, wall)
            if bound is None:
                return None  # unpriced: the long way reserves the spec's or the provider's dearest bound
            reserve = nearest(bound * 1e9) + 1
        d = Decision(path, body)
        if self.budgets.admit_now(p.budgets, reserve, wall, d) is None:
            return None
        if d.headers:
            d.head = b"".join(b"x-modeltrack-budget: %s\r\n" % header_value(h) for h in d.headers)
        return d

    def budget_percent(self, budget: str) -> float:
        """How much of a budget is spent, in percent (0 for a name no budget has): a routing rule's ``when``."""
        for b in self.budgets.budgets:
            if b.name == budget:
                return self.budgets.state(b).percent()
        return 0.0

    def finished(self, d: Decision, ev: CostEvent | None, capture: Entry | None, spent: Spent | None = None) -> None:
        """The request's event is recorded: settle its reservation, store a captured response. ``spent``: the
        recorder's figures for ``ev``, when it worked them out (else they are read off the event)."""
        if d.first is not None:  # (the decision is the request's admission: what it reserved)
            if ev is None:
                self.budgets.release(d)
            elif spent is not None:
                self.budgets.settle_nano(d, spent.settle_nano)
            else:
                self.budgets.settle(d, ev)
        if capture is not None and d.cache_key and self.cache is not None and ev is not None:
            if 200 <= ev.status < 300 and ev.error is None and ev.usage_source not in ("partial", "missing"):
                capture.meta = entry_meta(ev)
                self.background.spawn(self._put(d.cache_key, capture, d.cache_ttl))
            else:
                self.metrics.response_cache.labels("not_stored").inc()

    async def _put(self, key: str, entry: Entry, ttl: float) -> None:
        assert self.cache is not None
        try:
            await self.cache.put(key, entry, ttl)
            self.metrics.response_cache.labels("stored").inc()
        except Exception as exc:  # noqa: BLE001
            self.metrics.response_cache.labels("error").inc()
            log.warning("response cache: could not store an entry (%s)", type(exc).__name__)

    def on_recorded(self, ev: CostEvent) -> None:
        self.budgets.on_recorded(ev)

    def on_spent(self, spent: Spent) -> None:
        """:meth:`on_recorded` with the recorder's figures (modeltrack.spent)."""
        self.budgets.on_spent(spent)

    def on_stored(self, events: list[CostEvent]) -> None:
        self.budgets.on_stored(events)

    def token_attribution(self) -> dict[bytes, dict[str, str]]:
        return {t.digest: t.attribution() for t in self.spec.tokens}

    async def settled(self) -> None:
        """Wait for background stores and alerts (tests, shutdown)."""
        await self.background.drain()
        await self.budgets.background.drain()
        await self.notifier.drain()


def _mtime(path: str | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return None
