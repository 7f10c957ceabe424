"""The bottom layer every service shares: settings, errors, events on the wire, AMQP
topology, the broker, HTTP serving, databases, stopping. It imports no service."""
