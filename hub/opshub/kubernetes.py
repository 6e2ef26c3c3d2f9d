"""Kubernetes mode: opshub inside the Zero to JupyterHub (z2jh) chart, wrapped by helm/opshub/.

The settings live in the Helm values under `jupyterhub.custom.opshub`, which z2jh hands to the hub
as `custom.opshub` (its `get_config`). Two processes read them:

- the hub: the chart's `jupyterhub_config.d/opshub.py` calls `configure_hub(c, get_config, get_name)`
  after z2jh's own config; it validates the settings with the same schema and runs the same
  `opshub.configure.apply_all` as the other modes, then merges the result into z2jh's config;
- the opshub service, which runs as its own Deployment: `python -m opshub.kubernetes service`
  validates the same settings (mounted from a ConfigMap) and starts `opshub.service` with the same
  arguments the hub gives it in the other modes.

What differs from the other modes (MODE_SPECIFIC below, checked by tests/chart/): z2jh owns where
the hub and proxy listen, the hub database and the cookie secret; the opshub service is an external
service reached at its Kubernetes Service; z2jh's own services and roles (such as the idle culler)
are kept; spawner settings are also set on KubeSpawner, where z2jh sets its `singleuser` values; and the
runner's pods get a fresh `emptyDir` home instead of z2jh's per-user storage (RunnerPods below).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from traitlets.config import Config
from traitlets.config.loader import LazyConfigValue

from . import startup
from .configure import Runtime, apply_all
from .configure.services import service_arguments
from .contract import RUNNER_ACCOUNT, SERVICE_NAME, SERVICE_URL_ENV, service_prefix
from .runner.credentials import granted
from .settings import OAUTH_PROVIDERS, Settings, SettingsError, _is_url, schema, validate

VALUES_KEY = "jupyterhub.custom.opshub"  # where the settings live in the wrapper chart's values
Z2JH_KEY = "custom.opshub"  # the same key as z2jh's get_config sees it
SERVICE_PORT = 8000  # the opshub Service's port (helm/opshub/templates/service.yaml)
SERVICE_DATA_DIR = "/var/lib/opshub"  # the service pod's volume: SQLite history and runbooks cache
# Settings that z2jh's own values decide in this mode: rejected under our key, to avoid two truths.
Z2JH_DECIDES = {
    "hub.ip": "jupyterhub.proxy.service",
    "hub.port": "jupyterhub.proxy.service.ports",
    "hub.base_url": "jupyterhub.hub.baseUrl",
    "hub.extra_config_dir": "jupyterhub.hub.extraFiles (into jupyterhub_config.d) or jupyterhub.hub.extraConfig",
}

# Traits that z2jh's jupyterhub_config.py sets and opshub's apply functions must not override here
# (the `hub:` section's listening addresses, database and cookie secret are about local processes).
Z2JH_OWNED_TRAITS = {
    "JupyterHub": {"bind_url", "hub_bind_url", "db_url", "cookie_secret_file", "cleanup_servers"},
    "ConfigurableHTTPProxy": None,  # None: the whole section
}
# Spawner traits that z2jh also sets on KubeSpawner (from its `singleuser` values), which would win
# over the same trait on Spawner: opshub's values are set on KubeSpawner too.
KUBESPAWNER_TRAITS = ("cmd", "default_url", "start_timeout", "http_timeout", "environment")
# Where z2jh mounts each user's storage when its values do not say (`singleuser.storage.homeMountPath`);
# the chart's values set the ops image's home, /home/ops.
Z2JH_HOME_MOUNT_PATH = "/home/jovyan"
RUN_HOME_VOLUME = "opshub-run-home"  # the runner's pods' emptyDir
CREDENTIAL_VOLUME = "opshub-credential"  # a runner's pod's secret volumes: opshub-credential-0, -1...
# Everything in which the hub's config differs from the other modes, by section and trait.
# (KubeSpawner.pre_spawn_hook is this mode's alone: RunnerPods, around the other modes' Spawner hook.)
MODE_SPECIFIC = {
    "ConfigurableHTTPProxy": None,
    # z2jh's services and roles are kept next to ours; the opshub service is external
    "JupyterHub": Z2JH_OWNED_TRAITS["JupyterHub"] | {"services", "load_roles"},
    # user servers reach the opshub service through the proxy (the NetworkPolicy admits only hub and proxy)
    "Spawner": {"environment"},
}


def kubernetes_settings(data: Any, base_url: str, source: str = VALUES_KEY, cwd: str | None = None) -> Settings:
    """Validate the settings under our values key, as every mode does, plus the rules of this mode."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(source, [f"(top level): expected a mapping of sections such as `auth:`, not {data!r}"])
    data = copy.deepcopy(data)
    hub = data.setdefault("hub", {})
    problems = [
        f"hub.{key.split('.')[1]}: decided by z2jh's values in Kubernetes mode; set {where} instead"
        for key, where in Z2JH_DECIDES.items()
        if isinstance(hub, dict) and key.split(".")[1] in hub
    ]
    if problems:
        raise SettingsError(source, problems)
    if isinstance(hub, dict):
        hub["base_url"] = base_url if base_url.endswith("/") else base_url + "/"
    spawner = data.setdefault("spawner", {})
    if isinstance(spawner, dict):
        spawner.setdefault("kind", "kubernetes")
    runbooks = data.get("runbooks")
    given_repository = runbooks.get("repository") if isinstance(runbooks, dict) else None
    settings = validate(data, source=source, cwd=cwd or SERVICE_DATA_DIR)
    problems = []
    if settings["spawner"]["kind"] != "kubernetes":
        problems.append(f"spawner.kind: must be `kubernetes` in the Helm chart, not {settings['spawner']['kind']!r}")
    runbooks = settings["runbooks"]
    if runbooks["mirror_from"]:
        problems.append("runbooks.mirror_from: mirroring a local folder is for the embedded mode only; leave it empty")
    if not _is_url(runbooks["repository"]):
        problems.append(
            f"runbooks.repository: {given_repository or runbooks['repository']!r} is a path; in Kubernetes"
            " every user's pod pulls the runbooks, so give a git URL the pods can reach (https://, ssh://, git://)"
        )
    if settings["auth"]["provider"] in OAUTH_PROVIDERS and not settings["hub"]["public_url"]:
        problems.append(
            "hub.public_url: give the hub's URL as browsers see it (such as https://ops.example.com/);"
            " the OAuth callback registered at the identity provider is built from it"
        )
    if problems:
        raise SettingsError(source, problems)
    return settings


