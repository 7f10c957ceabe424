"""The OpenAPI documents of both HTTP APIs: every route described, nothing else, each
served at /openapi.json as it is kept in the repository."""

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator
from pydantic import SecretStr, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from tests.support.ingress_server import running_ingress
from txmail.core.parked import ParkedFallback
from txmail.core.settings import Settings
from txmail.ingress.app import create_app
from txmail.workers.api import create_api_app
from txmail.workers.console.access import ApiTokens
from txmail.workers.console.overview import Circuit, LatencyBucket, PendingDeadlinesView
from txmail.workers.console.routes import ReplayAll, ReplaySome
from txmail.workers.store import open_store
from txmail.workers.store.protocol import FailureSummary, MessageView, Store
from txmail.workers.timeouts import DeliveryTimeouts

METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def document(package: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(files(package).joinpath("openapi.json").read_text())
    return loaded


def routes(app: web.Application) -> set[tuple[str, str]]:
    """(path, method) of every route, as the document writes them; aiohttp answers HEAD
    wherever it answers GET, as HTTP asks, without a route of anyone's choosing."""
    return {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(
        f"sqlite:///{tmp_path / 'txmail.db'}", DeliveryTimeouts(timedelta(minutes=10))
    )
    yield opened
    await opened.close()


def test_the_ingress_document_describes_every_route_and_no_other() -> None:
    assert operations(document("txmail.ingress")) == routes(create_app(Settings()))


def test_the_api_document_describes_every_route_and_no_other(store: Store) -> None:
    # No exception for the console: its HTML pages and forms (text/html) and its two
    # static files are routes like the rest, fixed and few, so the document has them too.
    assert operations(document("txmail.workers")) == routes(create_api_app(store))


@pytest.mark.parametrize("package", ["txmail.ingress", "txmail.workers"])
def test_every_schema_in_the_documents_is_valid_json_schema(package: str) -> None:
    doc = document(package)
    assert doc["openapi"].startswith("3.1.")
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises, naming what is wrong


# What the api writes (a message, the console's lists and counts) and what it reads (a
# replay's body), each with the models it holds.
WRITTEN = [
    MessageView,
    FailureSummary,
    Circuit,
    PendingDeadlinesView,
    LatencyBucket,
    ParkedFallback,
]
READ = [ReplaySome, ReplayAll]


@pytest.mark.parametrize(
    ("model", "mode"),
    [*((m, "serialization") for m in WRITTEN), *((m, "validation") for m in READ)],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_the_api_document_describes_each_body_as_the_api_writes_or_reads_it(
    model: type, mode: JsonSchemaMode
) -> None:
    """Each model as pydantic serialises or validates it: a field added to the model
    without the document fails here (copy the model's schema into the document)."""
    schema = TypeAdapter(model).json_schema(mode=mode, ref_template="#/components/schemas/{model}")
    described = document("txmail.workers")["components"]["schemas"]
    for name, part in {model.__name__: schema, **schema.pop("$defs", {})}.items():
        assert described[name] == part, name


async def test_the_ingress_serves_its_document(settings: Settings) -> None:
    async with running_ingress(settings, wait_ready=False) as client:
        response = await client.get("/openapi.json")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == document("txmail.ingress")


async def test_the_api_serves_its_document_without_a_token(store: Store) -> None:
    app = create_api_app(store, ApiTokens(replay=SecretStr("s3cret")))
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/openapi.json")
        assert response.status == 200
        assert await response.json() == document("txmail.workers")
        assert (await client.get("/v1/messages/x")).status == 401
