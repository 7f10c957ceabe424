"""``txmail fallback``: consume fallback requests, run the matching handler chain, and
record the outcome: attempt events always, then a retry through a delay queue or a
place in the parking queue when the chain did not finish.

A request is acked only once everything its outcome needs is confirmed by RabbitMQ;
a crash before that redelivers it. The call ledger (fallback/ledger) keeps the
redelivered copy, or any other copy, from calling a handler that already succeeded;
while the ledger's database is away no handler is called at all. A request that
cannot even be read is parked, never retried.
"""

import asyncio
import inspect
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress

import aiohttp
import structlog
from pydantic import ValidationError

from txmail.core.broker import BROKER_ERRORS, Broker, Outgoing
from txmail.core.consumer import Consumer, Received
from txmail.core.errors import BrokerUnavailable, ConfigError
from txmail.core.events import (
    FALLBACK_ATTEMPT_TYPE,
    AttemptOutcome,
    FallbackAttempt,
    FallbackRequest,
    utc_now,
)
from txmail.core.readable import readable
from txmail.core.settings import Settings
from txmail.core.stopping import pause, unless_stopped
from txmail.core.topology import Topology
from txmail.fallback import metrics
from txmail.fallback.configured import FallbackRules
from txmail.fallback.executor.chain import ReadyHandler, run_chain
from txmail.fallback.handler import FallbackHandler, HandlerResources
from txmail.fallback.ledger import (
    CallLedger,
    LedgerUnavailable,
    open_ledger_when_available,
    purge_ledger,
)
from txmail.fallback.policy.circuit import Circuits
from txmail.fallback.policy.progress import RequestProgress, parked_copy, retry_copy
from txmail.fallback.policy.retries import RetrySchedule
from txmail.fallback.policy.verdict import HandlerResult, NextStep, ResultKind, Verdict, decide
from txmail.fallback.rules import select_rule

log = structlog.get_logger(__name__)

# A request whose outcome could not be recorded goes back to the queue after this
# pause, so a broker in trouble is not hit in a tight loop.
REQUEUE_PAUSE = 1.0
# How often the ledger is asked again while its database is away.
LEDGER_RETRY_INTERVAL = 1.0
# How often each executor deletes ledger rows past TXMAIL_RETENTION.
PURGE_INTERVAL = 3600.0

_RESULT_OUTCOME = {
    NextStep.DONE: AttemptOutcome.FAILED,
    NextStep.RETRY: AttemptOutcome.RETRYING,
    NextStep.PARK: AttemptOutcome.PARKED,
}


def fallback_topology(settings: Settings) -> Topology:
    return Topology(settings.namespace, tuple(settings.fallback_retry_schedule))


def build_handlers(
    rules_file: FallbackRules, resources: HandlerResources
) -> dict[str, ReadyHandler]:
    """One handler per ``[handlers.NAME]`` table; ConfigError for a plug-in that builds
    something without an async ``send``."""
    handlers = {}
    for name, configured in rules_file.handlers.items():
        handler = configured.handler_type(name, configured.config, resources)
        if not (isinstance(handler, FallbackHandler) and inspect.iscoroutinefunction(handler.send)):
            raise ConfigError(
                f"handlers.{name}: type {configured.type_name!r} built {handler!r}, "
                "which has no async send(request, idempotency_key) method"
            )
        handlers[name] = ReadyHandler(name, handler, configured.config.timeout)
    return handlers


