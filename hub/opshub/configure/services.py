"""Services the hub starts and supervises next to itself: the opshub service (run history) and,
in embedded mode, the runbooks mirror."""

from __future__ import annotations

import json
import os

from ..contract import (
    DELETE_SCOPE,
    PUBLISH_SCOPE,
    RECORD_SCOPE,
    REQUEST_SCOPE,
    SERVICE_NAME,
    SERVICE_SETTINGS_SECTIONS,
    service_prefix,
)
from ..settings import Settings, public_url, repository_url

METRICS_TOKEN_ENV = "OPSHUB_METRICS_TOKEN"  # how the hub hands the token to the service process
DATABASE_PASSWORD_ENV = "OPSHUB_DATABASE_PASSWORD"  # ... and the database password
ALERTS_TOKEN_ENV = "OPSHUB_ALERTS_TOKEN"  # ... and the token Alertmanager sends
IDLE_CULLER = "idle-culler"
# What jupyterhub-idle-culler needs, and nothing more (its README's role).
IDLE_CULLER_ROLE = {
    "name": "opshub-idle-culler",
    "description": "Stops idle servers.",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": [IDLE_CULLER],
}
# Custom RBAC scopes (JupyterHub >= 3): the hub hands them out through roles, the service checks them.
CUSTOM_SCOPES = {
    RECORD_SCOPE: {"description": "Record runbook runs as oneself in the opshub run history."},
    DELETE_SCOPE: {"description": "Delete runs from the opshub run history."},
    PUBLISH_SCOPE: {"description": "Publish and unpublish opshub dashboards."},
    REQUEST_SCOPE: {"description": "Request unattended runs of runbooks on the opshub runner, and cancel them."},
}


def service_url(settings: Settings) -> str:
    """Where the opshub service listens: loopback, next to the hub's other ports."""
    return f"http://127.0.0.1:{settings['hub']['port'] + 3}"


def service_api_url(settings: Settings) -> str:
    """The service's API as user servers on this machine reach it (directly, not through the proxy)."""
    return f"{service_url(settings)}{service_prefix(settings['hub']['base_url'])}"


def proxy_url(settings: Settings) -> str:
    """The hub's proxy as the service reaches it on this machine (without the base URL)."""
    hub = settings["hub"]
    host = "127.0.0.1" if hub["ip"] in ("", "0.0.0.0", "::") else hub["ip"]
    return f"http://{host}:{hub['port']}"


def database_url(settings: Settings) -> str:
    return settings["history"]["database_url"] or f"sqlite:///{settings.state_dir / 'opshub.sqlite'}"


def service_settings(settings: Settings, proxy: str | None = None) -> dict:
    """What the opshub service reads, as one document: the validated sections it needs, whole (a new
    setting there reaches it with nothing to thread through), and `service`: where things are, derived
    here from the settings. No secrets: those reach the service in its environment."""
    return {
        **{section: settings[section] for section in SERVICE_SETTINGS_SECTIONS},
        "service": {
            "database_url": database_url(settings),
            "runbooks_repository": repository_url(settings),
            "cache_dir": str(settings.state_dir / "service-runbooks.git"),
            # published dashboards: their copies, the Voila backend's home and log
            "dashboards_dir": str(settings.state_dir / "dashboards"),
            # the dashboards server and the runner are reached through the proxy, like any server
            "proxy_url": proxy or proxy_url(settings),
            # the hub's URL as browsers see it, for the links to runs' pages in notifications
            "public_url": public_url(settings.data),
            "metrics_token_env": METRICS_TOKEN_ENV,
            "alerts_token_env": ALERTS_TOKEN_ENV,
        },
    }


def service_arguments(settings: Settings, proxy: str | None = None) -> list[str]:
    """The opshub service's command-line arguments, the same in every mode (the Helm chart's
    service pod passes them too, with the proxy's address in the cluster: opshub.kubernetes)."""
    return ["--settings", json.dumps(service_settings(settings, proxy), sort_keys=True)]


def __call__(self, spawner) -> str:
    return os.environ.get(str(self), "")


class HubEnvironment(str):
    """A service's environment variable whose value is the hub's own: JupyterHub calls a callable value
    of `environment` when it starts the service, so the apply functions stay pure and the secret is read
    only then. A str (the variable's name) because JupyterHub also stores the services' environment in
    its database: it stores the name, never the secret, and has no non-JSON value to warn about."""

    def __call__(self, spawner) -> str:
        return os.environ.get(str(self), "")


def notification_environment(settings: Settings) -> dict[str, HubEnvironment]:
    """The variables holding the notification targets' Apprise URLs, passed through from the hub."""
    targets = settings["notifications"]["targets"].values()
    return {target["url_env"]: HubEnvironment(target["url_env"]) for target in targets}


def idle_culler_enabled(settings: Settings) -> bool:
    """Idle culling is for the Docker deployment (z2jh runs its own culler in Kubernetes)."""
    return settings["spawner"]["kind"] == "docker" and bool(settings["spawner"]["docker"]["cull_idle_after"])


def apply_services(c, settings: Settings, runtime) -> None:
    services = [
        {
            "name": SERVICE_NAME,
            "url": service_url(settings),
            "display": True,  # listed in the hub's Services menu
            "command": [runtime.python, "-m", "opshub.service", *service_arguments(settings)],
            # secrets reach the service in its environment, never on its command line
            "environment": {
                **notification_environment(settings),
                METRICS_TOKEN_ENV: runtime.metrics_token or "",
                DATABASE_PASSWORD_ENV: runtime.database_password or "",
                ALERTS_TOKEN_ENV: runtime.alerts_token or "",
            },
            # pages use the hub's OAuth; these are the scopes their cookies may carry
            "oauth_client_allowed_scopes": [RECORD_SCOPE, DELETE_SCOPE, PUBLISH_SCOPE, REQUEST_SCOPE],
            # part of the deployment, not a third party: no "authorize access?" page
            "oauth_no_confirm": True,
        }
    ]  # fmt: skip
    runbooks = settings["runbooks"]
    if runbooks["mirror_from"]:
        # Embedded mode: keep the local runbooks repository in step with the committed
        # content of a folder (this project's shared-notebooks/) while the hub runs.
        services.append(
            {
                "name": "runbooks-mirror",
                "display": False,
                "command": [
                    runtime.python, "-m", "opshub.runbooks.mirror",
                    "--source", runbooks["mirror_from"],
                    "--dest", runbooks["repository"],
                    "--branch", runbooks["branch"],
                    "--interval", str(runbooks["mirror_interval"]),
                ],
            }
        )  # fmt: skip
    docker = settings["spawner"]["docker"]
    if idle_culler_enabled(settings):
        # Stops servers idle for too long (their homes stay); its scopes: IDLE_CULLER_ROLE.
        services.append(
            {
                "name": IDLE_CULLER,
                "display": False,
                "command": [
                    runtime.python, "-m", "jupyterhub_idle_culler",
                    f"--timeout={docker['cull_idle_after']}",
                    f"--cull-every={docker['cull_every']}",
                ],
            }
        )  # fmt: skip
    c.JupyterHub.services = services
    c.JupyterHub.custom_scopes = CUSTOM_SCOPES
