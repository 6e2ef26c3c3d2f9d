"""The `spawner.docker` settings and what they become (pure: no Docker Engine needed)."""

from __future__ import annotations

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
