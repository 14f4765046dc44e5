"""Fire-and-forget work of the controls (a cache store, a webhook post, a lease returned) that must neither hold
up the response nor be lost at shutdown: the tasks are kept (asyncio holds only weak references to tasks) and
can be awaited all at once."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for every task, including those the tasks themselves start."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
