"""Fallbacks: the handler API, the built-in handlers, the rules ops write, and the
executor that runs them (``txmail fallback``).

Every process reads the rules file through its one schema, ``txmail.core.rules_file``;
the executor alone then checks each handler table against its type, with its secrets
(``txmail.fallback.configured``), and raises ``txmail.core.errors.ConfigError`` listing
every problem, with the same text ``txmail check-config`` prints. The other processes
read no handler table and need none of the handlers' secrets.
"""
