"""docker compose cannot run here, so the compose file is checked against the Compose
spec's schema and against the code, settings and files it names."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from txmail.cli import build_parser
from txmail.core.durations import parse_duration
from txmail.core.rules_file import read_rules_file
from txmail.core.settings import Settings
from txmail.fallback.configured import configure

ROOT = Path(__file__).parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ENV_EXAMPLE = ROOT / "deploy" / "txmail.env.example"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
MONITORING = ("prometheus", "grafana")
SETTINGS = {f"TXMAIL_{field.upper()}" for field in Settings.model_fields}
# ${NAME}, ${NAME:-default}, ${NAME:?error}: compose's interpolation.
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def txmail_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in SERVICES.items() if s.get("build") == "."}


def example_variables() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def interpolated(value: str) -> str:
    """``value`` as compose would fill it from a .env where every secret is set."""
    return VARIABLE.sub(lambda m: f"<{m[1]}>", value)


def test_the_file_follows_the_compose_spec() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_broker_and_database_keep_their_data_and_publish_no_port() -> None:
    assert re.fullmatch(r"rabbitmq:3\.\d+[\w.-]*", SERVICES["rabbitmq"]["image"])
    assert re.fullmatch(r"postgres:\d+[\w.-]*", SERVICES["postgres"]["image"])
    # RabbitMQ's data directory is named after the node, rabbit@<hostname>.
    assert SERVICES["rabbitmq"]["hostname"] == "rabbitmq"
    data = {"rabbitmq": "/var/lib/rabbitmq", "postgres": "/var/lib/postgresql/data"}
    for name, directory in data.items():
        service = SERVICES[name]
        assert service["healthcheck"]["test"]
        assert service["restart"] == "unless-stopped"
        assert "ports" not in service, name
        [volume] = service["volumes"]
        source, target = volume.split(":")
        assert (source, target) == (f"{name}-data", directory)
        assert source in COMPOSE["volumes"]


def test_no_default_credentials_and_no_empty_secrets() -> None:
    assert "guest" not in COMPOSE_TEXT
    required = {m[1] for m in VARIABLE.finditer(COMPOSE_TEXT) if m[2] == "?"}
    assert required == {
        "RABBITMQ_USER",
        "RABBITMQ_PASSWORD",
        "POSTGRES_PASSWORD",
        "TXMAIL_POSTBACK_TOKEN",
        "TXMAIL_API_TOKEN",
        "GRAFANA_ADMIN_PASSWORD",
    }
    # Every variable the file uses is in the example an operator copies to .env, and
    # the secrets there are empty, so compose refuses to start until they are filled in.
    example = example_variables()
    assert {m[1] for m in VARIABLE.finditer(COMPOSE_TEXT)} <= set(example)
    assert all(example[name] == "" for name in required - {"RABBITMQ_USER"})
    assert {name for name in example if name.startswith("TXMAIL_")} <= SETTINGS


def test_the_ingress_and_api_need_their_tokens() -> None:
    ingress = SERVICES["ingress"]["environment"]
    api = SERVICES["api"]["environment"]
    for environment, name in [
        (ingress, "TXMAIL_POSTBACK_TOKEN"),
        (ingress, "TXMAIL_API_TOKEN"),
        (api, "TXMAIL_API_TOKEN"),
    ]:
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", environment[name])
    assert api["TXMAIL_API_READ_TOKEN"] == "${TXMAIL_API_READ_TOKEN:-}"


def test_every_txmail_process_kind_runs() -> None:
    commands = {s["command"][0] for s in txmail_services().values()}
    assert commands == {"ingress", "worker", "api", "fallback"}


def test_txmail_services_build_from_the_dockerfile_that_installs_the_project() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+", dockerfile, re.MULTILINE)  # health checks use it
    assert 'ENTRYPOINT ["txmail"]' in dockerfile
    for package in ("src", "ingress", "workers", "fallback"):
        assert f"COPY {package} ./{package}" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {"**/.env", "**/*.env", ".git", ".venv"} <= set(ignored)


def test_every_command_is_a_txmail_subcommand() -> None:
    parser = build_parser()
    for name, service in txmail_services().items():
        assert parser.parse_args(service["command"]).handler, name


def test_every_environment_variable_is_a_setting() -> None:
    for service in txmail_services().values():
        assert set(service["environment"]) <= SETTINGS
        for dependency in ("rabbitmq", "postgres"):
            assert service["depends_on"][dependency]["condition"] == "service_healthy"


def test_urls_point_at_the_compose_services_with_their_credentials() -> None:
    rabbitmq = {k: interpolated(v) for k, v in SERVICES["rabbitmq"]["environment"].items()}
    postgres = {k: interpolated(v) for k, v in SERVICES["postgres"]["environment"].items()}
    for service in txmail_services().values():
        environment = {k: interpolated(v) for k, v in service["environment"].items()}
        assert environment["TXMAIL_AMQP_URL"] == (
            f"amqp://{rabbitmq['RABBITMQ_DEFAULT_USER']}:{rabbitmq['RABBITMQ_DEFAULT_PASS']}"
            "@rabbitmq:5672/"
        )
        assert environment["TXMAIL_DATABASE_URL"] == (
            f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
            f"@postgres:5432/{postgres['POSTGRES_DB']}"
        )


def test_stopping_waits_longer_than_txmail_finishes_requests() -> None:
    for name, service in txmail_services().items():
        finishing = parse_duration(service["environment"]["TXMAIL_SHUTDOWN_TIMEOUT"])
        assert parse_duration(service["stop_grace_period"]) > finishing, name


def test_every_service_is_limited_and_rotates_its_logs() -> None:
    for name, service in SERVICES.items():
        limits = service["deploy"]["resources"]["limits"]
        assert {"cpus", "memory"} <= set(limits), name
        assert service["logging"]["driver"] == "json-file"
        assert {"max-size", "max-file"} <= set(service["logging"]["options"]), name


def test_published_ports_and_health_checks_are_the_ones_txmail_listens_on() -> None:
    settings = Settings()
    listens = {"ingress": settings.http_port, "api": settings.api_port}
    published = {
        "ingress": f"{listens['ingress']}:8080",
        "api": f"127.0.0.1:{listens['api']}:8081",
        # Monitoring, on this host's loopback only, like the API.
        "prometheus": "127.0.0.1:9090:9090",
        "grafana": "127.0.0.1:3000:3000",
    }
    for name, service in SERVICES.items():
        assert service.get("ports", []) == ([published[name]] if name in published else []), name
    checked = {
        "ingress": f"{listens['ingress']}/healthz",
        "api": f"{listens['api']}/healthz",
        # No HTTP API of their own: their health port, ready only while doing their job.
        "worker": f"{settings.metrics_port}/readyz",
        "fallback": f"{settings.metrics_port}/readyz",
    }
    for name, where in checked.items():
        kind, runner, flag, code = SERVICES[name]["healthcheck"]["test"]
        # The slim image has python but no curl; urlopen fails on anything but 2xx.
        assert (kind, runner, flag) == ("CMD", "python", "-c")
        compile(code, name, "exec")
        assert f"urlopen('http://127.0.0.1:{where}'" in code, name


def test_only_the_fallback_executor_gets_the_handlers_secrets() -> None:
    for name, service in txmail_services().items():
        assert service.get("env_file") == ([".env"] if name == "fallback" else None), name


def test_the_mounted_rules_file_exists_and_is_valid() -> None:
    for service in txmail_services().values():
        host, container = service["volumes"][0].split(":")[:2]
        assert container == service["environment"]["TXMAIL_RULES"]
        configure(read_rules_file(ROOT / host))


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's files and folders from the repository: container path to host path."""
    mounts = [volume.split(":") for volume in service.get("volumes", [])]
    return {container: host for host, container, *_ in mounts if host.startswith("./")}


