"""compose/: the file is valid, documents every setting, and builds images with CI's install."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from facestream.common.settings import Settings
from facestream.control.acl import acl_lines, user_name
from facestream.control.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    command = compose_command()
    if command is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is installed "
            "(.ci/run installs Debian's docker-compose)"
        )
    # A copy, with the documented first steps done: cp .env.example .env; facestream acl ...
    work = tmp_path_factory.mktemp("compose")
    shutil.copytree(COMPOSE, work / "compose")
    shutil.copy(COMPOSE / ".env.example", work / "compose" / ".env")
    lines = acl_lines(Settings(), work / "compose" / "secrets")
    (work / "compose" / "acl").mkdir()
    (work / "compose" / "acl" / "users.acl").write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [
            *command,
            "-f",
            "docker-compose.yml",
            "--profile",
            "cpu",
            "--profile",
            "gpu",
            "--profile",
            "webhook",
            "--profile",
            "monitoring",
            "config",
        ],
        cwd=work / "compose",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert isinstance(config, dict)
    return config


def test_compose_config_accepts_the_file(rendered: dict[str, object]) -> None:
    services = rendered["services"]
    assert isinstance(services, dict)
    assert set(services) == {
        "redis",
        "gateway",
        "detector",
        "detector-gpu",
        "sink-jsonl",
        "sink-webhook",
        "prometheus",
        "grafana",
    }
    for name, service in services.items():
        assert "healthcheck" in service, name
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy volatile-lru" in redis_cmd
    assert "--aclfile" in redis_cmd  # least-privilege users, default user off
    roles = {
        "gateway": "gateway",
        "detector": "detector",
        "detector-gpu": "detector",
        "sink-jsonl": "sink-jsonl",
        "sink-webhook": "sink-webhook",
    }
    for name, role in roles.items():
        env = services[name]["environment"]
        assert env["FACESTREAM_REDIS_USERNAME"] == user_name(role)
        assert env["FACESTREAM_REDIS_PASSWORD_FILE"] == f"/run/secrets/{user_name(role)}"
    for name in ("detector", "detector-gpu"):
        # Fetched models come in read-only at the directory the detectors look in.
        assert services[name]["environment"]["FACESTREAM_MODEL_DIR"] == "/models"
        assert "/models" in json.dumps(services[name]["volumes"])
    gpu = services["detector-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and services["detector-gpu"]["build"][
        "dockerfile"
    ].endswith("Dockerfile.gpu")


def test_service_commands_are_real_cli_commands(rendered: dict[str, object]) -> None:
    services = rendered["services"]
    assert isinstance(services, dict)
    for name, service in services.items():
        if name in ("redis", "prometheus", "grafana"):
            continue
        commands = [service["command"]]
        test = service["healthcheck"]["test"]
        if test[1] == "facestream":
            commands.append(test[1:])
        for command in commands:
            assert command[0] == "facestream"
            build_parser().parse_args(command[1:])  # exits on an unknown command


def test_env_example_documents_every_setting() -> None:
    text = (COMPOSE / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?(FACESTREAM_[A-Z0-9_]+)=", text, re.M))
    expected = {f"FACESTREAM_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_images_install_the_way_ci_does() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "sh scripts/install.sh $(VENV) dev" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    for dockerfile, profile in (("Dockerfile", "cpu"), ("Dockerfile.gpu", "gpu")):
        runs = [
            line
            for line in (COMPOSE / dockerfile).read_text().splitlines()
            if line.startswith("RUN sh scripts/install.sh")
        ]
        assert runs == [f"RUN sh scripts/install.sh /opt/facestream {profile} \\"], dockerfile


def test_dashboard_queries_use_metrics_that_exist() -> None:
    """Every query names a metric some service exports; every panel has a unit; a "p50 / p99"
    panel asks for both quantiles."""
    import json

    from facestream.detector.metrics import REGISTRY as DETECTOR
    from facestream.ingest.http.metrics import REGISTRY as GATEWAY
    from facestream.sink.metrics import REGISTRY as SINK

    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "facestream.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"facestream_[a-z_]+", target["expr"])
    }
    # A labelled family exports no sample before its first use: count its names as well.
    exported = {
        family.name + suffix
        for registry in (GATEWAY, DETECTOR, SINK)
        for family in registry.collect()
        if family.name.startswith("facestream_")
        for suffix in ("", "_total", "_bucket", "_sum", "_count")
    }
    assert used and used <= exported, used - exported
    for panel in dashboard["panels"]:
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), panel["title"]
        if "p50 / p99" in panel["title"]:
            quantiles = {
                q
                for target in panel["targets"]
                for q in re.findall(r"histogram_quantile\(\s*(0\.\d+)", target["expr"])
            }
            assert quantiles == {"0.5", "0.99"}, panel["title"]
    scrape = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in scrape["scrape_configs"]} == {"gateway", "detector", "sinks"}


def test_the_readme_documents_every_setting() -> None:
    """The README's settings table names each variable in full (no `_SUFFIX` shorthand)."""
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(FACESTREAM_[A-Z0-9_]+)`", readme))
    expected = {f"FACESTREAM_{name.upper()}" for name in Settings.model_fields}
    assert expected - documented == set()
