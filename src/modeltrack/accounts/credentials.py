"""A ModelTrack key as the SDK's own API key, with the provider key held on the server per team.

Teams migrating from LiteLLM's virtual keys hand out one key and never a provider key: the SDK is given the
``mt_`` key as its API key (``OpenAI(api_key="mt_…")``, ``Anthropic(api_key=…)``, ``genai.Client(api_key=…)``),
and the proxy swaps it for the team's provider key in the same header, in the provider's own scheme, before the
request leaves. The provider keys come from the operator's file (``MODELTRACK_PROVIDER_KEYS_FILE``), never from
the store, the API or a request:

    teams:
      search: {openai: sk-…, anthropic: sk-ant-…}     # a team's name, or its id (team_…; multi-tenant: ids only)
    default: {openai: sk-…}          # for keys without a team (optional)

They are never logged, recorded, exported or shown (tests/test_accounts.py::test_the_key_as_the_sdks_api_key).
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError

# The headers an SDK puts its API key in, and the prefix before the key in each.
AUTH_HEADERS = {b"authorization": b"Bearer ", b"x-api-key": b"", b"x-goog-api-key": b"", b"api-key": b""}


def sdk_key(headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes] | None:
    """(position of the header, the mt_ key) when the request's API key is a ModelTrack key."""
    for i, (k, v) in enumerate(headers):
        prefix = AUTH_HEADERS.get(k.lower())
        if prefix is None:
            continue
        value = v.strip()
        if prefix and value[: len(prefix)].lower() == prefix.lower():
            value = value[len(prefix) :].strip()
        elif prefix:
            continue
        if value.startswith(b"mt_"):
            return i, value
    return None


class ProviderKeys:
    def __init__(self, teams: dict[str, dict[str, str]] | None = None, default: dict[str, str] | None = None) -> None:
        self.teams = teams or {}
        self.default = default or {}

    def __bool__(self) -> bool:
        return bool(self.teams or self.default)

    def key_for(self, team_id: str | None, provider: str, team_name: str | None = None) -> str | None:
        """The team's own key for the provider (the file names a team by its id, ``team_…``, or by its name;
        in multi-tenant mode by its id only, as team names repeat across orgs), else the default one, else None
        (the request is refused)."""
        for team in (team_id, team_name):
            if team and (found := self.teams.get(team, {}).get(provider)):
                return found
        return self.default.get(provider)

    @classmethod
    def from_file(cls, path: str, providers: tuple[str, ...]) -> ProviderKeys:
        if not path:
            return cls()
        import yaml

        where = f"MODELTRACK_PROVIDER_KEYS_FILE {path}"
        try:
            with open(path) as f:
                doc = yaml.safe_load(f)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from None
        except yaml.YAMLError:
            raise ConfigError(f"{where}: not valid YAML; write teams: {{search: {{openai: sk-...}}}}") from None
        if not isinstance(doc, dict) or set(doc) - {"teams", "default"}:
            raise ConfigError(f"{where}: expected `teams:` (team name → provider → key) and optionally `default:`")

        def section(raw: Any, name: str) -> dict[str, str]:
            if raw is None:
                return {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: {name}: expected provider → key, e.g. {{openai: sk-...}}")
            out = {}
            for provider, key in raw.items():
                if provider not in providers:
                    raise ConfigError(f"{where}: {name}: unknown provider {provider!r}; one of {', '.join(providers)}")
                if not isinstance(key, str) or not key.strip() or key.startswith("mt_"):
                    raise ConfigError(f"{where}: {name}.{provider}: write the provider's API key (not an mt_ key)")
                out[str(provider)] = key.strip()
            return out

        teams = doc.get("teams") or {}
        if not isinstance(teams, dict):
            raise ConfigError(f"{where}: teams: expected team name → provider → key")
        return cls({str(t): section(v, f"teams.{t}") for t, v in teams.items()}, section(doc.get("default"), "default"))
