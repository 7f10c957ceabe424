"""What the console's handlers find on the application."""

from aiohttp import web

from txmail.core.parked import ParkedFallbacks
from txmail.workers.store.protocol import Store

STORE = web.AppKey("console_store", Store)
# Absent where the process has no way to the parking queue.
PARKED = web.AppKey("console_parked", ParkedFallbacks)
