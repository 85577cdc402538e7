"""Deployment files: Dockerfiles, the Helm chart rendered and validated with the pinned tools.

`deploy/tools.sh install` builds/installs helm, kubeconform, hadolint and the Kubernetes schemas
(first run a few minutes, then cached in .stack/tools); a failure there fails these tests with the
script's own message. Nothing is skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from contracts import TOPICS_BY_NAME
from mailsync.settings import ServiceSettings
from tests.stack import ROOT

SERVICES = ("fetcher", "linker", "sender", "janitor")
CHART = ROOT / "deploy/helm/mailsync"
PRODUCTION = CHART / "ci/production-values.yaml"
Doc = dict[str, Any]


def run(
    *args: str,
    timeout: float = 900,
    check: bool = True,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        out = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{out}")
    return proc


@pytest.fixture(scope="module")
def tools() -> Path:
    run(str(ROOT / "deploy/tools.sh"), "install")
    return Path(run(str(ROOT / "deploy/tools.sh"), "bin").stdout.strip())


def render(tools: Path, *args: str, check: bool = True) -> list[Doc] | str:
    proc = run(str(tools / "helm"), "template", "rel", str(CHART), "--namespace", "ms", *args, check=check)
    if proc.returncode != 0:
        return proc.stderr
    # PyYAML comes with the tools' virtualenv (kubernetes-validate needs it), not with the project.
    to_json = "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"
    py = tools.parent / "venv/bin/python"
    conv = subprocess.run(
        [str(py), "-c", to_json], input=proc.stdout, capture_output=True, text=True, timeout=60, check=True
    )
    docs: list[Doc] = json.loads(conv.stdout)
    return docs


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# --- Dockerfiles (no tools needed) ---------------------------------------------------------------


def test_service_dockerfiles_differ_only_in_the_service_name() -> None:
    texts = {s: (ROOT / f"deploy/docker/{s}.Dockerfile").read_text() for s in SERVICES}
    normalised = {t.replace(s, "SERVICE") for s, t in texts.items()}
    assert len(normalised) == 1
    text = texts["fetcher"]
    final = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]  # the final stage
    assert "AS build" in text and "uv sync --frozen --no-dev" in text
    assert "uv" not in re.sub(r"#.*", "", final).split(), "no build tool in the final stage"
    assert "USER 10001:10001" in final and 'ENTRYPOINT ["python", "-m", "services.fetcher"]' in final
    assert "PYTHONDONTWRITEBYTECODE=1" in final


def test_dockerignore_keeps_the_context_to_the_packages() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("**")] == "**"
    for needed in ("!pyproject.toml", "!uv.lock", "!README.md", "!contracts/", "!mailsync/", "!services/"):
        assert needed in lines


def test_image_build_steps_work_without_docker(tmp_path: Path) -> None:
    """The Dockerfile's build stage, replayed here: COPY the same files, the same `uv sync`, then the
    installed environment alone (no sources, run from elsewhere) imports every service and runs the CLI.
    """
    text = (ROOT / "deploy/docker/fetcher.Dockerfile").read_text()
    src = tmp_path / "src"
    src.mkdir()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for name in line.split()[1:-1]:
                run("cp", "-r", str(ROOT / name), str(src / name))
    uv = ROOT / ".stack/uv/bin/uv"
    if not uv.exists():
        run(str(ROOT / "deploy/local/python.sh"))
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    env.pop("VIRTUAL_ENV", None)
    # The Dockerfile's last `uv sync` line, with this machine's python3 for the image's interpreter.
    [*_, sync_line] = [ln for ln in text.splitlines() if ln.startswith("RUN uv sync")]
    sync = sync_line.removeprefix("RUN uv ").replace("/usr/local/bin/python3", "python3").split()
    assert "--no-dev" in sync and "--no-editable" in sync and "--frozen" in sync
    run(str(uv), *sync, "--quiet", cwd=src, env=env)
    code = (
        "import services.fetcher.app, services.linker.app, services.sender.app, services.janitor.app;"
        "import opentelemetry.exporter.otlp.proto.http.trace_exporter"  # the image exports traces
    )
    run(str(venv / "bin/python"), "-c", code, cwd=tmp_path)
    cli = run(str(venv / "bin/mailsync"), "topics", "list", cwd=tmp_path)
    assert "mailsync.messages.v1" in cli.stdout
    assert not (venv / "bin/pytest").exists(), "--no-dev: no test tools in the image"


# --- Chart -------------------------------------------------------------------------------------


def test_check_script_lints_and_validates_strictly(tools: Path) -> None:
    """hadolint, helm lint --strict, helm template | kubeconform -strict for default and CI values."""
    proc = run(str(ROOT / "deploy/check.sh"))
    summaries = [ln for ln in proc.stdout.splitlines() if ln.startswith("Summary:")]
    assert len(summaries) == 1 + len(list((CHART / "ci").glob("*-values.yaml")))
    for line in summaries:
        assert re.search(r"Invalid: 0, Errors: 0, Skipped: 0$", line), line


def test_default_values_render_every_service_safely(tools: Path) -> None:
    docs = render(tools)
    assert isinstance(docs, list)
    deployments = by_kind(docs, "Deployment")
    assert sorted(deployments) == sorted(f"rel-mailsync-{s}" for s in SERVICES)
    for svc in SERVICES:
        dep = deployments[f"rel-mailsync-{svc}"]
        pod = dep["spec"]["template"]["spec"]
        [c] = pod["containers"]
        assert c["image"] == f"mailsync-{svc}:0.1.0"
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["securityContext"]["runAsNonRoot"] is True
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert pod["automountServiceAccountToken"] is False
        assert next(e for e in c["env"] if e["name"] == "MAILSYNC_SERVICE_NAME")["value"] == svc
        refs = [next(iter(e.values()))["name"] for e in c["envFrom"]]
        assert refs == ["rel-mailsync", "rel-mailsync"]  # ConfigMap + Secret
        assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        assert pod["terminationGracePeriodSeconds"] > 20  # longer than the services' own drain
    assert deployments["rel-mailsync-fetcher"]["spec"]["replicas"] == 2
    assert deployments["rel-mailsync-janitor"]["spec"]["replicas"] == 1

    assert sorted(by_kind(docs, "PodDisruptionBudget")) == [
        "rel-mailsync-fetcher",
        "rel-mailsync-linker",
        "rel-mailsync-sender",
    ]
    assert len(by_kind(docs, "Service")) == 4
    secret = by_kind(docs, "Secret")["rel-mailsync"]
    assert set(secret["stringData"]) == {"MAILSYNC_MONGO_URI"}
    config = by_kind(docs, "ConfigMap")["rel-mailsync"]["data"]
    assert config["MAILSYNC_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert config["MAILSYNC_HTTP_PORT"] == "8080"
    assert "MAILSYNC_TRACING_ENABLED" not in config
    for kind in ("HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor"):
        assert not by_kind(docs, kind), kind
    policy = by_kind(docs, "NetworkPolicy")["rel-mailsync"]["spec"]
    assert policy["policyTypes"] == ["Ingress"] and policy["ingress"][0]["ports"] == [
        {"port": "http", "protocol": "TCP"}
    ]

    job = by_kind(docs, "Job")["rel-mailsync-topics"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["mailsync"] and c["args"] == ["topics", "apply", "--replication-factor", "3"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_production_values_use_sasl_tls_external_secret_and_autoscaling(tools: Path) -> None:
    docs = render(tools, "-f", str(PRODUCTION))
    assert isinstance(docs, list)
    assert not by_kind(docs, "Secret"), "existingSecret: the chart creates no Secret"
    config = by_kind(docs, "ConfigMap")["rel-mailsync"]["data"]
    assert config["MAILSYNC_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["MAILSYNC_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["MAILSYNC_KAFKA_SSL_CAFILE"] == "/etc/mailsync/kafka-ca/ca.crt"
    assert config["MAILSYNC_TENANT_DEFAULT"] == "acme"  # `config` overrides a built-in setting
    assert config["MAILSYNC_TRACING_ENABLED"] == "true"
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    deployments = by_kind(docs, "Deployment")
    for dep in deployments.values():
        [c] = dep["spec"]["template"]["spec"]["containers"]
        assert c["envFrom"][1] == {"secretRef": {"name": "mailsync-secrets"}}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["kafka-ca"] == "/etc/mailsync/kafka-ca"
        assert mounts["mongo-ca"] == "/etc/mailsync/mongo-ca"

    # HPA on CPU for the fetcher; replicas then belong to the autoscaler.
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["rel-mailsync-fetcher"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "rel-mailsync-fetcher" and hpa["maxReplicas"] == 12
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 65
    assert "replicas" not in deployments["rel-mailsync-fetcher"]["spec"]
    assert deployments["rel-mailsync-janitor"]["spec"]["replicas"] == 2

    # KEDA on consumer lag: one trigger per consumed topic, in the group the service really uses.
    scaled = by_kind(docs, "ScaledObject")
    assert sorted(scaled) == ["rel-mailsync-linker", "rel-mailsync-sender"]
    linker = scaled["rel-mailsync-linker"]["spec"]
    settings = ServiceSettings(service_name="linker", kafka_consumer_group_prefix="mailsync-prod")
    group = settings.consumer_group()
    topics = [t["metadata"]["topic"] for t in linker["triggers"]]
    assert topics == ["crm.records.v1", "mailsync.messages.v1", "mailsync.send.events.v1"]
    assert {t["metadata"]["consumerGroup"] for t in linker["triggers"]} == {group}
    assert linker["triggers"][0]["authenticationRef"] == {"name": "mailsync-kafka-auth"}

    monitor = by_kind(docs, "ServiceMonitor")["rel-mailsync"]["spec"]
    assert monitor["endpoints"][0]["path"] == "/metrics"
    [group] = by_kind(docs, "PrometheusRule")["rel-mailsync"]["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    runbook = (ROOT / "docs/operations.md").read_text()
    for name, rule in alerts.items():
        assert f"### {name}" in runbook, f"docs/operations.md does not explain {name}"
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
    assert 'namespace="ms"' in alerts["MailsyncConsumerLagHigh"]["expr"]

    job = by_kind(docs, "Job")["rel-mailsync-topics"]
    [c] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["MAILSYNC_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mailsync-secrets"
    assert env["MAILSYNC_KAFKA_SSL_CAFILE"]["value"] == "/etc/mailsync/kafka-ca/ca.crt"
    assert c["image"] == "registry.example.com/crm/mailsync-fetcher:0.1.0"


def test_chart_consumes_what_each_service_subscribes_to(tools: Path) -> None:
    """KEDA scales on the lag of `services.<name>.consumes`: it must list the service's subscriptions."""
    args = [f"--set=services.{s}.keda.enabled=true" for s in SERVICES]
    docs = render(tools, *args)
    assert isinstance(docs, list)
    scaled = by_kind(docs, "ScaledObject")
    for svc in SERVICES:
        code = "\n".join(p.read_text() for p in (ROOT / "services" / svc).rglob("*.py"))
        subscribed = set(re.findall(r"rt\.subscribe(?:_batch)?\(\s*\"([^\"]+)\"", code))
        topics = {t["metadata"]["topic"] for t in scaled[f"rel-mailsync-{svc}"]["spec"]["triggers"]}
        assert topics <= set(TOPICS_BY_NAME)
        assert topics == subscribed, (
            f"deploy/helm/mailsync/values.yaml services.{svc}.consumes should be {sorted(subscribed)}"
        )


