"""The deployment files: Kubernetes manifests (kustomize), Dockerfile, docker-compose.yml and the
Grafana dashboard. Fast and offline, no server:

- the kustomize base and example overlay are rendered with ``kubectl kustomize`` (skipped where
  kubectl is missing) and every document is validated against the Kubernetes 1.31 OpenAPI schemas
  that the ``kubernetes-validate`` package ships; the TOML in every ConfigMap loads with the
  project's own ``cdc.core.config.load_config``, with the environment the Deployment gives it;
- docker-compose.yml is validated against the compose-spec JSON schema vendored in
  ``check-jsonschema``; its mounts, dependencies and TOML configs are checked the same way;
- the dashboard: no JSON schema of Grafana dashboards is published as a PyPI or npm package
  (``@grafana/schema`` ships TypeScript types only), so it gets structural checks, and every
  metric name in its queries must be one that ``cdc.runtime.metrics`` exposes.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from cdc.core.config import Config, load_config
from cdc.runtime.metrics import metric_names, sink_metrics, source_metrics

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
DASHBOARD = REPO / "deploy" / "grafana" / "tributary-dashboard.json"
COMPOSE = REPO / "docker-compose.yml"
K8S_VERSION = "1.31"
METRICS_PORT = 9464
IMAGE = "ghcr.io/example/tributary"
SOURCE_ARGS = ["source", "run", "--config", "/etc/tributary/site.toml"]
SINK_ARGS = ["sink", "run", "--config", "/etc/tributary/cloud.toml"]
PROMETHEUS_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                          "prometheus.io/path": "/metrics"}
#: env vars whose values are secrets: they must come from a Secret
SECRET_ENV_RE = re.compile(r"DSN|PASSWORD|USERNAME|SECRET|TOKEN|USER_INFO|JAAS", re.IGNORECASE)
#: what a DSN or a password in a literal value looks like
LITERAL_SECRET_RE = re.compile(r"postgres(ql)?://|password\s*=|host\s*=", re.IGNORECASE)


# --- Kubernetes ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _render(directory: Path) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: cannot render the kustomizations")
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
    assert docs, f"kubectl kustomize {directory} rendered nothing"
    return docs


@pytest.fixture(params=["base", "overlay"])
def rendered(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    return _render(BASE if request.param == "base" else OVERLAY)


@pytest.fixture
def overlay() -> tuple[dict[str, Any], ...]:
    return _render(OVERLAY)


def _kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _component(docs: tuple[dict[str, Any], ...], component: str) -> list[dict[str, Any]]:
    return [d for d in _kind(docs, "Deployment")
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"]


def test_every_rendered_document_is_valid_kubernetes(rendered: tuple[dict[str, Any], ...]) -> None:
    import kubernetes_validate

    for doc in rendered:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{what} is not valid Kubernetes {K8S_VERSION}: {path}: {exc.message}")


def test_the_validator_rejects_a_broken_deployment(overlay: tuple[dict[str, Any], ...]) -> None:
    """The schema check above has teeth: strict mode refuses a misspelt field."""
    import copy

    import kubernetes_validate

    doc = copy.deepcopy(_component(overlay, "sink")[0])
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_one_source_per_site_and_one_sink() -> None:
    base, overlay = _render(BASE), _render(OVERLAY)
    assert [d["metadata"]["name"] for d in _component(base, "source")] == ["tributary-source"]
    assert [d["metadata"]["name"] for d in _component(base, "sink")] == ["tributary-sink"]
    assert sorted(d["metadata"]["name"] for d in _component(overlay, "source")) == [
        "tributary-source-plant-a", "tributary-source-plant-b"]
    assert [d["metadata"]["name"] for d in _component(overlay, "sink")] == ["tributary-sink"]
    # the two sources select different pods
    selectors = [json.dumps(d["spec"]["selector"], sort_keys=True)
                 for d in _component(overlay, "source")]
    assert len(set(selectors)) == len(selectors)
    # no Secret is created: they are referenced only
    assert _kind(base, "Secret") == [] and _kind(overlay, "Secret") == []


def test_sources_run_alone_on_their_slot(rendered: tuple[dict[str, Any], ...]) -> None:
    for dep in _component(rendered, "source"):
        name = dep["metadata"]["name"]
        assert dep["spec"]["replicas"] == 1, name
        assert dep["spec"]["strategy"] == {"type": "Recreate"}, name
        (container,) = _containers(dep)
        assert container["args"] == SOURCE_ARGS, name


def test_sink_command_and_replicas() -> None:
    for docs, replicas in ((_render(BASE), 1), (_render(OVERLAY), 2)):
        (sink,) = _component(docs, "sink")
        assert sink["spec"]["replicas"] == replicas
        (container,) = _containers(sink)
        assert container["args"] == SINK_ARGS


def test_pods_probes_resources_and_security(rendered: tuple[dict[str, Any], ...]) -> None:
    deployments = _kind(rendered, "Deployment")
    assert deployments
    for dep in deployments:
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]
        assert pod["metadata"]["annotations"] == pod["metadata"]["annotations"] | \
            PROMETHEUS_ANNOTATIONS, name
        spec = pod["spec"]
        assert spec["terminationGracePeriodSeconds"] == 60, name
        for c in spec["containers"]:
            where = f"{name}/{c['name']}"
            assert c["image"].startswith(IMAGE + ":"), where
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports.get("metrics") == METRICS_PORT, where

            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = c[probe]["httpGet"]
                assert get["path"] == path, f"{where} {probe}"
                port = get["port"]
                assert (ports.get(port) if isinstance(port, str) else port) == METRICS_PORT, \
                    f"{where} {probe} port {port!r}"
                assert c[probe]["periodSeconds"] > 0 and c[probe]["failureThreshold"] >= 1
            # liveness must tolerate what readiness flags: a restart is the last resort
            live, ready = c["livenessProbe"], c["readinessProbe"]
            assert live["periodSeconds"] * live["failureThreshold"] >= \
                ready["periodSeconds"] * ready["failureThreshold"], where

            resources = c["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(part, {})), f"{where} {part}"

            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert (sc.get("runAsNonRoot", spec.get("securityContext", {}).get("runAsNonRoot"))
                    is True), where
            uid = sc.get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
            assert uid not in (None, 0), f"{where}: runAsNonRoot needs a numeric non-0 UID"


def test_secrets_are_referenced_never_written(rendered: tuple[dict[str, Any], ...]) -> None:
    for dep in _kind(rendered, "Deployment"):
        for c in _containers(dep):
            env = {e["name"]: e for e in c.get("env", [])}
            needed = {"source": "CDC_SITE_DSN", "sink": "CDC_SINK_DSN"}[
                dep["metadata"]["labels"]["app.kubernetes.io/component"]]
            assert needed in env, f"{dep['metadata']['name']}: no {needed}"
            for name, e in env.items():
                if "value" in e:
                    assert not LITERAL_SECRET_RE.search(str(e["value"])), f"{name} is literal"
                if SECRET_ENV_RE.search(name):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    assert "value" not in e and ref and ref.get("name") and ref.get("key"), \
                        f"{dep['metadata']['name']}: {name} must come from a secretKeyRef"
    # and no ConfigMap carries one either (the TOML holds placeholders)
    for cm in _kind(rendered, "ConfigMap"):
        for key, text in cm.get("data", {}).items():
            for section in tomllib.loads(text).values():
                dsn = section.get("dsn") if isinstance(section, dict) else None
                assert dsn is None or not LITERAL_SECRET_RE.search(dsn), \
                    f"{cm['metadata']['name']}/{key}: a real DSN"


def test_each_site_has_its_own_dsn_secret(overlay: tuple[dict[str, Any], ...]) -> None:
    secrets = []
    for dep in _component(overlay, "source"):
        env = {e["name"]: e for e in _containers(dep)[0]["env"]}
        secrets.append(env["CDC_SITE_DSN"]["valueFrom"]["secretKeyRef"]["name"])
    assert sorted(secrets) == ["tributary-site-plant-a", "tributary-site-plant-b"]


def _fake_environ(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment with made-up values for its Secret references."""
    environ = {}
    for e in container.get("env", []):
        if "value" in e:
            environ[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            environ[e["name"]] = (f"host=db.{ref['name']} dbname=x user=u password=pw"
                                  if "DSN" in e["name"] else f"{ref['name']}/{ref['key']}")
    return environ


def _config_of(dep: dict[str, Any], configmaps: dict[str, dict[str, Any]], tmp_path: Path,
               ) -> tuple[Config, dict[str, str]]:
    """Load the config file a Deployment's container runs with, as the daemon would."""
    spec = dep["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume_name = mounts[str(config_path.parent)]
    (volume,) = [v for v in spec["volumes"] if v["name"] == volume_name]
    cm = configmaps[volume["configMap"]["name"]]  # KeyError: the ConfigMap is not rendered
    text = cm["data"][config_path.name]
    tomllib.loads(text)
    path = tmp_path / dep["metadata"]["name"] / config_path.name
    path.parent.mkdir()
    path.write_text(text)
    environ = _fake_environ(container)
    return load_config(path, environ=environ), environ


def test_configmaps_load_with_the_project_loader(overlay: tuple[dict[str, Any], ...],
                                                 tmp_path: Path) -> None:
    configmaps = {cm["metadata"]["name"]: cm for cm in _kind(overlay, "ConfigMap")}
    assert len(configmaps) == 3  # two sites and the cloud
    kafka = set()
    site_ids = []
    for dep in _kind(overlay, "Deployment"):
        config, environ = _config_of(dep, configmaps, tmp_path)
        component = dep["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "source":
            site = config.need_site()
            assert site.id == dep["metadata"]["labels"]["app.kubernetes.io/instance"]
            assert dep["metadata"]["name"] == f"tributary-source-{site.id}"
            assert site.dsn == environ["CDC_SITE_DSN"]  # the Secret wins over the placeholder
            site_ids.append(site.id)
        else:
            sink = config.need_sink()
            assert sink.dsn == environ["CDC_SINK_DSN"]
            assert sink.group_id == "tributary-sink"
        assert config.metrics.port == METRICS_PORT
        assert config.metrics.host == "0.0.0.0"  # the kubelet and Prometheus come from outside
        assert config.kafka.config["sasl.username"] == environ["CDC_KAFKA_CONFIG_SASL_USERNAME"]
        assert config.kafka.config["sasl.password"] == environ["CDC_KAFKA_CONFIG_SASL_PASSWORD"]
        kafka.add((config.kafka.bootstrap_servers, config.kafka.topic_prefix))
    assert sorted(site_ids) == ["plant-a", "plant-b"]
    assert len(kafka) == 1, f"sources and sink must share the cluster and topic prefix: {kafka}"


def test_secret_example_is_not_applied_and_matches_the_references(
        overlay: tuple[dict[str, Any], ...]) -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization.get("resources", [])
    examples = {(d["metadata"]["name"], key)
                for d in yaml.safe_load_all((OVERLAY / "secret.example.yaml").read_text())
                if d for key in d["stringData"]}
    referenced = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                  for dep in _kind(overlay, "Deployment") for c in _containers(dep)
                  for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    assert referenced == examples


# --- Dockerfile ----------------------------------------------------------------------------------

def test_dockerfile() -> None:
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    text = "\n".join(lines)
    assert "pip install --no-cache-dir ." in text
    assert 'ENTRYPOINT ["cdc"]' in lines
    (user,) = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    uid = user.split(":")[0]
    assert uid.isdigit() and uid != "0", "a numeric non-root UID (Kubernetes runAsNonRoot)"
    ignored = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    copied = []
    for ln in lines:
        if ln.startswith("COPY "):
            *sources, _dest = ln.split()[1:]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: not in the repo"
                assert src.split("/")[0] not in ignored, f"COPY {src}: excluded by .dockerignore"
                copied.append(src)
    # what the package build needs: pyproject, its readme and every package it declares
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= set(copied)
    packaged = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packaged:
        package = pattern.rstrip("*")
        assert package in copied, f"package {package} is not copied into the image"
    # development tools stay in the checkout: neither packaged nor in the image
    for tool in ("devenv", "benchmarks"):
        assert not any(p.rstrip("*") == tool for p in packaged), f"{tool} is packaged"
        assert tool not in copied, f"{tool} is copied into the image"
    # the UID the manifests run as
    for dep in _kind(_render(OVERLAY), "Deployment") if shutil.which("kubectl") else []:
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


# --- docker-compose.yml --------------------------------------------------------------------------

COMPOSE_SERVICES = {"site-a", "site-b", "kafka", "cloud", "source-a", "source-b", "sink",
                    "prometheus"}
DAEMONS = {"source-a": SOURCE_ARGS, "source-b": SOURCE_ARGS, "sink": SINK_ARGS}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _bind_mounts(service: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    for volume in service.get("volumes", []):
        source, target = (volume.split(":")[:2] if isinstance(volume, str)
                          else (volume["source"], volume["target"]))
        if source.startswith((".", "/")):
            yield (REPO / source).resolve(), target


def test_compose_is_valid_compose_spec(compose: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_services_dependencies_and_mounts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert COMPOSE_SERVICES <= set(services)
    for name, service in services.items():
        deps = service.get("depends_on", {})
        for dep in deps:
            assert dep in services, f"{name} depends on unknown service {dep}"
            if isinstance(deps, dict) and deps[dep].get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s missing health"
        for source, target in _bind_mounts(service):
            assert source.exists(), f"{name} mounts {source}, which is not in the repo"
            assert REPO in source.parents, f"{name} mounts {source}, outside the repo"
    for db, image in (("site-a", "postgres:15"), ("site-b", "timescale/timescaledb:2.28.3-pg15"),
                      ("cloud", "timescale/timescaledb:2.28.3-pg15")):
        assert services[db]["image"] == image
    for site in ("site-a", "site-b"):
        command = services[site]["command"]
        for setting in ("wal_level=logical", "max_replication_slots=10", "max_wal_senders=10"):
            assert setting in command, f"{site}: {setting}"
    assert "shared_preload_libraries=timescaledb" in services["site-b"]["command"]
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    kafka_env = services["kafka"]["environment"]
    assert {"KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_LISTENERS",
            "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"} <= \
        set(kafka_env)
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}


def test_compose_daemons(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    prefixes, site_ids = set(), []
    for name, args in DAEMONS.items():
        service = services[name]
        assert service["command"] == args
        assert "build" in service
        assert {"condition": "service_healthy"} in service["depends_on"].values()
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
        # the config file the command names is mounted from the repo and loads with the env given
        mounts = {target: source for source, target in _bind_mounts(service)}
        source = mounts[args[-1]]
        config = load_config(source, environ=service.get("environment", {}))
        assert config.metrics.port == METRICS_PORT and config.metrics.host == "0.0.0.0"
        prefixes.add((config.kafka.bootstrap_servers, config.kafka.topic_prefix))
        if args == SOURCE_ARGS:
            assert config.need_site().dsn == service["environment"]["CDC_SITE_DSN"]
            site_ids.append(config.need_site().id)
        else:
            assert config.need_sink().dsn == service["environment"]["CDC_SINK_DSN"]
        dsn_host = re.search(r"host=([\w.-]+)", service["environment"].get(
            "CDC_SITE_DSN", service["environment"].get("CDC_SINK_DSN", ""))).group(1)
        assert dsn_host in service["depends_on"], f"{name}: its database {dsn_host}"
    assert len(site_ids) == len(set(site_ids)) == 2
    assert len(prefixes) == 1
    assert prefixes.pop()[0].split(":")[0] in services


def test_compose_prometheus_scrapes_the_daemons(compose: dict[str, Any]) -> None:
    mounts = {target: source for source, target in _bind_mounts(compose["services"]["prometheus"])}
    prometheus = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    targets = {t for job in prometheus["scrape_configs"]
               if job.get("metrics_path", "/metrics") == "/metrics"
               for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert {f"{d}:{METRICS_PORT}" for d in DAEMONS} <= targets


def test_compose_grafana_provisions_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"].get("grafana")
    if grafana is None:
        pytest.skip("no grafana service")
    mounts = {target: source for source, target in _bind_mounts(grafana)}
    provisioning = mounts["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "tributary.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    (datasource,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


# --- Grafana dashboard ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows
    return out


def _exposed() -> tuple[set[str], dict[str, set[str]]]:
    """Every sample name the daemons expose, and each one's label names, with one sample of
    every metric (a labelled metric shows its samples only once a child exists)."""
    from prometheus_client.metrics import Counter, Gauge, Histogram

    names, labels = set(), {}
    for metrics in (source_metrics("x"), sink_metrics()):
        for value in vars(metrics).values():
            if not isinstance(value, (Counter, Gauge, Histogram)):
                continue
            label_names = getattr(value, "_labelnames", ())
            child = value.labels(*["x"] * len(label_names)) if label_names else value
            if isinstance(value, Histogram):
                child.observe(1)
            elif isinstance(value, Counter):
                child.inc()
            else:
                child.set(1)
        names |= metric_names(metrics.registry)
        for family in metrics.registry.collect():
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(set(sample.labels) - {"le"})
    return names, labels


def _balanced(expr: str) -> bool:
    pairs, stack, quoted = {")": "(", "]": "[", "}": "{"}, [], False
    for ch in expr:
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not quoted


def test_balanced_check_works() -> None:
    assert _balanced('sum by (op) (rate(m{site=~"$site"}[1m]))')
    assert _balanced('m{a="(("}')
    assert not _balanced("sum(rate(m[1m])")
    assert not _balanced("m{a=\"x}")
    assert not _balanced("rate(m[1m)]")


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    for key in ("title", "uid", "schemaVersion", "panels", "templating"):
        assert key in dashboard, key
    assert dashboard["title"] == "Tributary"
    assert dashboard["schemaVersion"] == 39
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    site = variables["site"]
    query = site["query"]["query"] if isinstance(site["query"], dict) else site["query"]
    assert query == "label_values(tributary_sink_lag_seconds, site)"
    assert site["datasource"]["uid"] == "${datasource}"

    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        where = f"panel {p['id']} {p.get('title')!r}"
        assert p["type"] in {"timeseries", "stat"}, where
        grid = p["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), where
        assert all(type(grid[k]) is int for k in "hwxy"), where
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, where
        assert grid["x"] + grid["w"] <= 24, where
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{where} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        assert p["datasource"]["uid"] == "${datasource}", where
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert p.get("title"), where
        assert p["targets"], where
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for t in p["targets"]:
            assert t.get("expr") and t.get("refId"), where
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}", where


def test_dashboard_queries_use_exposed_metrics(dashboard: dict[str, Any]) -> None:
    exposed, labels = _exposed()
    exprs = [t["expr"] for p in _panels(dashboard) for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    used = set()
    for expr in exprs:
        assert _balanced(expr), f"unbalanced: {expr}"
        for name in re.findall(r"tributary_[a-z_]+", expr):
            assert name in exposed, f"{name} (in {expr}) is not exposed by cdc.runtime.metrics"
            used.add(name)
        # label matchers name labels the metric has
        for name, matchers in re.findall(r"(tributary_[a-z_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
                assert label in labels[name], f"{name} has no label {label!r}: {expr}"
        # rate() over counters and histogram buckets only; quantiles over buckets by le
        for name in re.findall(r"rate\((tributary_[a-z_]+)", expr):
            assert name.endswith(("_total", "_bucket")), f"rate() of a gauge: {expr}"
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and re.search(r"by \([^)]*\ble\b", expr), expr
    expected = {
        "tributary_sink_lag_seconds", "tributary_source_wal_lag_bytes",
        "tributary_sink_rows_applied_total", "tributary_source_events_total",
        "tributary_sink_end_to_end_latency_seconds_bucket",
        "tributary_sink_apply_batch_seconds_bucket", "tributary_source_slot_retained_wal_bytes",
        "tributary_source_slot_retained_wal_limit_bytes", "tributary_sink_consumer_lag_messages",
        "tributary_sink_site_stopped", "tributary_source_kafka_queue_messages",
        "tributary_source_kafka_delivery_errors_total"}
    assert expected <= used, f"not on the dashboard: {sorted(expected - used)}"


def test_metric_names_check_has_teeth() -> None:
    exposed, _labels = _exposed()
    assert "tributary_sink_rows_applied_total" in exposed
    assert "tributary_sink_end_to_end_latency_seconds_bucket" in exposed
    assert "tributary_sink_rows_applied" in exposed  # the family name
    assert "tributary_sink_lag_second" not in exposed


def test_metrics_are_reachable_only_inside_the_namespace_and_from_scrapers(
        overlay: tuple[dict[str, Any], ...]) -> None:
    """One NetworkPolicy covers every Tributary pod and admits the metrics port only from the
    namespace's pods and namespaces labelled for scraping."""
    [policy] = _kind(overlay, "NetworkPolicy")
    pods = [d for d in _kind(overlay, "Deployment")]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert pods and all(selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                        for d in pods)
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9464, "protocol": "TCP"}]
    assert rule["from"] == [{"podSelector": {}},
                            {"namespaceSelector": {"matchLabels": {"tributary.io/scrape": "true"}}}]
