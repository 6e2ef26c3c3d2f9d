"""The hub's side of Kubernetes mode: the chart's jupyterhub_config.d file calls
opshub.kubernetes.configure_hub after Zero to JupyterHub's own config. The same settings must give
the same JupyterHub configuration as in the other modes, apart from the documented mode-specific
parts (opshub.kubernetes.MODE_SPECIFIC), and z2jh's own configuration must survive."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import requests
import yaml
from opshub import kubernetes
from opshub.configure import Runtime, apply_all
from opshub.settings import validate
from opshub.startup import oidc_endpoints
from traitlets.config import Config

from tests.chart.conftest import MINIMAL, all_options
from tests.helpers import make_work_tree
from tests.livehub import free_port_block, wait_for

CULLER = {"name": "jupyterhub-idle-culler", "command": ["python3", "-m", "jupyterhub_idle_culler"]}
CULLER_ROLE = {"name": "jupyterhub-idle-culler", "scopes": ["read:users"], "services": [CULLER["name"]]}
API_TOKEN = "token-z2jh-generated"


def z2jh(chart, values: dict, prefix: str):
    """What z2jh hands its config in the hub pod: its values after Helm's merge (the hub Secret's
    values.yaml, read by get_config), and resource names (get_name: `<prefix><name>`)."""
    merged = chart.merge_values(values)["jupyterhub"]

    def get_config(key: str, default=None):
        value = merged  # z2jh.py's get_config: a dotted path into the values
        for level in key.split("."):
            if not isinstance(value, dict) or level not in value:
                return default
            value = value[level]
        return value

    def get_name(name: str) -> str:
        return prefix + name

    return get_config, get_name


def z2jh_config(base_url: str, prefix: str) -> Config:
    """Part of what z2jh's jupyterhub_config.py has set when it loads jupyterhub_config.d."""
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.JupyterHub.base_url = base_url
    c.JupyterHub.hub_bind_url = "http://:8081"
    c.JupyterHub.hub_connect_url = f"http://{prefix}hub:8081"
    c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
    c.JupyterHub.cleanup_servers = False
    c.ConfigurableHTTPProxy.api_url = f"http://{prefix}proxy-api:8001"
    c.ConfigurableHTTPProxy.should_start = False
    c.KubeSpawner.start_timeout = 600  # singleuser.startTimeout
    c.KubeSpawner.environment = {"TZ": "UTC", "OPSHUB_SECRET_NAMES": "from-z2jh"}  # singleuser.extraEnv
    c.KubeSpawner.image = "opshub/ops:0.1.0"
    c.Spawner.cmd = "jupyterhub-singleuser"  # singleuser.cmd
    c.JupyterHub.services = [CULLER, {"name": "opshub", "api_token": API_TOKEN}]
    c.JupyterHub.load_roles = [CULLER_ROLE]
    return c


def embedded_config(data: dict, base_url: str, cwd, **runtime) -> Config:
    """The same settings as a settings file in another mode: validation and apply_all, nothing else."""
    settings = validate({**data, "hub": {**data.get("hub", {}), "base_url": base_url}}, cwd=cwd)
    if settings["auth"]["provider"] == "oidc":
        runtime["oidc_endpoints"] = oidc_endpoints(settings)  # given in the settings: no network
    return apply_all(Config(), settings, Runtime.of_this_machine(**runtime))


def as_dict(config: Config) -> dict:
    return {section: dict(traits) for section, traits in config.items()}


def mode_specific(section: str, trait: str) -> bool:
    traits = kubernetes.MODE_SPECIFIC.get(section, set())
    return section in kubernetes.MODE_SPECIFIC and (traits is None or trait in traits)


