"""A `delivered` one worker holds keeps its deadline, whatever the other workers applied.

Under a backlog Braze's times lag the arrivals: the arrival bound is far past every
deadline in play, so only the held postback's own Braze time can hold its deadline.
"""

from datetime import timedelta

import aio_pika
from pamqp.commands import Basic

from tests.support.factories import outgoing_postback, postback, raw_postback
from tests.support.harness import publisher
from tests.support.waiting import wait_until
from txmail.core.consumer import Received
from txmail.core.events import utc_now
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.workers.store import open_store
from txmail.workers.sweeper import Sweeper
from txmail.workers.timeouts import DeliveryTimeouts
from txmail.workers.tracker import Tracker
from txmail.workers.watermark import WatermarkRule, WorkerProgress

TIMEOUT = timedelta(seconds=1)
SKEW = timedelta(seconds=1)


async def test_a_delivered_in_one_workers_inbox_is_not_timed_out_by_anothers_progress(
    settings: Settings, database_url: str
) -> None:
    settings = settings.model_copy(
        update={"database_url": database_url, "delivery_timeout": TIMEOUT}
    )
    topology = Topology(settings.namespace)
    store = await open_store(
        database_url, DeliveryTimeouts(settings.delivery_timeout), settings.republish_after
    )
    braze_behind = utc_now() - timedelta(minutes=10)
    try:
        async with publisher(settings) as broker:
            now = utc_now()
            await store.apply(
                [
                    postback("held", "sent", now, sent_at=braze_behind.isoformat()),
                    # Sent and never delivered well before: its timeout is due.
                    postback(
                        "never", "sent", now, sent_at=(braze_behind - 10 * TIMEOUT).isoformat()
                    ),
                ],
                now,
            )
            delivered_at = braze_behind + TIMEOUT / 2
            raw = raw_postback("held", "delivered", delivered_at=delivered_at.isoformat())
            await broker.publish([outgoing_postback(raw, utc_now())])

            # This worker took the `delivered` from the queue and has not applied it yet.
            tracker = Tracker(settings.amqp_url, topology, store, broker, 10, 0.005)
            async with await aio_pika.connect(settings.amqp_url) as connection:
                channel = await (await connection.channel()).get_underlay_channel()
                taken: list[Received] = []

                async def take() -> bool:
                    got = await channel.basic_get(topology.tracker_queue)
                    if isinstance(got.delivery, Basic.GetOk):
                        taken.append(Received(got))
                    return bool(taken)

                await wait_until(take, what="the delivered on the tracker queue")
                await tracker._arrive(taken[0])

                # Another worker applied postbacks Braze stamped a minute later.
                now = utc_now()
                other = WorkerProgress(
                    "other", now, now, braze_behind + timedelta(minutes=1), now, None
                )
                await store.report_progress(other, now - timedelta(hours=1))
                rule = WatermarkRule(SKEW, timedelta(minutes=5), settings.sweep_interval)
                sweeper = Sweeper(
                    store, broker, settings.sweep_interval, settings.retention, tracker, rule
                )
                await sweeper.sweep(utc_now())

            never = await store.find(dispatch_id="never")
            held = await store.find(dispatch_id="held")
            assert never is not None
            assert never.decision is not None
            assert held is not None
            assert held.decision is None
    finally:
        await store.close()
