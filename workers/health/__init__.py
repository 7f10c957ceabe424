"""Braze's own health, judged from the postbacks, and delivery deadlines learned from it.

Pure cores: ``figures`` (rolling figures over a window), ``evaluate`` (degraded and
recovered, with hysteresis), ``learned`` (an ``auto`` deadline), ``observations`` (what
an event tells about its send). Around them: the health tables (``tables``, the store's
migration 5), the sends every batch records in its own transaction, the one health
state of the deployment and its outbox of changes (``store``), and the loop in every
worker that judges and publishes (``monitor``). See docs/architecture.md.
"""