def hub_runtime(settings: Settings) -> Runtime:
    """What the apply functions need, gathered in the hub pod: the same sources as `startup.prepare`,
    less what belongs to the service's own pod (metrics token, database password) or to local processes."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # on z2jh's hub volume (/srv/jupyterhub)
    settings.state_dir.chmod(0o700)  # may hold the generated demo password
    found: dict = {}
    provider = settings["auth"]["provider"]
    if provider == "shared-password":
        found["demo_password"] = startup.demo_password(settings)[0]
    if provider in OAUTH_PROVIDERS:
        found["client_secret"] = startup.client_secret(settings)
    if provider == "oidc":
        found["oidc_endpoints"] = startup.oidc_endpoints(settings)
    return Runtime.of_this_machine(**found)


def service_host(hub_name: str) -> str:
    """The opshub Service's name: z2jh's resource prefix (the hub Service is `<prefix>hub`) + `opshub`,
    as helm/opshub/templates/_helpers.tpl names it."""
    return hub_name.removesuffix("hub") + "opshub"


def proxy_url(get_config: Callable, get_name: Callable) -> str:
    """The proxy's HTTP address inside the cluster, as user servers reach it."""
    https = get_config("proxy.https", {}) or {}
    if https.get("enabled") and https.get("type", "letsencrypt") == "letsencrypt" and https.get("hosts"):
        # with z2jh's automatic HTTPS, proxy-public is the TLS terminator; proxy-http is plain HTTP
        return f"http://{get_name('proxy-http')}:8000"
    port = get_config("proxy.service.ports.http", 80) or 80
    return f"http://{get_name('proxy-public')}:{port}"


