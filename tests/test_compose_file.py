"""docker compose cannot run here, so the compose file is checked against the code it names."""

import re
from pathlib import Path
from typing import Any

import yaml

from txmail.cli import build_parser
from txmail.settings import Settings

ROOT = Path(__file__).parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def txmail_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in COMPOSE["services"].items() if s.get("build") == "."}


def test_rabbitmq_is_an_official_image_with_a_healthcheck() -> None:
    rabbit = COMPOSE["services"]["rabbitmq"]
    assert re.fullmatch(r"rabbitmq:3\.\d+[\w.-]*", rabbit["image"])
    assert rabbit["healthcheck"]["test"]


def test_txmail_services_build_from_the_dockerfile_that_installs_the_project() -> None:
    assert txmail_services()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["txmail"]' in dockerfile
    for package in ("txmail", "ingress", "workers", "fallback"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_every_command_is_a_txmail_subcommand() -> None:
    parser = build_parser()
    for name, service in txmail_services().items():
        args = parser.parse_args(service["command"])
        assert args.handler, name


def test_every_environment_variable_is_a_setting() -> None:
    known = {f"TXMAIL_{field.upper()}" for field in Settings.model_fields}
    for service in txmail_services().values():
        assert set(service.get("environment", {})) <= known
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_the_broker_url_points_at_the_compose_broker() -> None:
    for service in txmail_services().values():
        assert "@rabbitmq:5672" in service["environment"]["TXMAIL_AMQP_URL"]