@pytest.fixture
def in_hub_pod(tmp_path, monkeypatch):
    """The hub pod's working directory (z2jh: /srv/jupyterhub, on the hub's volume)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_same_configuration_as_the_other_modes_apart_from_the_mode_specific_parts(chart, in_hub_pod, monkeypatch):
    monkeypatch.setenv("OIDC_CLIENT_SECRET", "client-secret-from-a-k8s-secret")
    values = all_options()
    get_config, get_name = z2jh(chart, values, prefix="ops-")
    c = kubernetes.configure_hub(z2jh_config("/ops/", "ops-"), get_config, get_name)

    data = values["jupyterhub"]["custom"]["opshub"]
    embedded = as_dict(embedded_config(data, "/ops/", in_hub_pod, client_secret="client-secret-from-a-k8s-secret"))
    ours = as_dict(c)
    compared, skipped = [], set()
    for section, traits in embedded.items():
        for trait, value in traits.items():
            if mode_specific(section, trait):
                skipped.add(f"{section}.{trait}")
            else:
                assert ours[section][trait] == value, f"{section}.{trait}"
                compared.append(f"{section}.{trait}")
    # everything else is compared: authenticator, groups, roles' scopes, spawner, pages, templates
    assert len(compared) > 20
    assert skipped == {
        "JupyterHub.bind_url", "JupyterHub.hub_bind_url", "JupyterHub.db_url", "JupyterHub.cookie_secret_file",
        "JupyterHub.cleanup_servers", "JupyterHub.services", "JupyterHub.load_roles",
        "ConfigurableHTTPProxy.command", "ConfigurableHTTPProxy.api_url", "ConfigurableHTTPProxy.pid_file",
        "Spawner.environment",
    }  # fmt: skip

    # z2jh's own configuration is untouched: where things listen, the database, the proxy
    for section, trait, value in [
        ("JupyterHub", "hub_bind_url", "http://:8081"),
        ("JupyterHub", "hub_connect_url", "http://ops-hub:8081"),
        ("JupyterHub", "db_url", "sqlite:///jupyterhub.sqlite"),
        ("JupyterHub", "cleanup_servers", False),
        ("JupyterHub", "spawner_class", "kubespawner.KubeSpawner"),
        ("ConfigurableHTTPProxy", "api_url", "http://ops-proxy-api:8001"),
        ("ConfigurableHTTPProxy", "should_start", False),
        ("KubeSpawner", "image", "opshub/ops:0.1.0"),
    ]:
        assert ours[section][trait] == value, f"{section}.{trait}"
    assert "bind_url" not in ours["JupyterHub"]  # the proxy-public Service decides

    # services: z2jh's culler stays; opshub's is external, at its Service, with z2jh's token
    services = ours["JupyterHub"]["services"]
    assert services[0] == CULLER
    (embedded_opshub,) = [s for s in embedded["JupyterHub"]["services"] if s["name"] == "opshub"]
    expected = {k: v for k, v in embedded_opshub.items() if k not in ("command", "environment")}
    expected.update(url="http://ops-opshub:8000", api_token=API_TOKEN)
    assert services[1:] == [expected]
    # roles: z2jh's first, then exactly the other modes' roles
    assert ours["JupyterHub"]["load_roles"] == [CULLER_ROLE, *embedded["JupyterHub"]["load_roles"]]

    # spawner: our settings win over z2jh's KubeSpawner-level values; z2jh's extra environment stays
    environment = ours["Spawner"]["environment"]
    assert environment == {
        "TZ": "UTC",
        **embedded["Spawner"]["environment"],
        "OPSHUB_SERVICE_URL": "http://ops-proxy-public:80/ops/services/opshub/",
    }
    assert environment["OPSHUB_SECRET_NAMES"] == "VAULT_ADDR_CREDS"
    for trait in kubernetes.KUBESPAWNER_TRAITS:
        assert ours["KubeSpawner"][trait] == ours["Spawner"][trait], trait
    assert ours["KubeSpawner"]["start_timeout"] == 300  # the settings' spawner.start_timeout
    assert ours["Spawner"]["cmd"] == ["python", "-m", "opshub.singleuser"]  # the ops image's Python


def test_the_demo_team_gets_its_shared_password_as_in_the_other_modes(chart, in_hub_pod, monkeypatch):
    monkeypatch.delenv("OPSHUB_DEMO_PASSWORD", raising=False)
    get_config, get_name = z2jh(chart, MINIMAL, prefix="")
    ours = as_dict(kubernetes.configure_hub(z2jh_config("/", ""), get_config, get_name))
    # generated once on the hub's volume, as `make run` does in state/
    password = (in_hub_pod / "state" / "demo-password").read_text().strip()
    assert len(password) >= 8
    embedded = as_dict(
        embedded_config(MINIMAL["jupyterhub"]["custom"]["opshub"], "/", in_hub_pod, demo_password=password)
    )
    for section in ("SharedPasswordAuthenticator", "Authenticator"):
        assert ours[section] == embedded[section]
    assert ours["JupyterHub"]["load_groups"] == embedded["JupyterHub"]["load_groups"]
    assert ours["JupyterHub"]["services"][1]["url"] == "http://opshub:8000"


def test_user_servers_reach_the_service_through_the_plain_http_proxy():
    names = {"proxy-public": "proxy-public", "proxy-http": "proxy-http"}
    config = {"proxy": {"https": {"enabled": True, "type": "letsencrypt", "hosts": ["ops.example.com"]}}}

    def get_config(key, default=None):
        value = config
        for level in key.split("."):
            if not isinstance(value, dict) or level not in value:
                return default
            value = value[level]
        return value

    # z2jh's automatic HTTPS puts a TLS terminator in front: users' servers use proxy-http
    assert kubernetes.proxy_url(get_config, names.get) == "http://proxy-http:8000"
    config["proxy"] = {"service": {"ports": {"http": 8080}}}
    assert kubernetes.proxy_url(get_config, names.get) == "http://proxy-public:8080"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"hub": {"port": 8000}},
            "hub.port: decided by z2jh's values in Kubernetes mode; set jupyterhub.proxy.service.ports",
        ),
        ({"runbooks": {"repository": "state/runbooks.git"}}, "runbooks.repository: 'state/runbooks.git' is a path"),
        (
            {"runbooks": {"repository": "https://git.example.com/r.git", "mirror_from": "shared-notebooks"}},
            "runbooks.mirror_from",
        ),
        ({"spawner": {"kind": "docker"}}, "spawner.kind: must be `kubernetes`"),
        ({"auth": {"provider": "github", "github": {"client_id": "x", "client_secret_env": "X"}}}, "hub.public_url"),
        ({"roles": {}}, "roles: no group is mapped to any role"),  # the same rules as every mode
    ],
)
def test_bad_settings_stop_the_hub_with_a_message_naming_the_key(
    chart, in_hub_pod, monkeypatch, capsys, change, message
):
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "demo-password-long-enough")
    values = yaml.safe_load(yaml.safe_dump(MINIMAL))
    opshub = values["jupyterhub"]["custom"]["opshub"]
    for section, value in change.items():
        opshub[section] = value if section == "roles" else {**opshub.get(section, {}), **value}
    # the hub reads the values as given (z2jh does not run our values.schema.json checks again)
    merged = {**chart.merge_values({})["jupyterhub"], "custom": {"opshub": opshub}}
    with pytest.raises(SystemExit) as stopped:
        kubernetes.configure_hub(
            z2jh_config("/", ""), lambda key, default=None: _dig(merged, key, default), "{}".format
        )
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_z2jh_lists_appended_to_rather_than_set_are_kept(chart, in_hub_pod, monkeypatch):
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "demo-password-long-enough")
    get_config, get_name = z2jh(chart, MINIMAL, prefix="")
    c = z2jh_config("/", "")
    del c.JupyterHub["load_roles"], c.KubeSpawner["environment"]
    c.JupyterHub.load_roles.append(CULLER_ROLE)  # a LazyConfigValue, as `.append` on an unset trait gives
    c.KubeSpawner.environment.update({"TZ": "UTC"})
    ours = kubernetes.configure_hub(c, get_config, get_name)
    assert ours.JupyterHub.load_roles[0] == CULLER_ROLE
    assert ours.Spawner.environment["TZ"] == "UTC"


def test_z2jh_hub_config_defaults_cannot_replace_opshub_login(chart, in_hub_pod, monkeypatch, capsys):
    """z2jh's own default `hub.config.JupyterHub.authenticator_class: dummy` (anyone logs in), applied
    after jupyterhub_config.d, would replace opshub's authenticator: the chart nulls it, and should it
    come back (a values file, a Helm that keeps subchart defaults), the hub refuses to start."""
    assert chart.values["jupyterhub"]["hub"]["config"]["JupyterHub"] == {
        "authenticator_class": None,
        "admin_access": None,
    }
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "demo-password-long-enough")
    values = yaml.safe_load(yaml.safe_dump(MINIMAL))
    values["jupyterhub"]["hub"] = {"config": {"JupyterHub": {"authenticator_class": "dummy", "admin_access": True}}}
    get_config, get_name = z2jh(chart, values, prefix="")
    with pytest.raises(SystemExit):
        kubernetes.configure_hub(z2jh_config("/", ""), get_config, get_name)
    err = capsys.readouterr().err
    assert "jupyterhub.hub.config.JupyterHub.authenticator_class: z2jh would apply it over opshub's" in err
    assert "admin_access" not in err  # opshub does not set it: z2jh's value may stand
    # traits opshub does not set stay free for hub.config
    values["jupyterhub"]["hub"]["config"] = {"JupyterHub": {"concurrent_spawn_limit": 20}}
    get_config, get_name = z2jh(chart, values, prefix="")
    kubernetes.configure_hub(z2jh_config("/", ""), get_config, get_name)


def test_the_hub_stops_when_z2jh_registered_no_opshub_service(chart, in_hub_pod, monkeypatch, capsys):
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "demo-password-long-enough")
    get_config, get_name = z2jh(chart, MINIMAL, prefix="")
    c = z2jh_config("/", "")
    c.JupyterHub.services = [CULLER]  # someone removed jupyterhub.hub.services.opshub
    with pytest.raises(SystemExit):
        kubernetes.configure_hub(c, get_config, get_name)
    assert "jupyterhub.hub.services.opshub: missing" in capsys.readouterr().err


def _dig(values: dict, key: str, default=None):
    for level in key.split("."):
        if not isinstance(values, dict) or level not in values:
            return default
        values = values[level]
    return values


def test_the_service_pod_entry_point_serves_the_history(chart, tmp_path):
    """`python -m opshub.kubernetes service`, as the chart's Deployment runs it, for real: the
    settings from the chart's ConfigMap, the same validation, then the opshub service."""
    from tests.chart.conftest import render

    repo = make_work_tree(tmp_path / "runbooks", {"check.ipynb": "{}"})
    values = yaml.safe_load(yaml.safe_dump(MINIMAL))
    values["jupyterhub"]["custom"]["opshub"]["runbooks"]["repository"] = repo.as_uri()
    values["jupyterhub"]["hub"] = {"baseUrl": "/ops/"}
    objects = render(chart, values)
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(objects["configmap.yaml"][0]["data"]["settings.yaml"])
    container = objects["deployment.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"][1:]  # after `python`: the image's Python is this environment's here
    args[args.index("--settings") + 1] = str(settings_file)
    data_dir = tmp_path / "data"
    port = free_port_block(1)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",  # the pod listens on 0.0.0.0; loopback here
        JUPYTERHUB_API_TOKEN="unused-here",
        OPSHUB_METRICS_TOKEN="metrics-token",
        HOME=str(data_dir),
    )
    process = subprocess.Popen(
        [sys.executable, *args, "--data-dir", str(data_dir)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/ops/services/opshub/metrics"

        def answers():
            if process.poll() is not None:
                raise AssertionError(f"the service exited: {process.stdout.read()}")
            try:
                return requests.get(url, headers={"Authorization": "Bearer metrics-token"}, timeout=5)
            except requests.ConnectionError:
                return None

        response = wait_for(answers, timeout=60, what="the opshub service")
        assert response.status_code == 200
        assert 'runbook="check.ipynb"' in response.text  # it read the runbooks repository
        assert requests.get(url, timeout=5).status_code == 401  # no token, no metrics
        # the SQLite history is on the pod's volume, as the chart's PVC holds it
        assert (data_dir / "state" / "opshub.sqlite").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


# z2jh's defaults of `singleuser.storage` (its values.yaml; the dependency is not fetched here)
Z2JH_STORAGE_DEFAULTS = {
    "type": "dynamic",
    "homeMountPath": "/home/jovyan",
    "dynamic": {
        "pvcNameTemplate": "claim-{username}{servername}",
        "volumeNameTemplate": "volume-{username}{servername}",
    },
    "static": {"pvcName": None, "subPath": "{username}"},
    "extraVolumes": [],
    "extraVolumeMounts": [],
}
SHARED_DATA = {"name": "team-data", "persistentVolumeClaim": {"claimName": "team-data"}}
SHARED_DATA_MOUNT = {"name": "team-data", "mountPath": "/srv/team-data", "readOnly": True}


def with_z2jh_storage(c: Config, get_config) -> Config:
    """What z2jh's jupyterhub_config.py sets from `singleuser.storage` (4.x, its "Configure dynamically
    provisioning pvc" part), on the values Helm merged over z2jh's defaults."""
    storage = {**Z2JH_STORAGE_DEFAULTS, **(get_config("singleuser.storage") or {})}
    home = storage["homeMountPath"]
    if storage["type"] == "dynamic":
        dynamic = {**Z2JH_STORAGE_DEFAULTS["dynamic"], **storage.get("dynamic", {})}
        c.KubeSpawner.pvc_name_template = dynamic["pvcNameTemplate"]
        c.KubeSpawner.storage_pvc_ensure = True
        volume = dynamic["volumeNameTemplate"]
        c.KubeSpawner.volumes = [{"name": volume, "persistentVolumeClaim": {"claimName": dynamic["pvcNameTemplate"]}}]
        c.KubeSpawner.volume_mounts = [{"mountPath": home, "name": volume}]
    elif storage["type"] == "static":
        static = {**Z2JH_STORAGE_DEFAULTS["static"], **storage.get("static", {})}
        c.KubeSpawner.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": static["pvcName"]}}]
        c.KubeSpawner.volume_mounts = [{"mountPath": home, "name": "home", "subPath": static["subPath"]}]
    c.KubeSpawner.volumes = [*c.KubeSpawner.get("volumes", []), *storage["extraVolumes"]]
    c.KubeSpawner.volume_mounts = [*c.KubeSpawner.get("volume_mounts", []), *storage["extraVolumeMounts"]]
    return c


def kube_spawner(c: Config, user: str, server: str = "") -> SimpleNamespace:
    """A KubeSpawner as the hub makes it for a spawn (kubespawner is the hub image's; not installed here):
    its traits from the config, KubeSpawner's over Spawner's, as traitlets gives them."""
    traits = {**c.Spawner, **c.KubeSpawner}
    return SimpleNamespace(
        pre_spawn_hook=traits.get("pre_spawn_hook"),
        user=SimpleNamespace(name=user),
        name=server,
        cmd=traits.get("cmd"),
        environment=dict(traits.get("environment", {})),
        volumes=copy.deepcopy(traits.get("volumes", [])),
        volume_mounts=copy.deepcopy(traits.get("volume_mounts", [])),
        pvc_name_template=traits.get("pvc_name_template", "claim-{username}--{servername}"),
        storage_pvc_ensure=traits.get("storage_pvc_ensure", False),
    )


def spawned(c: Config, user: str, server: str = "") -> SimpleNamespace:
    spawner = kube_spawner(c, user, server)
    spawner.pre_spawn_hook(spawner)  # what KubeSpawner runs (its own trait wins over Spawner's)
    return spawner


def claims(spawner) -> set[str]:
    return {v["persistentVolumeClaim"]["claimName"] for v in spawner.volumes if "persistentVolumeClaim" in v}


def mounted_at(spawner, path: str) -> list[dict]:
    """The volumes mounted at `path`."""
    names = [m["name"] for m in spawner.volume_mounts if m["mountPath"] == path]
    return [v for v in spawner.volumes if v["name"] in names]


@pytest.mark.parametrize("storage_type", ["dynamic", "static"])
def test_the_runners_pods_get_an_emptydir_home_and_no_claim_people_keep_theirs(
    chart, in_hub_pod, monkeypatch, storage_type
):
    """Each unattended run is a pod of its own (a named server of opshub-runner): its home is an emptyDir,
    and no PVC is created for it (z2jh's storage would give each run's server a claim of its own, or the
    runner's subPath of the shared claim, which the next run would mount again). People keep theirs; the
    deployment's extra volumes stay for both, as in Docker."""
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "demo-password-long-enough")
    values = copy.deepcopy(MINIMAL)
    storage = {"extraVolumes": [SHARED_DATA], "extraVolumeMounts": [SHARED_DATA_MOUNT], "type": storage_type}
    if storage_type == "static":
        storage["static"] = {"pvcName": "homes", "subPath": "{username}"}
    values["jupyterhub"].setdefault("singleuser", {})["storage"] = storage
    get_config, get_name = z2jh(chart, values, prefix="")
    home = get_config("singleuser.storage.homeMountPath")
    assert home == "/home/ops"  # the chart mounts people's storage at the ops image's home
    c = kubernetes.configure_hub(with_z2jh_storage(z2jh_config("/", ""), get_config), get_config, get_name)
    personal = "claim-{username}{servername}" if storage_type == "dynamic" else "homes"

    bob = spawned(c, "bob")
    assert claims(bob) == {personal, "team-data"}
    assert [v["persistentVolumeClaim"]["claimName"] for v in mounted_at(bob, home)] == [personal]
    assert bob.storage_pvc_ensure is (storage_type == "dynamic")
    assert bob.cmd == ["python", "-m", "opshub.singleuser"]

    runner = spawned(c, "opshub-runner", "run-0123456789abcdef0123456789")
    assert mounted_at(runner, home) == [{"name": kubernetes.RUN_HOME_VOLUME, "emptyDir": {}}]
    assert claims(runner) == {"team-data"}, runner.volumes  # no person's claim, no claim of its own
    assert runner.storage_pvc_ensure is False  # KubeSpawner creates no PVC for the run's server
    assert {m["name"] for m in runner.volume_mounts} == {kubernetes.RUN_HOME_VOLUME, "team-data"}
    assert {v["name"] for v in runner.volumes} == {m["name"] for m in runner.volume_mounts}
    assert SHARED_DATA_MOUNT in runner.volume_mounts
    # the other modes' hook ran too: the runner's own program, isolated, with its sandbox kind
    assert runner.cmd == ["python", "-I", "-m", "opshub.runner"]
    assert runner.environment["OPSHUB_SANDBOX"] == "container"
    assert runner.pre_spawn_hook.hook == c.Spawner.pre_spawn_hook  # around the other modes' hook

    dashboards = spawned(c, "opshub-dashboards")  # a long-lived server: its storage is z2jh's, as people's
    assert claims(dashboards) == {personal, "team-data"}


def test_the_runners_home_follows_where_z2jh_mounts_homes(chart, in_hub_pod, monkeypatch):
    """`singleuser.storage.homeMountPath` moved: the runner's emptyDir goes there; with z2jh's storage
    `none` (no home volume at all), the runner's pods still get their emptyDir home, and no claim."""
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "demo-password-long-enough")
    values = copy.deepcopy(MINIMAL)
    values["jupyterhub"]["singleuser"] = {"storage": {"homeMountPath": "/home/elsewhere/", "type": "none"}}
    get_config, get_name = z2jh(chart, values, prefix="")
    c = kubernetes.configure_hub(with_z2jh_storage(z2jh_config("/", ""), get_config), get_config, get_name)
    runner = spawned(c, "opshub-runner", "run-0123456789abcdef0123456789")
    assert runner.volume_mounts == [{"name": kubernetes.RUN_HOME_VOLUME, "mountPath": "/home/elsewhere"}]
    assert runner.volumes == [{"name": kubernetes.RUN_HOME_VOLUME, "emptyDir": {}}]
    assert runner.storage_pvc_ensure is False
    assert spawned(c, "bob").volumes == []