class FallbackExecutor:
    def __init__(
        self,
        settings: Settings,
        rules_file: FallbackRules,
        handlers: Mapping[str, ReadyHandler],
        broker: Broker,
        ledger: CallLedger,
    ) -> None:
        self._settings = settings
        self._ledger = ledger
        self._rules = rules_file.rules
        self._handlers = handlers
        self._broker = broker  # shared with the handlers (HandlerResources.amqp)
        self._topology = fallback_topology(settings)
        self._schedule = RetrySchedule(settings.fallback_retry_schedule)
        self._circuits = Circuits(
            settings.fallback_circuit_failures, settings.fallback_circuit_open_for
        )
        metrics.watch_circuits(self._circuits, handlers)
        # On a connection of its own, which it keeps up: see txmail.core.consumer.
        self._consumer = Consumer(
            settings.amqp_url,
            self._topology.fallback_queue,
            settings.fallback_prefetch,
            self._topology.declare,
            self._on_message,
        )
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._purging: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Consume and purge in the background; the broker was started by the caller."""
        self._consumer.start()
        self._purging = asyncio.create_task(self._purge_now_and_then())

    async def not_ready(self) -> list[str]:
        """What keeps this executor from doing its job; empty when nothing does."""
        problems = []
        if not self._broker.is_ready:
            problems.append("not connected to RabbitMQ for publishing")
        if not self._consumer.is_consuming:
            problems.append(f"not consuming {self._topology.fallback_queue}")
        if not await self.ledger_reachable():
            problems.append("call ledger unavailable: no handler is called")
        return problems

    async def ledger_reachable(self) -> bool:
        """For readiness: without its ledger the executor calls no handler."""
        return await self._ledger.ping()

    async def _purge_now_and_then(self) -> None:
        while not self._stopping.is_set():
            try:
                purged = await purge_ledger(self._ledger, self._settings.retention, utc_now())
                if purged:
                    log.info("purged call ledger rows past retention", count=purged)
            except LedgerUnavailable as error:
                log.warning("call ledger unavailable, purging later", error=str(error))
            await pause(self._stopping, PURGE_INTERVAL)

    async def stop(self) -> None:
        """Stop taking requests, and let those in progress finish (within the shutdown
        timeout; unfinished ones are redelivered to another executor)."""
        self._stopping.set()
        if self._purging is not None:
            self._purging.cancel()
            await asyncio.gather(self._purging, return_exceptions=True)
        await self._consumer.stop_consuming()
        if self._in_flight:
            _, unfinished = await asyncio.wait(
                self._in_flight, timeout=self._settings.shutdown_timeout.total_seconds()
            )
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        await self._consumer.close()

    async def _on_message(self, message: Received) -> None:
        # Each request in its own task, so up to `prefetch` run at the same time.
        task = asyncio.create_task(self._handle(message))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _handle(self, message: Received) -> None:
        try:
            await self._process(message)
        except LedgerUnavailable as error:
            # Nothing was called. Hold the request until the ledger answers, so a long
            # outage does not spend the queue's delivery limit on requeues.
            log.warning("call ledger unavailable: calling no handler", error=str(error))
            while not self._stopping.is_set() and not await self._ledger.ping():
                await pause(self._stopping, LEDGER_RETRY_INTERVAL)
            await self._requeue(message)
        except (BrokerUnavailable, *BROKER_ERRORS) as error:
            # Looked at after the pause: a publish that failed because its connection
            # died fails before the connection is known to be down.
            await asyncio.sleep(REQUEUE_PAUSE)
            if self._broker.is_ready:
                log.warning("outcome not recorded, requeueing", error=readable(error))
            else:
                # The consumer and the publishing connection come back from an outage
                # each on its own backoff (txmail.core.backoff), seconds apart: requeued
                # every REQUEUE_PAUSE meanwhile, the request would spend the queue's
                # delivery limit and be dead-lettered. Held until it can be published.
                log.warning(
                    "outcome not recorded: holding the request until RabbitMQ takes "
                    "publishes again",
                    error=readable(error),
                )
                await unless_stopped(self._broker.wait_ready(), self._stopping)
            await _back_to_the_queue(message)
        except Exception:
            # A bug, not bad input: requeued; the queue's delivery limit dead-letters
            # a request that keeps failing, so it cannot loop for ever.
            log.exception("fallback request failed unexpectedly, requeueing")
            await self._requeue(message)

    async def _requeue(self, message: Received) -> None:
        await asyncio.sleep(REQUEUE_PAUSE)
        await _back_to_the_queue(message)

    async def _process(self, message: Received) -> None:
        try:
            request = FallbackRequest.model_validate_json(message.body)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors()
            )
            reason = f"not a valid fallback request: {problems}"
            log.warning("parking an unreadable fallback request", reason=reason)
            await self._broker.publish([self._parked(message, RequestProgress(), reason)])
            await message.ack()
            metrics.PARKED.inc()
            return

        progress = RequestProgress.from_headers(message.headers)
        bound = log.bind(idempotency_key=request.idempotency_key, attempt=progress.attempt + 1)
        match = select_rule(self._rules, request)
        if match is None:
            bound.info("no rule matches: nothing to run")
            no_rule = self._attempt(request, None, progress, AttemptOutcome.NO_RULE, "")
            await self._broker.publish([no_rule])
            await message.ack()
            metrics.ATTEMPTS.labels(metrics.NO_HANDLER, AttemptOutcome.NO_RULE.value).inc()
            return

        index, rule = match
        results = await run_chain(
            rule, self._handlers, request, progress, self._circuits, self._ledger
        )
        can_retry = self._schedule.delay_before(progress.attempt + 1) is not None
        verdict = decide(rule, progress, results, can_retry)
        outgoing = [
            self._attempt(
                request, r.handler, progress, _outcome(r, verdict), _detail(r, verdict, index)
            )
            for r in results
        ]
        if verdict.next_step is NextStep.RETRY:
            outgoing.append(self._retry(message, verdict.progress))
        elif verdict.next_step is NextStep.PARK:
            outgoing.append(self._parked(message, verdict.progress, verdict.reason))
        await self._broker.publish(outgoing)
        await message.ack()
        _count(results, verdict)
        results_by_handler = {r.handler: r.kind.value for r in results}
        if verdict.next_step is NextStep.PARK:  # needs a person: worth an alert
            bound.warning(
                "fallback request parked",
                rule=index,
                results=results_by_handler,
                reason=verdict.reason,
            )
            return
        bound.info(
            "fallback attempt recorded",
            rule=index,
            decision=verdict.next_step.value,
            results=results_by_handler,
        )

    def _attempt(
        self,
        request: FallbackRequest,
        handler: str | None,
        progress: RequestProgress,
        outcome: AttemptOutcome,
        detail: str,
    ) -> Outgoing:
        attempt = FallbackAttempt(
            idempotency_key=request.idempotency_key,
            dispatch_id=request.dispatch_id,
            external_send_id=request.external_send_id,
            handler=handler,
            attempt=progress.attempt + 1,
            outcome=outcome,
            detail=detail,
            at=utc_now(),
        )
        return Outgoing.event(attempt, attempt.event_id, FALLBACK_ATTEMPT_TYPE)

    def _retry(self, message: Received, after: RequestProgress) -> Outgoing:
        delay = self._schedule.delay_before(after.attempt)
        assert delay is not None  # noqa: S101 -- decide() only retries within the schedule
        queue = self._topology.fallback_delay_queue(delay)
        return retry_copy(message, after, queue, RetrySchedule.jittered(delay))

    def _parked(self, message: Received, after: RequestProgress, reason: str) -> Outgoing:
        queue = self._topology.fallback_parking_queue
        return parked_copy(message, after, queue, reason, utc_now())


def _outcome(result: HandlerResult, verdict: Verdict) -> AttemptOutcome:
    if result.kind is ResultKind.SUCCEEDED:
        return AttemptOutcome.SUCCEEDED
    return _RESULT_OUTCOME[verdict.next_step]


def _count(results: list[HandlerResult], verdict: Verdict) -> None:
    """Once the attempt is recorded: a request requeued before that is counted when it
    is processed again."""
    for result in results:
        metrics.ATTEMPTS.labels(result.handler, _outcome(result, verdict).value).inc()
    if verdict.next_step is NextStep.RETRY:
        metrics.RETRIES.inc()
    elif verdict.next_step is NextStep.PARK:
        metrics.PARKED.inc()


def _detail(result: HandlerResult, verdict: Verdict, rule_index: int) -> str:
    text = f"rules[{rule_index}]"
    if result.detail:
        text += f": {result.kind.value}: {result.detail}"
    if verdict.next_step is NextStep.PARK and result.kind is not ResultKind.SUCCEEDED:
        text += f" (parked: {verdict.reason})"
    return text


@asynccontextmanager
async def running_executor(
    settings: Settings, rules_file: FallbackRules, stop: asyncio.Event | None = None
) -> AsyncIterator[FallbackExecutor | None]:
    """A started executor with its ledger, broker and HTTP client; stopped on exit.
    None when ``stop`` was set while it was still waiting for the database or broker."""
    ledger = await open_ledger_when_available(settings.database_url, stop or asyncio.Event())
    if ledger is None:
        yield None
        return
    async with AsyncExitStack() as running:
        running.push_async_callback(ledger.close)
        topology = fallback_topology(settings)
        broker = Broker(settings.amqp_url, topology, settings.publish_timeout)
        broker.start()
        running.push_async_callback(broker.close)
        # Consuming while unable to publish outcomes would only requeue each request.
        if await unless_stopped(_ready(broker), stop) is None:
            yield None
            return
        http = await running.enter_async_context(aiohttp.ClientSession())
        handlers = build_handlers(rules_file, HandlerResources(http, broker))
        executor = FallbackExecutor(settings, rules_file, handlers, broker, ledger)
        executor.start()
        running.push_async_callback(executor.stop)
        yield executor


async def _ready(broker: Broker) -> bool:
    await broker.wait_ready()
    return True


async def _back_to_the_queue(message: Received) -> None:
    # If the channel is gone the broker requeues it by itself.
    with suppress(*BROKER_ERRORS):
        await message.nack(requeue=True)
