"""Fixtures of the practice-fleet tests: the fleet itself, started as `make fleet` starts it (a real
Docker Engine, Debian hosts with systemd, sshd, apt and services; Prometheus and the blackbox
exporter from Debian's packages), fresh for this folder and removed after it, unless it ran before."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests
import yaml
from opshub.fleet.definition import PROMETHEUS_URL, hosts
from opshub.fleet.machines import LABEL

from tests.docker.engine import docker, running_engine
from tests.helpers import ARTIFACTS, ROOT, ensure_debian_package, open_folder
from tests.integration.test_unattended_runs import request, wait_for_status
from tests.livehub import EMBEDDED_SETTINGS, Hub

OPSHUB = str(ROOT / ".venv" / "bin" / "opshub")
FLEET_KEY = ROOT / "state" / "fleet" / "ssh" / "id_ed25519"  # opshub fleet up's key (and make fleet's)
PATCHING = "patch-server-stack.ipynb"


def fleet_command(*args: str, timeout: float = 2400) -> subprocess.CompletedProcess:
    """`opshub fleet ...` as `make fleet` runs it (from the checkout, keeping its files in state/fleet)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return subprocess.run([OPSHUB, "fleet", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="package")
def fleet():
    """The practice fleet, every host fresh (no update applied yet); removed after this folder's tests
    when it did not run before them."""
    ensure_debian_package("docker.io", "/usr/sbin/dockerd")
    ensure_debian_package("debootstrap", "/usr/sbin/debootstrap")
    with running_engine(ARTIFACTS / "dockerd-fleet.log"):
        ran_before = bool(docker("ps", "--quiet", "--filter", f"label={LABEL}=host").stdout.strip())
        started = fleet_command("up", "--fresh")
        (ARTIFACTS / "fleet-up.log").write_text(started.stdout + started.stderr)
        assert started.returncode == 0, f"opshub fleet up failed: {started.stderr or started.stdout}"
        yield started.stdout
        if not ran_before:
            stopped = fleet_command("down", timeout=300)
            assert stopped.returncode == 0, stopped.stderr


def on_host(host: str, *command: str) -> str:
    """A command's output on a fleet host, read from outside it (docker exec), as a test checks."""
    (match,) = [h for h in hosts() if h.name == host]
    return docker("exec", match.container, *command).stdout.strip()


def package_version(host: str, package: str) -> str:
    return on_host(host, "dpkg-query", "--show", "--showformat=${Version}", package)


def boot_identity(host: str) -> str:
    """What changes when a host boots: PID 1's start (containers share the kernel's boot_id)."""
    return on_host(host, "ps", "-o", "lstart=", "-p", "1")


def prometheus_range(query: str, start: float, end: float) -> list[tuple[float, float]]:
    answer = requests.get(
        f"{PROMETHEUS_URL}/api/v1/query_range",
        params={"query": query, "start": start, "end": end, "step": "1s"},
        timeout=30,
    ).json()
    assert answer["status"] == "success", answer
    (series,) = answer["data"]["result"] or [{"values": []}]
    return [(float(t), float(v)) for t, v in series["values"]]


@pytest.fixture(scope="package")
def fleet_hub(fleet, tmp_path_factory):
    """A live opshub whose runner has the fleet's key as SSH_PRIVATE_KEY, granted to the patching and
    host check runbooks as the embedded default grants it (in a file its own runner account can read:
    this hub's accounts carry a prefix of their own)."""
    folder = open_folder("opshub-fleet-credential-")
    credential = folder / "fleet-ssh-key"
    shutil.copyfile(FLEET_KEY, credential)
    credential.chmod(0o644)

    def configure(settings):
        embedded = yaml.safe_load(EMBEDDED_SETTINGS.read_text())["runner"]["credentials"]["SSH_PRIVATE_KEY"]
        settings["runner"]["credentials"]["SSH_PRIVATE_KEY"] = {**embedded, "file": str(credential)}
        settings["runner"]["max_concurrent"] = 2

    hub = Hub(tmp_path_factory.mktemp("fleet-hub"), configure=configure)
    hub.start()
    yield hub
    hub.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="package")
def fleet_tokens(fleet_hub):
    return fleet_hub.tokens(users=["alice", "bob", "carol"])


def request_patch(hub: Hub, token: str, **parameters) -> str:
    """Request the patching runbook on the runner, as `opshub request` and the Request page do."""
    answer = request(hub, token, PATCHING, **parameters)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def wait_for_end(hub: Hub, token: str, run_id: str) -> dict:
    return wait_for_status(hub, token, run_id, timeout=900)  # a stack's reboots take minutes


def outputs_text(run: dict) -> str:
    """Everything the run's notebook printed or showed as text."""
    texts = []
    for cell in (run.get("output_notebook") or {}).get("cells", []):
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")))
            texts.append("".join((output.get("data") or {}).get("text/plain", "")))
            texts.extend(output.get("traceback", []))
            texts.append(output.get("evalue", ""))
    return "\n".join(texts)