def test_the_runners_home_replaces_volumes_given_in_kubespawners_dict_form_too():
    """KubeSpawner takes `volumes` and `volume_mounts` as dicts as well (values sorted by key), as
    `hub.extraConfig` may set them: the person's claim (by KubeSpawner's `{pvc_name}`) goes all the same."""
    spawner = SimpleNamespace(
        volumes={"a-home": {"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}, "b": SHARED_DATA},
        volume_mounts={"a-home": {"name": "home", "mountPath": "/home/ops/"}, "b": SHARED_DATA_MOUNT},
        pvc_name_template="claim-{username}--{servername}",
        storage_pvc_ensure=True,
    )
    kubernetes.ephemeral_home(spawner, "/home/ops")
    assert spawner.volumes == [SHARED_DATA, {"name": kubernetes.RUN_HOME_VOLUME, "emptyDir": {}}]
    assert spawner.volume_mounts == [SHARED_DATA_MOUNT, {"name": kubernetes.RUN_HOME_VOLUME, "mountPath": "/home/ops"}]
    assert spawner.storage_pvc_ensure is False


def test_a_runs_pod_mounts_only_the_credentials_granted_to_its_runbook(chart, in_hub_pod, monkeypatch):
    """`runner.credentials.NAME.kubernetes_secret`: the key of a Secret, mounted read-only at `file` into the
    pod of a run whose runbook (the service's `user_options`) is granted NAME; another runbook's pod, a
    server started without a runbook, and people's pods get none of it."""
    monkeypatch.setenv("OPSHUB_DEMO_PASSWORD", "demo-password-long-enough")
    values = copy.deepcopy(MINIMAL)
    values["jupyterhub"]["custom"]["opshub"]["runner"] = {
        "credentials": {
            "SSH_KEY": {
                "file": "/run/opshub-credentials/ssh-key",
                "runbooks": ["patching/*"],
                "kubernetes_secret": {"name": "opshub-runner-credentials", "key": "ssh-key"},
            },
            "CLOUD_TOKEN": {
                "file": "/run/opshub-credentials/cloud-token",
                "runbooks": ["cloud/*", "patching/*"],
                "kubernetes_secret": {"name": "cloud", "key": "token"},
            },
        }
    }
    get_config, get_name = z2jh(chart, values, prefix="")
    c = kubernetes.configure_hub(with_z2jh_storage(z2jh_config("/", ""), get_config), get_config, get_name)

    def started(user: str, server: str, options) -> SimpleNamespace:
        spawner = kube_spawner(c, user, server)
        if options is not None:
            spawner.user_options = options
        spawner.pre_spawn_hook(spawner)
        return spawner

    def credentials(spawner) -> dict[str, dict]:
        """mount path -> the secret's volume source, for the credential volumes."""
        sources = {v["name"]: v.get("secret") for v in spawner.volumes}
        return {
            m["mountPath"]: {**sources[m["name"]], "readOnly": m.get("readOnly"), "subPath": m.get("subPath")}
            for m in spawner.volume_mounts
            if m["name"].startswith(kubernetes.CREDENTIAL_VOLUME)
        }

    def secret(name: str, key: str) -> dict:
        items = [{"key": key, "path": "credential"}]
        return {"secretName": name, "items": items, "defaultMode": 0o444, "readOnly": True, "subPath": "credential"}

    patching = started("opshub-runner", "run-1", {"runbook": "patching/web/rolling.ipynb"})
    assert credentials(patching) == {
        "/run/opshub-credentials/ssh-key": secret("opshub-runner-credentials", "ssh-key"),
        "/run/opshub-credentials/cloud-token": secret("cloud", "token"),
    }
    assert {v["name"] for v in patching.volumes} == {m["name"] for m in patching.volume_mounts}
    assert mounted_at(patching, "/home/ops") == [{"name": kubernetes.RUN_HOME_VOLUME, "emptyDir": {}}]
    cloud = started("opshub-runner", "run-2", {"runbook": "cloud/rotate.ipynb"})
    assert credentials(cloud) == {"/run/opshub-credentials/cloud-token": secret("cloud", "token")}
    for options in ({"runbook": "host-health-check.ipynb"}, {}, None):
        assert credentials(started("opshub-runner", "run-3", options)) == {}, options
    bob = started("bob", "", {"runbook": "patching/web/rolling.ipynb"})
    assert not [v for v in bob.volumes if "secret" in v] and credentials(bob) == {}
