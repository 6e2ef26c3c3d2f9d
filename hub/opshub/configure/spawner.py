"""`spawner:` section: how each user's JupyterLab starts, and what it pulls on start."""

from __future__ import annotations

from ..settings import Settings, repository_url


def runbooks_environment(settings: Settings) -> dict[str, str]:
    """What `opshub.singleuser` reads to pull the runbooks before the server starts."""
    runbooks = settings["runbooks"]
    return {
        "OPSHUB_RUNBOOKS_REPO": repository_url(settings),
        "OPSHUB_RUNBOOKS_BRANCH": runbooks["branch"],
        "OPSHUB_RUNBOOKS_TARGET": runbooks["target"],
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
    c.Spawner.environment = runbooks_environment(settings)
