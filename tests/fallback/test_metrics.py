"""Every process's ``/metrics``, scraped from real processes while real postbacks go
through ingress → worker → executor: each metric family moves when its event happens,
on the process that owns it, and the Grafana dashboard queries nothing they lack."""

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.support.burst_load import all_ready, pipeline
from tests.support.factories import raw_postback
from tests.support.harness import publisher
from tests.support.metrics import (
    Samples,
    dashboard_queries,
    exposition,
    families,
    names,
    scrape,
    value,
)
from tests.support.ports import free_port
from tests.support.processes import environment, spawn
from tests.support.rules_file import webhook_to
from tests.support.servers import Receiver
from tests.support.waiting import wait_until
from txmail.core.broker import TO_QUEUE, Outgoing
from txmail.core.events import FALLBACK_REQUEST_TYPE, POSTBACK_TYPE, utc_now
from txmail.core.settings import Settings
from txmail.core.topology import Topology
from txmail.fallback import metrics as fallback_metrics
from txmail.fallback.policy.circuit import Circuits, CircuitState
from txmail.ingress import metrics as ingress_metrics
from txmail.workers import metrics as worker_metrics

PROCESSES = ("ingress", "api", "worker", "fallback")
PORT_VARIABLE = {
    "ingress": "TXMAIL_HTTP_PORT",
    "api": "TXMAIL_API_PORT",
    "worker": "TXMAIL_METRICS_PORT",
    "fallback": "TXMAIL_METRICS_PORT",
}


@pytest.fixture
def quick(fallback_settings: Settings) -> Settings:
    """Deadlines of a second, fired within about a second more."""
    return fallback_settings.model_copy(
        update={
            "delivery_timeout": timedelta(seconds=1),
            "sweep_interval": timedelta(milliseconds=100),
            "watermark_skew": timedelta(milliseconds=500),
            "max_lateness": timedelta(milliseconds=500),
        }
    )


async def _post(url: str, body: object) -> int:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers={"Content-Type": "application/json"}) as response,
    ):
        return response.status


async def _post_a_day(ingress: str) -> None:
    """A delivered send (registered), a bounce, a send that never arrives, one that has
    an hour to arrive, a status Braze does not document, and a body that is not JSON."""
    now = utc_now()

    def ago(seconds: float) -> str:
        return (now - timedelta(seconds=seconds)).isoformat()

    registration = {"external_send_id": "send-1", "recipient": {"email": "ada@example.com"}}
    assert await _post(f"{ingress}/v1/sends", registration) == 202
    patient = {"external_send_id": "send-5", "delivery_timeout": "1h"}
    assert await _post(f"{ingress}/v1/sends", patient) == 202
    day = [
        raw_postback("d-1", "sent", sent_at=ago(2), external_send_id="send-1"),
        raw_postback("d-1", "delivered", delivered_at=ago(1.5), external_send_id="send-1"),
        raw_postback("d-2", "bounced", bounced_at=ago(0), reason="550 5.1.1 no such user"),
        raw_postback("d-3", "sent", sent_at=ago(0)),
        raw_postback("d-4", "opened"),
        raw_postback("d-5", "sent", sent_at=ago(0), external_send_id="send-5"),
    ]
    assert await _post(f"{ingress}/postbacks", day) == 202
    assert await _post(f"{ingress}/postbacks", b"not json") == 400


async def _publish_what_no_process_can_use(settings: Settings) -> None:
    """A postback that is not JSON (dead-lettered) and a fallback request that cannot
    be read (parked)."""
    async with publisher(settings) as broker:
        await broker.publish(
            [
                Outgoing("postback.sent", b"not json", "poison-1", POSTBACK_TYPE),
                Outgoing(
                    Topology(settings.namespace).fallback_queue,
                    b"{}",
                    "poison-2",
                    FALLBACK_REQUEST_TYPE,
                    exchange=TO_QUEUE,
                ),
            ]
        )


def _ingress_counted(ingress: Samples) -> bool:
    received = "txmail_postbacks_received_total"
    return (
        value(ingress, received, status="sent", answer="202") == 3
        and value(ingress, received, status="delivered", answer="202") == 1
        and value(ingress, received, status="bounced", answer="202") == 1
        and value(ingress, received, status="other", answer="202") == 1
        and value(ingress, received, status="unread", answer="400") == 1
        and value(ingress, "txmail_sends_registered_total", answer="202") == 2
        and value(ingress, "txmail_publish_confirm_seconds_count") == 3
    )


def _worker_counted(worker: Samples) -> bool:
    applied = "txmail_events_applied_total"
    return (
        value(worker, applied, kind="postback") == 6
        and value(worker, applied, kind="send_registration") == 2
        # the bounce's retry and success, the timeout's success
        and value(worker, applied, kind="fallback_attempt") == 3
        and value(worker, "txmail_events_refused_total", settlement="dead_letter") == 1
        and value(worker, "txmail_tracker_batch_size_count") >= 1
        and value(worker, "txmail_tracker_batch_seconds_count") >= 1
        # the five postbacks with a Braze time (an undocumented status has none)
        and value(worker, "txmail_tracker_lag_seconds_count") == 5
        and value(worker, "txmail_braze_delivery_seconds_count") == 1
        and value(worker, "txmail_braze_delivery_seconds_sum") == pytest.approx(0.5)
        and value(worker, "txmail_fallbacks_decided_total", trigger="bounced") == 1
        and value(worker, "txmail_fallbacks_decided_total", trigger="timeout") == 1
        and value(worker, "txmail_deadlines_fired_total", trigger="timeout") == 1
        and value(worker, "txmail_publish_confirm_seconds_count") >= 2  # both decisions
        # the tally, every 15 sweeps
        and value(worker, "txmail_messages", outcome="delivered") == 1
        and value(worker, "txmail_messages", outcome="bounced") == 1
        and value(worker, "txmail_messages", outcome="timed_out") == 1
        and value(worker, "txmail_messages", outcome="in_flight") == 2
        and value(worker, "txmail_deadlines_pending") == 1  # the hour
    )


