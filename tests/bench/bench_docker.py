"""Docker mode against bare JupyterHub + DockerSpawner with the same image (`make bench`).

1. Login to JupyterLab ready: opshub started by `make up` (spawn, runbooks pull, the server's
   OAuth) against a bare JupyterHub container with DockerSpawner (a home volume per person, as
   jupyterhub-deploy-docker has), the same hub image and the same ops image running plain
   `jupyterhub-singleuser`, alternating, fresh user each round.
   Target: ratio of the medians at most 1.10x.
2. 20 people logging in at once on the opshub deployment: all must succeed; p50 and p95.

Needs the Docker Engine (started when none runs) and the images (built when missing).
Everything is published on loopback only and removed afterwards.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.docker.engine import HUB_IMAGE, OPS_IMAGE, docker, running_engine  # noqa: E402
from tests.helpers import ARTIFACTS  # noqa: E402
from tests.livehub import Hub, free_port_block, wait_for  # noqa: E402

ROUNDS = 5
CONCURRENT = 20
NAME = "opshub-bench"
BARE = "opshub-bench-bare"
PASSWORD = "bench-demo-pw"
USERS = [f"u{i:02d}" for i in range(ROUNDS + 1)] + [f"c{i:02d}" for i in range(CONCURRENT)]

BARE_CONFIG = f"""
# bare JupyterHub + DockerSpawner: nothing of opshub, same hub image, same user image
c = get_config()  # noqa
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = "{PASSWORD}"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "dockerspawner.DockerSpawner"
c.DockerSpawner.image = "{OPS_IMAGE}"
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.DockerSpawner.network_name = "{BARE}"
c.DockerSpawner.prefix = "{BARE}-user"
c.DockerSpawner.remove = True
c.DockerSpawner.notebook_dir = "/home/ops"
# a home volume per person, as jupyterhub-deploy-docker and opshub both do
c.DockerSpawner.volumes = {{"{BARE}-home-{{username}}": "/home/ops"}}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = c.Spawner.http_timeout = 300
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_ip = "{BARE}-hub"
c.JupyterHub.db_url = "sqlite:////tmp/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "/tmp/jupyterhub_cookie_secret"
c.JupyterHub.cleanup_servers = True
"""


class Running(Hub):
    """A hub in a container, driven over HTTP (login and open_lab from tests.livehub.Hub)."""

    def __init__(self, url: str):
        self.url = url

    def login_to_lab(self, user: str) -> float:
        began = time.perf_counter()
        session, response = self.login(user, PASSWORD)
        assert response.status_code == 200, f"{user}: login answered {response.status_code}"
        self.open_lab(session, user, timeout=600)
        return time.perf_counter() - began


def make(target: str, env: dict) -> None:
    result = subprocess.run(["make", target], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    (ARTIFACTS / f"bench-make-{target}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"make {target} failed; see {ARTIFACTS / f'bench-make-{target}.log'}")


def start_opshub(folder: Path) -> tuple[Running, dict]:
    settings = yaml.safe_load((ROOT / "images" / "opshub-docker.yaml").read_text())
    settings["auth"]["shared_password"]["groups"]["ops"] = ["bob", *USERS]
    settings["spawner"]["start_timeout"] = 600
    settings["spawner"]["docker"].update(
        network=NAME,
        hub_host=f"{NAME}-hub",
        home_volume=f"{NAME}-home-{{username}}",
        runbooks_volume=f"{NAME}-runbooks",
    )
    (folder / "opshub.yaml").write_text(yaml.safe_dump(settings))
    port = free_port_block(1)
    env = {
        **os.environ,
        "OPSHUB_NAME": NAME,
        "OPSHUB_PORT": str(port),
        "OPSHUB_SETTINGS_FILE": str(folder / "opshub.yaml"),
        "OPSHUB_DEMO_PASSWORD": PASSWORD,
    }
    make("up", env)
    return Running(f"http://127.0.0.1:{port}"), env


def start_bare(folder: Path) -> Running:
    (folder / "jupyterhub_config.py").write_text(BARE_CONFIG)
    port = free_port_block(1)
    docker("network", "create", BARE)
    docker(
        "run", "--detach", "--name", f"{BARE}-hub", "--network", BARE, "-p", f"127.0.0.1:{port}:8000",
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "-v", f"{folder / 'jupyterhub_config.py'}:/etc/bare/jupyterhub_config.py:ro",
        HUB_IMAGE, "jupyterhub", "-f", "/etc/bare/jupyterhub_config.py",
    )  # fmt: skip
    hub = Running(f"http://127.0.0.1:{port}")

    def up() -> bool:
        try:
            return requests.get(f"{hub.url}/hub/api", timeout=5).status_code == 200
        except requests.ConnectionError:  # the port is published before JupyterHub listens
            return False

    wait_for(up, timeout=120, what="the bare hub")
    return hub


def stop_bare() -> None:
    docker("stop", "--time", "90", f"{BARE}-hub", check=False)
    left = docker("ps", "-aq", "--filter", f"network={BARE}", check=False).stdout.split()
    docker("rm", "-f", f"{BARE}-hub", *left, check=False)
    docker("network", "rm", BARE, check=False)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with running_engine(ARTIFACTS / "dockerd-bench.log"):
        if any(docker("image", "inspect", i, check=False).returncode for i in (OPS_IMAGE, HUB_IMAGE)):
            subprocess.run([str(ROOT / "images" / "build.sh")], check=True)
        folder = Path(tempfile.mkdtemp(prefix="opshub-bench-docker-"))
        opshub, env = start_opshub(folder)
        try:
            try:
                bare = start_bare(folder)
                ours, theirs = [], []
                # warm both (first container start, page caches), then alternate with fresh users
                opshub.login_to_lab(USERS[0])
                bare.login_to_lab(USERS[0])
                for user in USERS[1 : ROUNDS + 1]:
                    theirs.append(bare.login_to_lab(user))
                    ours.append(opshub.login_to_lab(user))
            finally:
                stop_bare()
            o, b = statistics.median(ours), statistics.median(theirs)
            print(f"login to JupyterLab ready, median of {ROUNDS} fresh users:")
            print(f"  bare JupyterHub + DockerSpawner {b:.2f} s, opshub docker mode {o:.2f} s")
            print(f"  ratio opshub / bare: {o / b:.2f}x (target: <= 1.10x)")

            concurrent = USERS[ROUNDS + 1 :]
            began = time.perf_counter()
            with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
                results = list(pool.map(lambda u: _try(opshub, u), concurrent))
            wall = time.perf_counter() - began
            times = [t for t in results if isinstance(t, float)]
            failures = [r for r in results if not isinstance(r, float)]
            print(f"{CONCURRENT} users logging in at once (opshub docker mode, 2 cores): {len(times)} succeeded")
            if times:
                print(
                    f"  p50 {percentile(times, 50):.1f} s, p95 {percentile(times, 95):.1f} s, all done in {wall:.1f} s"
                )
            for failure in failures:
                print(f"  FAILED: {failure}")
        finally:
            make("down", env)
            volumes = [f"{NAME}-state", f"{NAME}-runbooks", *(f"{n}-home-{u}" for u in USERS for n in (NAME, BARE))]
            docker("volume", "rm", "-f", *volumes, check=False)
        if failures:
            sys.exit(1)


def _try(hub: Running, user: str) -> float | str:
    try:
        return hub.login_to_lab(user)
    except Exception as e:  # reported, and the bench fails
        return f"{user}: {e}"


if __name__ == "__main__":
    main()
