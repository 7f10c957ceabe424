"""Who may post: the token in any of its three places, and the source network allow-list."""

import base64
import ipaddress

import pytest
from pydantic import SecretStr

from tests.support.amqp import queue_depth
from tests.support.ingress_server import running_ingress
from tests.support.raw_http import raw_request
from txmail.core.settings import Settings
from txmail.core.topology import Topology

TOKEN = "s3cret-token"
POSTBACK = {"dispatch_id": "d-1", "status": "sent"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def guarded(settings: Settings) -> Settings:
    return settings.model_copy(update={"postback_token": SecretStr(TOKEN)})


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Authorization": f"Bearer {TOKEN}"}, {}),
        ({"Authorization": basic("braze", TOKEN)}, {}),
        ({"Authorization": basic("", TOKEN)}, {}),
        ({}, {"token": TOKEN}),
    ],
    ids=["bearer", "basic", "basic-no-user", "query"],
)
async def test_the_token_is_accepted_wherever_it_is(
    guarded: Settings, headers: dict[str, str], query: dict[str, str]
) -> None:
    async with running_ingress(guarded) as client:
        response = await client.post("/postbacks", json=POSTBACK, headers=headers, params=query)
        assert response.status == 202


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, {}),
        ({"Authorization": "Bearer wrong"}, {}),
        ({"Authorization": f"Bearer {TOKEN}x"}, {}),
        ({"Authorization": basic(TOKEN, "")}, {}),
        ({"Authorization": "Basic !!!notbase64"}, {}),
        ({"Authorization": TOKEN}, {}),
        ({}, {"token": ""}),
        ({}, {"token": TOKEN.upper()}),
    ],
    ids=["none", "wrong", "longer", "token-as-user", "bad-basic", "no-scheme", "empty", "case"],
)
async def test_a_missing_or_wrong_token_is_401_and_publishes_nothing(
    guarded: Settings, amqp_url: str, headers: dict[str, str], query: dict[str, str]
) -> None:
    async with running_ingress(guarded) as client:
        response = await client.post("/postbacks", json=POSTBACK, headers=headers, params=query)
        assert response.status == 401
        assert (await response.json())["error"] == "unauthorized"
        assert "Bearer" in response.headers["WWW-Authenticate"]
    assert await queue_depth(amqp_url, Topology(guarded.namespace).tracker_queue) == 0


@pytest.mark.parametrize("path", ["/postbacks", "/v1/sends"])
@pytest.mark.parametrize("header", [b"Bearer \xe9", b"Basic \xe9", b"\xe9"])
async def test_a_non_ascii_authorization_header_is_401_not_500(
    settings: Settings, path: str, header: bytes
) -> None:
    tokens = {"postback_token": SecretStr(TOKEN), "api_token": SecretStr(TOKEN)}
    async with running_ingress(settings.model_copy(update=tokens)) as client:
        assert client.port is not None
        status, body = await raw_request(
            client.port, "POST", path, b"Authorization: " + header + b"\r\n", b"{}"
        )
    assert (status, body["error"]) == (401, "unauthorized")


async def test_health_needs_no_token(guarded: Settings) -> None:
    async with running_ingress(guarded) as client:
        assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize(
    ("networks", "status"),
    [(["127.0.0.0/8"], 202), (["10.0.0.0/8", "127.0.0.1/32"], 202), (["10.0.0.0/8"], 403)],
)
async def test_the_source_network_allow_list(
    settings: Settings, amqp_url: str, networks: list[str], status: int
) -> None:
    allowed = [ipaddress.ip_network(n) for n in networks]
    async with running_ingress(settings.model_copy(update={"allowed_networks": allowed})) as client:
        response = await client.post("/postbacks", json=POSTBACK)
        assert response.status == status
        assert response.content_type == "application/json"
    expected = 1 if status == 202 else 0
    assert await queue_depth(amqp_url, Topology(settings.namespace).tracker_queue) == expected
