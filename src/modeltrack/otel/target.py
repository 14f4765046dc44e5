"""Where and how telemetry is exported: OTLP over HTTP or gRPC, configured as every OpenTelemetry SDK is.

Export is on when an endpoint is given, either ModelTrack's ``MODELTRACK_OTEL_ENDPOINT`` (a base URL) or the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, and ``OTEL_SDK_DISABLED`` is
not ``true``. The protocol is ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``:
``http/protobuf`` (the default, port 4318) or ``grpc`` (port 4317). Everything else the standard defines
(``OTEL_EXPORTER_OTLP_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``, ``_CERTIFICATE``, ``_INSECURE``, their
per-signal forms, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) is read by the SDK's own exporters and
resource, so it means what it means for any other service. Held by tests/test_otel.py (both protocols, against
receivers built on the official ``opentelemetry-proto`` messages and its gRPC service).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PROTOCOLS = ("http/protobuf", "grpc")
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass(frozen=True)
class Target:
    """``endpoint`` is ``MODELTRACK_OTEL_ENDPOINT`` (a base URL), or None when the endpoint comes from the
    standard variables, which the exporters then read themselves (per signal, as the specification says)."""

    protocol: str = "http/protobuf"
    endpoint: str | None = None
    service_name: str = "modeltrack"
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """The ``OTEL_*`` variables these settings came from, for the exporter's process (its environment, never its
    command line: ``OTEL_EXPORTER_OTLP_HEADERS`` holds credentials)."""

    def to_dict(self) -> dict[str, Any]:
        """What the exporter's process is started with (on its command line): no variable, no secret."""
        return {"protocol": self.protocol, "endpoint": self.endpoint, "service_name": self.service_name}

    def resource(self) -> Any:
        from opentelemetry.sdk.resources import Resource

        return Resource.create({"service.name": self.service_name})

    def _url(self, signal: str) -> dict[str, Any]:
        if self.endpoint is None:
            return {}
        if self.protocol == "grpc":
            return {"endpoint": self.endpoint, "insecure": self.endpoint.startswith("http://")}
        return {"endpoint": self.endpoint.rstrip("/") + f"/v1/{signal}"}

    def span_exporter(self, timeout: float | None = None) -> Any:
        kwargs = self._url("traces")
        if timeout is not None:
            kwargs["timeout"] = timeout
        if self.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

            return Grpc(**kwargs)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http(**kwargs)

    def metric_exporter(self) -> Any:
        kwargs = self._url("metrics")
        if self.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

            return Grpc(**kwargs)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

        return Http(**kwargs)


def resolve(env: Mapping[str, str], endpoint: str, service_name: str | None) -> Target | None:
    """The export target these settings ask for, None when export is off. ``service_name`` is
    ``MODELTRACK_OTEL_SERVICE_NAME`` when it was set. Raises ValueError with what to write instead."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    standard = next((name for name in _ENDPOINTS if env.get(name)), None)
    if not endpoint and standard is None:
        return None
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "").strip()
    protocol = protocol or "http/protobuf"
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not one the OpenTelemetry SDK for Python exports: write "
            "http/protobuf (a collector's port 4318) or grpc (port 4317)"
        )
    port = "4317" if protocol == "grpc" else "4318"
    for name, url in (("MODELTRACK_OTEL_ENDPOINT", endpoint), (standard, env.get(standard or "", ""))):
        if not url:
            continue
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname or u.query or u.username or u.password:
            raise ValueError(
                f"{name}={u.scheme}://{u.hostname or ''}...: write the collector's OTLP URL, e.g. "
                f"http://otel-collector:{port} (credentials go in OTEL_EXPORTER_OTLP_HEADERS)"
            )
        if protocol == "grpc" and u.path.strip("/"):
            raise ValueError(
                f"{name} has a path ({u.path}), which OTLP over gRPC does not use: write "
                f"http://otel-collector:{port}, or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
            )
    name = service_name or env.get("OTEL_SERVICE_NAME") or "modeltrack"
    variables = {k: v for k, v in env.items() if k.startswith("OTEL_")}
    return Target(protocol, endpoint.rstrip("/") or None, name, variables)
