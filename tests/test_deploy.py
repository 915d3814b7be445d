"""deploy/: the offline checks CI runs (no image is built here): hadolint on the Dockerfiles,
yamllint on every YAML file, kubernetes-validate (strict schemas) on the manifests — each with
a broken copy that must fail, so a check that silently passes everything is caught — and the
files agree with explorank: the config the ConfigMap holds loads, the probes ask the health
service names the server sets, the images install through the script `make install` uses."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = (DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda")
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return path


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- the linters, each with a negative control --------------------------------------------


def test_hadolint_passes_the_dockerfiles_and_fails_a_bad_one(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    for dockerfile in DOCKERFILES:
        out = _run(hadolint, "--no-color", str(dockerfile))
        assert out.returncode == 0, out.stdout + out.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    out = _run(hadolint, "--no-color", str(bad))
    assert out.returncode != 0 and "DL3007" in out.stdout  # the :latest tag


def test_yamllint_passes_every_yaml_file_and_fails_a_bad_one(tmp_path: Path) -> None:
    yamllint = _tool("yamllint")
    files = [str(p) for p in DEPLOY.rglob("*.yaml")] + [str(ROOT / ".yamllint.yaml")]
    out = _run(yamllint, "--strict", "-c", str(ROOT / ".yamllint.yaml"), *files)
    assert out.returncode == 0, out.stdout + out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:   [1,2]\n")
    out = _run(yamllint, "--strict", "-c", str(ROOT / ".yamllint.yaml"), str(bad))
    assert out.returncode != 0 and "duplication of key" in out.stdout


def test_manifests_validate_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    validate = _tool("kubernetes-validate")
    out = _run(validate, "--strict", *map(str, MANIFESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == sum(len(_docs(p)) for p in MANIFESTS)
    broken = tmp_path / "deployment.yaml"
    broken.write_text((K8S / "deployment.yaml").read_text().replace("replicas: 2", "replica: 2"))
    out = _run(validate, "--strict", str(broken))
    assert out.returncode != 0 and "replica" in out.stdout + out.stderr


def test_kustomization_lists_every_manifest() -> None:
    (kust,) = _docs(K8S / "kustomization.yaml")
    assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS)


# --- the files agree with explorank ----------------------------------------------------------


def _kinds() -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for p in MANIFESTS for d in _docs(p)}


def test_the_configmap_holds_a_valid_config_for_the_mounted_paths(tmp_path: Path) -> None:
    from explorank.engine.config import load_config

    kinds = _kinds()
    toml = kinds["ConfigMap/explorank-config"]["data"]["explorank.toml"]
    (tmp_path / "explorank.toml").write_text(toml)
    cfg = load_config(tmp_path / "explorank.toml", environ={})
    assert cfg.state.store == "redis"
    assert cfg.state.options["url"].startswith("redis://explorank-redis:6379")
    assert "Service/explorank-redis" in kinds
    pod = kinds["Deployment/explorank"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[str(cfg.model.bundle)] == "bundle"
    assert mounts[str(Path(str(cfg.server.auth.tokens_file)).parent)] == "tokens"
    assert container["args"] == ["--config", "/etc/explorank/explorank.toml"]
    assert cfg.server.port == container["ports"][0]["containerPort"] == 50051
    assert cfg.server.metrics_host == "0.0.0.0"  # scraped from other pods


def test_the_secret_placeholders_cannot_be_served() -> None:
    from explorank.engine.auth import TokenTable
    from explorank.errors import ConfigError

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    secret = _kinds()["Secret/explorank-tokens"]["stringData"]["tokens.toml"]
    with pytest.raises(ConfigError, match="visible ASCII"):
        TokenTable.parse(tomllib.loads(secret), "tokens file")


def test_probes_are_native_grpc_on_the_health_service() -> None:
    from explorank.engine.server import LIVENESS_SERVICE

    pod = _kinds()["Deployment/explorank"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert "service" not in container["readinessProbe"]["grpc"]  # the server as a whole
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = re.search(r"^USER (\d+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert user is not None and int(user.group(1)) == pod["securityContext"]["runAsUser"]
    hpa = _kinds()["HorizontalPodAutoscaler/explorank"]["spec"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu" and hpa["minReplicas"] >= 2
    assert _kinds()["PodDisruptionBudget/explorank"]["spec"]["minAvailable"] == 1


def test_the_liveness_service_is_serving_while_readiness_may_not(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """...and `explorank health` (the images' HEALTHCHECK) exits 0 only when SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from explorank.engine.server import LIVENESS_SERVICE
    from tests.server_harness import ThreadServer, make_config

    config = make_config(tiny_bundle, tmp_path / "s.db", batching={"length_buckets": [64]})
    with ThreadServer(config) as srv:
        assert srv.server is not None
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(srv.address))

        def status(service: str) -> int:
            req = health_pb2.HealthCheckRequest(service=service)
            return int(stub.Check(req, timeout=5).status)

        from explorank.cli import main

        serving = health_pb2.HealthCheckResponse.SERVING
        assert status("") == serving and status(LIVENESS_SERVICE) == serving
        assert main(["health", "--address", srv.address]) == 0
        srv.run(srv.server._set_health(health_pb2.HealthCheckResponse.NOT_SERVING))
        assert status("") != serving
        assert status(LIVENESS_SERVICE) == serving
        assert main(["health", "--address", srv.address]) == 1
        assert capsys.readouterr().out.split() == ["SERVING", "NOT_SERVING"]


