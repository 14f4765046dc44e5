"""One ``Settings`` object, built from ``MODELTRACK_*`` environment variables and CLI flags, validated at start.

Every setting has an environment variable (the contract) and a ``--flag`` that overrides it; ``modeltrack serve
--help`` lists them all from the table below, so the docs and the parser cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

PROVIDERS = (
    "openai",
    "anthropic",
    "gemini",
    "azure",
    "bedrock",
    "groq",
    "mistral",
    "deepseek",
    "xai",
    "openrouter",
    "together",
    "fireworks",
    "local",
)


class ConfigError(ValueError):
    pass


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {v!r}")


def _map(v: str) -> dict[str, str]:
    out = {}
    for part in v.split(","):
        if part.strip():
            k, sep, val = part.partition("=")
            if not sep:
                raise ConfigError(f"expected NAME=VALUE pairs separated by commas, got {part!r}")
            out[k.strip()] = val.strip()
    return out


@dataclass
class Settings:
    host: str = field(default="127.0.0.1", metadata={"help": "listen address (containers: 0.0.0.0)"})
    port: int = field(default=8080, metadata={"help": "listen port"})
    store: str = field(
        default="sqlite:///./data/modeltrack.db",
        metadata={"help": "sqlite:///PATH | firestore://PROJECT[/COLLECTION] | jsonl:///PATH"},
    )
    workers: int = field(
        default=1, metadata={"help": "processes sharing the port (SO_REUSEPORT); /metrics sums all of them"}
    )
    log_level: str = field(default="info", metadata={"help": "debug|info|warning|error (never logs secrets)"})
    spool_dir: str = field(default="./data/spool", metadata={"help": "where undeliverable events are spooled"})
    max_body_bytes: int = field(default=32 * 1024 * 1024, metadata={"help": "request body limit (413 above)"})
    connect_timeout: float = field(default=10.0, metadata={"help": "upstream connect timeout, seconds"})
    read_timeout: float = field(
        default=600.0, metadata={"help": "upstream idle timeout between reads, seconds (not a total limit)"}
    )
    client_tokens: str = field(
        default="",
        metadata={"help": "comma-separated tokens, or @FILE of sha256 hex digests; required in X-ModelTrack-Key"},
    )
    ca_bundle: str = field(
        default="", metadata={"help": "extra CA bundle (PEM) for upstream TLS; verification is always on"}
    )
    header_timeout: float = field(
        default=30.0,
        metadata={"help": "seconds a client may take to send its request headers (slowloris); also keep-alive idle"},
    )
    body_timeout: float = field(default=60.0, metadata={"help": "seconds a client may take to send its body (408)"})
    batch_size: int = field(
        default=2000, metadata={"help": "events per store write (Firestore commits are split at 500 writes)"}
    )
    flush_interval_ms: int = field(default=200, metadata={"help": "max wait before writing a partial batch"})
    journal: bool = field(
        default=True,
        metadata={"help": "write-ahead journal: events survive kill -9 (costs one write syscall per request)"},
    )
    queue_size: int = field(default=100_000, metadata={"help": "in-memory queue bound (overflow spools)"})
    shutdown_grace: float = field(default=8.0, metadata={"help": "seconds in-flight requests get on SIGTERM"})
    ready_queue_fraction: float = field(
        default=0.8, metadata={"help": "/readyz fails when the queue is fuller than this fraction"}
    )
    ready_store_fail_seconds: float = field(
        default=30.0, metadata={"help": "/readyz fails when the store has failed for this long"}
    )
    metrics_port: int = field(default=0, metadata={"help": "serve /metrics on this port instead (0: main port)"})
    metrics_token: str = field(default="", metadata={"help": "require `Authorization: Bearer TOKEN` on /metrics"})
    metrics_label_cap: int = field(default=100, metadata={"help": "distinct values kept per metric label"})
    pricing_file: str = field(default="", metadata={"help": "YAML/JSON price overrides"})
    azure_deployments: dict[str, str] = field(
        default_factory=dict, metadata={"help": "deployment=model,... fallback for Azure pricing"}
    )
    base_urls: dict[str, str] = field(default_factory=dict, metadata={"env": False})
    inject_stream_usage: dict[str, bool] = field(default_factory=dict, metadata={"env": False})
    read_timeouts: dict[str, float] = field(default_factory=dict, metadata={"env": False})

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
        env = os.environ if env is None else env
        s = cls()
        for f in fields(cls):
            if f.metadata.get("env") is False:
                continue
            key = "MODELTRACK_" + f.name.upper()
            if key in env:
                setattr(s, f.name, _convert(f.name, f.type, env[key]))
        for p in PROVIDERS:
            url = env.get(f"MODELTRACK_{p.upper()}_BASE_URL")
            if url:
                s.base_urls[p] = url
            rt = env.get(f"MODELTRACK_{p.upper()}_READ_TIMEOUT")
            if rt is not None:
                s.read_timeouts[p] = _convert(f"{p}_read_timeout", "float", rt)
            inj = env.get(f"MODELTRACK_{p.upper()}_INJECT_STREAM_USAGE")
            if inj is not None:
                s.inject_stream_usage[p] = _convert(f"{p}_inject_stream_usage", "bool", inj)
        for k, v in (overrides or {}).items():
            if v is not None:
                setattr(s, k, v)
        s.validate()
        return s

    def validate(self) -> None:
        if not 1 <= self.workers <= 64:
            raise ConfigError("MODELTRACK_WORKERS must be between 1 and 64")
        if not 0 < self.port < 65536:
            raise ConfigError(f"MODELTRACK_PORT out of range: {self.port}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError(f"MODELTRACK_LOG_LEVEL must be debug|info|warning|error, not {self.log_level!r}")
        if not 1 <= self.batch_size <= 10_000:
            raise ConfigError("MODELTRACK_BATCH_SIZE must be between 1 and 10000")
        for name, url in self.base_urls.items():
            if not (url.startswith("http://") or url.startswith("https://")):
                raise ConfigError(f"MODELTRACK_{name.upper()}_BASE_URL must be an http(s) URL")
        if self.store.split(":", 1)[0] not in ("sqlite", "firestore", "jsonl"):
            raise ConfigError("MODELTRACK_STORE must start with sqlite://, firestore:// or jsonl://")


def _convert(name: str, typ: Any, raw: str) -> Any:
    t = str(typ)
    try:
        if t == "int":
            return int(raw)
        if t == "float":
            return float(raw)
        if t == "bool":
            return _bool(raw)
        if t.startswith("dict"):
            return _map(raw)
    except ValueError as exc:
        raise ConfigError(f"MODELTRACK_{name.upper()}: {exc}") from None
    return raw


def _shown_default(f: Any) -> str:
    value = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else "")
    return str(value) if value not in ("", {}, None) else "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Settings):
        if f.metadata.get("env") is False:
            continue
        env = "MODELTRACK_" + f.name.upper()
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            type=lambda raw, _f=f: _convert(_f.name, _f.type, raw),  # type: ignore[misc]
            help=f"{f.metadata.get('help', '')} [env {env}; default {_shown_default(f)}]",
        )
