"""Braze's own health, judged from the postbacks, and delivery deadlines learned from it.

Pure cores: ``figures`` (rolling figures over a window), ``evaluate`` (degraded and
recovered, with hysteresis), ``learned`` (an ``auto`` deadline). Around them: the
samples every worker records (``recording``), the one health state of the deployment
and its outbox of changes in the database (``store``), and the loop in every worker
that judges and publishes (``monitor``). See docs/architecture.md.
"""
