"""`make up` / `make down` on a real Docker Engine: the hub in its container, one container of
the ops image per person on the deployment's private network, homes on named volumes.

The deployment gets its own names (OPSHUB_NAME) and port, so it never meets a `make up` of
someone on the same machine.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests
import yaml
from dockerspawner import DockerSpawner

from tests.docker.engine import OPS_IMAGE, docker
from tests.helpers import ARTIFACTS, ROOT
from tests.livehub import Hub, free_port_block, wait_for

pytestmark = pytest.mark.timeout(2700)

NAME = "opshub-dtest"
PASSWORD = "docker-demo-pw"
VOLUMES = [f"{NAME}-state", f"{NAME}-runbooks", f"{NAME}-home-alice", f"{NAME}-home-bob"]


class ComposeHub(Hub):
    """The hub `make up` started, driven over HTTP like any other (login, spawn, tokens)."""

    def __init__(self, url: str, env: dict[str, str], banner: str):
        self.url = url
        self.env = env
        self.banner = banner

    def login(self, user: str, password: str = PASSWORD):
        return super().login(user, password)

    def make(self, target: str) -> subprocess.CompletedProcess:
        ARTIFACTS.mkdir(exist_ok=True)
        if target == "down" and self.exists(f"{NAME}-hub"):
            logs = docker("logs", f"{NAME}-hub", check=False)  # the container is removed by `make down`
            (ARTIFACTS / f"{NAME}-hub.log").write_text(logs.stdout + logs.stderr)
        result = subprocess.run(
            ["make", target], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=600, check=False
        )
        with open(ARTIFACTS / f"make-{target}-{NAME}.log", "a") as log:
            log.write(result.stdout + result.stderr)
        return result

    def container(self, user: str) -> str:
        return f"{NAME}-user-{DockerSpawner._escape(user)}"  # DockerSpawner's name: `-` in a name is escaped

    def exists(self, container: str) -> bool:
        names = docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        return container in names

    def exec(self, container: str, *command: str) -> subprocess.CompletedProcess:
        return docker("exec", container, *command, check=False, timeout=600)


def names_of_this_deployment() -> list[str]:
    return [n for n in docker("ps", "-a", "--format", "{{.Names}}").stdout.split() if n.startswith(f"{NAME}-")]


@pytest.fixture(scope="module")
def deployment(images, compose, tmp_path_factory):
    port = free_port_block(1)
    settings = yaml.safe_load((ROOT / "images" / "opshub-docker.yaml").read_text())
    settings["spawner"]["docker"].update(
        network=NAME,
        hub_host=f"{NAME}-hub",
        home_volume=f"{NAME}-home-{{username}}",
        runbooks_volume=f"{NAME}-runbooks",
    )
    settings_file = tmp_path_factory.mktemp("compose") / "opshub.yaml"
    settings_file.write_text(yaml.safe_dump(settings))
    env = {
        **os.environ,
        "OPSHUB_NAME": NAME,
        "OPSHUB_PORT": str(port),
        "OPSHUB_SETTINGS_FILE": str(settings_file),
        "OPSHUB_DEMO_PASSWORD": PASSWORD,
    }
    hub = ComposeHub(f"http://127.0.0.1:{port}", env, "")
    hub.make("down")  # what a failed earlier run may have left
    docker("volume", "rm", "-f", *VOLUMES, check=False)
    up = hub.make("up")
    hub.banner = up.stdout
    try:
        assert up.returncode == 0, f"make up failed: {up.stdout[-3000:]}{up.stderr[-3000:]}"
        yield hub
    finally:
        hub.make("down")
        docker("volume", "rm", "-f", *VOLUMES, check=False)


def login(hub, user):
    session, response = hub.login(user, PASSWORD)
    assert response.status_code == 200 and "/hub/login" not in response.url, response.url
    return session


def test_make_up_says_where_to_log_in(deployment):
    assert f"opshub is up: {deployment.url}/" in deployment.banner
    assert "alice" in deployment.banner and "$OPSHUB_DEMO_PASSWORD" in deployment.banner


def test_login_through_the_proxy_gives_a_container_with_the_runbooks(deployment):
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)
    info = json.loads(docker("inspect", deployment.container("bob")).stdout)[0]
    assert info["State"]["Running"] and info["Config"]["Image"] == OPS_IMAGE
    assert info["Config"]["User"] == "1000"
    assert list(info["NetworkSettings"]["Networks"]) == [NAME]
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/home/ops"]["Name"] == f"{NAME}-home-bob"
    assert mounts["/srv/opshub/runbooks"]["RW"] is False
    assert info["HostConfig"]["Memory"] == 2 * 1024**3
    assert info["HostConfig"]["CpuQuota"] == info["HostConfig"]["CpuPeriod"]  # one core
    assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    listing = deployment.contents(session, "bob", "runbooks").json()
    names = {item["name"] for item in listing["content"]}
    assert {"patch-server-stack.ipynb", "host-health-check.ipynb", "tls-certificate-expiry.ipynb"} <= names


def test_headless_run_in_the_container_shows_in_history_and_metrics(deployment):
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)
    result = deployment.exec(
        deployment.container("bob"),
        "opshub",
        "run",
        "patch-server-stack",
        "-p",
        "stack",
        "lab",
        "-p",
        "dry_run",
        "True",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[dry run] ssh" in result.stdout
    tokens = deployment.tokens(users=["carol"])
    runs = deployment.service_api(
        tokens["carol"], "GET", "runs", params={"runbook": "patch-server-stack.ipynb", "user": "bob"}
    ).json()["runs"]
    assert runs and runs[0]["status"] == "succeeded" and runs[0]["trigger"] == "headless"
    metrics_token = deployment.exec(f"{NAME}-hub", "cat", "/srv/opshub/state/metrics-token").stdout.strip()
    metrics = requests.get(
        f"{deployment.url}/services/opshub/metrics", headers={"Authorization": f"Bearer {metrics_token}"}, timeout=30
    )
    assert metrics.status_code == 200
    assert 'opshub_runbook_runs_total{runbook="patch-server-stack.ipynb",status="succeeded",trigger="headless"}' in (
        metrics.text
    )


def test_live_dashboards_render_in_a_container_of_their_own(deployment):
    """The dashboards server is a container of the ops image like a person's, started by DockerSpawner
    for the opshub-dashboards account: no Docker socket and no hub state in it, nor in bob's."""
    carol = login(deployment, "carol")
    url = f"{deployment.url}/services/opshub/dashboards/patching-status/"

    def rendered():
        page = carol.get(url, timeout=180)
        return page if page.status_code == 200 and '"kernelId"' in page.text else None

    page = wait_for(rendered, timeout=300, interval=3, what="the live dashboard")
    assert "stacks in the inventory" in page.text  # it read the run history with its data token
    container = deployment.container("opshub-dashboards")
    info = json.loads(docker("inspect", container).stdout)[0]
    assert info["Config"]["Image"] == OPS_IMAGE and info["Config"]["User"] == "1000"
    assert list(info["NetworkSettings"]["Networks"]) == [NAME]
    assert not [m for m in info["Mounts"] if "docker.sock" in (m.get("Source") or "")]
    hub_mounts = {m["Destination"] for m in json.loads(docker("inspect", f"{NAME}-hub").stdout)[0]["Mounts"]}
    assert "/var/run/docker.sock" in hub_mounts  # only the hub's container holds it
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)
    for name in (container, deployment.container("bob")):
        probe = deployment.exec(name, "sh", "-c", "id -u; ls /var/run/docker.sock /srv/opshub/state 2>&1")
        uid = probe.stdout.split()[0]
        assert uid != "0", name
        assert probe.stdout.count("No such file or directory") == 2, (name, probe.stdout)


