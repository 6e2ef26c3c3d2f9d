"""The chart's own templates, rendered by Helm's template engine and validated against the
Kubernetes API schemas (kubernetes-validate) of the oldest and a current supported version."""

from __future__ import annotations

import copy
import json
import re

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from opshub.kubernetes import SERVICE_DATA_DIR, SERVICE_PORT, kubernetes_settings, service_host, values_schema

from tests.chart.conftest import CHART, MINIMAL, NAMESPACE, all_options, render
from tests.helpers import ROOT

# kubeVersion in Chart.yaml is >=1.28; 1.33 is a current release.
KUBERNETES_VERSIONS = ("1.28.0", "1.33.0")
# Custom resources that kubernetes-validate has no schema for (checked field by field below).
CUSTOM_KINDS = {"ServiceMonitor"}


def kinds(objects: dict[str, list[dict]]) -> dict[str, dict]:
    return {doc["kind"]: doc for docs in objects.values() for doc in docs}


def validate_all(objects: dict[str, list[dict]]) -> list[str]:
    """Validate every object (strict: unknown fields are errors); returns the kinds validated."""
    validated = []
    for docs in objects.values():
        for doc in docs:
            for version in KUBERNETES_VERSIONS:
                if doc["kind"] in CUSTOM_KINDS:
                    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                        kubernetes_validate.validate(doc, version, strict=True)
                    continue
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    pytest.fail(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {e.message}")
            validated.append(doc["kind"])
    return validated


def env_of(deployment: dict) -> dict[str, dict]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_defaults_alone_are_refused_naming_what_is_missing(chart):
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.render({}, name="ops", namespace=NAMESPACE)
    assert "/jupyterhub/custom/opshub" in str(refused.value)
    assert "'runbooks'" in str(refused.value) and "'roles'" in str(refused.value)


def test_default_values_render_valid_kubernetes_objects(chart):
    objects = render(chart, MINIMAL)
    assert sorted(validate_all(objects)) == [
        "ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "Secret", "Secret", "Service",
    ]  # fmt: skip
    by_kind = kinds(objects)
    secrets = {doc["metadata"]["name"]: doc for docs in objects.values() for doc in docs if doc["kind"] == "Secret"}
    # z2jh's default (fullnameOverride "") names resources without a prefix: hub, proxy-public, opshub
    assert {doc["metadata"]["name"] for doc in by_kind.values()} | set(secrets) == {
        "opshub", "opshub-metrics", "opshub-alerts",
    }  # fmt: skip
    deployment = by_kind["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "opshub/hub:0.1.0"
    assert pod["volumes"][1]["persistentVolumeClaim"]["claimName"] == "opshub"  # SQLite on the PVC
    env = env_of(deployment)
    assert env["JUPYTERHUB_API_URL"]["value"] == "http://hub:8081/hub/api"
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hub",
        "key": "hub.services.opshub.apiToken",
    }
    assert env["OPSHUB_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "opshub-metrics", "key": "token"}
    assert env["OPSHUB_ALERTS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "opshub-alerts", "key": "token"}
    assert "OPSHUB_DATABASE_PASSWORD" not in env
    # the chart generated the metrics and alerts tokens (a cluster keeps them across upgrades: `lookup`)
    tokens = [secrets[name]["data"]["token"] for name in ("opshub-metrics", "opshub-alerts")]
    assert all(len(token) >= 48 for token in tokens) and tokens[0] != tokens[1]
    # the Service's port is the one the hub's config points to
    assert by_kind["Service"]["spec"]["ports"][0]["port"] == SERVICE_PORT
    assert by_kind["PersistentVolumeClaim"]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_all_options_render_valid_kubernetes_objects(chart):
    objects = render(chart, all_options())
    # PostgreSQL: no PVC; existing Secrets: no generated one; the ServiceMonitor is on
    assert sorted(validate_all(objects)) == [
        "ConfigMap", "Deployment", "NetworkPolicy", "Service", "ServiceMonitor",
    ]  # fmt: skip
    by_kind = kinds(objects)
    assert {doc["metadata"]["name"] for doc in by_kind.values()} == {"ops-opshub"}
    deployment = by_kind["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/opshub/hub:0.1.0-rc1"
    assert pod["volumes"][1] == {"name": "data", "emptyDir": {}}
    env = env_of(deployment)
    assert env["OPSHUB_ALERTS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "opshub-alerts-token",
        "key": "alertmanager",
    }
    assert env["JUPYTERHUB_API_URL"]["value"] == "http://ops-hub:8081/ops/hub/api"
    assert env["JUPYTERHUB_SERVICE_PREFIX"]["value"] == "/ops/services/opshub/"
    assert env["OPSHUB_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "opshub-database",
        "key": "password",
    }
    assert env["OPSHUB_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "opshub-metrics-token", "key": "token"}
    # service.extraEnv: a notification target's Apprise URL, from a Secret
    assert env["OPSHUB_NOTIFY_OPS_CHAT"]["valueFrom"]["secretKeyRef"] == {"name": "opshub-notify", "key": "ops-chat"}
    # the ServiceMonitor scrapes the Service's named port, at the metrics path, with the same token
    monitor = by_kind["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"] == by_kind["Service"]["spec"]["selector"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == by_kind["Service"]["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/ops/services/opshub/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": env["OPSHUB_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"],
    }


def test_only_the_hub_and_the_proxy_reach_the_service(chart):
    objects = render(chart, all_options())
    by_kind = kinds(objects)
    policy = by_kind["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == by_kind["Deployment"]["spec"]["selector"]["matchLabels"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "http"}]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app": "jupyterhub", "release": "ops", "component": "hub"}}},
        {"podSelector": {"matchLabels": {"app": "jupyterhub", "release": "ops", "component": "proxy"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},  # allowFrom
    ]
    # the z2jh side of the same paths, in the chart's values: hub and proxy may leave towards the
    # service, users' servers towards the proxy
    values = chart.values["jupyterhub"]
    service_pod = by_kind["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for egress in (values["hub"]["networkPolicy"]["egress"], values["proxy"]["chp"]["networkPolicy"]["egress"]):
        (to,) = egress[0]["to"]
        assert to["podSelector"]["matchLabels"].items() <= service_pod.items()
        assert egress[0]["ports"] == [{"port": SERVICE_PORT}]
    assert service_pod["hub.jupyter.org/network-access-hub"] == "true"  # z2jh's hub admits the service
    (to,) = values["singleuser"]["networkPolicy"]["egress"][0]["to"]
    assert to["podSelector"]["matchLabels"] == {"app": "jupyterhub", "component": "proxy"}


def test_the_network_policy_can_be_turned_off(chart):
    values = {**MINIMAL, "service": {"networkPolicy": {"enabled": False}}}
    assert "NetworkPolicy" not in kinds(render(chart, values))


def test_the_service_pod_gets_the_settings_of_the_one_values_key(chart):
    values = all_options()
    objects = render(chart, values)
    by_kind = kinds(objects)
    settings_yaml = yaml.safe_load(by_kind["ConfigMap"]["data"]["settings.yaml"])
    # exactly what the hub gets from z2jh's get_config("custom.opshub"): Helm's merge of the values
    assert settings_yaml == chart.merge_values(values)["jupyterhub"]["custom"]["opshub"]
    assert settings_yaml == values["jupyterhub"]["custom"]["opshub"]  # all-options sets every key itself
    args = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:4] == ["python", "-m", "opshub.kubernetes", "service"]
    assert args[args.index("--settings") + 1] == "/etc/opshub/settings.yaml"
    base_url = args[args.index("--base-url") + 1]
    # the dashboards server is a pod behind z2jh's proxy: the service reaches it there
    assert args[args.index("--proxy-url") + 1] == "http://ops-proxy-public:80"  # all-options: fullnameOverride ops
    # what the pod will run: the same validation as the hub's
    settings = kubernetes_settings(settings_yaml, base_url)
    assert settings["hub"]["base_url"] == "/ops/"
    assert settings["history"]["database_url"] == values["jupyterhub"]["custom"]["opshub"]["history"]["database_url"]
    mounts = {
        m["name"]: m["mountPath"]
        for m in by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert mounts["data"] == SERVICE_DATA_DIR
    # a settings change rolls the pod
    changed = all_options()
    changed["jupyterhub"]["custom"]["opshub"]["history"]["retention_days"] = 30
    checksum = "checksum/settings"
    annotations = by_kind["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    changed_annotations = kinds(render(chart, changed))["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[checksum] != changed_annotations[checksum]


@pytest.mark.parametrize(
    ("jupyterhub", "release", "prefix"),
    [
        ({"fullnameOverride": ""}, "ops", ""),
        ({"fullnameOverride": "team"}, "ops", "team-"),
        ({"fullnameOverride": None}, "ops", "ops-jupyterhub-"),
        ({"fullnameOverride": None}, "jupyterhub-prod", "jupyterhub-prod-"),
        ({"fullnameOverride": None, "nameOverride": "jh"}, "ops", "ops-jh-"),
    ],
)
def test_names_follow_z2jh_and_the_hub_finds_the_service(chart, jupyterhub, release, prefix):
    values = {"jupyterhub": {**jupyterhub, **MINIMAL["jupyterhub"]}}
    by_kind = kinds(render(chart, values, release=release))
    service_name = by_kind["Service"]["metadata"]["name"]
    assert service_name == f"{prefix}opshub"
    hub_secret = env_of(by_kind["Deployment"])["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    assert hub_secret == f"{prefix}hub"  # z2jh's hub Secret and Service are named "<prefix>hub"
    # the hub's side (opshub.kubernetes) derives the service's name from z2jh's name of the hub
    assert service_host(hub_secret) == service_name


def test_sqlite_needs_its_volume_an_existing_claim_replaces_the_chart_one(chart):
    values = {**MINIMAL, "service": {"persistence": {"existingClaim": "history"}}}
    by_kind = kinds(render(chart, values))
    assert "PersistentVolumeClaim" not in by_kind
    volumes = by_kind["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "history"}} in volumes


def test_a_database_password_needs_a_secret_not_a_value(chart):
    values = all_options()
    del values["service"]["database"]
    with pytest.raises(helm.HelmRenderError) as refused:
        render(chart, values)
    assert "service.database.existingSecret" in str(refused.value)
    # and no key of the chart takes a secret's value
    values = all_options()
    values["service"]["database"]["password"] = "hunter2hunter2"
    with pytest.raises(helm.HelmValuesError) as refused:
        render(chart, values)
    assert "password" in str(refused.value)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"hub": {"port": 8000}}, "/jupyterhub/custom/opshub/hub"),  # z2jh decides (proxy.service)
        ({"hub": {"extra_config_dir": "extra"}}, "/jupyterhub/custom/opshub/hub"),  # z2jh's extraFiles
        ({"spawner": {"kind": "local"}}, "/jupyterhub/custom/opshub/spawner/kind"),
        ({"runbooks": {"repository": "state/runbooks.git"}}, "/jupyterhub/custom/opshub/runbooks/repository"),
        ({"auth": {"provider": "ldap"}}, "/jupyterhub/custom/opshub/auth/provider"),
        ({"auth": {"oidc": {"client_secret": "s3cret"}}}, "/jupyterhub/custom/opshub/auth/oidc"),
        ({"history": {"retention_days": -1}}, "/jupyterhub/custom/opshub/history/retention_days"),
    ],
)
def test_helm_refuses_bad_settings_naming_the_key(chart, settings, key):
    values = copy.deepcopy(MINIMAL)
    opshub = values["jupyterhub"]["custom"]["opshub"]
    for section, value in settings.items():
        opshub[section] = {**opshub.get(section, {}), **value}
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.render(values, name="ops", namespace=NAMESPACE)
    assert key in str(refused.value)


def test_values_schema_is_the_settings_schema():
    """values.schema.json's settings part is generated from settings.schema.yaml
    (`make docs`): this fails when they drift."""
    chart_schema = json.loads((CHART / "values.schema.json").read_text())
    ours = chart_schema["properties"]["jupyterhub"]["properties"]["custom"]["properties"]["opshub"]
    assert ours == values_schema(), "helm/opshub/values.schema.json is stale: run `make docs`"

    # every key of the chart's own values is described
    def undescribed(node, path):
        for key, sub in node.get("properties", {}).items():
            if "description" not in sub and sub.get("type") != "object":
                yield f"{path}.{key}"
            yield from undescribed(sub, f"{path}.{key}")

    assert list(undescribed(chart_schema["properties"]["service"], "service")) == []


def test_images_follow_the_app_version_and_the_dependency_is_pinned():
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "([^"]+)"', (ROOT / "hub" / "pyproject.toml").read_text(), re.M).group(1)
    assert chart_yaml["appVersion"] == version
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["jupyterhub"]["hub"]["image"] == {"name": "opshub/hub", "tag": version}
    assert values["jupyterhub"]["singleuser"]["image"] == {"name": "opshub/ops", "tag": version}
    (dependency,) = chart_yaml["dependencies"]
    assert dependency["name"] == "jupyterhub"
    assert re.fullmatch(r"\d+\.\d+\.\d+", dependency["version"]), "pin an exact Zero to JupyterHub version"


@pytest.mark.parametrize("values", ["minimal", "all-options"])
def test_helm_lint_finds_nothing_but_the_dependency_not_fetched_here(values):
    chosen = MINIMAL if values == "minimal" else all_options()
    for version in KUBERNETES_VERSIONS:
        report = helm.lint(str(CHART), chosen, strict=False, namespace=NAMESPACE, kube_version=f"v{version}")
        assert report["errors"] == []
        problems = [m["error"] for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
        assert problems == ["chart directory is missing these dependencies: jupyterhub"]
