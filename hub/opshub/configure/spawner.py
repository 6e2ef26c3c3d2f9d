"""`spawner:` section: how each user's JupyterLab starts, and what it pulls on start."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from jupyterhub import orm
from jupyterhub.spawner import SpawnException

from ..contract import (
    ALLOWED_PULL_REPOS_ENV,
    DASHBOARDS_ACCOUNT,
    DEPLOYMENT_ID_ENV,
    PUBLIC_URL_ENV,
    PUBLISH_SCOPE,
    RECORD_SCOPE,
    REQUEST_SCOPE,
    RUNBOOKS_BRANCH_ENV,
    RUNBOOKS_REPO_ENV,
    RUNBOOKS_TARGET_ENV,
    RUNNER_ACCOUNT,
    SERVICE_NAME,
    SERVICE_URL_ENV,
    SYSTEM_ACCOUNTS,
    service_prefix,
)
from ..dashboards_backend import BASE_URL_ENV, CULL_IDLE_ENV, POOL_SIZE_ENV
from ..runner import CREDENTIALS_ENV
from ..runner.credentials import granted
from ..sandbox import BUBBLEWRAP, CONTAINER, NONE, SANDBOX_ENV
from ..settings import Settings, public_url, repository_url
from .hub import NamedServersOnlyFor
from .roles import SYSTEM_ACCOUNT_PURPOSES, may_have_a_server
from .services import service_api_url

# The server's own token ($JUPYTERHUB_API_TOKEN): JupyterHub's `server` role, plus reading and
# recording runs in the opshub service as the server's owner (`opshub run` uses it). The hub
# grants only the part the owner holds, so a viewer's token could never record.
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    f"access:services!service={SERVICE_NAME}",
    f"{RECORD_SCOPE}!user",
    f"{PUBLISH_SCOPE}!user",  # `opshub publish` and JupyterLab's "Publish as dashboard" (authors only)
    f"{REQUEST_SCOPE}!user",  # `opshub request` (not viewers: they have no server anyway)
]


def user_environment(settings: Settings, deployment_id: str = "") -> dict[str, str]:
    """What the user's server needs from the hub: where the runbooks and the run history are, and which
    deployment it belongs to (`Runtime.deployment_id`, kept in the state folder)."""
    runbooks = settings["runbooks"]
    return {
        # read by `opshub.singleuser` to pull the runbooks before the server starts
        RUNBOOKS_REPO_ENV: repository_url(settings),
        RUNBOOKS_BRANCH_ENV: runbooks["branch"],
        RUNBOOKS_TARGET_ENV: runbooks["target"],
        ALLOWED_PULL_REPOS_ENV: " ".join(runbooks["allowed_pull_repositories"]),  # read by opshub.lab.pull_guard
        # read by `opshub run` to record runs
        SERVICE_URL_ENV: service_api_url(settings),
        # read by what prints the service's links in a terminal (runbooks/public_links.py): clickable
        PUBLIC_URL_ENV: public_url(settings.data),
        "OPSHUB_SECRET_NAMES": ",".join(settings["history"]["secret_names"]),
        # read by the opshub server extension that records interactive runs (opshub.lab)
        "OPSHUB_INTERACTIVE_IDLE_MINUTES": str(settings["history"]["interactive_idle_minutes"]),
        "OPSHUB_RECORD_OUTSIDE_RUNBOOKS": "true" if settings["history"]["record_outside_runbooks"] else "false",
        # its spool of interactive runs is this deployment's: accounts on one machine outlive deployments
        **({DEPLOYMENT_ID_ENV: deployment_id} if deployment_id else {}),
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
    for source, target in extra_volumes(settings).items():
        path, _, mode = target.partition(":")
        volumes[source] = {"bind": path, "mode": mode or "rw"}
    return volumes


def extra_volumes(settings: Settings) -> dict[str, str]:
    """`spawner.docker.volumes`: the deployment's own mounts, `source: /path[:mode]`."""
    return settings["spawner"]["docker"]["volumes"]


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
    c.DockerSpawner.extra_host_config = {"security_opt": list(DOCKER_SECURITY_OPT)}
    c.Spawner.cmd = IMAGE_CMD
    # The users' containers reach the hub's API by the hub container's name on the network, so
    # the API listens on the container's interfaces (the container is the boundary, not loopback).
    c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{hub['port'] + 1}"
    c.JupyterHub.hub_connect_url = f"http://{docker['hub_host']}:{hub['port'] + 1}"