def test_a_requested_run_runs_in_a_runner_container_of_its_own(deployment):
    """An unattended run: the service asks the hub for a named server of opshub-runner, and DockerSpawner
    starts a container of the ops image for it (no socket, no state, not root), removed once it ended."""
    tokens = deployment.tokens(users=["bob", "carol"])
    body = {"runbook": "patch-server-stack.ipynb", "parameters": {"stack": "lab", "dry_run": True}}
    requested = deployment.service_api(tokens["bob"], "POST", "requests", json=body)
    assert requested.status_code == 201, requested.text
    run_id = requested.json()["id"]

    def runner_container():
        return next((n for n in names_of_this_deployment() if "runner" in n), None)

    container = wait_for(runner_container, timeout=300, interval=0.3, what="the run's container")
    info = json.loads(docker("inspect", container, check=False).stdout or "[{}]")[0]
    if info:  # it may have ended and gone already; then the run's record is what is left to check
        assert info["Config"]["Image"] == OPS_IMAGE and info["Config"]["User"] == "1000"
        assert list(info["NetworkSettings"]["Networks"]) == [NAME]
        assert not [m for m in info["Mounts"] if "docker.sock" in (m.get("Source") or "")]

    def ended():
        run = deployment.service_api(tokens["carol"], "GET", f"runs/{run_id}").json()
        return run if run["status"] not in ("queued", "running") else None

    run = wait_for(ended, timeout=300, interval=2, what="the requested run to end")
    assert run["status"] == "succeeded", run["error_summary"]
    assert run["trigger"] == "requested" and run["requested_by"] == "bob"
    assert "[dry run] ssh" in json.dumps(run["output_notebook"])
    wait_for(lambda: runner_container() is None, timeout=120, what="the run's container to be removed")


