"""`spawner:` section: how each user's JupyterLab starts, and what it pulls on start."""

from __future__ import annotations

from ..settings import Settings, repository_url
from .services import RECORD_SCOPE, SERVICE_NAME, service_api_url

# The server's own token ($JUPYTERHUB_API_TOKEN): JupyterHub's `server` role, plus reading and
# recording runs in the opshub service as the server's owner (`opshub run` uses it). The hub
# grants only the part the owner holds, so a viewer's token could never record.
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    f"access:services!service={SERVICE_NAME}",
    f"{RECORD_SCOPE}!user",
]


def user_environment(settings: Settings) -> dict[str, str]:
    """What the user's server needs from the hub: where the runbooks and the run history are."""
    runbooks = settings["runbooks"]
    return {
        # read by `opshub.singleuser` to pull the runbooks before the server starts
        "OPSHUB_RUNBOOKS_REPO": repository_url(settings),
        "OPSHUB_RUNBOOKS_BRANCH": runbooks["branch"],
        "OPSHUB_RUNBOOKS_TARGET": runbooks["target"],
        # read by `opshub run` to record runs
        "OPSHUB_SERVICE_URL": service_api_url(settings),
        "OPSHUB_SECRET_NAMES": ",".join(settings["history"]["secret_names"]),
        # read by the opshub server extension that records interactive runs (opshub.lab)
        "OPSHUB_INTERACTIVE_IDLE_MINUTES": str(settings["history"]["interactive_idle_minutes"]),
        "OPSHUB_RECORD_OUTSIDE_RUNBOOKS": "true" if settings["history"]["record_outside_runbooks"] else "false",
    }


def apply_spawner(c, settings: Settings, runtime) -> None:
    spawner = settings["spawner"]
    if spawner["kind"] == "local":
        # Processes of the hub's own system user, one home folder per person in the state folder.
        c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
        c.SimpleLocalProcessSpawner.home_dir_template = str(settings.state_dir / "homes" / "{username}")
        c.Spawner.cmd = [runtime.python, "-m", "opshub.singleuser"]
    c.Spawner.default_url = spawner["default_url"]
    c.Spawner.start_timeout = spawner["start_timeout"]
    c.Spawner.http_timeout = spawner["start_timeout"]
    c.Spawner.environment = user_environment(settings)
    c.Spawner.server_token_scopes = SERVER_TOKEN_SCOPES
