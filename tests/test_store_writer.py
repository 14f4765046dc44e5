"""The store writer process (modeltrack.sinks.process): events written by a child at SCHED_IDLE, exactly once
through its crashes, a starved or lagging child restarted at the normal policy, errors that cross by name only,
and a child that neither dies before its parent has drained nor outlives it."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bench.sysinfo import free_port

from modeltrack.events import CostEvent
from modeltrack.sched import SpareCores
from modeltrack.sinks import ProcessWriter, is_transient, open_sink
from modeltrack.sinks.process import RemoteStoreError
from modeltrack.sinks.sqlite import SQLiteSink
from modeltrack.sinks.writer import STEP

from .proc import wait_http_ok
from .replay import load
from .test_pipeline import make_event

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="the writer's priority is Linux's")

BODY = b'{"model":"gpt-5.6-sol","messages":[{"role":"user","content":"hi"}]}'


def recorded(upstream: Any) -> None:
    """Serve one real recorded chat completion to every request."""
    upstream.current = load("test_openai_prompt_cache__test_openai_chat_prompt_cache_e2e", 1)
    upstream.chunked = False


async def send(url: str, sessions: range) -> None:
    async with aiohttp.ClientSession() as s:
        for i in sessions:
            headers = {"X-ModelTrack-Session-Id": f"s-{i}", "Content-Type": "application/json"}
            async with s.post(url + "/v1/chat/completions", data=BODY, headers=headers) as r:
                assert r.status == 200
                await r.read()


def once(events: list[CostEvent], n: int) -> None:
    counts = collections.Counter(e.session_id for e in events)
    assert [s for s, k in counts.items() if k > 1] == [], "an event was stored twice"
    assert set(counts) == {f"s-{i}" for i in range(n)}, f"{n - len(counts)} events are missing"


async def test_events_are_written_once_by_an_idle_child(replay: Any, make_proxy: Any) -> None:
    upstream, upstream_url = replay
    recorded(upstream)
    proxy = await make_proxy(upstream_url)
    writer = proxy.pipeline.sink
    assert isinstance(writer, ProcessWriter)
    pid = writer.pid
    assert pid is not None and pid != os.getpid()
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE  # from its start, before any batch
    await send(proxy.url, range(200))
    await proxy.pipeline.flush()
    threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    assert len(threads) >= 2  # its main thread and the worker thread SQLite runs on
    assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_IDLE}
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2] == proxy.settings.store.encode()
    once(await writer.read(), 200)
    assert writer.started == 1


async def test_a_killed_child_is_replaced_and_nothing_is_lost(replay: Any, make_proxy: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    recorded(upstream)
    proxy = await make_proxy(upstream_url)
    writer = proxy.pipeline.sink
    await send(proxy.url, range(100))
    await proxy.pipeline.flush()
    os.kill(writer.pid, signal.SIGKILL)  # between two batches
    await send(proxy.url, range(100, 200))
    # Now in the middle of one: another connection holds the write lock, so the child waits inside its batch.
    blocker = sqlite3.connect(str(tmp_path / "events.db"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    proxy.pipeline.enqueue(make_event(200))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if proxy.pipeline.depth == 0:
            break
    await asyncio.sleep(0.1)
    os.kill(writer.pid, signal.SIGKILL)
    blocker.execute("ROLLBACK")
    await proxy.pipeline.flush()
    once(await writer.read(), 201)
    assert writer.started == 3 + writer.promotions  # two kills (plus a restart if the machine starved it)


async def test_a_starved_child_is_restarted_at_normal_priority(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    sink = SQLiteSink(str(tmp_path / "events.db"))
    writer = ProcessWriter(sink, url, starved_after=0.3, normal_for=60)
    await writer.open()
    cpu = min(os.sched_getaffinity(0))
    # A busy loop at the normal policy on the child's only core: an idle child gets no CPU there.
    hog = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
    )
    try:
        first = writer.pid
        assert first is not None
        for tid in os.listdir(f"/proc/{first}/task"):  # every thread: SQLite works on the child's worker thread
            os.sched_setaffinity(int(tid), {cpu})
        batch = [make_event(i) for i in range(500)]
        t0 = time.monotonic()
        # The restart is the writer's own doing, not a store failure: the same write hands the batch to a new
        # child, at the normal policy, and returns once it is stored. Raised to the pipeline, it was charged to
        # the batch's retry budget: a slow first attempt (an idle child on a busy machine) then spooled it.
        await writer.write(batch)
        assert writer.promotions == 1
        # Not restarted before starved_after (the batch's whole write includes the wait), nor left to crawl.
        assert 0.3 <= time.monotonic() - t0 < 3.0, "the starved child is noticed after starved_after"
        assert writer.pid not in (None, first) and writer.started == 2
        assert os.sched_getscheduler(writer.pid) == os.SCHED_OTHER
        once(await writer.read(), 500)
        await writer.write([make_event(i) for i in range(500, 600)])  # the new child keeps the normal policy
        assert writer.promotions == 1 and writer.started == 2
        once(await writer.read(), 600)
    finally:
        hog.kill()
        hog.wait()
        await writer.close()


def lagging_writer(tmp_path: Path, waiting: list[int], **kw: Any) -> ProcessWriter:
    """A writer told its backlog by ``waiting[0]``, behind from 100 events on, and never promoted for starving:
    these tests are about the backlog, and a busy machine must not promote it for that."""
    url = f"sqlite:///{tmp_path}/events.db"
    sink = SQLiteSink(str(tmp_path / "events.db"))
    return ProcessWriter(sink, url, backlog=lambda: waiting[0], behind_after=100, starved_after=60, **kw)


async def test_a_writer_that_falls_behind_is_restarted_at_normal_priority(tmp_path: Path) -> None:
    waiting = [0]
    writer = lagging_writer(tmp_path, waiting, normal_for=60)
    await writer.open()
    try:
        first = writer.pid
        assert first is not None and os.sched_getscheduler(first) == os.SCHED_IDLE
        waiting[0] = 99  # less than a batch behind: it stays idle
        await writer.write([make_event(i) for i in range(50)])
        assert writer.pid == first and writer.promotions == 0
        waiting[0] = 100
        await writer.write([make_event(i) for i in range(50, 100)])
        assert writer.promotions == 1 and writer.pid not in (None, first)
        assert os.sched_getscheduler(writer.pid) == os.SCHED_OTHER
        second = writer.pid
        await writer.write([make_event(i) for i in range(100, 150)])  # promoted once a period, not once a batch
        assert writer.pid == second and writer.promotions == 1
        once(await writer.read(), 150)
    finally:
        await writer.close()


async def test_a_promoted_writer_is_idle_again_once_its_period_is_over_and_it_has_caught_up(tmp_path: Path) -> None:
    """After a burst the writer must not keep the proxy's priority: requests would wait behind it. Past its
    ``normal_for`` seconds it stays at the normal policy only while it is still behind; the first batch that finds
    it caught up makes the same child idle again (no restart)."""
    waiting = [100]
    # A busy machine: the period is not cut short.
    writer = lagging_writer(tmp_path, waiting, normal_for=0.5, spare_cores=lambda: 0.0)
    await writer.open()
    try:
        await writer.write([make_event(i) for i in range(50)])
        assert writer.promotions == 1 and writer.pid is not None
        promoted = writer.pid
        assert os.sched_getscheduler(promoted) == os.SCHED_OTHER
        waiting[0] = 0
        await writer.write([make_event(i) for i in range(50, 100)])  # caught up, but within its period
        assert os.sched_getscheduler(promoted) == os.SCHED_OTHER
        await asyncio.sleep(0.6)
        waiting[0] = 150
        await writer.write([make_event(i) for i in range(100, 150)])  # past its period, still behind
        assert writer.pid == promoted and os.sched_getscheduler(promoted) == os.SCHED_OTHER
        waiting[0] = 99
        await writer.write([make_event(i) for i in range(150, 200)])  # past its period and caught up
        assert writer.pid == promoted and writer.promotions == 1
        assert all(os.sched_getscheduler(int(tid)) == os.SCHED_IDLE for tid in os.listdir(f"/proc/{promoted}/task"))
        once(await writer.read(), 200)
    finally:
        await writer.close()


async def test_a_promoted_writer_goes_back_to_idle_early_once_the_machine_has_cores_to_spare(tmp_path: Path) -> None:
    """A burst promoted the writer for ``normal_for`` seconds; when the burst is over (caught up, half a core or
    more idle) it goes back to idle before then, after ``min_normal`` seconds, without a restart. Once a period:
    promoted again within ``normal_for`` of that, it keeps the whole period, however idle the machine looks (a
    CPU quota can keep the machine's idle time from it)."""
    waiting, spare = [100], [0.0]
    writer = lagging_writer(tmp_path, waiting, normal_for=60, min_normal=0.3, spare_cores=lambda: spare[0])

    def policies(pid: int) -> set[int]:
        return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}

    await writer.open()
    try:
        await writer.write([make_event(i) for i in range(50)])
        assert writer.promotions == 1 and writer.pid is not None
        first = writer.pid
        waiting[0], spare[0] = 0, 1.5
        await writer.write([make_event(i) for i in range(50, 100)])  # caught up and idle cores, but too soon
        assert policies(first) == {os.SCHED_OTHER}
        await asyncio.sleep(0.35)
        spare[0] = 0.2
        await writer.write([make_event(i) for i in range(100, 150)])  # caught up, but the machine is busy
        assert policies(first) == {os.SCHED_OTHER}
        spare[0] = 1.5
        await writer.write([make_event(i) for i in range(150, 200)])
        assert writer.pid == first and policies(first) == {os.SCHED_IDLE}
        waiting[0] = 100
        await writer.write([make_event(i) for i in range(200, 250)])  # behind again: restarted
        assert writer.promotions == 2 and writer.pid not in (None, first)
        second = writer.pid
        waiting[0] = 0
        await asyncio.sleep(0.35)
        await writer.write([make_event(i) for i in range(250, 300)])  # idle cores, but once a period
        assert writer.pid == second and policies(second) == {os.SCHED_OTHER}
        once(await writer.read(), 300)
    finally:
        await writer.close()


