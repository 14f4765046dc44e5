"""Several Azure OpenAI resources behind one proxy (issue L, item 2): ``MODELTRACK_AZURE_RESOURCES`` names each
resource's origin, ``/azure/{name}/openai/...`` picks one, and nothing else can: an unknown name is refused
before anything is sent, so the proxy stays no open relay. The real ``openai`` SDK's ``AsyncAzureOpenAI`` is the
client; each resource answers with the real recorded Azure response. Bedrock regions
(``MODELTRACK_BEDROCK_REGIONS``, ``/bedrock/{region}/...``) follow the same rule."""

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


async def test_each_bedrock_region_has_its_own_origin(replay: Any, make_proxy: Any, aiohttp_server: Any) -> None:
    """Bedrock in several regions (issue L, item 2): ``/bedrock/{region}/model/...`` goes to that region's own
    pool (the path reaches it without the region, every byte as signed), the Host is the region's, an unlisted
    region is refused before anything is sent, and each answer is metered and priced as with one region."""
    import aiohttp
    import yarl

    from .expected import COST
    from .test_passthrough import request_body

    rec = load("test_bedrock__test_bedrock_model_stream")
    east, east_url = replay
    frankfurt = ReplayUpstream(current=rec)
    frankfurt_url = str((await aiohttp_server(frankfurt.app())).make_url("")).rstrip("/")
    east.current = rec
    proxy = await make_proxy(
        east_url,
        bedrock_regions="us-east-1,eu-central-1",
        bedrock_endpoints={"us-east-1": east_url, "eu-central-1": frankfurt_url},
    )
    signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIDCANARY/20260101/x/bedrock/aws4_request, sig=1"}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for region, upstream, url in (("us-east-1", east, east_url), ("eu-central-1", frankfurt, frankfurt_url)):
            sent = yarl.URL(f"{proxy.url}/bedrock/{region}{rec.path_qs}", encoded=True)  # exactly these bytes
            async with s.post(sent, data=request_body(rec), headers=signed) as r:
                assert r.status == 200 and await r.read() == rec.body
            (got,) = upstream.received
            assert got.raw_path == rec.path_qs  # the region is the proxy's choice of origin, not sent on
            assert (b"Host", url.split("://", 1)[1].encode()) in got.raw_headers
        async with s.post(f"{proxy.url}/bedrock/ap-south-1{rec.path_qs}", data=b"{}", headers=signed) as r:
            refused = await r.json()
            assert r.status == 403 and "No such Bedrock region here" in refused["message"], refused
    assert len(east.received) == len(frankfurt.received) == 1
    events = await proxy.events()
    priced = [e for e in events if e.status == 200]
    assert len(priced) == 2
    assert all(e.provider == "bedrock" and e.cost_usd == COST[(rec.name, 0)] for e in priced)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"bedrock_regions": "us-east-1,mars-1"}, "'mars-1' is not an AWS region"),
        ({"bedrock_regions": "us-east-1", "bedrock_endpoints": {"eu-west-1": "https://x"}}, "not in MODELTRACK_"),
        ({"bedrock_regions": "us-east-1", "bedrock_endpoints": {"us-east-1": "ftp://x"}}, "BEDROCK_ENDPOINTS us-east"),
    ],
)
def test_a_bad_bedrock_region_is_refused_at_start_up(settings: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.load(env={}, overrides=settings)