def test_monitoring_runs_only_under_its_profile_and_mounts_files_that_exist() -> None:
    for name, service in SERVICES.items():
        assert service.get("profiles") == (["monitoring"] if name in MONITORING else None), name
    for name in MONITORING:
        mounts = _bind_mounts(SERVICES[name])
        assert mounts, name
        for host in mounts.values():
            assert (ROOT / host).exists(), host
        [data] = [v for v in SERVICES[name]["volumes"] if not v.startswith("./")]
        assert data.split(":")[0] in COMPOSE["volumes"]
    assert _bind_mounts(SERVICES["prometheus"])["/etc/prometheus/prometheus.yml"] == (
        "./deploy/prometheus/prometheus.yml"
    )
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]


def test_prometheus_scrapes_every_txmail_service_where_it_serves_metrics() -> None:
    settings = Settings()
    # /metrics: the ingress and the API on their own port, worker and executor on their
    # health port (TXMAIL_METRICS_PORT).
    serves_metrics = {
        "ingress": settings.http_port,
        "api": settings.api_port,
        "worker": settings.metrics_port,
        "fallback": settings.metrics_port,
    }
    assert set(serves_metrics) == set(txmail_services())
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {name: f"{name}:{port}" for name, port in serves_metrics.items()}
    assert all(
        job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"]
    )


def test_grafana_is_provisioned_with_prometheus_and_the_txmail_dashboard() -> None:
    mounts = _bind_mounts(SERVICES["grafana"])
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    prometheus_port = SERVICES["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert (source["type"], source["url"]) == ("prometheus", f"http://prometheus:{prometheus_port}")
    [provider] = yaml.safe_load((provisioning / "dashboards" / "txmail.yml").read_text())[
        "providers"
    ]
    dashboards = provider["options"]["path"]
    assert mounts[dashboards] == "./deploy/grafana/dashboards"
    dashboard = json.loads((GRAFANA / "dashboards" / "txmail.json").read_text())
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards}/txmail.json"
    used = {
        target["datasource"]["uid"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    assert used == {source["uid"]}
