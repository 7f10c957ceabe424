"""A service's main coroutine runs on uvloop, with the collector tuned for a long life."""

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop

from txmail.core import event_loop


@pytest.fixture
def _collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("_collector_restored")
def test_a_service_runs_on_uvloop_with_what_it_imported_frozen() -> None:
    async def observed() -> tuple[bool, int, int]:
        loop = asyncio.get_running_loop()
        return isinstance(loop, uvloop.Loop), gc.get_freeze_count(), gc.get_threshold()[0]

    on_uvloop, frozen, young_every = event_loop.run(observed())
    assert on_uvloop
    assert frozen > 10_000  # every module and schema imported so far
    assert young_every == event_loop.YOUNG_COLLECTION_EVERY
