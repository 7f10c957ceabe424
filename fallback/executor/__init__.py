"""The executor's I/O (``txmail fallback``): consuming requests, calling the handler
chain through the call ledger, and publishing each outcome confirmed (``service``)."""
