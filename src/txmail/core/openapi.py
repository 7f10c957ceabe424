"""``GET /openapi.json``: an HTTP API's OpenAPI 3.1 document, kept next to its code.

Each API's document is ``openapi.json`` in its package (package data);
tests/test_openapi.py holds it against the routes and schemathesis against the server.
"""

from importlib.resources import files

from aiohttp import web


def add_openapi_route(app: web.Application, package: str) -> None:
    """Serve ``package``'s ``openapi.json`` at ``/openapi.json``, read once, as it is."""
    document = files(package).joinpath("openapi.json").read_bytes()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
