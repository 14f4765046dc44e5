from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.sysinfo import free_port

from modeltrack.app import ModelTrack
from modeltrack.config import PROVIDERS, Settings
from modeltrack.pipeline import Pipeline

from .faults import BigQueryEmulator, FirestoreEmulator, RedisServer, Tinyproxy, emulator_running
from .replay import ReplayUpstream


def pytest_configure(config: pytest.Config) -> None:
    """Never test a compiled module older than its source (modeltrack/native.py): the old code would run."""
    from modeltrack import native

    if changed := native.stale():
        pytest.exit(native.stale_message(changed), returncode=2)


@pytest.fixture
async def replay(aiohttp_server: Any) -> AsyncIterator[tuple[ReplayUpstream, str]]:
    upstream = ReplayUpstream()
    server = await aiohttp_server(upstream.app())
    yield upstream, str(server.make_url("")).rstrip("/")


class Proxy:
    """A ModelTrack service listening on a free loopback port, inside the test's event loop."""

    def __init__(self, service: ModelTrack, port: int) -> None:
        self.service = service
        self.settings = service.settings
        self.url = f"http://127.0.0.1:{port}"

    @property
    def pipeline(self) -> Pipeline:
        return self.service.pipeline

    async def events(self) -> list[Any]:
        await self.pipeline.flush()
        return await self.pipeline.sink.read()


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    started: list[ModelTrack] = []

    async def factory(upstream_url: str, **overrides: Any) -> Proxy:
        base = {p: upstream_url for p in PROVIDERS}
        settings = Settings.load(
            env={},
            overrides={
                "store": f"sqlite:///{tmp_path}/events.db",
                "spool_dir": str(tmp_path / "spool"),
                "base_urls": base,
                "read_timeout": 10.0,
                **overrides,
            },
        )
        service = ModelTrack(settings)
        await service.start()
        started.append(service)
        server = await service.listen("127.0.0.1", 0)
        return Proxy(service, server.sockets[0].getsockname()[1])

    yield factory
    for service in started:
        await service.close(grace=0)


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirestoreEmulator]:
    """The real Firestore emulator on a free loopback port, shared by the session; tests use unique collections."""
    with emulator_running(FirestoreEmulator(free_port(), tmp_path_factory.mktemp("emulator") / "emulator.log")) as emu:
        yield emu


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    """A real BigQuery emulator, shared by the session, with ``BIGQUERY_EMULATOR_HOST`` pointing the warehouse's
    client at it; tests use unique datasets."""
    with emulator_running(BigQueryEmulator(tmp_path_factory.mktemp("bigquery")), "BIGQUERY_EMULATOR_HOST") as emu:
        yield emu


@pytest.fixture(params=["sqlite", "firestore"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store of each kind: SQLite in tmp_path, or a unique collection in the emulator."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    request.getfixturevalue("firestore_emulator")
    return f"firestore://modeltrack-test/t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (apt), shared by the session; tests use distinct keys (they hash their requests)."""
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """Where a test keeps what a person should look at afterwards (screenshots, reports): MODELTRACK_ARTIFACTS,
    or ./artifacts/tests."""
    root = Path(os.environ.get("MODELTRACK_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts" / "tests")
    path = root / request.node.name.split("[")[0]
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    """A real forward proxy (tinyproxy from apt) for egress tests."""
    tp = Tinyproxy(tmp_path)
    yield tp
    tp.stop()
