"""Settings that cannot be silently wrong: ranges, unknown names, base URLs with a path, store URLs, the start-up
line, unreachable upstreams, and `make test` on a machine that lacks a tool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from modeltrack.config import ConfigError, Settings
from modeltrack.http.upstream_pool import Origin
from modeltrack.sinks import _fs_path, describe_store

from .proc import ProxyProcess
from .rawhttp import RawServer, read_request

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODELTRACK_READ_TIMEOUT", "-1", "write a number from 0.001 to 86400 (seconds)"),
        ("MODELTRACK_READ_TIMEOUT", "nan", "not a finite number"),
        ("MODELTRACK_CONNECT_TIMEOUT", "inf", "not a finite number"),
        ("MODELTRACK_HEADER_TIMEOUT", "0", "from 0.001 to 3600"),
        ("MODELTRACK_FLUSH_INTERVAL_MS", "0", "write a whole number from 1 to 60000 (ms)"),
        ("MODELTRACK_MAX_BODY_BYTES", "-5", "write a whole number from 1 to"),
        ("MODELTRACK_QUEUE_SIZE", "0", "write a whole number from 1 to"),
        ("MODELTRACK_READY_QUEUE_FRACTION", "7", "write a number from 0.01 to 1"),
        ("MODELTRACK_METRICS_PORT", "99999", "write a whole number from 0 to 65535"),
        ("MODELTRACK_PORT", "eighty", "invalid literal"),
        ("MODELTRACK_JOURNAL", "maybe", "write true or false"),
        ("MODELTRACK_OPENAI_READ_TIMEOUT", "-3", "MODELTRACK_OPENAI_READ_TIMEOUT=-3.0 is out of range"),
        ("MODELTRACK_LOG_LEVEL", "loud", "write one of debug, info, warning, error"),
        ("MODELTRACK_STORE", "postgres://x", "write sqlite:///data/modeltrack.db"),
    ],
)
def test_bad_values_are_refused_with_what_to_write(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env={variable: value})
    assert variable in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("MODELTRACK_OPENAI_BASEURL", "MODELTRACK_OPENAI_BASE_URL"),
        ("MODELTRACK_READTIMEOUT", "MODELTRACK_READ_TIMEOUT"),
        ("MODELTRACK_FLUSH_INTERVAL", "MODELTRACK_FLUSH_INTERVAL_MS"),
        ("MODELTRACK_ANTHROPIC_INJECT_USAGE", "MODELTRACK_ANTHROPIC_INJECT_STREAM_USAGE"),
    ],
)
def test_unknown_names_are_errors_that_suggest_the_real_one(typo: str, meant: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env={typo: "1"})
    assert f"{typo} (did you mean {meant}?)" in str(info.value)


def test_names_other_parts_read_are_not_unknown() -> None:
    env = {"MODELTRACK_PROXY_URL": "http://x", "MODELTRACK_TEAM": "t", "MODELTRACK_FIXTURES": "/x"}
    assert Settings.load(env=env).port == 8080


def test_settings_that_contradict_each_other() -> None:
    with pytest.raises(ConfigError, match="MAX_BUFFERED_BODY_BYTES=10 is below"):
        Settings.load(env={"MODELTRACK_MAX_BUFFERED_BODY_BYTES": "10"})
    with pytest.raises(ConfigError, match="TLS_CERT and MODELTRACK_TLS_KEY go together"):
        Settings.load(env={"MODELTRACK_TLS_CERT": "/x.pem"})
    with pytest.raises(ConfigError, match="METRICS_PORT is MODELTRACK_PORT"):
        Settings.load(env={"MODELTRACK_METRICS_PORT": "8080"})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://api.openai.com", "is not an http(s) URL"),
        ("https://user:secret@api.openai.com", "credentials in the URL"),
        ("https://api.openai.com/v1?x=1", "write https://api.openai.com/v1"),
        ("https://api.openai.com:notaport", "the port is not a number"),
    ],
)
def test_bad_base_urls(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"MODELTRACK_OPENAI_BASE_URL": url})
    assert "MODELTRACK_OPENAI_BASE_URL" in str(info.value) and expected in str(info.value)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("base", "path", "upstream"),
    [
        ("http://h/v1", "/v1/chat/completions", "/v1/chat/completions"),  # the SDK form: not /v1/v1/...
        ("http://h/v1/", "/v1/embeddings", "/v1/embeddings"),
        ("https://api.groq.com/openai", "/v1/chat/completions", "/openai/v1/chat/completions"),
        ("https://h/openai/v1", "/v1/chat/completions", "/openai/v1/chat/completions"),
        ("https://h/api", "/v1beta/models/m:generateContent", "/api/v1beta/models/m:generateContent"),
        ("https://h", "/v1/x", "/v1/x"),
        ("http://h/v1", "/v10/x", "/v1/v10/x"),  # a shared prefix of characters is not a shared segment
    ],
)
def test_a_base_path_the_request_repeats_is_sent_once(base: str, path: str, upstream: str) -> None:
    assert Origin.parse(base).join(path) == upstream


async def test_base_url_with_v1_reaches_the_right_path(make_proxy: Any) -> None:
    seen: list[bytes] = []

    async def upstream(r: Any, w: Any) -> None:
        seen.append(await read_request(r))
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        await w.drain()

    async with RawServer(upstream) as up:
        proxy = await make_proxy(up.url + "/v1")
        async with aiohttp.ClientSession() as s, s.post(proxy.url + "/v1/chat/completions", data=b"{}") as r:
            assert r.status == 200
    assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1")


def test_store_urls_follow_sqlalchemy(tmp_path: Path) -> None:
    assert _fs_path("sqlite:///data/x.db", "sqlite://") == "data/x.db"  # relative to the working directory
    assert _fs_path("sqlite:///./data/x.db", "sqlite://") == "./data/x.db"
    assert _fs_path("sqlite:////var/lib/x.db", "sqlite://") == "/var/lib/x.db"  # four slashes: absolute
    assert describe_store(f"sqlite:///{tmp_path}/x.db") == f"sqlite {tmp_path}/x.db"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert describe_store("sqlite:///rel.db") == f"sqlite {tmp_path}/rel.db"
    finally:
        os.chdir(cwd)


async def test_the_start_up_line_says_what_is_in_effect_and_never_a_secret(tmp_path: Path) -> None:
    env = {
        "MODELTRACK_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "MODELTRACK_CLIENT_TOKENS": "client-token-CANARY1",
        "MODELTRACK_METRICS_TOKEN": "metrics-token-CANARY2",
        "MODELTRACK_METRICS_PORT": "0",
        "MODELTRACK_ACCESS_LOG": "true",
    }
    proxy = ProxyProcess(tmp_path, env)
    await proxy.start()
    assert await proxy.stop() == 0
    log = proxy.log_path.read_text()
    (line,) = [x for x in log.splitlines() if "modeltrack ready:" in x]
    for part in (
        f"listen=http://127.0.0.1:{proxy.port}",
        "metrics=main port (token)",
        "ui_port=8081",
        "workers=1",
        f"store=sqlite {tmp_path}/events.db",
        "client_tokens=on",
        "controls=off",
        "access_log=on",
        "openai=http://127.0.0.1:9/v1",
        "anthropic=https://api.anthropic.com",
    ):
        assert part in line, part
    assert "CANARY" not in log


async def test_an_unreachable_upstream_names_the_provider_and_the_variable(make_proxy: Any, caplog: Any) -> None:
    proxy = await make_proxy("http://127.0.0.1:9", base_urls={"openai": "http://no-such-host.invalid"})
    async with aiohttp.ClientSession() as s, s.post(proxy.url + "/v1/chat/completions", data=b"{}") as r:
        body = await r.json()
    assert r.status == 502
    message = body["error"]["message"]
    assert "openai" in message and "DNS lookup failed" in message and "MODELTRACK_OPENAI_BASE_URL" in message
    assert "gaierror" not in message
    assert "MODELTRACK_OPENAI_BASE_URL" in caplog.text and "no-such-host.invalid" in caplog.text


def test_serve_help_lists_the_per_provider_variables() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "modeltrack", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("MODELTRACK_<PROVIDER>_BASE_URL", "MODELTRACK_<PROVIDER>_READ_TIMEOUT", "INJECT_STREAM_USAGE"):
        assert name in out
    assert "MODELTRACK_MAX_CONCURRENT_REQUESTS" in out and "HTTPS_PROXY" in out


def test_bad_settings_stop_serve_before_it_starts() -> None:
    env = {**os.environ, "MODELTRACK_QUEUE_SIZE": "0"}
    done = subprocess.run([sys.executable, "-m", "modeltrack", "serve"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "MODELTRACK_QUEUE_SIZE=0 is out of range" in done.stderr


def test_make_test_names_each_missing_tool_when_it_cannot_install(tmp_path: Path) -> None:
    """On a machine without the tools and without root/apt, scripts/test-tools says what to install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sort", "sed", "systemctl", "pkill"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")  # not root
    (bin_dir / "id").chmod(0o755)
    done = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "scripts" / "test-tools")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    for package in ("openjdk-17-jre-headless", "prometheus", "docker-compose", "redis-server", "tinyproxy", "chromium"):
        assert f"apt-get install {package}" in done.stderr