def test_chart_managed_sasl_password_reaches_the_hook_job(tools: Path) -> None:
    docs = render(
        tools,
        "--set",
        "kafka.securityProtocol=SASL_PLAINTEXT",
        "--set",
        "kafka.sasl.mechanism=PLAIN",
        "--set",
        "kafka.sasl.username=svc",
        "--set",
        "secrets.kafkaSaslPassword=s3cret",
    )
    assert isinstance(docs, list)
    secrets = by_kind(docs, "Secret")
    hook = secrets["rel-mailsync-topics"]
    assert hook["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"  # before the Job
    assert hook["stringData"] == {"MAILSYNC_KAFKA_SASL_PASSWORD": "s3cret"}
    assert secrets["rel-mailsync"]["stringData"]["MAILSYNC_KAFKA_SASL_PASSWORD"] == "s3cret"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "kafka.securityProtocol=SASL_SSL"], "set kafka.sasl.mechanism"),
        (["--set", "secrets.mongoUri="], "set secrets.mongoUri"),
        (
            ["--set", "services.linker.autoscaling.enabled=true", "--set=services.linker.keda.enabled=true"],
            "services.linker: enable either autoscaling",
        ),
        (["--set", "services.fetcher.replicas=-1"], "/services/fetcher/replicas"),
        (["--set", "kafka.securityProtocol=TLS"], "/kafka/securityProtocol"),
        (["--set", "services.mailer.enabled=true"], "additional properties 'mailer' not allowed"),
    ],
)
def test_bad_values_fail_with_a_clear_message(tools: Path, args: list[str], message: str) -> None:
    err = render(tools, *args, check=False)
    assert isinstance(err, str), "the render should have failed"
    assert message in err, err


def test_compose_file_runs_the_four_services_hardened(tools: Path) -> None:
    to_json = "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"
    proc = subprocess.run(
        [str(tools.parent / "venv/bin/python"), "-c", to_json],
        input=(ROOT / "docker-compose.yml").read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    services = json.loads(proc.stdout)["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["mongo"]["image"].startswith("mongo:")
    assert services["dovecot"]["image"].startswith("dovecot/dovecot:")
    assert services["topics"]["entrypoint"] == ["mailsync", "topics", "apply"]
    ports = set()
    for svc in SERVICES:
        s = services[svc]
        assert s["build"]["dockerfile"] == f"deploy/docker/{svc}.Dockerfile"
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"] and s["user"] == "10001:10001"
        assert s["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        ports.add(s["ports"][0])
    assert len(ports) == 4
    keys = services["fetcher"]["environment"]["MAILSYNC_CREDENTIALS_KEYS"]
    from mailsync.credentials import Keyring

    Keyring.from_env({"MAILSYNC_CREDENTIALS_KEYS": keys})  # a valid (development) key