def merge_into(c: Config, ours: Config, settings: Settings, service_url: str, proxy: str) -> Config:
    """Merge opshub's config (`apply_all` on a fresh Config) into z2jh's `c`. Pure: reads and sets traits."""
    ours = copy.deepcopy(ours)
    for section, traits in Z2JH_OWNED_TRAITS.items():
        if section in ours:
            for trait in list(ours[section]) if traits is None else traits:
                ours[section].pop(trait, None)
    # The opshub service: an external service (its own Deployment), with the API token z2jh generated
    # and keeps for `jupyterhub.hub.services.opshub` (the chart's values declare it).
    z2jh_services = _current(c, "JupyterHub", "services", [])
    z2jh_opshub = next((s for s in z2jh_services if s.get("name") == SERVICE_NAME), None)
    if not z2jh_opshub or not z2jh_opshub.get("api_token"):
        raise SettingsError(
            VALUES_KEY,
            [
                f"jupyterhub.hub.services.{SERVICE_NAME}: missing, so z2jh generated no API token for the opshub"
                " service; keep the chart's default `jupyterhub.hub.services.opshub: {}`"
            ],
        )
    services = []
    for service in ours.JupyterHub.services:
        if service["name"] == SERVICE_NAME:
            service = {k: v for k, v in service.items() if k not in ("command", "environment", "url")}
            service.update(url=service_url, api_token=z2jh_opshub["api_token"])
        services.append(service)
    ours_names = {s["name"] for s in services}
    ours.JupyterHub.services = [s for s in z2jh_services if s.get("name") not in ours_names] + services
    roles_names = {r["name"] for r in ours.JupyterHub.load_roles}
    z2jh_roles = [r for r in _current(c, "JupyterHub", "load_roles", []) if r.get("name") not in roles_names]
    ours.JupyterHub.load_roles = z2jh_roles + list(ours.JupyterHub.load_roles)
    # User servers record runs through the proxy; z2jh's `singleuser.extraEnv` stays, ours wins.
    environment = dict(ours.Spawner.environment)
    environment[SERVICE_URL_ENV] = f"{proxy}{service_prefix(settings['hub']['base_url'])}"
    ours.Spawner.environment = {**_current(c, "KubeSpawner", "environment", {}), **environment}
    for trait in KUBESPAWNER_TRAITS:
        if trait in ours.Spawner:
            ours.KubeSpawner[trait] = ours.Spawner[trait]
    c.merge(ours)
    return c


def _as_list(value: Any) -> list[dict]:
    """KubeSpawner's `volumes` and `volume_mounts`: a list, or a dict whose values it sorts by key."""
    if isinstance(value, dict):
        return [value[key] for key in sorted(value)]
    return list(value or [])


def _claim(volume: dict) -> str | None:
    claim = volume.get("persistentVolumeClaim") or volume.get("persistent_volume_claim") or {}
    return claim.get("claimName") or claim.get("claim_name")


def ephemeral_home(spawner, home: str) -> None:
    """A runner's pod: an `emptyDir` at the home in place of z2jh's singleuser storage (`dynamic`: the
    PVC `claim-{username}...` KubeSpawner would create for each run's server; `static`: a subPath of one
    shared claim), and no PVC created. A run's pod starts with an empty home and nothing it writes there
    outlives it. The deployment's other volumes (`singleuser.storage.extraVolumes`) stay, as in Docker."""
    volumes, mounts = _as_list(spawner.volumes), _as_list(spawner.volume_mounts)
    at_home = {m.get("name") for m in mounts if (m.get("mountPath") or m.get("mount_path") or "").rstrip("/") == home}
    personal_claims = {getattr(spawner, "pvc_name_template", None), "{pvc_name}"} - {None}
    drop = at_home | {v.get("name") for v in volumes if _claim(v) in personal_claims}
    spawner.volumes = [v for v in volumes if v.get("name") not in drop] + [{"name": RUN_HOME_VOLUME, "emptyDir": {}}]
    spawner.volume_mounts = [m for m in mounts if m.get("name") not in drop] + [
        {"name": RUN_HOME_VOLUME, "mountPath": home}
    ]
    spawner.storage_pvc_ensure = False


