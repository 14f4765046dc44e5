"""Generates dashboards/modeltrack.json (run: python deploy/grafana/build_dashboard.py). Every expression here is
evaluated against a real Prometheus by tests/test_monitoring.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DS = {"type": "prometheus", "uid": "modeltrack-prometheus"}
# ``org`` is a label in hosted multi-tenant mode only; elsewhere its "All" (``.*``) also matches series without it.
A = 'org=~"$org", team=~"$team", app=~"$app", feature=~"$feature", model=~"$model"'
F = "{" + A + "}"
_id = 0


def panel(
    title: str,
    exprs: list[tuple[str, str]],
    x: int,
    y: int,
    w: int = 12,
    h: int = 8,
    kind: str = "timeseries",
    unit: str = "short",
) -> dict[str, Any]:
    global _id
    _id += 1
    return {
        "id": _id,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right"}} if kind == "timeseries" else {},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": e, "legendFormat": lf} for i, (e, lf) in enumerate(exprs)
        ],
    }


def quantiles(title: str, metric: str, x: int) -> dict[str, Any]:
    """p50/p95/p99 of a histogram, in seconds, on the latency row."""
    exprs = [
        (f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[$__rate_interval])))", f"p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]
    return panel(title, exprs, x, 28, 8, unit="s")


def var(name: str, label: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": f"label_values(modeltrack_requests_total, {name})", "refId": name},
        "definition": f"label_values(modeltrack_requests_total, {name})",
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def build() -> dict[str, Any]:
    r = "$__rate_interval"
    panels = [
        panel(
            "Spend (selected range)",
            [(f"sum(increase(modeltrack_cost_usd_total{F}[$__range]))", "USD")],
            0,
            0,
            6,
            4,
            "stat",
            "currencyUSD",
        ),
        panel(
            "Savings (selected range)",
            [
                (f"sum(increase(modeltrack_cache_savings_usd_total{F}[$__range]))", "response cache"),
                (f"sum(increase(modeltrack_prompt_cache_savings_usd_total{F}[$__range]))", "prompt cache"),
            ],
            6,
            0,
            6,
            4,
            "stat",
            "currencyUSD",
        ),
        panel(
            "Requests (selected range)",
            [(f"sum(increase(modeltrack_requests_total{F}[$__range]))", "requests")],
            12,
            0,
            6,
            4,
            "stat",
        ),
        panel(
            "Unpriced requests (selected range)",
            [("sum(increase(modeltrack_unpriced_requests_total[$__range]))", "requests")],
            18,
            0,
            6,
            4,
            "stat",
        ),
        panel(
            "Spend by team (USD/hour)",
            [(f"sum by (team) (rate(modeltrack_cost_usd_total{F}[{r}])) * 3600", "{{team}}")],
            0,
            4,
            unit="currencyUSD",
        ),
        panel(
            "Spend by app (USD/hour)",
            [(f"sum by (app) (rate(modeltrack_cost_usd_total{F}[{r}])) * 3600", "{{app}}")],
            12,
            4,
            unit="currencyUSD",
        ),
        panel(
            "Spend by feature (USD/hour)",
            [(f"sum by (feature) (rate(modeltrack_cost_usd_total{F}[{r}])) * 3600", "{{feature}}")],
            0,
            12,
            unit="currencyUSD",
        ),
        panel(
            "Spend by model (USD/hour)",
            [(f"sum by (provider, model) (rate(modeltrack_cost_usd_total{F}[{r}])) * 3600", "{{provider}}/{{model}}")],
            12,
            12,
            unit="currencyUSD",
        ),
        panel(
            "Tokens by kind (per second)",
            [(f"sum by (kind) (rate(modeltrack_tokens_total{F}[{r}]))", "{{kind}}")],
            0,
            20,
        ),
        panel(
            "Prompt-cache hit ratio (input tokens read from cache)",
            [
                (
                    f'sum(rate(modeltrack_tokens_total{{kind="cache_read", {A}}}[{r}])) / '
                    f'sum(rate(modeltrack_tokens_total{{kind=~"input|cache_read|cache_write", {A}}}[{r}]))',
                    "hit ratio",
                )
            ],
            12,
            20,
            unit="percentunit",
        ),
        quantiles("Request duration", "modeltrack_request_duration_seconds", 0),
        quantiles("Time to first token", "modeltrack_time_to_first_token_seconds", 8),
        quantiles("Proxy overhead (excludes upstream and client wait)", "modeltrack_proxy_overhead_seconds", 16),
        panel(
            "Requests by status class",
            [
                (
                    f"sum by (provider, status_class) (rate(modeltrack_requests_total{F}[{r}]))",
                    "{{provider}} {{status_class}}",
                )
            ],
            0,
            36,
        ),
        panel(
            "Upstream errors by type",
            [(f"sum by (provider, type) (rate(modeltrack_upstream_errors_total[{r}]))", "{{provider}} {{type}}")],
            12,
            36,
        ),
        panel(
            "Pipeline: queue depth",
            [("sum(modeltrack_queue_depth)", "queued"), ("sum(modeltrack_queue_capacity)", "capacity")],
            0,
            44,
            8,
        ),
        panel(
            "Pipeline: events per second",
            [
                (f"sum(rate(modeltrack_events_written_total[{r}]))", "written"),
                (f"sum(rate(modeltrack_events_spooled_total[{r}]))", "spooled"),
                (f"sum(rate(modeltrack_events_replayed_total[{r}]))", "replayed"),
                (f"sum(rate(modeltrack_events_dropped_total[{r}]))", "dropped"),
                (f"sum(rate(modeltrack_store_write_errors_total[{r}]))", "write errors"),
            ],
            8,
            44,
            8,
        ),
        panel(
            "Pipeline: flush latency p99",
            [(f"histogram_quantile(0.99, sum by (le) (rate(modeltrack_flush_duration_seconds_bucket[{r}])))", "p99")],
            16,
            44,
            8,
            unit="s",
        ),
    ]
    return {
        "uid": "modeltrack",
        "title": "ModelTrack — LLM cost",
        "tags": ["modeltrack", "llm", "cost"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {
            "list": [
                var("org", "Org"),
                var("team", "Team"),
                var("app", "App"),
                var("feature", "Feature"),
                var("model", "Model"),
            ]
        },
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).parent / "dashboards" / "modeltrack.json"
    out.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {out}")