def _executor_counted(executor: Samples) -> bool:
    attempts, hook = "txmail_fallback_attempts_total", "ops-hook"
    return (
        value(executor, attempts, handler=hook, outcome="retrying") == 1
        and value(executor, attempts, handler=hook, outcome="succeeded") == 2
        and value(executor, "txmail_fallback_handler_seconds_count", handler=hook) == 3
        and value(executor, "txmail_fallback_retries_scheduled_total") == 1
        and value(executor, "txmail_fallback_parked_total") == 1
        and value(executor, "txmail_fallback_circuit_state", handler=hook, state="closed") == 1
        and value(executor, "txmail_fallback_circuit_state", handler=hook, state="open") == 0
    )


async def test_a_day_of_postbacks_moves_each_metric_on_the_process_that_owns_it(
    quick: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(webhook_to(receiver.url))
    receiver.webhook.answers.append(503)  # the bounce's first call fails: one retry
    ports = {name: free_port() for name in PROCESSES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {**environment(quick, rules), "TXMAIL_HTTP_HOST": "127.0.0.1", "TXMAIL_LOG_LEVEL": "info"}
    with pipeline(env, tmp_path) as running:
        for name in PROCESSES:
            running.start(name, name, **{PORT_VARIABLE[name]: str(ports[name])})
        await wait_until(lambda: all_ready(list(urls.values())), timeout=30, what="all ready")

        await _post_a_day(urls["ingress"])
        await _publish_what_no_process_can_use(quick)

        scraped: dict[str, Samples] = {}

        async def counted(name: str, check: Callable[[Samples], bool]) -> bool:
            scraped[name] = await scrape(urls[name])
            return check(scraped[name])

        await wait_until(lambda: counted("ingress", _ingress_counted), what="ingress counts")
        await wait_until(
            lambda: counted("worker", _worker_counted), timeout=20, what="worker counts"
        )
        await wait_until(
            lambda: counted("fallback", _executor_counted), timeout=20, what="executor counts"
        )
        scraped["api"] = await scrape(urls["api"])

    # One process, one target: each serves its own layer's metrics, not another's.
    assert "txmail_postbacks_received_total" not in names(scraped["worker"])
    assert "txmail_events_applied_total" not in names(scraped["fallback"])
    assert "txmail_fallback_attempts_total" not in names(scraped["ingress"])
    for name in PROCESSES:
        assert "process_resident_memory_bytes" in names(scraped[name]), name
        assert value(scraped[name], "txmail_build_info", version="0.1.0") == 1, name

    # Logs stay JSON lines, one per meaningful event: at the default level the ingress
    # tells of the body that is not JSON and of the status Braze does not document,
    # and of nothing it accepted as it should.
    lines = (tmp_path / "ingress.log").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events.count("postback rejected") == 1
    assert events.count("postback with an undocumented status accepted") == 1
    assert not {"postback accepted", "send registered"} & set(events), events

    exposed = set().union(*(names(samples) for samples in scraped.values()))
    assert dashboard_queries(), "the dashboard queries nothing"
    assert dashboard_queries() <= exposed, dashboard_queries() - exposed


async def test_txmail_run_serves_every_layers_metrics_on_both_ports(
    settings: Settings, tmp_path: Path
) -> None:
    http_port, api_port = free_port(), free_port()
    env = {
        **environment(settings, rules=None),
        "TXMAIL_DATABASE_URL": f"sqlite:///{tmp_path / 'txmail.db'}",
        "TXMAIL_HTTP_HOST": "127.0.0.1",
        "TXMAIL_HTTP_PORT": str(http_port),
        "TXMAIL_API_PORT": str(api_port),
    }
    every_layer = {
        metric.name
        for layer in (ingress_metrics, worker_metrics, fallback_metrics)
        for metric in layer.REGISTRY.collect()
    }
    process = await spawn("run", env=env)
    try:
        urls = [f"http://127.0.0.1:{port}" for port in (http_port, api_port)]
        await wait_until(lambda: all_ready(urls), timeout=30, what="txmail run ready")
        for url in urls:
            served = families(await exposition(url))
            assert every_layer <= served, every_layer - served
            assert {"txmail_publish_confirm_seconds", "process_cpu_seconds"} <= served
    finally:
        process.terminate()
        assert await process.wait() == 0


def test_the_circuit_gauge_says_the_state_each_breaker_is_in() -> None:
    circuits = Circuits(failures_to_open=1, open_for=timedelta(minutes=1))
    fallback_metrics.watch_circuits(circuits, ["sms"])

    def state() -> dict[str, float | None]:
        return {
            s.value: fallback_metrics.REGISTRY.get_sample_value(
                "txmail_fallback_circuit_state", {"handler": "sms", "state": s.value}
            )
            for s in CircuitState
        }

    assert state() == {"closed": 1, "open": 0, "half_open": 0}
    circuits["sms"].record_failure("answered 503")
    assert state() == {"closed": 0, "open": 1, "half_open": 0}
    circuits["sms"].record_success()
    assert state() == {"closed": 1, "open": 0, "half_open": 0}
