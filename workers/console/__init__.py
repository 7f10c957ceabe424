"""The operator's console: the API's pages for a person on call (what happens now,
one message's story, recent failures, parked fallbacks and their replay) and the JSON
endpoints behind them.

It lives with the workers because it reads their store, through the same queries as
the rest of the API. Parked fallbacks are the executor's: the console gets what it
may do with them as a ``txmail.core.parked.ParkedFallbacks``, built by the command.
"""

from aiohttp import web

from txmail.core.parked import ParkedFallbacks
from txmail.workers.console.access import ApiTokens, add_access
from txmail.workers.console.keys import PARKED, STORE
from txmail.workers.console.pages import add_pages
from txmail.workers.console.routes import add_json_routes
from txmail.workers.store.protocol import Store


def add_console(
    app: web.Application, store: Store, tokens: ApiTokens, parked: ParkedFallbacks | None
) -> None:
    """The console's pages and JSON endpoints, behind ``access_required``."""
    app[STORE] = store
    if parked is not None:
        app[PARKED] = parked
    add_access(app, tokens)
    add_json_routes(app)
    add_pages(app)