# Every container's options beyond Docker's defaults: no setuid escalation inside.
DOCKER_SECURITY_OPT = ("no-new-privileges",)
# Docker's default seccomp profile plus what bubblewrap needs to seal each live dashboard's kernels in
# namespaces of their own without any capability (images/ops/README.md says what it adds and why).
DASHBOARDS_SECCOMP_PROFILE = Path(__file__).with_name("dashboards-seccomp.json")
# Docker's default masked paths outside /proc (those under /proc, and its read-only /proc paths, are
# what the dashboards server's container goes without); runc skips a path that does not exist.
DASHBOARDS_MASKED_PATHS = (
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
    *(f"/sys/devices/system/cpu/cpu{n}/thermal_throttle" for n in range(256)),
)


def dashboards_container_options() -> dict[str, dict]:
    """DockerSpawner's options for the dashboards server's container alone: the seccomp profile above,
    given as its JSON text (the Engine API wants the content, not a path), and its `/proc` without
    Docker's masks and read-only mounts over parts of it (the kernel mounts a new `/proc` for a sandbox's
    own process namespace only where the container's is fully visible; Docker's other masks stay). Its
    user stays 1000, with no capability and no-new-privileges."""
    profile = json.dumps(json.loads(DASHBOARDS_SECCOMP_PROFILE.read_text()), separators=(",", ":"))
    return {
        "extra_host_config": {"security_opt": [*DOCKER_SECURITY_OPT, f"seccomp={profile}"]},
        # the Engine API's HostConfig fields (docker-py has no argument for them), which DockerSpawner
        # merges into the one it sends
        "extra_create_kwargs": {"host_config": {"MaskedPaths": list(DASHBOARDS_MASKED_PATHS), "ReadonlyPaths": []}},
    }


def docker_service_api_url(settings: Settings) -> str:
    """The opshub service's API as the users' containers reach it: through the proxy, by the
    hub container's name (the service itself listens on the hub container's loopback)."""
    hub = settings["hub"]
    return f"http://{settings['spawner']['docker']['hub_host']}:{hub['port']}{service_prefix(hub['base_url'])}"


def local_accounts(settings: Settings, runtime) -> str:
    """`per-person` or `shared`: who the local kind's servers run as (`auto` decided by root)."""
    chosen = settings["spawner"]["local"]["accounts"]
    if chosen == "auto":
        return "per-person" if runtime.as_root else "shared"
    return chosen


def homes_dir(settings: Settings, runtime) -> Path:
    """Where the local kind keeps people's homes."""
    configured = settings["spawner"]["local"]["homes_dir"]
    if configured:
        return Path(configured)
    return Path("/home") if local_accounts(settings, runtime) == "per-person" else settings.state_dir / "homes"


def apply_local(c, settings: Settings, runtime) -> None:
    """A process per server on this machine: under each person's own system account when the hub
    runs as root, else under the hub's own account (the single-account trial)."""
    homes = homes_dir(settings, runtime)
    if local_accounts(settings, runtime) == "per-person":
        c.JupyterHub.spawner_class = "opshub.accounts.PerPersonSpawner"
        c.PerPersonSpawner.homes_dir = str(homes)
        c.PerPersonSpawner.system_accounts = list(SYSTEM_ACCOUNTS)
        c.PerPersonSpawner.account_prefix = settings["spawner"]["local"]["account_prefix"]
        # homes of the single-account layout (before per-person accounts) move to their owners
        c.PerPersonSpawner.earlier_homes_dir = str(settings.state_dir / "homes")
    else:
        c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
        c.SimpleLocalProcessSpawner.home_dir_template = str(homes / "{username}")
    c.Spawner.cmd = [runtime.python, "-m", "opshub.singleuser"]
    # no server reads the terminal `make run` was typed in (they are in sessions of their own already)
    c.LocalProcessSpawner.popen_kwargs = {"stdin": subprocess.DEVNULL}


