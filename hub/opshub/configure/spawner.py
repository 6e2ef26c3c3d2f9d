"""`spawner:` section: how each user's JupyterLab starts, and what it pulls on start."""

from __future__ import annotations

from pathlib import PurePosixPath

from ..settings import Settings, repository_url
from .services import PUBLISH_SCOPE, RECORD_SCOPE, SERVICE_NAME, service_api_url

# The server's own token ($JUPYTERHUB_API_TOKEN): JupyterHub's `server` role, plus reading and
# recording runs in the opshub service as the server's owner (`opshub run` uses it). The hub
# grants only the part the owner holds, so a viewer's token could never record.
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    f"access:services!service={SERVICE_NAME}",
    f"{RECORD_SCOPE}!user",
    f"{PUBLISH_SCOPE}!user",  # `opshub publish` and JupyterLab's "Publish as dashboard" (authors only)
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


# In a container or pod the image's Python runs the server (the ops image has it on PATH).
IMAGE_CMD = ["python", "-m", "opshub.singleuser"]


def docker_volumes(settings: Settings) -> dict:
    """DockerSpawner volumes: the person's home, the runbooks repository (read-only), extras."""
    docker = settings["spawner"]["docker"]
    volumes: dict = {docker["home_volume"]: docker["home_dir"]}
    if docker["runbooks_volume"]:
        # Same path as in the hub's container, so `runbooks.repository` works unchanged.
        folder = str(PurePosixPath(settings["runbooks"]["repository"]).parent)
        volumes[docker["runbooks_volume"]] = {"bind": folder, "mode": "ro"}
    for source, target in docker["volumes"].items():
        path, _, mode = target.partition(":")
        volumes[source] = {"bind": path, "mode": mode or "rw"}
    return volumes


def apply_docker(c, settings: Settings) -> None:
    """One container of the ops image per person, on the deployment's private network."""
    hub, docker = settings["hub"], settings["spawner"]["docker"]
    c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
    c.DockerSpawner.image = docker["image"]
    # Empty: a spawn that names any image is refused; otherwise the form offers exactly these.
    extra = [image for image in docker["allowed_images"] if image != docker["image"]]
    c.DockerSpawner.allowed_images = [docker["image"], *extra] if extra else []
    c.DockerSpawner.pull_policy = docker["pull_policy"]
    # Containers are named <network>-user-<name>: per deployment, never the hub container's name.
    c.DockerSpawner.prefix = f"{docker['network']}-user"
    c.DockerSpawner.network_name = docker["network"]
    c.DockerSpawner.use_internal_ip = True  # the hub is on the same private network
    # Containers are disposable (a new image or limit applies at the next start); homes are volumes.
    c.DockerSpawner.remove = True
    c.DockerSpawner.notebook_dir = docker["home_dir"]
    c.DockerSpawner.volumes = docker_volumes(settings)
    c.DockerSpawner.mem_limit = docker["mem_limit"] or None
    c.DockerSpawner.cpu_limit = docker["cpu_limit"] or None
    # No setuid escalation inside (the image's user is not root and stays so).
    c.DockerSpawner.extra_host_config = {"security_opt": ["no-new-privileges"]}
    c.Spawner.cmd = IMAGE_CMD
    # The users' containers reach the hub's API by the hub container's name on the network, so
    # the API listens on the container's interfaces (the container is the boundary, not loopback).
    c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{hub['port'] + 1}"
    c.JupyterHub.hub_connect_url = f"http://{docker['hub_host']}:{hub['port'] + 1}"


def docker_service_api_url(settings: Settings) -> str:
    """The opshub service's API as the users' containers reach it: through the proxy, by the
    hub container's name (the service itself listens on the hub container's loopback)."""
    hub = settings["hub"]
    return f"http://{settings['spawner']['docker']['hub_host']}:{hub['port']}{hub['base_url']}services/{SERVICE_NAME}/"


def apply_spawner(c, settings: Settings, runtime) -> None:
    spawner = settings["spawner"]
    environment = user_environment(settings)
    if spawner["kind"] == "local":
        # Processes of the hub's own system user, one home folder per person in the state folder.
        c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
        c.SimpleLocalProcessSpawner.home_dir_template = str(settings.state_dir / "homes" / "{username}")
        c.Spawner.cmd = [runtime.python, "-m", "opshub.singleuser"]
    elif spawner["kind"] == "docker":
        apply_docker(c, settings)
        environment["OPSHUB_SERVICE_URL"] = docker_service_api_url(settings)
    elif spawner["kind"] == "kubernetes":
        # The Zero to JupyterHub chart sets KubeSpawner and the pods' image; only the command is ours.
        c.Spawner.cmd = IMAGE_CMD
    c.Spawner.default_url = spawner["default_url"]
    c.Spawner.start_timeout = spawner["start_timeout"]
    c.Spawner.http_timeout = spawner["start_timeout"]
    c.Spawner.environment = environment
    c.Spawner.server_token_scopes = SERVER_TOKEN_SCOPES