def test_home_survives_stop_and_start_and_the_container_is_removed(deployment):
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)
    xsrf = deployment.server_xsrf(session, "bob")
    put = session.put(
        f"{deployment.url}/user/bob/api/contents/keep-me.txt",
        json={"type": "file", "format": "text", "content": "still here"},
        headers=xsrf,
        timeout=30,
    )
    assert put.status_code in (200, 201), put.text
    hub_xsrf = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}
    stop = session.delete(f"{deployment.url}/hub/api/users/bob/server", headers=hub_xsrf, timeout=60)
    assert stop.status_code in (202, 204), stop.text
    wait_for(lambda: not deployment.exists(deployment.container("bob")), timeout=120, what="bob's container removed")
    deployment.open_lab(session, "bob", timeout=240)
    assert deployment.contents(session, "bob", "keep-me.txt").json()["content"] == "still here"


def test_a_spawn_asking_for_an_image_outside_the_allow_list_is_refused(deployment):
    session = login(deployment, "alice")
    xsrf = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}
    # logging in started alice's server with the default image: stop it first
    session.delete(f"{deployment.url}/hub/api/users/alice/server", headers=xsrf, timeout=60)
    wait_for(lambda: not deployment.exists(deployment.container("alice")), timeout=120, what="alice's server stopped")
    answer = session.post(
        f"{deployment.url}/hub/api/users/alice/server", json={"image": "busybox:latest"}, headers=xsrf, timeout=60
    )
    assert answer.status_code == 400 and "image" in answer.text.lower(), answer.text
    assert not deployment.exists(deployment.container("alice"))


def test_make_down_leaves_no_containers(deployment):
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)  # a server running when the deployment stops
    down = deployment.make("down")
    assert down.returncode == 0, down.stdout + down.stderr
    # the hub stopped (and so removed) the users' containers itself, before down.sh's safety net
    assert "removing containers left" not in down.stdout + down.stderr
    assert names_of_this_deployment() == []
    assert docker("network", "inspect", NAME, check=False).returncode != 0
    # the volumes stay: people's homes and the hub's state survive `make down`
    volumes = docker("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert f"{NAME}-home-bob" in volumes and f"{NAME}-state" in volumes