def server_token_scopes(spawner) -> list[str]:
    """$JUPYTERHUB_API_TOKEN's scopes: a person's server records and publishes as its owner; a
    system account's server gets none but the access to itself that every server has. (The
    dashboards server's traffic goes through the proxy, which keeps it from looking idle to a
    culler; a runner's server tells the hub it is active while its run goes on.)"""
    if spawner.user.name == RUNNER_ACCOUNT:
        return ["access:servers!server", "users:activity!user"]
    if spawner.user.name in SYSTEM_ACCOUNTS:
        return ["access:servers!server"]
    return SERVER_TOKEN_SCOPES


def refuse_unless_allowed_to_start(spawner) -> None:
    """Who may start whose server, checked on every start a request asks for (the admin page, its API,
    the spawn page), as JupyterHub's RBAC cannot say it: an admin's `admin:servers` covers every user.

    - a system account's servers are the opshub service's alone: nobody starts one by hand (an admin's
      click would run a runner's server with no run, or a second dashboards server);
    - a person's server only for those whose roles give them one (not viewers), whoever asks.

    A 403 naming why, before anything starts. Starts no request asked for (none today) pass."""
    handler = getattr(spawner, "handler", None)
    if handler is None:
        return
    name = spawner.user.name
    requester = handler.current_user
    if name in SYSTEM_ACCOUNTS:
        if isinstance(requester, orm.Service) and requester.name == SERVICE_NAME:
            return
        raise SpawnException(
            f"{name} is an opshub system account ({SYSTEM_ACCOUNT_PURPOSES[name]}): only the opshub service"
            " starts its servers, nobody starts one by hand",
            reason="system-account",
            status_code=403,
        )
    if not may_have_a_server(spawner.user.orm_user):
        raise SpawnException(
            f"{name} may not have a server: their roles (the viewer role, or none) give them the dashboards"
            " and the run history only. To give them one, add them to a group with the operator or author role.",
            reason="no-server-role",
            status_code=403,
        )


@dataclass(frozen=True)
class SystemServers:
    """`Spawner.pre_spawn_hook`: the server of a system account runs its own program with only
    what that needs (no runbooks pull, no person's environment)."""

    commands: dict[str, list[str]]
    environments: dict[str, dict[str, str]]
    docker_volumes: dict[str, dict] = field(default_factory=dict)  # DockerSpawner's, per account
    docker_options: dict[str, dict] = field(default_factory=dict)  # DockerSpawner's traits, per account
    credentials: dict[str, dict] = field(default_factory=dict)  # runner.credentials

    def __call__(self, spawner) -> None:
        refuse_unless_allowed_to_start(spawner)
        name = spawner.user.name
        if spawner.name and name != RUNNER_ACCOUNT:
            # named servers exist for the runner's runs; a person has one server. JupyterHub refuses
            # them before this (NamedServersOnlyFor); should one get here, a 403, never a 500
            raise SpawnException(
                f"{name} cannot have named servers: opshub gives each person one server;"
                " named servers are the runner's, one per unattended run",
                reason="named-server",
                status_code=403,
            )
        if name in self.commands:
            spawner.cmd = self.commands[name]
            spawner.environment = self.environments[name]
        if name in self.docker_volumes:
            volumes = dict(self.docker_volumes[name])
            if name == RUNNER_ACCOUNT:
                volumes.update(self.credential_mounts(spawner))
            spawner.volumes = volumes
        for trait, value in self.docker_options.get(name, {}).items():
            setattr(spawner, trait, json.loads(json.dumps(value)))  # a copy of its own

    def credential_mounts(self, spawner) -> dict[str, dict]:
        """A run's container gets the credentials granted to its runbook, the one the service named
        when it asked for the server (`user_options`, `{"runbook": path}`; only the service
        may start the runner's servers), each file read-only at its `file`; without a runbook, none."""
        options = getattr(spawner, "user_options", None)
        options = options if isinstance(options, dict) else {}
        runbook = options.get("runbook")
        if not isinstance(runbook, str) or not runbook:
            return {}
        return {
            self.credentials[name]["docker_source"]: {"bind": self.credentials[name]["file"], "mode": "ro"}
            for name in granted(self.credentials, runbook)
            if self.credentials[name].get("docker_source")
        }