def test_spare_cores_sees_the_machine_busy_and_idle() -> None:
    """The signal a promoted writer goes back to idle on: the machine's idle cores since the last look, read from
    /proc/stat; with a busy loop on every core there are none. Unreadable, it says none (never a reason to lower
    a writer early)."""
    spare = SpareCores()
    time.sleep(0.3)
    idle = spare()
    cores = os.cpu_count() or 1
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.3)  # the hogs start
        spare()
        time.sleep(0.3)
        busy = spare()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert 0.0 <= busy < 0.5 and busy < idle - 0.5 and idle <= cores + 0.1
    assert SpareCores("/nonexistent/stat")() == 0.0


async def test_a_batch_larger_than_a_step_is_stored_once_in_steps(tmp_path: Path) -> None:
    """The child writes SQLite in steps of STEP events (yielding the CPU between): a batch of several steps,
    sent twice (the parent's retry after a step failed), is stored once, every event of it."""
    url = f"sqlite:///{tmp_path}/events.db"
    writer = ProcessWriter(SQLiteSink(str(tmp_path / "events.db")), url)
    await writer.open()
    try:
        batch = [make_event(i) for i in range(2 * STEP + 37)]
        await writer.write(batch)
        await writer.write(batch)
        once(await writer.read(), len(batch))
    finally:
        await writer.close()


