"""txmail's shared contract: settings, events on the wire, AMQP topology, broker access, CLI."""
