"""The option machinery behind :class:`~.settings.Settings`: the provider table, one ``_opt`` per setting (its
default, help, range and commands), and the parsing and range checks whose messages name the variable and say
what to write."""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, field
from typing import Any
from urllib.parse import urlsplit

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
    "vertex",
)
PER_PROVIDER = {
    "BASE_URL": "upstream origin, e.g. https://api.openai.com (a path such as /v1 is accepted: the part a request "
    "path repeats is sent once)",
    "READ_TIMEOUT": "idle timeout between upstream reads for this provider, seconds",
    "INJECT_STREAM_USAGE": "true|false: ask chat streams for usage (stream_options.include_usage)",
}
OTHER_VARIABLES = {
    # read elsewhere: the app-side helper (modeltrack.client), the test suite, and the --workers supervisor
    "MODELTRACK_PROXY_URL",
    "MODELTRACK_TEAM",
    "MODELTRACK_APP",
    "MODELTRACK_FEATURE",
    "MODELTRACK_USER",
    "MODELTRACK_SESSION_ID",
    "MODELTRACK_PROMPT",
    "MODELTRACK_KEY",
    "MODELTRACK_FIXTURES",
    "MODELTRACK_ARTIFACTS",
    "MODELTRACK_FIRESTORE_EMULATOR",  # scripts/test-tools and the tests: where the emulator is installed
    "MODELTRACK_WORKER",
}
MIB = 1024 * 1024


class ConfigError(ValueError):
    pass


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {v!r} (write true or false)")


def _map(v: str) -> dict[str, str]:
    out = {}
    for part in v.split(","):
        if part.strip():
            k, sep, val = part.partition("=")
            if not sep:
                raise ValueError(f"expected NAME=VALUE pairs separated by commas, got {part!r}")
            out[k.strip()] = val.strip()
    return out


def _opt(
    default: Any,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    unit: str = "",
    secret: bool = False,
    commands: tuple[str, ...] = ("serve",),
) -> Any:
    """A setting: its default, its help, its range (inclusive) and which commands read it."""
    meta = {"help": help, "lo": lo, "hi": hi, "unit": unit, "secret": secret, "commands": commands}
    return field(default=default, metadata=meta)


def env_name(f: Field[Any]) -> str:
    return "MODELTRACK_" + f.name.upper()


def convert(f: Field[Any], raw: str, name: str | None = None) -> Any:
    """Parse one value; errors say which variable and what to write."""
    name = name or env_name(f)
    t = str(f.type)
    try:
        if t == "int":
            return int(raw.strip().replace("_", ""))
        if t == "float":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            return value
        if t == "bool":
            return _bool(raw)
        if t.startswith("dict"):
            return _map(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}; {_expected(f)}") from None
    return raw


def check_range(f: Field[Any], value: Any, name: str) -> None:
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    bad = isinstance(value, float) and not math.isfinite(value)
    if not bad and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        bad = True
    if bad:
        raise ConfigError(f"{name}={value} is out of range; {_expected(f)}")


def _expected(f: Field[Any]) -> str:
    lo, hi, unit = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("unit", "")
    kind = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(str(f.type), "a value")
    if lo is not None and hi is not None:
        kind += f" from {lo:g} to {hi:g}"
    return f"write {kind}{f' ({unit})' if unit else ''}"


def check_base_url(name: str, url: str) -> None:
    var = f"MODELTRACK_{name.upper()}_BASE_URL"
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"{var}={url!r} is not an http(s) URL; write e.g. {var}=https://api.{name}.com")
    if u.username or u.password:
        raise ConfigError(f"{var}: credentials in the URL are not sent anywhere; remove them (clients send their keys)")
    if u.query or u.fragment:
        raise ConfigError(f"{var}: a query or fragment is not part of an origin; write {u.scheme}://{u.netloc}{u.path}")
    try:
        _ = u.port
    except ValueError:
        raise ConfigError(f"{var}: the port is not a number") from None


def _shown_default(f: Field[Any]) -> str:
    value = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else "")
    return str(value) if value not in ("", {}, None) else "none"
