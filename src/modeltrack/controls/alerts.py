"""Webhook delivery: budget threshold alerts and scheduled spend reports, in a generic JSON shape or Slack's
incoming-webhook shape.

Once per period, across every process and replica: before posting, the sender *claims* the alert or report in
the store (:meth:`modeltrack.sinks.Sink.claim`); only the one claim that succeeds posts. A post is retried on
network errors, 429 and 5xx (``retries`` times, with backoff); a claim whose post finally failed is logged and
counted (``modeltrack_webhook_deliveries_total{result="failed"}``), not posted again.

Egress rule: the URL comes only from the controls file, never from a request; redirects are not followed; the
standard ``HTTPS_PROXY``/``NO_PROXY`` variables apply as they do for upstreams. The payload holds names and
figures only: budget, scope, spend, limit, dates. Never a key, a prompt or a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..http.egress import route_for
from ..metrics import Metrics
from ..query import Filters, Reader
from ..query.times import bucket_start, stamp, zone
from .spec import Report, Webhook
from .tasks import Background

if TYPE_CHECKING:
    from .budgetstate import BudgetState

log = logging.getLogger("modeltrack.controls")

Claim = Callable[[str, str], Awaitable[bool]]


def budget_payload(st: BudgetState, threshold: float) -> tuple[dict[str, Any], str]:
    b = st.budget
    spent = st.spent / 1e9
    body = {
        "type": "budget_threshold",
        "budget": b.name,
        "scope": b.scope.describe(),
        "threshold_percent": threshold,
        "percent": round(100 * spent / b.limit_usd, 2),
        "spent_usd": round(spent, 6),
        "limit_usd": b.limit_usd,
        "action": b.action,
        "period": b.period,
        "period_start": stamp(st.period.start),
        "resets": stamp(st.period.end),
    }
    then = "requests are now refused" if b.action == "block" and threshold >= 100 else "requests go on"
    text = (
        f":warning: ModelTrack budget *{b.name}* ({b.scope.describe()}) passed {threshold:g}%: "
        f"${spent:,.2f} of ${b.limit_usd:,.2f} this {b.period.removesuffix('ly').replace('dai', 'day')}; "
        f"{then}. Resets {stamp(st.period.end)[:16]}Z."
    )
    return body, text


class Notifier:
    def __init__(
        self,
        webhooks: Mapping[str, Webhook],
        claim: Claim,
        metrics: Metrics,
        egress: Mapping[str, str] | None = None,
    ) -> None:
        self.webhooks = dict(webhooks)
        self.claim = claim
        self.metrics = metrics
        self.egress = dict(egress or {})
        self._session: Any = None
        self.background = Background()

    def budget_alert(self, st: BudgetState, threshold: float) -> None:
        name = st.budget.webhook
        if name is None or name not in self.webhooks:
            return
        key = f"budget-alert|{st.key}|{threshold:g}"
        body, text = budget_payload(st, threshold)
        self.background.spawn(self._claimed_post(key, self.webhooks[name], body, text))

    async def _claimed_post(self, key: str, hook: Webhook, body: dict[str, Any], text: str) -> bool:
        try:
            if not await self.claim(key, stamp(datetime.now(UTC))):
                return False  # another process or replica has it
        except Exception as exc:  # noqa: BLE001 - no claim, no post: a duplicate is worse than a late alert
            log.warning("webhook %s: could not claim %s in the store (%s)", hook.name, key, type(exc).__name__)
            self.metrics.webhooks.labels(hook.name, "unclaimed").inc()
            return False
        return await self.post(hook, body, text)

    async def post(self, hook: Webhook, body: dict[str, Any], text: str) -> bool:
        import aiohttp

        payload = {"text": text} if hook.format == "slack" else {**body, "text": text}
        u = urlsplit(hook.url)
        route = route_for(u.scheme, u.hostname or "", u.port or (443 if u.scheme == "https" else 80), self.egress)
        proxy = f"http://{route.host}:{route.port}" if route is not None else None
        proxy_headers = {"Proxy-Authorization": route.authorization.decode()} if route and route.authorization else None
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        delay = 0.5
        for attempt in range(hook.retries + 1):
            try:
                async with self._session.post(
                    hook.url,
                    json=payload,
                    timeout=aiohttp.ClientTimeout(total=hook.timeout_seconds),
                    allow_redirects=False,
                    proxy=proxy,
                    proxy_headers=proxy_headers,
                ) as r:
                    await r.read()
                    if 200 <= r.status < 300:
                        self.metrics.webhooks.labels(hook.name, "ok").inc()
                        return True
                    retry = r.status == 429 or r.status >= 500
                    why = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                retry, why = True, type(exc).__name__
            if not retry or attempt == hook.retries:
                break
            self.metrics.webhooks.labels(hook.name, "retried").inc()
            await asyncio.sleep(delay)
            delay *= 2
        log.warning("webhook %s: delivery failed (%s)", hook.name, why)
        self.metrics.webhooks.labels(hook.name, "failed").inc()
        return False

    async def drain(self) -> None:
        await self.background.drain()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.drain(), 10)
        if self._session is not None:
            await self._session.close()
            self._session = None


def last_complete_period(report: Report, now: datetime) -> tuple[datetime, datetime]:
    tz = zone(report.timezone)
    unit = "week" if report.every == "weekly" else "month"
    current = bucket_start(now, unit, tz)
    # The previous period: the bucket containing the instant just before the current one starts.
    prev = bucket_start(current.astimezone(UTC) - timedelta(seconds=1), unit, tz)
    return prev.astimezone(UTC), current.astimezone(UTC)


async def report_rows(reader: Reader, report: Report, start: datetime, end: datetime) -> dict[str, Any]:
    rows = await reader.aggregate(start, end, Filters(), (report.by,))
    total = sum(int(r["cost_nano_usd"]) for r in rows)
    requests = sum(int(r["requests"]) for r in rows)
    rows.sort(key=lambda r: -int(r["cost_nano_usd"]))
    out = [
        {
            report.by: r[report.by] if r[report.by] not in ("", None) else "(none)",
            "cost_usd": round(int(r["cost_nano_usd"]) / 1e9, 6),
            "requests": int(r["requests"]),
            "share_percent": round(100 * int(r["cost_nano_usd"]) / total, 1) if total else 0.0,
        }
        for r in rows[: report.top]
    ]
    return {
        "type": "spend_report",
        "report": report.name,
        "by": report.by,
        "period_start": stamp(start),
        "period_end": stamp(end),
        "total_usd": round(total / 1e9, 6),
        "requests": requests,
        "rows": out,
    }


def report_text(body: dict[str, Any]) -> str:
    lines = [
        f"*ModelTrack {body['report']}*: ${body['total_usd']:,.2f} over {body['requests']:,} requests, "
        f"{body['period_start'][:10]} to {body['period_end'][:10]} (by {body['by']})"
    ]
    for r in body["rows"]:
        lines.append(f"• {r[body['by']]}: ${r['cost_usd']:,.2f} ({r['share_percent']}%), {r['requests']:,} requests")
    return "\n".join(lines)


async def send_due_reports(
    reports: tuple[Report, ...], reader: Reader, notifier: Notifier, now: datetime | None = None
) -> list[str]:
    """Post each report for its last complete period, once across every replica (a claim per period)."""
    now = now or datetime.now(UTC)
    sent = []
    for report in reports:
        start, end = last_complete_period(report, now)
        key = f"report|{report.name}|{stamp(start)}"
        hook = notifier.webhooks[report.webhook]
        try:
            if not await notifier.claim(key, stamp(now)):
                continue
            body = await report_rows(reader, report, start, end)
        except Exception as exc:  # noqa: BLE001 - try again at the next tick (the claim may be taken: logged)
            log.warning("report %s: could not be prepared (%s)", report.name, type(exc).__name__)
            continue
        if await notifier.post(hook, body, report_text(body)):
            sent.append(report.name)
    return sent