def credential_secrets(spawner, credentials: dict[str, dict]) -> None:
    """A runner's pod: each credential granted to its run's runbook (the one the service named when it
    asked for the server, `user_options` `{"runbook": path}`) that names a `kubernetes_secret`, as a
    secret volume of that one key, mounted read-only at the credential's `file`. No runbook: none."""
    options = getattr(spawner, "user_options", None)
    runbook = options.get("runbook") if isinstance(options, dict) else None
    if not isinstance(runbook, str) or not runbook:
        return
    volumes, mounts = _as_list(spawner.volumes), _as_list(spawner.volume_mounts)
    for index, name in enumerate(granted(credentials, runbook)):
        secret = credentials[name].get("kubernetes_secret")
        if not secret:
            continue
        volume = f"{CREDENTIAL_VOLUME}-{index}"
        volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": secret["name"],
                    "items": [{"key": secret["key"], "path": "credential"}],
                    "defaultMode": 0o444,
                },
            }
        )
        mounts.append(
            {"name": volume, "mountPath": credentials[name]["file"], "subPath": "credential", "readOnly": True}
        )
    spawner.volumes, spawner.volume_mounts = volumes, mounts


@dataclass(frozen=True)
class RunnerPods:
    """KubeSpawner's `pre_spawn_hook` here: opshub's own hook of every mode (SystemServers: the system
    accounts' commands and environments), then, for a runner's pod, an emptyDir home (`ephemeral_home`)
    and the credentials granted to its run's runbook (`credential_secrets`)."""

    hook: Callable
    home: str
    credentials: dict = field(default_factory=dict)  # runner.credentials

    def __call__(self, spawner) -> None:
        self.hook(spawner)
        if spawner.user.name == RUNNER_ACCOUNT:
            ephemeral_home(spawner, self.home)
            credential_secrets(spawner, self.credentials)


def runner_pods(ours: Config, get_config: Callable) -> RunnerPods:
    """The hook, with the home where z2jh mounts the users' storage (`singleuser.storage.homeMountPath`)."""
    home = get_config("singleuser.storage.homeMountPath") or Z2JH_HOME_MOUNT_PATH
    hook = ours.Spawner.pre_spawn_hook
    return RunnerPods(hook, str(home).rstrip("/") or "/", getattr(hook, "credentials", {}))


def hub_config_conflicts(hub_config: Any, ours: Config) -> list[str]:
    """Traits that z2jh's `hub.config` values set and opshub's settings set too. z2jh applies
    `hub.config` after jupyterhub_config.d, so these would silently replace opshub's (its default
    `JupyterHub.authenticator_class: dummy` would let anyone in): refuse them, naming each."""
    conflicts = []
    for section, traits in (hub_config or {}).items():
        for trait, value in (traits or {}).items() if isinstance(traits, dict) else ():
            if value is not None and section in ours and trait in ours[section]:
                conflicts.append(
                    f"jupyterhub.hub.config.{section}.{trait}: z2jh would apply it over opshub's own value;"
                    " set it through the opshub settings (jupyterhub.custom.opshub), or null it"
                )
    return conflicts


def _current(c: Config, section: str, trait: str, empty: list | dict) -> Any:
    """A list or dict trait as z2jh's config left it: set, appended to (a LazyConfigValue), or unset."""
    value = c[section].get(trait, copy.copy(empty)) if section in c else copy.copy(empty)
    return value.get_value(copy.copy(empty)) if isinstance(value, LazyConfigValue) else copy.deepcopy(value)


def configure_hub(c: Config, get_config: Callable, get_name: Callable) -> Config:
    """Called by the chart's jupyterhub_config.d/opshub.py, after z2jh's config: apply opshub's settings."""
    try:
        settings = kubernetes_settings(get_config(Z2JH_KEY), get_config("hub.baseUrl", "/") or "/", cwd=".")
        ours = apply_all(Config(), settings, hub_runtime(settings))
        conflicts = hub_config_conflicts(get_config("hub.config"), ours)
        if conflicts:
            raise SettingsError("the Helm values", conflicts)
        c = merge_into(
            c, ours, settings, f"http://{service_host(get_name('hub'))}:{SERVICE_PORT}", proxy_url(get_config, get_name)
        )
        # on KubeSpawner, where z2jh's storage is: the other modes' Spawner hook stays as it is
        c.KubeSpawner.pre_spawn_hook = runner_pods(ours, get_config)
        return c
    except SettingsError as e:
        # A clear message naming the key, instead of a traceback from deep inside the hub.
        print(f"opshub: {e}", file=sys.stderr)
        sys.exit(2)


