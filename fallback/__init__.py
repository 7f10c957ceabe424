"""Fallbacks: the handler protocol, the built-in handlers, the rules ops write, and the
executor that runs them (``txmail fallback``).

The executor checks the rules file at start-up with
``txmail.fallback.rules_file.load_configured_rules(settings)``, which raises
``txmail.core.errors.ConfigError`` listing every problem, with the same text
``txmail check-config`` prints. The other processes read no handler table and need
none of the handlers' secrets.
"""
