"""The shipped deployment files: Kubernetes manifests (schemas and the rules they promise) and nginx's config.

The manifests are validated offline against the Kubernetes OpenAPI schemas that the
kubernetes-validate package ships (pinned in pyproject.toml), in strict mode (an unknown
field is an error), for the oldest Kubernetes they need (1.30: native gRPC probes, preStop
sleep) and the newest the package knows.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gpt_grpc.server.app import SERVICE_NAME, parse_args
from tests.fleet import NGINX_CONF, _nginx_main_conf, nginx_binary, render_nginx_conf

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSIONS = ("1.30", "1.37")
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
SECRET_KEYS = {"openai-api-key", "admin-token", "secret-key"}
SELECTOR = {"app.kubernetes.io/name": "gpt-grpc", "app.kubernetes.io/component": "gateway"}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _all() -> list[dict[str, Any]]:
    return [d for p in MANIFESTS for d in _documents(p)]


def _one(kind: str, name: str = "gpt-grpc") -> dict[str, Any]:
    (found,) = [d for d in _all() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _container() -> dict[str, Any]:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _flag(container: dict[str, Any], name: str) -> str:
    for arg in container["args"]:
        if arg.startswith(f"{name}="):
            return str(arg.split("=", 1)[1])
    raise AssertionError(f"{name} not in the container's args")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_match_the_kubernetes_schemas(path: Path, version: str) -> None:
    documents = _documents(path)
    assert documents, f"{path} is empty"
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The check above is not vacuous: a misspelled field and a wrong type are errors."""
    deployment = _one("Deployment")
    misspelled = copy.deepcopy(deployment)
    misspelled["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["servce"] = "x"
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "three"
    named_port = copy.deepcopy(deployment)  # gRPC probes take a number, not a port name
    named_port["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"
    for broken in (misspelled, wrong_type, named_port):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    (kustomization,) = _documents(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secret.example.yaml"}


def test_deployment_runs_replicas_with_grpc_probes() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR
    container = _container()
    port = int(_flag(container, "--port"))
    assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
    readiness, liveness, startup = (container[k]["grpc"] for k in ("readinessProbe", "livenessProbe", "startupProbe"))
    # Readiness follows the gateway's own service (NOT_SERVING from the start of a drain).
    assert readiness == {"port": port, "service": SERVICE_NAME} == startup
    assert liveness["port"] == port and liveness.get("service", "") == ""


def test_the_container_args_are_flags_the_server_accepts() -> None:
    container = _container()
    assert container["command"] == ["gpt-grpc-server"]
    config = parse_args([a for a in container["args"] if not a.startswith(("--api-key-file", "--admin-token-file"))])
    assert config.host == "0.0.0.0" and config.workers == 1 and config.metrics_port == 9464


def test_termination_grace_covers_prestop_and_the_drain() -> None:
    spec = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    grace = float(_flag(container, "--grace-period"))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    margin = spec["terminationGracePeriodSeconds"] - pre_stop - grace
    assert 5 <= margin <= 30, f"margin after preStop and --grace-period: {margin}s"


def test_security_context() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The only writable path is an emptyDir.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_secrets_are_referenced_not_written() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    (secret_volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert secret_volume["secret"]["secretName"] == "gpt-grpc"
    assert {item["key"] for item in secret_volume["secret"]["items"]} == SECRET_KEYS
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == secret_volume["name"]]
    directory = mount["mountPath"]
    assert mount["readOnly"] is True
    assert _flag(container, "--api-key-file") == f"{directory}/openai-api-key"
    assert _flag(container, "--admin-token-file") == f"{directory}/admin-token"
    env = {e["name"]: e for e in container["env"]}
    assert env["GPT_GRPC_SECRET_KEY_FILE"]["value"] == f"{directory}/secret-key"
    # No secret value in any applied manifest, nor in the environment.
    (kustomization,) = _documents(K8S / "kustomization.yaml")
    for name in kustomization["resources"]:
        for document in _documents(K8S / name):
            assert document["kind"] != "Secret", "a Secret belongs in secret.example.yaml only (not applied)"
    # Secrets reach the process as files only: no variable holds one.
    secret_like = re.compile("(^|_)(KEY|TOKEN|PASSWORD)(_|$)")
    assert not [name for name in env if secret_like.search(name) and not name.endswith("_FILE")]
    # The Redis store is named by URL, from the ConfigMap.
    store = env["GPT_GRPC_STORE"]["valueFrom"]["configMapKeyRef"]
    assert _one("ConfigMap")["data"][store["key"]].startswith(("redis://", "rediss://"))


def test_services_and_disruption_budget_select_the_pods() -> None:
    service, headless = _one("Service"), _one("Service", "gpt-grpc-headless")
    for s in (service, headless):
        assert s["spec"]["selector"] == SELECTOR
        assert s["spec"]["ports"][0]["targetPort"] == "grpc"
    assert headless["spec"]["clusterIP"] == "None"  # DNS returns every ready pod: client-side round_robin
    assert headless["spec"]["publishNotReadyAddresses"] is False
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == SELECTOR
    assert pdb["spec"]["maxUnavailable"] == 1 < _one("Deployment")["spec"]["replicas"]


def test_resources_come_from_the_bench_figures() -> None:
    resources = _container()["resources"]
    assert resources["requests"]["cpu"] == "1"  # one process: at most ~1.1 cores (bench/SCALING.md)
    assert "cpu" not in resources["limits"]
    # The peak RSS measured with 10,000 calls in flight (--max-in-flight), over plain HTTP and
    # over HTTPS (bench/results/report.md, tls_scale.md): the limit is above both.
    assert _flag(_container(), "--max-in-flight") == "10000"
    assert resources["limits"]["memory"] == "1280Mi" and resources["requests"]["memory"] == "256Mi"
    figures = (ROOT / "bench" / "results" / "report.md").read_text()
    plain_rss = re.search(r"server peak RSS (\d+)", figures)
    tls_rss = re.search(
        r"\| https \|[^\n]*\| (\d+) \| [\d.]+ \|", (ROOT / "bench" / "results" / "tls_scale.md").read_text()
    )
    assert plain_rss is not None and tls_rss is not None
    plain, over_tls = float(plain_rss.group(1)), float(tls_rss.group(1))
    assert plain < over_tls < 1280 * 1.048576  # MB against Mi


# -- nginx ------------------------------------------------------------------------------------


def test_render_keeps_the_shipped_config_but_addresses() -> None:
    shipped = (
        "upstream gpt_grpc {\n    zone z 64k;\n    server 10.0.0.1:50051 max_fails=1 fail_timeout=10s;\n"
        "    server 10.0.0.2:50051 max_fails=1 fail_timeout=10s;\n    keepalive 8;\n}\n"
        "server {\n    listen 50051 http2;\n    access_log /var/log/nginx/a.log;\n}\n"
    )
    out = render_nginx_conf(shipped, "127.0.0.1:9", ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], Path("/tmp/x"))
    assert out == (
        "upstream gpt_grpc {\n    server 127.0.0.1:1 max_fails=1 fail_timeout=10s;\n"
        "    server 127.0.0.1:2 max_fails=1 fail_timeout=10s;\n    server 127.0.0.1:3 max_fails=1 fail_timeout=10s;\n"
        "    zone z 64k;\n    keepalive 8;\n}\n"
        "server {\n    listen 127.0.0.1:9 http2;\n    access_log /tmp/x/a.log;\n}\n"
    )


def test_shipped_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    """The file as shipped (its example replicas, port 50051, /var/log/nginx) is valid for nginx."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "temp").mkdir()
    conf = tmp_path / "gpt-grpc.conf"
    # Only the log directory moves: nginx -t opens the log files.
    conf.write_text(NGINX_CONF.read_text().replace("/var/log/nginx/", f"{tmp_path}/logs/"))
    main = tmp_path / "nginx.conf"
    main.write_text(_nginx_main_conf(tmp_path, conf))
    argv = [nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "logs" / "error.log")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stderr}"
    assert "syntax is ok" in result.stderr
