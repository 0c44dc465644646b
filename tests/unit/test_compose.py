"""Checks of the container deployment: docker-compose.yml and deploy/Dockerfile, read as files."""

from __future__ import annotations

import re
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from fedilake import settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"

INFRASTRUCTURE = {"kafka", "namenode", "datanode", "hbase", "airflow"}
DAEMON_COMMANDS = {
    "simulator": ["simulate"],
    "streamer": ["stream"],
    "processor": ["process"],
    "sink": ["sink", "hdfs"],
}
# Host ports a person or a host-side client reaches; any one port of a tuple will do.
PUBLISHED_PORTS = {
    "kafka": (9092,),
    "namenode": (8020, 9870),
    "datanode": (9864,),
    "hbase": (9090,),
    "airflow": (8080,),
}
# Each daemon waits for what its data flows into (or, for the streamer, out of).
DATA_FLOW = {
    "streamer": {"kafka", "simulator"},
    "processor": {"kafka", "hbase"},
    "sink": {"kafka", "namenode", "datanode"},
}
# Settings whose value names another compose service, as host:port or as a URL.
SERVICE_ADDRESSES = (
    "FEDILAKE_KAFKA_BOOTSTRAP_SERVERS",
    "FEDILAKE_HBASE_HOST",
    "FEDILAKE_HDFS_WEBHDFS_URL",
    "FEDILAKE_HDFS_NAMENODE",
    "FEDILAKE_STREAMER_INSTANCE_URL",
)
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|CREDENTIAL")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def settings_env_names() -> set[str]:
    """Every FEDILAKE_* name the settings classes read: env prefix + field name, upper-cased."""
    names = set()
    for candidate in vars(settings).values():
        if isinstance(candidate, type) and issubclass(candidate, BaseSettings):
            if candidate is BaseSettings:
                continue
            prefix = candidate.model_config.get("env_prefix", "")
            names.update(f"{prefix}{field}".upper() for field in candidate.model_fields)
    return names


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment in either compose syntax (mapping or list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def published_ports(service: dict[str, Any]) -> set[int]:
    """Host ports of a service, from `[ip:]host:container[/proto]` strings or long syntax."""
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            if "published" in entry:
                ports.add(int(entry["published"]))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) >= 2:
            ports.add(int(parts[-2]))
    return ports


def named_volumes(service: dict[str, Any]) -> set[str]:
    """Volume names a service mounts (bind mounts of host paths are left out)."""
    names = set()
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume" and entry.get("source"):
                names.add(entry["source"])
            continue
        source = str(entry).split(":")[0]
        if ":" in str(entry) and not source.startswith((".", "/", "~", "$")):
            names.add(source)
    return names


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """depends_on as {service: condition}, from either the list or the mapping syntax."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return {name: "service_started" for name in depends_on}
    return {
        name: (spec or {}).get("condition", "service_started") for name, spec in depends_on.items()
    }


def host_of(value: str) -> str:
    """The host in `host:port`, `host` or `scheme://host:port/path`."""
    if "://" in value:
        return urlsplit(value).hostname or ""
    return value.split(",")[0].split(":")[0]


def test_every_expected_service_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = (INFRASTRUCTURE | set(DAEMON_COMMANDS)) - set(services)
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


@pytest.mark.parametrize("service_name", sorted(PUBLISHED_PORTS))
def test_service_publishes_its_port(services: dict[str, dict[str, Any]], service_name: str) -> None:
    expected = PUBLISHED_PORTS[service_name]
    published = published_ports(services[service_name])
    assert published & set(expected), f"{service_name} publishes {published}, wants {expected}"


def test_every_named_volume_is_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        undeclared = named_volumes(service) - declared
        assert not undeclared, f"{name} mounts undeclared volumes {sorted(undeclared)}"


def test_data_directories_live_on_named_volumes(services: dict[str, dict[str, Any]]) -> None:
    for name in ("kafka", "namenode", "datanode", "hbase", "airflow", "processor"):
        assert named_volumes(services[name]), f"{name} keeps its data in the container layer"


def test_every_dependency_exists_and_can_become_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for target, condition in dependencies(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )


@pytest.mark.parametrize("daemon", sorted(DATA_FLOW))
def test_daemon_waits_for_the_services_it_uses(
    services: dict[str, dict[str, Any]], daemon: str
) -> None:
    waits_for = set(dependencies(services[daemon]))
    assert DATA_FLOW[daemon] <= waits_for, f"{daemon} does not wait for {DATA_FLOW[daemon]}"


def test_infrastructure_has_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in INFRASTRUCTURE:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


@pytest.mark.parametrize("daemon", sorted(DAEMON_COMMANDS))
def test_daemon_builds_our_image_and_runs_its_subcommand(
    services: dict[str, dict[str, Any]], daemon: str
) -> None:
    service = services[daemon]
    build = service["build"]
    assert (REPO / build["context"]).resolve() == REPO
    assert build["dockerfile"] == "deploy/Dockerfile"
    assert "entrypoint" not in service, "the image's `fedilake` entrypoint must stay"
    assert service["command"] == DAEMON_COMMANDS[daemon]


def test_dockerfile_installs_the_project_for_a_non_root_user() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    bases = [line.split()[1] for line in instructions if line.startswith("FROM ")]
    assert bases and all(base == "python:3.11-slim" for base in bases)
    assert any(re.search(r"pip install \.(\s|$)", line) for line in instructions)
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["fedilake"]' in instructions


def test_dockerignore_keeps_state_and_secrets_out_of_the_build() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for expected in (".git", ".fedilake", ".venv*", "secrets", ".pytest_cache"):
        assert expected in patterns, f".dockerignore does not exclude {expected}"


def test_fedilake_variables_are_real_settings() -> None:
    valid = settings_env_names()
    used = set(re.findall(r"\bFEDILAKE_[A-Z0-9_]+", COMPOSE_FILE.read_text()))
    assert used, "docker-compose.yml configures nothing through FEDILAKE_* variables"
    unknown = used - valid
    assert not unknown, f"not settings fields: {sorted(unknown)}"


@pytest.mark.parametrize("daemon", sorted(DAEMON_COMMANDS))
def test_daemon_addresses_point_at_compose_services(
    services: dict[str, dict[str, Any]], daemon: str
) -> None:
    env = environment(services[daemon])
    for name in SERVICE_ADDRESSES:
        if name in env:
            assert host_of(env[name]) in services, f"{daemon}: {name}={env[name]}"


def test_no_literal_secrets(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and value:
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), (
                    f"{name} sets {key} to a literal value; use a docker secret file"
                )


def test_streamer_token_comes_from_an_uncommitted_secret_file(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    streamer = services["streamer"]
    token_file = environment(streamer)["FEDILAKE_STREAMER_ACCESS_TOKEN_FILE"]
    secret = token_file.removeprefix("/run/secrets/")
    mounted = {item if isinstance(item, str) else item["source"] for item in streamer["secrets"]}
    assert secret in mounted

    source = Path(compose["secrets"][secret]["file"])
    assert not source.is_absolute()
    relative = source.as_posix().removeprefix("./")
    ignored = [
        line.strip().rstrip("/")
        for line in (REPO / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert any(
        fnmatch(relative, pattern)
        or fnmatch(source.name, pattern)
        or relative.startswith(f"{pattern}/")
        for pattern in ignored
    ), f"{relative} is not git-ignored"


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or `docker-compose`, whichever answers here."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return command
    return None


def test_docker_compose_accepts_the_file() -> None:
    command = compose_command()
    if command is None:
        # No Compose on this machine: the YAML checks above are the whole verdict.
        return
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
