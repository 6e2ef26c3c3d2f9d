"""The `spawner.docker` settings and what they become (pure: no Docker Engine needed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from opshub.configure import Runtime, apply_all
from opshub.settings import EMBEDDED_SETTINGS, SettingsError, load_settings, validate
from traitlets.config import Config

from tests.helpers import ROOT

RUNTIME = Runtime(python="/opt/opshub/bin/python", proxy_command=["chp"], demo_password="correct-horse")
DOCKER_SETTINGS = ROOT / "images" / "opshub-docker.yaml"


def configured(data: dict) -> Config:
    return apply_all(Config(), validate(data, cwd="/"), RUNTIME)


def docker_data(**docker) -> dict:
    data = yaml.safe_load(DOCKER_SETTINGS.read_text())
    data["spawner"]["docker"].update(docker)
    return data


def test_make_up_settings_spawn_the_ops_image_on_the_private_network():
    c = apply_all(Config(), load_settings(DOCKER_SETTINGS, cwd="/"), RUNTIME)
    assert c.JupyterHub.spawner_class == "dockerspawner.DockerSpawner"
    assert c.DockerSpawner.image == "opshub/ops:latest"
    assert c.DockerSpawner.allowed_images == []  # any image named at spawn time is refused
    assert c.DockerSpawner.network_name == "opshub" and c.DockerSpawner.use_internal_ip is True
    assert c.DockerSpawner.prefix == "opshub-user"
    assert c.DockerSpawner.remove is True
    assert c.DockerSpawner.volumes == {
        "opshub-home-{username}": "/home/ops",
        "opshub-runbooks": {"bind": "/srv/opshub/runbooks", "mode": "ro"},
    }
    assert (c.DockerSpawner.mem_limit, c.DockerSpawner.cpu_limit) == ("2G", 1.0)
    assert c.Spawner.cmd == ["python", "-m", "opshub.singleuser"]
    # the containers reach the hub's API and the opshub service by the hub container's name
    assert c.JupyterHub.hub_bind_url == "http://0.0.0.0:8001"
    assert c.JupyterHub.hub_connect_url == "http://opshub-hub:8001"
    assert c.Spawner.environment["OPSHUB_SERVICE_URL"] == "http://opshub-hub:8000/services/opshub/"
    assert c.Spawner.environment["OPSHUB_RUNBOOKS_REPO"] == "file:///srv/opshub/runbooks/runbooks.git"
    culler = next(s for s in c.JupyterHub.services if s["name"] == "idle-culler")
    assert culler["command"][1:] == ["-m", "jupyterhub_idle_culler", "--timeout=3600", "--cull-every=300"]
    # ... and the scopes it needs to list and stop servers, through its role
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == "opshub-idle-culler")
    assert role["services"] == ["idle-culler"] and "delete:servers" in role["scopes"]


def test_allowed_images_list_the_default_image_first():
    c = configured(docker_data(allowed_images=["opshub/ops:next", "opshub/ops:latest"]))
    assert c.DockerSpawner.allowed_images == ["opshub/ops:latest", "opshub/ops:next"]


def test_extra_volumes_limits_and_culling_off():
    c = configured(
        docker_data(
            volumes={"team-share": "/srv/share:ro", "/data/{username}": "/data"},
            mem_limit="",
            cpu_limit=0,
            cull_idle_after=0,
        )
    )
    assert c.DockerSpawner.volumes["team-share"] == {"bind": "/srv/share", "mode": "ro"}
    assert c.DockerSpawner.volumes["/data/{username}"] == {"bind": "/data", "mode": "rw"}
    assert c.DockerSpawner.mem_limit is None and c.DockerSpawner.cpu_limit is None
    assert all(s["name"] != "idle-culler" for s in c.JupyterHub.services)
    assert all(r["name"] != "opshub-idle-culler" for r in c.JupyterHub.load_roles)


# What bubblewrap needs beyond Docker's default seccomp profile to seal a dashboard's kernels without any
# capability (hub/opshub/configure/dashboards-seccomp.json; images/ops/README.md): each was tried left out,
# and bwrap failed without it in a container of the ops image.
BWRAP_SYSCALLS = ["clone", "mount", "pivot_root", "sethostname", "umount2", "unshare"]


def test_only_the_dashboards_server_s_container_may_create_bubblewrap_s_namespaces():
    """The dashboards server's container: Docker's default seccomp profile plus the few syscalls of
    bwrap, /proc unmasked (a sandbox's own /proc needs it), no-new-privileges, no capability added.
    People's and runs' containers: Docker's defaults and no-new-privileges, nothing more."""
    c = apply_all(Config(), load_settings(DOCKER_SETTINGS, cwd="/"), RUNTIME)
    hook = c.Spawner.pre_spawn_hook
    assert c.DockerSpawner.extra_host_config == {"security_opt": ["no-new-privileges"]}

    def options(user, name=""):
        server = SimpleNamespace(user=SimpleNamespace(name=user), name=name, cmd=None, environment=None, volumes=None)
        hook(server)
        return {k: v for k, v in vars(server).items() if k.startswith("extra_")}

    assert options("bob") == {} and options("opshub-runner", "run-1") == {}  # the common config
    dashboards = options("opshub-dashboards")
    security = dashboards["extra_host_config"]["security_opt"]
    assert security[0] == "no-new-privileges" and len(security) == 2 and security[1].startswith("seccomp={")
    assert set(dashboards["extra_host_config"]) == {"security_opt"}  # no capability, not privileged
    # /proc without Docker's masks and read-only mounts (a sandbox's own /proc needs it); /sys keeps them
    paths = dashboards["extra_create_kwargs"]["host_config"]
    assert paths["ReadonlyPaths"] == [] and {"/sys/firmware", "/sys/devices/virtual/powercap"} <= set(
        paths["MaskedPaths"]
    )
    assert not [path for path in paths["MaskedPaths"] if not path.startswith("/sys/")]
    assert set(dashboards["extra_create_kwargs"]) == {"host_config"}
    profile = json.loads(security[1].removeprefix("seccomp="))
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    ours = [rule for rule in profile["syscalls"] if rule.get("comment", "").startswith("opshub:")]
    assert [rule["names"] for rule in ours] == [BWRAP_SYSCALLS] and ours[0]["action"] == "SCMP_ACT_ALLOW"
    assert not ours[0].get("args") and not ours[0].get("includes") and not ours[0].get("excludes")
    # the rest is Docker's default: namespaces, mounts, setns, bpf... only with CAP_SYS_ADMIN, which the
    # container does not have
    rest = [rule for rule in profile["syscalls"] if rule not in ours]
    admin = next(
        rule for rule in rest if rule.get("includes", {}).get("caps") == ["CAP_SYS_ADMIN"] and "bpf" in rule["names"]
    )
    assert {"setns", "unshare", "mount", "clone3"} <= set(admin["names"])
    unconditional = {
        name
        for rule in rest
        if rule["action"] == "SCMP_ACT_ALLOW"
        and not rule.get("includes")
        and not rule.get("excludes")
        and not rule.get("args")
        for name in rule["names"]
    }
    assert not unconditional & {*BWRAP_SYSCALLS, "setns", "bpf", "keyctl", "add_key", "kexec_load"}
    assert {"read", "write", "openat", "execve"} <= unconditional
    # the same text as the file shipped with opshub, which the ops image's README describes
    assert profile == json.loads((ROOT / "hub" / "opshub" / "configure" / "dashboards-seccomp.json").read_text())


def test_without_a_sandbox_the_dashboards_server_gets_docker_s_defaults_too():
    data = docker_data()
    data["runner"] = {**data.get("runner", {}), "sandbox": "none"}
    c = configured(data)
    server = SimpleNamespace(user=SimpleNamespace(name="opshub-dashboards"), name="", cmd=None, environment=None)
    c.Spawner.pre_spawn_hook(server)
    assert server.environment["OPSHUB_SANDBOX"] == "none"
    assert not [k for k in vars(server) if k.startswith("extra_")]


def test_local_and_kubernetes_kinds_are_untouched_by_docker_settings(tmp_path):
    local = apply_all(Config(), load_settings(EMBEDDED_SETTINGS, cwd=tmp_path), RUNTIME)
    assert "DockerSpawner" not in local and "hub_connect_url" not in local.JupyterHub
    assert all(s["name"] != "idle-culler" for s in local.JupyterHub.services)
    data = yaml.safe_load(EMBEDDED_SETTINGS.read_text())
    data["spawner"] = {"kind": "kubernetes"}
    kube = configured(data)
    assert kube.Spawner.cmd == ["python", "-m", "opshub.singleuser"]
    assert "spawner_class" not in kube.JupyterHub  # the Zero to JupyterHub chart sets KubeSpawner


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"mem_limit": "lots"}, "spawner.docker.mem_limit"),
        ({"cpu_limit": -1}, "spawner.docker.cpu_limit"),
        ({"volumes": {"x": "relative/path"}}, "spawner.docker.volumes.x"),
        ({"pull_policy": "sometimes"}, "spawner.docker.pull_policy"),
        ({"swarm": True}, "spawner.docker: unknown key(s) swarm"),
    ],
)
def test_bad_docker_settings_name_the_key(change, problem):
    with pytest.raises(SettingsError) as error:
        validate(docker_data(**change))
    assert problem in str(error.value)


def test_a_local_runbooks_repository_without_its_volume_is_refused_at_start(tmp_path):
    from opshub.startup import prepare

    data = docker_data(runbooks_volume="")
    data["hub"]["state_dir"] = str(tmp_path / "state")
    with pytest.raises(SettingsError, match="spawner.docker.runbooks_volume: runbooks.repository"):
        prepare(validate(data, cwd="/"))
