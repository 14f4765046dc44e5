"""``modeltrack.client``, the app-side helper, with the three real SDKs through the real proxy: the events carry
the attribution in effect where each call was made, concurrent tasks and threads never mix, attribution never
reaches another host, and the helper pulls in nothing from the server side."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib.metadata
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from google import genai

import modeltrack.client as mt

from .replay import load
from .test_sse_meters import gemini_events

KEY = "sk-test-not-a-real-key"
MSG: Any = [{"role": "user", "content": "hi"}]
OPENAI = load("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 1)
ANTHROPIC = load("test_anthropic__test_anthropic_cache_real_api", 1)
_GEMINI_STREAM = load("test_google__test_google_model_stream")
GEMINI = dataclasses.replace(
    _GEMINI_STREAM,
    body=gemini_events(_GEMINI_STREAM.body)[-1],
    headers=[("content-type", "application/json; charset=UTF-8")],
)


@pytest.fixture(autouse=True)
def _uninstalled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("MODELTRACK_PROXY_URL", "MODELTRACK_TEAM", "MODELTRACK_APP", "MODELTRACK_FEATURE"):
        monkeypatch.delenv(var, raising=False)
    yield
    mt.uninstall()


def _modeltrack_headers(received: Any) -> dict[str, str]:
    return {k.decode().lower(): v.decode() for k, v in received.raw_headers if k.lower().startswith(b"x-modeltrack-")}


async def test_three_sdks_send_the_context_in_effect(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    proxy = await make_proxy(upstream_url)
    mt.install(base_url=proxy.url, team="search", app="web")
    oa = openai.AsyncOpenAI(api_key=KEY, max_retries=0)  # no base_url: install() points it at the proxy
    an = anthropic.AsyncAnthropic(api_key=KEY, max_retries=0)
    gm = genai.Client(api_key=KEY)
    try:
        with mt.context(feature="summaries", session_id="run-1", user="cust-7", prompt="summary-v3"):
            upstream.current = OPENAI
            await oa.chat.completions.create(model="gpt-5.6-sol", messages=MSG)
            upstream.current = ANTHROPIC
            await an.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=MSG)
            with mt.context(feature="captions", properties={"experiment": "b"}):  # nested: overrides, adds
                upstream.current = GEMINI
                await gm.aio.models.generate_content(model="gemini-2.0-flash-exp", contents="capital?")
        upstream.current = OPENAI
        await oa.chat.completions.create(model="gpt-5.6-sol", messages=MSG)  # outside: the defaults only
    finally:
        await oa.close()
        await an.close()
        await gm.aio.aclose()
    events = await proxy.events()
    by_provider = {}
    for ev in events:
        by_provider.setdefault(ev.provider, []).append(ev)
    assert sorted(by_provider) == ["anthropic", "gemini", "openai"]
    an_ev, gm_ev = by_provider["anthropic"][0], by_provider["gemini"][0]
    oa_in, oa_out = sorted(by_provider["openai"], key=lambda e: e.timestamp)
    for ev in (oa_in, an_ev):
        assert (ev.team, ev.app, ev.feature, ev.session_id, ev.user, ev.prompt_id) == (
            "search",
            "web",
            "summaries",
            "run-1",
            "cust-7",
            "summary-v3",
        )
        assert ev.properties is None
    assert (gm_ev.feature, gm_ev.session_id, gm_ev.properties) == ("captions", "run-1", {"experiment": "b"})
    assert (oa_out.team, oa_out.app, oa_out.feature, oa_out.session_id, oa_out.user) == (
        "search",
        "web",
        None,
        None,
        None,
    )
    assert all(ev.cost_usd and ev.cost_usd > 0 and ev.status == 200 for ev in events)
    # The proxy reads X-ModelTrack-* and never forwards them: the provider sees none.
    assert all(_modeltrack_headers(r) == {} for r in upstream.received)


async def test_concurrent_tasks_never_mix(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = OPENAI
    upstream.delay = 0.002  # responses interleave on the wire
    proxy = await make_proxy(upstream_url)
    mt.install(base_url=proxy.url, team="t")
    client = openai.AsyncOpenAI(api_key=KEY, max_retries=0)

    async def agent(name: str) -> None:
        with mt.context(feature=name, session_id=f"session-{name}"):
            for _ in range(10):
                await client.chat.completions.create(model="gpt-5.6-sol", messages=MSG)
                await asyncio.sleep(0)

    try:
        await asyncio.gather(agent("a"), agent("b"), agent("c"))
    finally:
        await client.close()
    events = await proxy.events()
    assert len(events) == 30
    assert sorted((ev.feature, ev.session_id) for ev in events) == sorted(
        (name, f"session-{name}") for name in "abc" for _ in range(10)
    )


async def test_threads_and_executors_inherit_the_context(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    upstream.current = ANTHROPIC
    proxy = await make_proxy(upstream_url)
    mt.install(base_url=proxy.url, app="batch")
    client = anthropic.Anthropic(api_key=KEY, max_retries=0)  # the sync SDK, used from worker threads

    def call() -> None:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=MSG)

    def main() -> None:
        with mt.context(feature="thread", user="u1"):
            t = threading.Thread(target=call)
            t.start()
            t.join()
        with mt.context(feature="pool", user="u2"), concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: call(), range(3)))  # map() goes through submit()
        call()  # the defaults only

    try:
        await asyncio.to_thread(main)
    finally:
        client.close()
    got = sorted((ev.feature or "", ev.user or "", ev.app) for ev in await proxy.events())
    assert got == [("", "", "batch"), *[("pool", "u2", "batch")] * 3, ("thread", "u1", "batch")]


async def test_attribution_goes_only_to_the_proxy(replay: Any, make_proxy: Any) -> None:
    """A client given an explicit base_url keeps it; the hook still runs but adds nothing to other hosts."""
    upstream, upstream_url = replay
    upstream.current = OPENAI
    proxy = await make_proxy(upstream_url)
    mt.install(base_url=proxy.url, team="secret-team-name")
    direct = openai.AsyncOpenAI(base_url=upstream_url + "/v1", api_key=KEY, max_retries=0)
    try:
        with mt.context(user="cust-1"):
            await direct.chat.completions.create(model="gpt-5.6-sol", messages=MSG)
    finally:
        await direct.close()
    (received,) = upstream.received
    assert _modeltrack_headers(received) == {}
    assert await proxy.events() == []  # it never went through the proxy


async def test_install_from_the_environment_and_uninstall(
    replay: Any, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, upstream_url = replay
    upstream.current = OPENAI
    proxy = await make_proxy(upstream_url)
    monkeypatch.setenv("MODELTRACK_PROXY_URL", proxy.url)
    monkeypatch.setenv("MODELTRACK_TEAM", "env-team")
    monkeypatch.setenv("MODELTRACK_APP", "env-app")
    mt.install(app="arg-app")  # an argument beats the environment
    assert mt.headers() == {"X-ModelTrack-Team": "env-team", "X-ModelTrack-App": "arg-app"}
    client = openai.AsyncOpenAI(api_key=KEY, max_retries=0)
    try:
        await client.chat.completions.create(model="gpt-5.6-sol", messages=MSG)
    finally:
        await client.close()
    (ev,) = await proxy.events()
    assert (ev.team, ev.app) == ("env-team", "arg-app")
    mt.uninstall()
    assert str(openai.AsyncOpenAI(api_key=KEY).base_url) == "https://api.openai.com/v1/"


def test_bad_calls_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELTRACK_PROXY_URL", raising=False)
    with pytest.raises(ValueError, match="MODELTRACK_PROXY_URL"):
        mt.install()
    with pytest.raises(TypeError, match="unknown attribution \\['tema'\\]"), mt.context(tema="x"):
        pass


def test_the_client_imports_nothing_from_the_server_side() -> None:
    code = (
        "import sys, modeltrack.client\n"
        "heavy = ('uvloop', 'httptools', 'orjson', 'aiohttp', 'prometheus_client', 'google', 'openai')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('modeltrack')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, ours = out.splitlines()
    assert heavy == "[]"
    assert ours == "['modeltrack', 'modeltrack.client']"
    # ...and the distribution asks for nothing unless an extra is named: `pip install modeltrack-proxy` is the client.
    requires = importlib.metadata.requires("modeltrack-proxy") or []
    assert [r for r in requires if "extra ==" not in r] == []
    assert any(r.startswith("uvloop") and "extra == 'server'" in r.replace('"', "'") for r in requires)


def test_the_distribution_is_ours_and_named_the_same_everywhere() -> None:
    """Issue M, item 14: `pip install modeltrack` installs an unrelated project from the public index. The
    distribution is `modeltrack-proxy` (free on the index when chosen: `pip index versions modeltrack-proxy` found
    nothing); the import stays `modeltrack`. The README, the Dockerfile and the extras all say so."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    dist = importlib.metadata.distribution("modeltrack-proxy")
    assert any(ep.name == "modeltrack" and ep.value == "modeltrack.cli:main" for ep in dist.entry_points)
    assert (root / "src" / "modeltrack" / "__init__.py").exists()
    readme = (root / "README.md").read_text()
    installs = re.findall(r"pip install ['\"]?([A-Za-z0-9_.-]+)(?:\[\w+\])?", readme)
    assert installs and set(installs) == {"modeltrack-proxy"}, installs
    docker = (root / "deploy" / "Dockerfile").read_text()
    wheel = re.search(r"/tmp/([\w-]+)-\*\.whl", docker)
    # A wheel's file name is the normalised distribution name (PEP 427): what `python -m build` writes.
    assert wheel is not None and wheel.group(1) == re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
