"""The checks across settings that ``Settings.validate`` runs at start-up: each refusal names the variables and
says what to write instead."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .options import ConfigError, check_base_url

if TYPE_CHECKING:
    from .settings import Settings


def oidc(s: Settings) -> None:
    if s.oidc_issuer:
        from urllib.parse import urlsplit

        u = urlsplit(s.oidc_issuer)
        if u.scheme not in ("https", "http") or not u.hostname:
            raise ConfigError(
                f"MODELTRACK_OIDC_ISSUER={s.oidc_issuer}: write the issuer's URL, e.g. https://accounts.google.com"
            )
        if u.scheme == "http" and u.hostname not in ("localhost", "127.0.0.1", "::1"):
            raise ConfigError("MODELTRACK_OIDC_ISSUER: use https (plain http only for a provider on this machine)")
        if not s.oidc_client_id or not s.oidc_client_secret:
            raise ConfigError(
                "MODELTRACK_OIDC_ISSUER is set: set MODELTRACK_OIDC_CLIENT_ID and MODELTRACK_OIDC_CLIENT_SECRET "
                "too (from the provider's client registration)"
            )
        if s.oidc_default_role not in ("org_admin", "team_admin", "viewer"):
            raise ConfigError(
                f"MODELTRACK_OIDC_DEFAULT_ROLE={s.oidc_default_role}: write viewer, team_admin or org_admin"
            )


def vertex(s: Settings) -> None:
    import re

    regions, projects = s.vertex()
    bad = [r for r in regions if not re.fullmatch(r"global|[a-z]+(-[a-z]+)*\d*(-[a-z0-9]+)*", r)]
    if bad:
        raise ConfigError(f"MODELTRACK_VERTEX_REGIONS: {bad[0]!r} is not a region; write e.g. us-central1,global")
    if regions and not projects:
        raise ConfigError(
            "MODELTRACK_VERTEX_REGIONS is set: set MODELTRACK_VERTEX_PROJECTS too (the Google Cloud project ids "
            "/vertex may call, comma-separated), so the proxy is no open relay"
        )
    if projects and not regions:
        raise ConfigError("MODELTRACK_VERTEX_PROJECTS is set: set MODELTRACK_VERTEX_REGIONS too, e.g. us-central1")


def bedrock(s: Settings) -> None:
    import re

    regions = s.bedrock()
    bad = [r for r in regions if not re.fullmatch(r"[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+", r)]
    if bad:
        raise ConfigError(f"MODELTRACK_BEDROCK_REGIONS: {bad[0]!r} is not an AWS region; write e.g. us-east-1")
    stray = sorted(set(s.bedrock_endpoints) - set(regions))
    if stray:
        raise ConfigError(
            f"MODELTRACK_BEDROCK_ENDPOINTS names {stray[0]!r}, which is not in MODELTRACK_BEDROCK_REGIONS: "
            "add it there, or remove its endpoint"
        )
    for region, url in regions.items():
        try:
            check_base_url("bedrock", url)
        except ConfigError as exc:
            raise ConfigError(f"MODELTRACK_BEDROCK_ENDPOINTS {region}: {exc}") from None


def proxy(s: Settings) -> None:
    """What only a proxy (``modeltrack serve``) needs: the dashboard loads the same settings and serves no
    /metrics."""
    if s.multi_tenant and not s.metrics_token:
        raise ConfigError(
            "MODELTRACK_MULTI_TENANT=true: /metrics shows every org's spend by org, team, app and model; set "
            "MODELTRACK_METRICS_TOKEN to a long random secret and give it to Prometheus "
            "(authorization: {credentials: ...} in its scrape config)"
        )


def otel(s: Settings) -> None:
    from ..otel.target import resolve

    try:
        s.otel = resolve(s.otel_env, s.otel_endpoint, s.otel_service_name or None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if s.otel_metrics and s.otel is None:
        raise ConfigError(
            "MODELTRACK_OTEL_METRICS=true needs an OTLP endpoint: MODELTRACK_OTEL_ENDPOINT=http://collector:4318 "
            "or OTEL_EXPORTER_OTLP_ENDPOINT"
        )
    if s.otel is None:
        return
    try:
        import opentelemetry.sdk

        if s.otel.protocol == "grpc":
            import opentelemetry.exporter.otlp.proto.grpc
        else:
            import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        raise ConfigError(
            "OpenTelemetry export is on but the OpenTelemetry SDK or its OTLP exporter is not installed: "
            "pip install 'modeltrack-proxy[server,otel]'"
        ) from None


def tenancy(s: Settings) -> None:
    if s.signup not in ("off", "open"):
        raise ConfigError(f"MODELTRACK_SIGNUP={s.signup}: write off or open")
    if s.signup == "open" and not s.multi_tenant:
        raise ConfigError(
            "MODELTRACK_SIGNUP=open needs MODELTRACK_MULTI_TENANT=true: without it an org's members are not "
            "narrowed to their org's data"
        )
    if not s.multi_tenant:
        return
    if s.store.startswith("jsonl:"):
        raise ConfigError(
            "MODELTRACK_MULTI_TENANT=true needs a store that keeps orgs and keys: write "
            "MODELTRACK_STORE=sqlite:///... or firestore://..., not jsonl://"
        )
    if s.client_tokens:
        raise ConfigError(
            "MODELTRACK_CLIENT_TOKENS carry no org, and MODELTRACK_MULTI_TENANT=true takes only an org's mt_ "
            "keys: unset MODELTRACK_CLIENT_TOKENS and issue keys (modeltrack admin create keys ...)"
        )
