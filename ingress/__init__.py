"""The thin HTTP front door: authenticate, validate, publish, answer. No state, no store."""