def values_schema() -> dict[str, Any]:
    """The JSON schema of `jupyterhub.custom.opshub` in the chart's values.schema.json: the settings
    schema with its references inlined (Helm validates the subtree on its own) and this mode's rules."""
    root = schema()

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = root
                for part in node["$ref"].removeprefix("#/").split("/"):
                    target = target[part]
                node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    result = inline({k: v for k, v in root.items() if k not in ("$schema", "$defs", "title")})
    result["description"] = (
        "opshub's settings, the same shape as a settings file (hub/docs/settings.md), validated again"
        " by the hub and the service at start. Kubernetes mode: z2jh's values decide "
        + ", ".join(f"`{key}` (set {where})" for key, where in Z2JH_DECIDES.items())
        + "; `spawner.kind` is `kubernetes`; `runbooks.repository` (a git URL the users' pods can reach)"
        + " and `roles` are required."
    )
    hub = result["properties"]["hub"]["properties"]
    for key in Z2JH_DECIDES:
        hub.pop(key.split(".")[1])
    result["properties"]["spawner"]["properties"]["kind"]["enum"] = ["kubernetes"]
    result["properties"]["spawner"]["properties"]["kind"]["default"] = "kubernetes"
    runbooks = result["properties"]["runbooks"]
    runbooks["required"] = ["repository"]
    runbooks["properties"]["repository"].pop("default")
    runbooks["properties"]["repository"]["pattern"] = r"^([a-z][a-z0-9+.-]*://|[^/]+@[^/]+:)"
    runbooks["properties"]["mirror_from"]["maxLength"] = 0
    # Helm merges values key by key, so the chart ships no team: the values must name one.
    result["properties"]["roles"]["minProperties"] = 1
    result["required"] = ["runbooks", "roles"]
    return result


def update_values_schema(path: Path) -> None:
    """Rewrite the settings part of the chart's values.schema.json (the rest is the chart's own)."""
    chart_schema = json.loads(path.read_text())
    chart_schema["properties"]["jupyterhub"]["properties"]["custom"]["properties"]["opshub"] = values_schema()
    path.write_text(json.dumps(chart_schema, indent=2) + "\n")


def service_main(argv: list[str] | None = None) -> None:
    """The opshub service's entry point in its own pod."""
    p = argparse.ArgumentParser(prog="python -m opshub.kubernetes service", description=service_main.__doc__)
    p.add_argument("--settings", required=True, help="the settings (the chart's ConfigMap, from the values)")
    p.add_argument("--base-url", default="/", help="the hub's base URL (z2jh's hub.baseUrl)")
    p.add_argument("--data-dir", default=SERVICE_DATA_DIR, help="the pod's volume; relative paths start here")
    p.add_argument("--proxy-url", default="http://proxy-public", help="z2jh's proxy in the cluster (proxy-public)")
    args = p.parse_args(argv)
    try:
        data = yaml.safe_load(Path(args.settings).read_text())
        settings = kubernetes_settings(data, args.base_url, source=args.settings, cwd=args.data_dir)
    except (OSError, yaml.YAMLError, SettingsError) as e:
        print(f"opshub: {e}", file=sys.stderr)
        sys.exit(2)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    from .service.__main__ import main as run_service

    run_service(service_arguments(settings, proxy=args.proxy_url))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["service"]:
        service_main(argv[1:])
    elif argv[:1] == ["values-schema"] and len(argv) == 2:
        update_values_schema(Path(argv[1]))
    else:
        print("usage: python -m opshub.kubernetes service --settings FILE [--base-url URL]", file=sys.stderr)
        print("       python -m opshub.kubernetes values-schema helm/opshub/values.schema.json", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