def test_images_install_through_the_script_make_uses() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^install:\n\tPYTHON=\$\(PYTHON\) scripts/install\.sh ", makefile, re.M)
    assert re.search(r"^install-dev:\n\tPYTHON=\$\(PYTHON\) scripts/install\.sh ", makefile, re.M)
    packages = {
        str(Path(d).parts[0]) for d in _pyproject()["tool"]["setuptools"]["package-dir"].values()
    }
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert re.search(r"^RUN scripts/install\.sh /opt/explorank ", text, re.M), dockerfile
        copied = set(re.findall(r"^COPY (\w+)/ \1/$", text, re.M))
        assert packages <= copied, f"{dockerfile.name} misses {packages - copied}"
    assert "--gpu" in (DEPLOY / "Dockerfile.cuda").read_text()


def _pyproject() -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_install_script_commands(tmp_path: Path) -> None:
    env = {**os.environ, "EXPLORANK_INSTALL_DRY_RUN": "1"}
    script = str(ROOT / "scripts" / "install.sh")
    out = subprocess.run(
        ["bash", script, str(tmp_path / "v"), "redis,otel", "--gpu"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].endswith(f"-m venv {tmp_path / 'v'}")
    assert any(line.endswith(f"install -q {ROOT}[redis,otel]") for line in lines)
    assert "uninstall -q -y onnxruntime onnxruntime-gpu" in lines[-2]
    assert lines[-1].endswith("onnxruntime-gpu>=1.18")
    editable = subprocess.run(
        ["bash", script, str(tmp_path / "v"), "", "--editable"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert editable.stdout.splitlines()[-1].endswith(f"install -q -e {ROOT}")
    bad = subprocess.run(
        ["bash", script, "v", "x", "--fast"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "unknown option --fast" in bad.stderr


def test_compose_runs_two_replicas_on_one_redis() -> None:
    from explorank.cli.serve import add_arguments, overrides_from_args

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    replicas = [s for n, s in services.items() if n.startswith("explorank-")]
    assert len(replicas) == 2 and "redis" in services
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    host_ports = set()
    for svc in replicas:
        over = overrides_from_args(parser.parse_args(svc["command"]))
        assert over["state"]["store"] == "redis"
        assert over["state"]["options"]["url"] == "redis://redis:6379/0"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        host_ports |= {p.rsplit(":", 1)[0] for p in svc["ports"]}
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    assert len(host_ports) == 4  # two gRPC and two metrics ports, none shared
