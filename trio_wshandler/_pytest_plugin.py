"""The pytest plugin installed with the package (entry point ``pytest11``): the ``ws_client``
fixture, for pytest-trio tests of a handler (``trio_wshandler.testing``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from .testing import TestClient, open_test_client

__all__ = ["ws_client"]

ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def ws_client() -> AsyncIterator[ClientFactory]:
    """``client = await ws_client(target, path="/", **options)``: a :class:`TestClient` as
    ``open_test_client`` makes it, closed (and its handler stopped) when the test ends.

    Each client lives in a task of the fixture's own nursery (a nursery is entered and left by
    one task, so the clients cannot be context managers entered from the test)."""
    async with trio.open_nursery() as nursery:

        async def connect(target: Any, path: str = "/", **options: Any) -> TestClient:
            async def hold(task_status: trio.TaskStatus[TestClient]) -> None:
                async with open_test_client(target, path, **options) as client:
                    task_status.started(client)
                    await trio.sleep_forever()

            client: TestClient = await nursery.start(hold)
            return client

        yield connect
        nursery.cancel_scope.cancel()
