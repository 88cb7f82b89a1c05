"""The deployment files parse, and every process they start is a real `ficha` command with
options it accepts."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from services.cli import app

DEPLOY = Path(__file__).parents[2] / "deploy"


def commands() -> list[list[str]]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    found = [svc["command"] for name, svc in compose["services"].items()
             if name not in ("postgres",) and not name.startswith("nats")]
    for doc in yaml.safe_load_all((DEPLOY / "k8s" / "ficha.yaml").read_text()):
        if doc["kind"] == "Deployment":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            found.append(container["args"])
    return found


def test_every_deployed_process_is_a_ficha_command() -> None:
    found = commands()
    assert len(found) == 12  # six processes, in compose and in Kubernetes
    runner = CliRunner()
    for args in found:
        done = runner.invoke(app, [*args, "--help"])
        assert done.exit_code == 0, (args, done.output)
    assert {args[0] for args in found} == {"ingest", "project", "scheduler", "api"}
    partitions = sorted(args[2] for args in found if args[0] == "ingest")
    assert partitions == ["0-3", "0-3", "4-7", "4-7"]  # each partition has one owner


def test_compose_runs_the_checked_nats_configuration() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    nodes = [svc for name, svc in compose["services"].items() if name.startswith("nats")]
    assert len(nodes) == 3
    for node in nodes:
        assert node["command"][:2] == ["-c", "/etc/nats/cluster.conf"]
        assert node["environment"]["NATS_SERVER_NAME"].startswith("nats-")
    assert (DEPLOY / "nats" / "cluster.conf").exists()
    assert (DEPLOY / "nats" / "accounts.conf").exists()


def test_probes_and_scrapers_reach_the_metrics_port_from_outside_the_container() -> None:
    """/healthz, /readyz and /metrics listen on FICHA_METRICS_HOST, loopback by default: a
    kubelet's probe (or Prometheus) comes from outside the pod, so the deployments listen
    on every address."""
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "ficha.yaml").read_text()))
    (config,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert config["data"]["FICHA_METRICS_HOST"] == "0.0.0.0"
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        if container["livenessProbe"]["httpGet"]["port"] == "metrics":
            assert {"configMapRef": {"name": "ficha"}} in container["envFrom"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["x-ficha"]["environment"]["FICHA_METRICS_HOST"] == "0.0.0.0"