def runner_sandbox(settings: Settings) -> str:
    """Where each unattended run executes (sandbox.py): `runner.sandbox: auto` is a bubblewrap sandbox
    per run on this machine, the runner's own fresh container or pod elsewhere."""
    if settings["runner"]["sandbox"] == "none":
        return NONE
    return BUBBLEWRAP if settings["spawner"]["kind"] == "local" else CONTAINER


def system_servers(settings: Settings, python: list[str], environment: dict[str, str]) -> SystemServers:
    """The dashboards server (opshub.dashboards_backend): where the pages are served from, its
    kernel pools, where its kernels reach the run summaries. The runner's server: its credentials and
    sandbox. Both start Python isolated (-I): no folder their account can write shadows a module."""
    dashboards = settings["dashboards"]
    backend = {
        BASE_URL_ENV: f"{service_prefix(settings['hub']['base_url'])}dashboards/-/",
        POOL_SIZE_ENV: str(dashboards["pool_size"]),
        CULL_IDLE_ENV: str(dashboards["cull_idle_seconds"]),
        SERVICE_URL_ENV: environment[SERVICE_URL_ENV],
        SANDBOX_ENV: runner_sandbox(settings),  # each live dashboard's kernels: sealed the same way
    }
    runner = {
        SERVICE_URL_ENV: environment[SERVICE_URL_ENV],
        "OPSHUB_SECRET_NAMES": environment["OPSHUB_SECRET_NAMES"],
        CREDENTIALS_ENV: json.dumps(settings["runner"]["credentials"]),
        SANDBOX_ENV: runner_sandbox(settings),
    }
    if "PATH" in environment:
        backend["PATH"] = runner["PATH"] = environment["PATH"]
    volumes, options = {}, {}
    if settings["spawner"]["kind"] == "docker":
        # a fresh container per run, with no home volume (nor the runbooks': the job brings them)
        # that one run could leave something in for the next; the deployment's own extra mounts stay
        volumes[RUNNER_ACCOUNT] = {
            source: target for source, target in docker_volumes(settings).items() if source in extra_volumes(settings)
        }
        if backend[SANDBOX_ENV] != NONE:
            # the dashboards server's container alone may create the user namespaces of bubblewrap's
            # sandboxes, one per kernel (every other container keeps Docker's default profile)
            options[DASHBOARDS_ACCOUNT] = dashboards_container_options()
    return SystemServers(
        commands={
            DASHBOARDS_ACCOUNT: [*python, "-I", "-m", "opshub.dashboards_backend"],
            RUNNER_ACCOUNT: [*python, "-I", "-m", "opshub.runner"],
        },
        environments={DASHBOARDS_ACCOUNT: backend, RUNNER_ACCOUNT: runner},
        docker_volumes=volumes,
        docker_options=options,
        credentials=settings["runner"]["credentials"],
    )


def apply_spawner(c, settings: Settings, runtime) -> None:
    spawner = settings["spawner"]
    environment = user_environment(settings, runtime.deployment_id)
    python = ["python"]  # in a container or pod, the image's
    if spawner["kind"] == "local":
        apply_local(c, settings, runtime)
        python = [runtime.python]
        # `opshub` (and jupyter, papermill) typed in a terminal: the environment's commands first
        environment["PATH"] = os.pathsep.join([str(Path(runtime.python).parent), runtime.path])
    elif spawner["kind"] == "docker":
        apply_docker(c, settings)
        environment[SERVICE_URL_ENV] = docker_service_api_url(settings)
    elif spawner["kind"] == "kubernetes":
        # The Zero to JupyterHub chart sets KubeSpawner and the pods' image; only the command is ours.
        c.Spawner.cmd = IMAGE_CMD
    c.Spawner.default_url = spawner["default_url"]
    c.Spawner.start_timeout = spawner["start_timeout"]
    c.Spawner.http_timeout = spawner["start_timeout"]
    c.Spawner.environment = environment
    c.Spawner.server_token_scopes = server_token_scopes
    c.Spawner.pre_spawn_hook = system_servers(settings, python, environment)
    # The runner runs each unattended run in a named server of its account, as many as
    # runner.max_concurrent lets the service start; JupyterHub refuses people's (403, hub.py).
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = NamedServersOnlyFor(RUNNER_ACCOUNT)
