"""The tracker's inbox: batches up to a size, waiting for company from the oldest
delivery's arrival (workers/inbox.py)."""

import asyncio

from txmail.workers.inbox import Inbox


async def timed_batch(inbox: Inbox[int]) -> tuple[list[int], float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    batch = await inbox.next_batch(idle_timeout=5)
    return batch, loop.time() - started


async def test_a_full_batch_goes_at_once() -> None:
    inbox: Inbox[int] = Inbox(size=3, wait=10)
    for i in range(5):
        await inbox.put(i)

    batch, took = await timed_batch(inbox)

    assert batch == [0, 1, 2]
    assert took < 1
    assert list(inbox.waiting()) == [3, 4]


async def test_deliveries_that_waited_out_the_wait_already_go_at_once() -> None:
    inbox: Inbox[int] = Inbox(size=200, wait=1)
    await inbox.put(1)
    await asyncio.sleep(1.05)  # the batch before took this long to apply

    batch, took = await timed_batch(inbox)

    assert batch == [1]
    assert took < 0.5


async def test_a_lone_delivery_waits_for_company() -> None:
    inbox: Inbox[int] = Inbox(size=200, wait=0.5)
    await inbox.put(1)
    taking = asyncio.ensure_future(timed_batch(inbox))
    await asyncio.sleep(0.1)
    await inbox.put(2)

    batch, took = await taking

    assert batch == [1, 2]
    assert 0.3 < took < 2


async def test_nothing_within_the_idle_timeout_is_an_empty_batch() -> None:
    inbox: Inbox[int] = Inbox(size=200, wait=0.05)

    assert await inbox.next_batch(idle_timeout=0.05) == []
