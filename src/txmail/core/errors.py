"""The one exception base of txmail, and the few errors every part shares."""


class TxmailError(Exception):
    """Base of every error txmail raises on purpose."""


class ConfigError(TxmailError):
    """The configuration (environment or rules file) is invalid; the message says where."""


class BrokerUnavailable(TxmailError):
    """RabbitMQ did not confirm a publish: unreachable, refused, or too slow.

    Callers must treat the message as *not* sent (the ingress answers 503).
    """


class NotTaken(BrokerUnavailable):
    """RabbitMQ answered and did not take the message: no queue is bound for its
    routing key, or a full queue refused it. Not sent, as for BrokerUnavailable."""


class ExchangeUnusable(TxmailError):
    """Another team's exchange cannot be published on: it does not exist, or refuses
    txmail. Publishing again will not help until someone changes the configuration."""


class CannotStart(TxmailError):
    """A process cannot start (its port is taken, ...); the message says why."""
