"""schemathesis, a fuzzer nobody here wrote, against a live ingress (real RabbitMQ) and a
live api (real PostgreSQL): generated and mutated bodies, headers and query strings for
every operation of each OpenAPI document. It must find no 5xx and no answer the document
does not describe; and whatever the ingress accepted must be exactly what reached the
queue, each message one a worker can apply to the store.

By hand, against running processes (README, "The contract"):
    st run http://127.0.0.1:8080/openapi.json -H 'Authorization: Bearer <token>'
"""

import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support.amqp import drain, queue_depth
from tests.support.fallback import park
from tests.support.ingress_server import running_ingress
from txmail.core.events import FallbackRequest, utc_now
from txmail.core.http import serving
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.fallback.executor.service import fallback_topology
from txmail.fallback.parking.operations import BrokerParkedFallbacks
from txmail.workers.api import create_api_app
from txmail.workers.console.access import ApiTokens
from txmail.workers.incoming import decode, received_at
from txmail.workers.store import open_store
from txmail.workers.store.protocol import Store
from txmail.workers.timeouts import DeliveryTimeouts

TOKEN = "fuzz-token"  # one token for every route: schemathesis sends one header to all
DEPLOY = Path(__file__).parent.parent / "deploy"
SAMPLE_SEND_ID = json.loads((DEPLOY / "sample-send.json").read_text())["external_send_id"]
# Fixed seed, deterministic generation: the same cases every run, so a failure is a
# defect to fix and never a flake. Raise --max-examples by hand to search harder.
SCHEMATHESIS = (
    "--checks=all",
    # Both ask the document to draw the exact line between valid and invalid: durations
    # ("1 h", a number of seconds under 1 ms) are looser than a pattern can say. Whether
    # the ingress lets anything malformed through is checked on the queue below.
    "--exclude-checks=positive_data_acceptance,negative_data_rejection",
    "--max-examples=30",
    # The stateful phase would chain calls by the links it infers, and covers none of
    # them here (the api's reads do not feed its one write); it doubled the run's time.
    "--phases=examples,coverage,fuzzing",
    "--seed=20261129",
    "--generation-deterministic",
    "--workers=2",
    "--no-color",
    f"--header=Authorization: Bearer {TOKEN}",
)


async def schemathesis(base_url: str, har: Path) -> None:
    """Run ``st run`` against the server at ``base_url``; fail with its report."""
    process = await asyncio.create_subprocess_exec(
        Path(sys.executable).with_name("st"), "run", f"{base_url}/openapi.json",
        *SCHEMATHESIS, "--report=har", f"--report-har-path={har}",
        cwd=har.parent, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")[-6000:]


def exchanges(har: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(har.read_text())["log"]["entries"]
    return entries


def accepted_event_ids(har: Path) -> list[str]:
    """Every event id the ingress answered 202 for, once per time it did."""
    ids: list[str] = []
    for entry in exchanges(har):
        if entry["response"]["status"] == 202:
            answer = json.loads(entry["response"]["content"]["text"])
            ids.extend(answer.get("event_ids") or [answer["event_id"]])
    return ids


@pytest.fixture
async def store(postgres_schema_url: str) -> AsyncIterator[Store]:
    opened = await open_store(postgres_schema_url, DeliveryTimeouts(timedelta(minutes=10)))
    yield opened
    await opened.close()


async def test_schemathesis_finds_no_defect_in_the_ingress_and_the_api(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    guarded = settings.model_copy(
        update={"postback_token": SecretStr(TOKEN), "api_token": SecretStr(TOKEN)}
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running_ingress(guarded) as client:
        # The README's sample: the api's documented example ids then find a message.
        samples = [
            await client.post(path, data=(DEPLOY / sample).read_bytes(), headers=auth)
            for path, sample in (
                ("/v1/sends", "sample-send.json"),
                ("/postbacks", "sample-postbacks.json"),
            )
        ]
        assert [r.status for r in samples] == [202, 202]
        expected = [await r.json() for r in samples]
        await schemathesis(str(client.make_url("")).rstrip("/"), tmp_path / "ingress.har")

    accepted = Counter(accepted_event_ids(tmp_path / "ingress.har"))
    accepted.update([expected[0]["event_id"], *expected[1]["event_ids"]])
    assert len(accepted) > 20, "schemathesis should get many postbacks and sends accepted"
    tracker_queue = Topology(settings.namespace).tracker_queue
    queued = await drain(
        settings.amqp_url, tracker_queue, await queue_depth(settings.amqp_url, tracker_queue)
    )
    assert Counter(m.message_id for m in queued) == accepted
    now = utc_now()
    # Raises NotTheContract for a message no worker could apply, and the store raises
    # for one it could not keep.
    events = [decode(m.type, m.body, received_at(m.headers, m.timestamp, now)) for m in queued]
    await store.apply(events, now)
    before = await store.counts()

    # The sample's fallback request parked, as if its handler had failed for good: the
    # document's replay example names it, so replay and the parked lists act for real.
    sample = await store.find(external_send_id=SAMPLE_SEND_ID)
    assert sample is not None
    assert sample.decision is not None
    request = sample.decision.request
    assert request is not None
    await park(settings, request)
    api = create_api_app(
        store, ApiTokens(replay=SecretStr(TOKEN)), parked=BrokerParkedFallbacks(settings)
    )
    async with serving(api, "127.0.0.1", 0, guarded) as port:
        await schemathesis(f"http://127.0.0.1:{port}", tmp_path / "api.har")
    answered = Counter(
        (e["request"]["method"], e["request"]["url"].split("?")[0].split(f":{port}")[1],
         e["response"]["status"])
        for e in exchanges(tmp_path / "api.har")
    )  # fmt: skip
    assert answered["GET", f"/v1/messages/{sample.dispatch_id}", 200] > 0, "a documented example"
    assert answered["POST", "/v1/parked/replay", 200] > 0, "replays should have been asked for"
    assert await store.counts() == before  # the api only reads
    # Replaying moves the parked request, never copies, loses or changes it: it is in
    # exactly one of the two queues, as it was parked.
    topology = fallback_topology(settings)
    held = [
        message
        for queue in (topology.fallback_parking_queue, topology.fallback_queue)
        for message in await drain(
            settings.amqp_url, queue, await queue_depth(settings.amqp_url, queue)
        )
    ]
    assert [FallbackRequest.model_validate_json(m.body) for m in held] == [request]
