"""Several Azure OpenAI resources behind one proxy (issue L, item 2): ``MODELTRACK_AZURE_RESOURCES`` names each
resource's origin, ``/azure/{name}/openai/...`` picks one, and nothing else can: an unknown name is refused
before anything is sent, so the proxy stays no open relay. The real ``openai`` SDK's ``AsyncAzureOpenAI`` is the
client; each resource answers with the real recorded Azure response."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from modeltrack.config import ConfigError, Settings

from .replay import ReplayUpstream, load

AZURE = load("test_azure__test_azure_provider_call")


async def test_each_resource_has_its_own_origin(replay: Any, make_proxy: Any, aiohttp_server: Any) -> None:
    east, east_url = replay
    west = ReplayUpstream(current=AZURE)
    west_url = str((await aiohttp_server(west.app())).make_url("")).rstrip("/")
    east.current = AZURE
    proxy = await make_proxy(east_url, azure_resources={"east": east_url, "west": west_url})
    for name, upstream in (("east", east), ("west", west)):
        client = openai.AsyncAzureOpenAI(
            azure_endpoint=f"{proxy.url}/azure/{name}",
            api_key=f"azure-key-{name}",
            api_version="2024-12-01-preview",
            max_retries=0,
        )
        answer = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello"}])
        assert answer.model == "gpt-4o-2024-11-20"
        (got,) = upstream.received
        assert got.raw_path == "/openai/deployments/gpt-4o/chat/completions?api-version=2024-12-01-preview"
        assert (b"api-key", f"azure-key-{name}".encode()) in got.raw_headers
    events = await proxy.events()
    assert [(e.provider, e.model, e.input_tokens, e.output_tokens) for e in events] == [
        ("azure", "gpt-4o-2024-11-20", 14, 9)
    ] * 2
    assert all(e.cost_usd == 0.000125 and e.endpoint.startswith("/openai/deployments/gpt-4o") for e in events)
    # A resource nobody configured: refused here, nothing forwarded.
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=f"{proxy.url}/azure/north", api_key="k", api_version="2024-12-01-preview", max_retries=0
    )
    with pytest.raises(openai.PermissionDeniedError) as err:
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "No such Azure resource here" in str(err.value) and "east, west" in str(err.value)
    assert len(east.received) == len(west.received) == 1


@pytest.mark.parametrize(
    ("resources", "says"),
    [
        ({"east": "ftp://acme.example"}, "MODELTRACK_AZURE_RESOURCES east"),
        ({"east/../x": "https://acme-east.openai.azure.com"}, "is not a resource name"),
    ],
)
def test_a_bad_resource_is_refused_at_start_up(resources: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.load(env={}, overrides={"azure_resources": resources})
