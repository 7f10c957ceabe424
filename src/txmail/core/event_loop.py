"""Running a service's main coroutine on uvloop, with the garbage collector tuned for a
long-lived process.

uvloop: its event loop and transports cost a fraction of asyncio's per request and per
AMQP frame (bench/RESULTS.md).

The collector: a service's modules, pydantic's schemas and the like live as long as
the process, yet every full collection walked them again, and a young collection ran
every 700 allocations, a few times per postback. A saturated worker spent about a fifth
of its CPU in the collector (bench/RESULTS.md). What exists at start is frozen (never
examined again) and young collections run every 10,000 allocations; the garbage a
cycle leaves is still collected, a little later.
"""

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # a platform uvloop does not build on: asyncio's own loop
    uvloop = None  # type: ignore[assignment]

YOUNG_COLLECTION_EVERY = 10_000  # allocations; CPython's default is 700


def run(main: Coroutine[Any, Any, T]) -> T:
    """What ``asyncio.run(main)`` does, on uvloop where it is installed, with the
    collector tuned."""
    _tune_collector()
    if uvloop is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _tune_collector() -> None:
    gc.collect()  # the start's garbage first: what is frozen is never collected
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, older, oldest)
