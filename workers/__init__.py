"""The workers: every message's state, its deadline, and the one fallback decision."""
