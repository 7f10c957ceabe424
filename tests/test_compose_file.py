"""docker compose cannot run here, so the compose file is checked against the code it names."""

import re
from pathlib import Path
from typing import Any

import yaml

from fallback.rules_file import load_rules_file
from txmail.cli import build_parser
from txmail.settings import Settings

ROOT = Path(__file__).parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def txmail_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in SERVICES.items() if s.get("build") == "."}


def test_the_broker_and_database_are_official_images_with_healthchecks() -> None:
    assert re.fullmatch(r"rabbitmq:3\.\d+[\w.-]*", SERVICES["rabbitmq"]["image"])
    assert re.fullmatch(r"postgres:\d+[\w.-]*", SERVICES["postgres"]["image"])
    for name in ("rabbitmq", "postgres"):
        assert SERVICES[name]["healthcheck"]["test"]


def test_every_txmail_process_kind_runs() -> None:
    commands = {s["command"][0] for s in txmail_services().values()}
    assert commands == {"ingress", "worker", "api", "fallback"}


def test_txmail_services_build_from_the_dockerfile_that_installs_the_project() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["txmail"]' in dockerfile
    for package in ("txmail", "ingress", "workers", "fallback"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_every_command_is_a_txmail_subcommand() -> None:
    parser = build_parser()
    for name, service in txmail_services().items():
        assert parser.parse_args(service["command"]).handler, name


def test_every_environment_variable_is_a_setting() -> None:
    known = {f"TXMAIL_{field.upper()}" for field in Settings.model_fields}
    for service in txmail_services().values():
        assert set(service["environment"]) <= known
        for dependency in ("rabbitmq", "postgres"):
            assert service["depends_on"][dependency]["condition"] == "service_healthy"


def test_urls_point_at_the_compose_services() -> None:
    postgres = SERVICES["postgres"]["environment"]
    for service in txmail_services().values():
        environment = service["environment"]
        assert "@rabbitmq:5672" in environment["TXMAIL_AMQP_URL"]
        assert environment["TXMAIL_DATABASE_URL"] == (
            f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
            f"@postgres:5432/{postgres['POSTGRES_DB']}"
        )


def test_the_mounted_rules_file_exists_and_is_valid() -> None:
    for service in txmail_services().values():
        host, container = service["volumes"][0].split(":")[:2]
        assert container == service["environment"]["TXMAIL_RULES"]
        load_rules_file(ROOT / host)