async def test_store_errors_cross_by_name_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/events.db"
    writer = ProcessWriter(SQLiteSink(str(tmp_path / "events.db")), url)
    await writer.open()
    try:

        class Batch(list[CostEvent]):
            docs: list[bytes] | None = None

        bad = Batch([make_event(0)])
        bad.docs = [b'{"team": "sk-canary-4f1d8e2b9c7a"}\n']  # not an event: the child cannot build one
        with pytest.raises(RemoteStoreError) as err:
            await writer.write(bad)
        assert type(err.value).__name__ == "TypeError"
        assert not is_transient(err.value)
        assert "sk-canary" not in str(err.value) and "sk-canary" not in repr(err.value)
        await writer.write([make_event(1)])  # the same child goes on
        assert writer.started == 1
        assert [e.session_id for e in await writer.read()] == ["s-1"]
    finally:
        await writer.close()


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class _Serve:
    """``modeltrack serve`` in a session of its own, so a signal can go to its whole process group."""

    def __init__(self, tmp: Path, upstream_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{tmp}/events.db"
        self.spool = tmp / "spool"
        self.env = {
            **os.environ,
            "MODELTRACK_PORT": str(self.port),
            "MODELTRACK_STORE": self.store,
            "MODELTRACK_SPOOL_DIR": str(self.spool),
            "MODELTRACK_OPENAI_BASE_URL": upstream_url,
            **env,
        }
        self.log = open(tmp / "proxy.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modeltrack", "serve"],
            env=self.env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    async def ready(self) -> int:
        assert await wait_http_ok(self.url + "/healthz", 20, alive=lambda: self.proc.poll() is None)
        for _ in range(200):  # the port answers a moment before the pipeline has started its writer
            children = _children(self.proc.pid)
            if children:
                (child,) = children
                return child
            await asyncio.sleep(0.05)
        raise AssertionError("no store writer process")

    async def exited(self, timeout: float = 20) -> int:
        for _ in range(int(timeout * 20)):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        self.proc.kill()
        raise AssertionError("the proxy did not exit")


async def test_ctrl_c_to_the_group_drains_the_queue_through_the_child(replay: Any, tmp_path: Path) -> None:
    """A Ctrl-C reaches every process in the terminal's group. The child ignores it; the parent sends it the
    queue, closes its stdin, and both exit, with every event stored and nothing spooled."""
    upstream, upstream_url = replay
    recorded(upstream)
    serve = _Serve(tmp_path, upstream_url, MODELTRACK_FLUSH_INTERVAL_MS="60000", MODELTRACK_BATCH_SIZE="10000")
    try:
        child = await serve.ready()
        await send(serve.url, range(300))  # held in the queue: a batch is 10,000 or a minute
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(child, sig)
        await asyncio.sleep(0.3)
        assert _alive(child), "the writer ignores signals: its parent ends it once the queue is stored"
        os.killpg(serve.proc.pid, signal.SIGINT)
        assert await serve.exited() == 0
        for _ in range(100):
            if not _alive(child):
                break
            await asyncio.sleep(0.05)
        assert not _alive(child)
        sink = open_sink(serve.store)
        await sink.open()
        once(await sink.read(), 300)
        left = [p.name for p in serve.spool.iterdir() if p.name.startswith(("spool-", "journal-", "deadletter"))]
        assert left == [], "nothing may be left in the spool or the journal"
    finally:
        if serve.proc.poll() is None:
            for pid in _children(serve.proc.pid):
                os.kill(pid, signal.SIGKILL)
            serve.proc.kill()


async def test_a_killed_proxy_takes_its_writer_with_it(replay: Any, tmp_path: Path) -> None:
    upstream, upstream_url = replay
    recorded(upstream)
    serve = _Serve(tmp_path, upstream_url)
    child = None
    try:
        child = await serve.ready()
        assert _alive(child)
        serve.proc.kill()
        serve.proc.wait()
        for _ in range(100):
            if not _alive(child):
                break
            await asyncio.sleep(0.05)
        assert not _alive(child), "the writer must end when its parent's pipe closes"
    finally:
        serve.proc.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)
