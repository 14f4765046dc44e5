"""One ``Settings`` object, built from ``MODELTRACK_*`` environment variables and CLI flags, validated at start.

Every setting has an environment variable (the contract) and a ``--flag`` that overrides it; ``modeltrack serve
--help`` and ``modeltrack ui --help`` list them from the table below, so the docs and the parser cannot drift
apart. Each default has this one home.

A setting cannot be silently wrong: every number is checked against its range (and NaN and infinities are
refused), an unknown ``MODELTRACK_*`` variable is an error that names the closest real one, and each message
says what to write instead.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from . import checks
from .options import (
    MIB,
    OTHER_VARIABLES,
    PER_PROVIDER,
    PROVIDERS,
    ConfigError,
    _opt,
    check_base_url,
    check_range,
    convert,
    env_name,
)

if TYPE_CHECKING:
    from ..otel.target import Target


@dataclass
class Settings:
    host: str = _opt("127.0.0.1", "listen address (containers: 0.0.0.0)")
    port: int = _opt(8080, "listen port", lo=1, hi=65535)
    store: str = _opt(
        "sqlite:///./data/modeltrack.db",
        "sqlite:///RELATIVE.db | sqlite:////ABSOLUTE.db (SQLAlchemy's convention) | firestore://PROJECT[/COLLECTION] "
        "| jsonl:///PATH",
        commands=("serve", "ui", "events", "report", "controls", "admin"),
    )
    workers: int = _opt(1, "processes sharing the port (SO_REUSEPORT); /metrics sums all of them", lo=1, hi=64)
    log_level: str = _opt("info", "debug|info|warning|error (never logs secrets)", commands=("serve", "ui"))
    access_log: bool = _opt(False, "one log line per request: method, route, status, model, tokens, cost, latency")
    spool_dir: str = _opt("./data/spool", "where undeliverable events are spooled")
    max_body_bytes: int = _opt(32 * MIB, "request body limit (413 above)", lo=1, hi=2**31, unit="bytes")
    max_concurrent_requests: int = _opt(
        4096, "requests in flight at once; more get 503 with Retry-After (0: no cap)", lo=0, hi=10**6
    )
    max_buffered_body_bytes: int = _opt(
        512 * MIB,
        "request-body bytes buffered at once across all requests; more get 503 with Retry-After (0: no cap)",
        lo=0,
        hi=2**40,
        unit="bytes",
    )
    connect_timeout: float = _opt(10.0, "upstream connect timeout", lo=0.001, hi=3600, unit="seconds")
    read_timeout: float = _opt(
        600.0, "upstream idle timeout between reads (not a total limit)", lo=0.001, hi=86400, unit="seconds"
    )
    websocket_idle_timeout: float = _opt(
        300.0,
        "a WebSocket tunnel (Realtime, Live) with no byte either way for this long is closed",
        lo=0.001,
        hi=86400,
        unit="seconds",
    )
    websocket_max_message: int = _opt(
        16 * MIB,
        "largest WebSocket message either way; a larger one closes the tunnel",
        lo=1024,
        hi=2**31,
        unit="bytes",
    )
    upstream_max_connections: int = _opt(
        1024,
        "connections per upstream origin, open or opening (0: no cap); more wait up to the connect timeout",
        lo=0,
        hi=10**6,
    )
    upstream_max_idle: int = _opt(
        1024,
        "idle keep-alive connections kept per upstream origin, each closed after 30 s unused: as many as may be "
        "open, so a burst's connections serve the next one (a new one costs a connect, or a TLS handshake)",
        lo=0,
        hi=10**6,
    )
    client_tokens: str = _opt(
        "",
        "comma-separated tokens, or @FILE of sha256 hex digests; required in X-ModelTrack-Key",
        secret=True,
    )
    require_key: bool = _opt(False, "every request must carry a ModelTrack key (mt_...) in X-ModelTrack-Key")
    multi_tenant: bool = _opt(
        False,
        "hosted mode: every request needs an org's mt_ key; events, rollups, sessions, budgets, cache entries "
        "and every query are scoped to the key's org (a proxy also needs MODELTRACK_METRICS_TOKEN)",
    )
    otel_endpoint: str = _opt(
        "",
        "OTLP endpoint (e.g. http://collector:4318): one OpenTelemetry span per cost event; empty: off unless "
        "the standard OTEL_EXPORTER_OTLP_ENDPOINT is set (OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf or grpc)",
    )
    otel_metrics: bool = _opt(False, "also export the Prometheus metrics over OTLP (needs an OTLP endpoint)")
    otel_service_name: str = _opt(
        "", "the service.name of the exported spans and metrics; empty: OTEL_SERVICE_NAME, else modeltrack"
    )
    vertex_regions: str = _opt(
        "", "Vertex AI regions to serve under /vertex (comma-separated, e.g. us-central1,europe-west4,global)"
    )
    vertex_projects: str = _opt("", "the Google Cloud projects /vertex may call (comma-separated): no open relay")
    signup: str = _opt("off", "off: the operator creates orgs; open: POST /api/v1/signup creates an org and its admin")
    provider_keys_file: str = _opt(
        "", "YAML of provider keys per team, for clients that send their ModelTrack key as the SDK's API key"
    )
    keys_refresh_seconds: float = _opt(
        1.0, "how often the proxy checks the store for changed keys (the revocation delay)", lo=0.05, hi=300, unit="s"
    )
    keys_on_store_error: str = _opt(
        "open", "open: keep the last known keys while the store is unreachable; closed: refuse keys after 60 s"
    )
    ca_bundle: str = _opt("", "extra CA bundle (PEM) for upstream TLS; verification is always on")
    tls_cert: str = _opt("", "PEM certificate chain: serve HTTPS (the proxy and /metrics)")
    tls_key: str = _opt("", "PEM private key for MODELTRACK_TLS_CERT")
    header_timeout: float = _opt(
        30.0,
        "seconds a client may take to send its request headers (slowloris); also keep-alive idle",
        lo=0.001,
        hi=3600,
        unit="seconds",
    )
    body_timeout: float = _opt(60.0, "seconds a client may take to send its body (408)", lo=0.001, hi=3600)
    batch_size: int = _opt(2000, "events per store write (Firestore commits are split at 500 writes)", lo=1, hi=10_000)
    flush_interval_ms: int = _opt(200, "max wait before writing a partial batch", lo=1, hi=60_000, unit="ms")
    journal: bool = _opt(
        True,
        "write-ahead journal: events survive kill -9 (a memory copy into a mapped file per request, no syscall)",
    )
    store_writer: str = _opt(
        "process", "process: a child process writes the events, off the proxy's GIL; thread: a thread of the proxy"
    )
    queue_size: int = _opt(100_000, "in-memory queue bound (overflow spools)", lo=1, hi=10**7)
    shutdown_grace: float = _opt(8.0, "seconds in-flight requests get on SIGTERM", lo=0, hi=3600, unit="seconds")
    ready_queue_fraction: float = _opt(
        0.8, "/readyz fails when the queue is fuller than this fraction", lo=0.01, hi=1.0
    )
    ready_store_fail_seconds: float = _opt(
        30.0, "/readyz fails when the store has failed for this long", lo=0.001, hi=86400, unit="seconds"
    )
    metrics_port: int = _opt(0, "serve /metrics on this port instead (0: main port)", lo=0, hi=65535)
    metrics_token: str = _opt("", "require `Authorization: Bearer TOKEN` on /metrics", secret=True)
    metrics_label_cap: int = _opt(100, "distinct values kept per metric label", lo=1, hi=100_000)
    pricing_file: str = _opt("", "YAML/JSON price overrides", commands=("serve", "ui"))
    azure_deployments: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "deployment=model,... fallback for Azure pricing", "commands": ("serve",)},
    )
    azure_resources: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "name=https://RESOURCE.openai.azure.com,... several Azure resources, each under /azure/NAME",
            "commands": ("serve",),
        },
    )
    bedrock_regions: str = _opt(
        "", "AWS regions served under /bedrock/REGION (comma-separated, e.g. us-east-1,eu-central-1): a pool each"
    )
    bedrock_endpoints: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "region=https://... a listed region's endpoint other than bedrock-runtime.REGION.amazonaws.com "
            "(a VPC endpoint)",
            "commands": ("serve",),
        },
    )
    ui: bool = _opt(False, "also serve the dashboard and API (modeltrack ui) from a child process")
    ui_host: str = _opt(
        "127.0.0.1", "dashboard/API listen address (not loopback: UI tokens required)", commands=("serve", "ui")
    )
    ui_port: int = _opt(8081, "dashboard/API listen port", lo=1, hi=65535, commands=("serve", "ui"))
    # (the dashboard's empty state shows the proxy's address: it reads MODELTRACK_PORT too)
    ui_tokens: str = _opt(
        "",
        "read-only API/dashboard tokens: comma-separated, or @FILE of sha256 hex digests",
        secret=True,
        commands=("serve", "ui"),
    )
    admin_tokens: str = _opt(
        "",
        "admin API tokens (every org): comma-separated, or @FILE of sha256 hex digests; unset on loopback: local admin",
        secret=True,
        commands=("serve", "ui"),
    )
    oidc_issuer: str = _opt(
        "",
        "OpenID Connect issuer URL for dashboard sign-in (e.g. https://accounts.google.com)",
        commands=("serve", "ui"),
    )
    oidc_client_id: str = _opt("", "the dashboard's OIDC client id", commands=("serve", "ui"))
    oidc_client_secret: str = _opt("", "the dashboard's OIDC client secret", secret=True, commands=("serve", "ui"))
    oidc_redirect_url: str = _opt(
        "",
        "the callback URL registered with the provider (default: this host's /api/v1/oidc/callback)",
        commands=("serve", "ui"),
    )
    oidc_role_claim: str = _opt("modeltrack_role", "the ID token claim holding the role", commands=("serve", "ui"))
    oidc_org_claim: str = _opt(
        "modeltrack_org", "the ID token claim holding the org (id or name)", commands=("serve", "ui")
    )
    oidc_team_claim: str = _opt("modeltrack_team", "the ID token claim holding the team name", commands=("serve", "ui"))
    oidc_default_role: str = _opt("viewer", "the role of a sign-in whose token names none", commands=("serve", "ui"))
    controls_file: str = _opt("", "budgets, routing and cache rules (YAML/JSON)", commands=("serve", "ui", "controls"))
    # Per provider, from MODELTRACK_<PROVIDER>_{BASE_URL,READ_TIMEOUT,INJECT_STREAM_USAGE}:
    base_urls: dict[str, str] = field(default_factory=dict, metadata={"env": False})
    inject_stream_usage: dict[str, bool] = field(default_factory=dict, metadata={"env": False})
    read_timeouts: dict[str, float] = field(default_factory=dict, metadata={"env": False})
    # The standard egress variables (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY), read from the same
    # environment as everything else:
    egress: dict[str, str] = field(default_factory=dict, metadata={"env": False})
    # The standard OpenTelemetry variables (OTEL_*), read from the same environment; and the export target they
    # and the MODELTRACK_OTEL_* settings resolve to (None: export is off).
    otel_env: dict[str, str] = field(default_factory=dict, metadata={"env": False})
    otel: Target | None = field(default=None, metadata={"env": False})

    @classmethod
    def load(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None, strict: bool = True
    ) -> Settings:
        """Settings from ``env`` (default: the process environment) and ``overrides`` (CLI flags). ``strict``:
        refuse unknown ``MODELTRACK_*`` names (off only for tools that read one value, like tests)."""
        env = os.environ if env is None else env
        if strict:
            check_names(env)
        s = cls()
        for f in fields(cls):
            if f.metadata.get("env") is False:
                continue
            key = env_name(f)
            if key in env:
                setattr(s, f.name, convert(f, env[key]))
        for p in PROVIDERS:
            url = env.get(f"MODELTRACK_{p.upper()}_BASE_URL")
            if url:
                s.base_urls[p] = url
            rt = env.get(f"MODELTRACK_{p.upper()}_READ_TIMEOUT")
            if rt is not None:
                s.read_timeouts[p] = convert(_READ_TIMEOUT, rt, f"MODELTRACK_{p.upper()}_READ_TIMEOUT")
            inj = env.get(f"MODELTRACK_{p.upper()}_INJECT_STREAM_USAGE")
            if inj is not None:
                s.inject_stream_usage[p] = convert(_JOURNAL, inj, f"MODELTRACK_{p.upper()}_INJECT_STREAM_USAGE")
        from ..http.egress import proxy_variables

        s.egress = proxy_variables(env)
        s.otel_env = {k: v for k, v in env.items() if k.startswith("OTEL_")}
        for k, v in (overrides or {}).items():
            if v is not None:
                setattr(s, k, v)
        s.validate()
        return s

    def validate(self) -> None:
        for f in fields(self):
            if f.metadata.get("lo") is not None or f.metadata.get("hi") is not None:
                check_range(f, getattr(self, f.name), env_name(f))
        for p, t in self.read_timeouts.items():
            check_range(_READ_TIMEOUT, t, f"MODELTRACK_{p.upper()}_READ_TIMEOUT")
        checks.oidc(self)
        if self.store_writer not in ("process", "thread"):
            raise ConfigError(f"MODELTRACK_STORE_WRITER={self.store_writer}: write process or thread")
        if self.keys_on_store_error not in ("open", "closed"):
            raise ConfigError(f"MODELTRACK_KEYS_ON_STORE_ERROR={self.keys_on_store_error}: write open or closed")
        if self.require_key and self.store.startswith("jsonl:"):
            raise ConfigError(
                "MODELTRACK_REQUIRE_KEY=true needs a store that keeps keys: write MODELTRACK_STORE=sqlite:///... or "
                "firestore://..., not jsonl://"
            )
        checks.tenancy(self)
        checks.otel(self)
        checks.vertex(self)
        checks.bedrock(self)
        for name, url in self.azure_resources.items():
            if not name or not all(c.isalnum() or c in "-_" for c in name):
                raise ConfigError(
                    f"MODELTRACK_AZURE_RESOURCES: {name!r} is not a resource name; write e.g. east=https://acme-east.openai.azure.com"
                )
            try:
                check_base_url("azure", url)
            except ConfigError as exc:
                raise ConfigError(f"MODELTRACK_AZURE_RESOURCES {name}: {exc}") from None
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError(f"MODELTRACK_LOG_LEVEL={self.log_level}: write one of debug, info, warning, error")
        for name, url in self.base_urls.items():
            check_base_url(name, url)
        scheme = self.store.split(":", 1)[0]
        if scheme not in ("sqlite", "firestore", "jsonl"):
            raise ConfigError(
                f"MODELTRACK_STORE: unknown scheme {scheme!r}; write sqlite:///data/modeltrack.db, "
                "firestore://PROJECT[/COLLECTION] or jsonl:///events.jsonl"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("MODELTRACK_TLS_CERT and MODELTRACK_TLS_KEY go together: set both (PEM files) or neither")
        if self.max_buffered_body_bytes and self.max_buffered_body_bytes < self.max_body_bytes:
            raise ConfigError(
                f"MODELTRACK_MAX_BUFFERED_BODY_BYTES={self.max_buffered_body_bytes} is below "
                f"MODELTRACK_MAX_BODY_BYTES={self.max_body_bytes}: a request of the largest allowed size could never "
                "be admitted; write 0 (no cap) or at least the body limit"
            )
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError("MODELTRACK_METRICS_PORT is MODELTRACK_PORT: write another port, or 0 for the main port")

    def vertex(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(regions, projects) allowed under /vertex."""

        def split(v: str) -> tuple[str, ...]:
            return tuple(x.strip() for x in v.split(",") if x.strip())

        return split(self.vertex_regions), split(self.vertex_projects)

    def bedrock(self) -> dict[str, str]:
        """Region → endpoint for every region allowed under /bedrock/REGION."""
        regions = tuple(x.strip() for x in self.bedrock_regions.split(",") if x.strip())
        return {r: self.bedrock_endpoints.get(r) or f"https://bedrock-runtime.{r}.amazonaws.com" for r in regions}

    def shown(self) -> dict[str, str]:
        """Every setting as the start-up line and ``--help`` may show it: secrets only as set/unset."""
        out = {}
        for f in fields(self):
            if f.metadata.get("env") is False:
                continue
            value = getattr(self, f.name)
            out[f.name] = ("set" if value else "unset") if f.metadata.get("secret") else str(value)
        return out


_READ_TIMEOUT = next(f for f in fields(Settings) if f.name == "read_timeout")  # per-provider timeouts share its range
_JOURNAL = next(f for f in fields(Settings) if f.name == "journal")  # any boolean: parsed alike


def known_names() -> set[str]:
    names = {env_name(f) for f in fields(Settings) if f.metadata.get("env") is not False}
    names |= {f"MODELTRACK_{p.upper()}_{suffix}" for p in PROVIDERS for suffix in PER_PROVIDER}
    return names | OTHER_VARIABLES


def check_names(env: Mapping[str, str]) -> None:
    """Refuse ``MODELTRACK_*`` variables nobody reads: a typo must not silently leave a default in effect."""
    known = known_names()
    unknown = sorted(k for k in env if k.startswith("MODELTRACK_") and k not in known)
    if not unknown:
        return
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise ConfigError(
        f"unknown variable{'s' if len(parts) > 1 else ''}: {', '.join(parts)}; `modeltrack serve --help` lists them all"
    )