def _tool_dir(tmp_path: Path, calls: Path) -> Path:
    """Every tool scripts/test-tools looks for, present, plus systemctl, pkill, kill and killall that only log
    that they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sort", "sed", "cat", "java", "promtool", "prometheus", "docker-compose", "redis-server"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or "/bin/true")
    for tool in ("tinyproxy", "chromium", "gcc", "apt-get"):
        (bin_dir / tool).symlink_to("/bin/true")
    for tool in ("systemctl", "pkill", "killall", "kill", "service"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def test_make_test_never_stops_or_kills_what_it_did_not_start(tmp_path: Path) -> None:
    """Issue M, item 15: on a workstation or a shared CI box, `make test` must leave running services alone."""
    calls = tmp_path / "calls.log"
    bin_dir = _tool_dir(tmp_path, calls)
    emulator = tmp_path / "emulator"
    emulator.write_text("#!/bin/sh\n")
    emulator.chmod(0o755)
    done = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "scripts" / "test-tools")],
        env={"PATH": str(bin_dir), "MODELTRACK_FIRESTORE_EMULATOR": str(emulator)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert not calls.exists(), calls.read_text()


def test_a_missing_emulator_is_one_line_with_the_install_step(tmp_path: Path) -> None:
    calls = tmp_path / "calls.log"
    bin_dir = _tool_dir(tmp_path, calls)
    done = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "scripts" / "test-tools")],
        env={"PATH": str(bin_dir), "MODELTRACK_FIRESTORE_EMULATOR": str(tmp_path / "nowhere")},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install google-cloud-cli-firestore-emulator" in lines[0], lines
