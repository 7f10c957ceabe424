"""Invariants 2 and 3 (docs/architecture.md) end to end: random histories through
RabbitMQ and a worker process."""

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.support.factories import outgoing_postback
from tests.support.harness import body, publisher, queue_readers
from tests.support.histories import Histories, Postbacks, expected_messages, histories, postbacks_of
from tests.support.processes import worker_process
from tests.support.waiting import wait_until
from txmail.core.events import utc_now
from txmail.core.settings import Settings
from txmail.workers.state import outcome, reason
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import DeliveryTimeouts

TIMEOUTS = DeliveryTimeouts(timedelta(hours=1))  # nothing times out in these histories


async def _has_events(store: Store, dispatch_id: str, count: int) -> bool:
    message = await store.find(dispatch_id=dispatch_id)
    return message is not None and len(message.timeline) == count


async def _published(store: Store, dispatch_id: str) -> bool:
    message = await store.find(dispatch_id=dispatch_id)
    return bool(message and message.decision and message.decision.published_at)


async def _run_example(settings: Settings, postbacks: Postbacks, replayed: list[int]) -> None:
    expected = expected_messages(postbacks)
    store = await open_store(settings.database_url, TIMEOUTS)
    try:
        async with publisher(settings) as broker:
            await broker.publish([outgoing_postback(*postbacks[i]) for i in replayed])
        for dispatch_id, (reference, count) in expected.items():
            await wait_until(
                partial(_has_events, store, dispatch_id, count),
                what=f"{count} events of {dispatch_id}",
            )
            message = await store.find(dispatch_id=dispatch_id)
            assert message is not None
            assert message.outcome == outcome(reference)
            assert message.reason == reason(reference)
            assert message.statuses == reference.statuses
        failed = [d for d, (reference, _) in expected.items() if reference.decision]
        for dispatch_id in failed:
            await wait_until(partial(_published, store, dispatch_id), what="decision")
        async with queue_readers(settings) as (fallback, _):
            requests = Counter(body(m)["dispatch_id"] for m in await fallback.take_all())
        assert requests == Counter(failed), "one request per failed message, none for others"
    finally:
        await store.close()


@pytest.mark.timeout(180)
def test_any_order_any_duplicates_same_states_and_one_request_per_failure(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    worker_settings = settings.model_copy(
        update={"database_url": database_url, "delivery_timeout": TIMEOUTS.default}
    )

    @hypothesis_settings(
        max_examples=25,
        deadline=None,
        # One worker serves every example; each example uses its own dispatch ids.
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(histories, st.data())
    def example(history: Histories, data: st.DataObject) -> None:
        # Braze's timestamps are recent, so that nothing is due within the test.
        postbacks = postbacks_of(uuid.uuid4().hex[:10], history, utc_now())
        indices = list(range(len(postbacks)))
        copies = data.draw(st.lists(st.sampled_from(indices))) if indices else []
        replayed = data.draw(st.permutations(indices + copies))
        asyncio.run(_run_example(worker_settings, postbacks, replayed))

    with worker_process(worker_settings, tmp_path / "worker.log"):
        example()
