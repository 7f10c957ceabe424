"""The circuit breaker's states, on a clock the test moves."""

from datetime import timedelta

from structlog.testing import capture_logs

from txmail.fallback.policy.circuit import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(circuit: CircuitBreaker) -> CircuitState:
    return circuit.state


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("sms", failures_to_open=3, open_for=timedelta(seconds=30), clock=clock)


def test_it_opens_after_failures_in_a_row_only() -> None:
    circuit = breaker(Clock())
    for _ in range(2):
        circuit.record_failure("answered 503")
    circuit.record_success()  # resets the count
    for _ in range(2):
        circuit.record_failure("answered 503")
    assert circuit.try_call()
    circuit.record_failure("answered 503")
    assert state(circuit) is CircuitState.OPEN
    assert not circuit.try_call()


def test_after_the_pause_one_probe_closes_it_on_success() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(3):
        circuit.record_failure("answered 503")
    clock.now = 29.9
    assert not circuit.try_call()
    clock.now = 30.0
    assert state(circuit) is CircuitState.HALF_OPEN
    assert circuit.try_call()  # the probe
    assert not circuit.try_call()  # no second caller while it is out
    circuit.record_success()
    assert state(circuit) is CircuitState.CLOSED
    assert circuit.try_call()


def test_a_failed_probe_opens_it_for_another_pause() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(3):
        circuit.record_failure("answered 503")
    clock.now = 30.0
    assert circuit.try_call()
    circuit.record_failure("answered 503")
    assert state(circuit) is CircuitState.OPEN
    clock.now = 59.0
    assert not circuit.try_call()
    clock.now = 60.0
    assert circuit.try_call()


def test_an_abandoned_probe_lets_the_next_caller_probe() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(3):
        circuit.record_failure("answered 503")
    clock.now = 30.0
    assert circuit.try_call()
    circuit.abandon_call()
    assert circuit.try_call()


def test_opening_and_closing_are_logged_once_each_as_warnings_with_the_reason() -> None:
    clock = Clock()
    circuit = breaker(clock)
    with capture_logs() as logs:
        for _ in range(4):  # the fourth: a call under way when it opened
            circuit.record_failure("cannot connect to sms.example:443: Connection refused")
        clock.now = 30.0
        assert circuit.try_call()
        circuit.record_failure("timed out after 10s")
        clock.now = 60.0
        assert circuit.try_call()
        circuit.record_success()
        circuit.record_success()
    assert [(e["log_level"], e["event"], e["handler"]) for e in logs] == [
        ("warning", "circuit opened", "sms"),
        ("warning", "circuit opened", "sms"),
        ("warning", "circuit closed", "sms"),
    ]
    assert logs[0]["reason"] == "cannot connect to sms.example:443: Connection refused"
    assert (logs[0]["open_for"], logs[0]["probe_failed"]) == ("30s", False)
    assert (logs[1]["reason"], logs[1]["probe_failed"]) == ("timed out after 10s", True)
