"""The practice fleet's hosts: Docker containers of images/fleet/ with systemd as PID 1, on a network
of their own (where the package repository answers as repo.fleet), each published on a loopback
address of its own with the standard ports, and named in /etc/hosts so that ssh, Prometheus and the
runbooks reach them by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .definition import CONTAINER_PREFIX, NETWORK, REPOSITORY_HOST, Host

IMAGE = "opshub/fleet:latest"
LABEL = "org.opshub.fleet"  # every container of the fleet carries it (its value: host or repository)
REPOSITORY_CONTAINER = CONTAINER_PREFIX + "repo"
HOSTS_FILE = Path("/etc/hosts")
HOSTS_BEGIN = "# >>> opshub practice fleet (make fleet; make fleet-down removes it)"
HOSTS_END = "# <<< opshub practice fleet"
BOOT_TIMEOUT = 90


class FleetError(Exception):
    """Something the person starting the fleet must fix, said plainly."""


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise FleetError("the docker command is missing: apt-get install docker.io") from None
    if check and result.returncode != 0:
        raise FleetError(f"docker {' '.join(args[:3])} failed: {(result.stderr or result.stdout).strip()}")
    return result


def engine_answers() -> bool:
    return shutil.which("docker") is not None and docker("info", check=False, timeout=30).returncode == 0


def ensure_engine(log: Path) -> str:
    """A Docker Engine that answers: the running one, else dockerd started in the background (as root,
    installing Debian's docker.io when missing). Returns what it did, for the summary."""
    if engine_answers():
        return "the running Docker Engine"
    if os.geteuid() != 0:
        raise FleetError("no Docker Engine answers: start dockerd (as root), or run `make fleet` as root")
    if not Path("/usr/sbin/dockerd").exists():
        install_debian_packages(["docker.io"])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        subprocess.Popen(["/usr/sbin/dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not engine_answers():
        if time.monotonic() > deadline:
            raise FleetError(f"dockerd did not start within 60 s; see {log}")
        time.sleep(0.5)
    return f"dockerd, started now (log: {log})"


def install_debian_packages(packages: list[str]) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise FleetError(f"missing Debian packages {', '.join(packages)}: apt-get install them (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=600)
    result = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    if result.returncode != 0:
        raise FleetError(f"apt-get install {' '.join(packages)} failed: {result.stderr.strip()[-500:]}")


def build_image(images: Path, log: Path) -> None:
    """The fleet's image, from the Debian base opshub's images start from (built from Debian packages
    when no registry answers); Docker's layer cache makes it quick after the first time."""
    base = subprocess.run(
        [str(images / "base" / "build.sh"), os.environ.get("BASE_IMAGE", "debian:12.8-slim"), "opshub/debian:bookworm"],
        capture_output=True,
        text=True,
        timeout=2400,
    )
    if base.returncode != 0:
        raise FleetError(f"the Debian base image could not be built: {base.stderr.strip()[-800:]}")
    with open(log, "w") as out:
        build = subprocess.run(
            [
                "docker",
                "build",
                "--network",
                "host",
                "--build-arg",
                f"BASE_IMAGE={base.stdout.strip().splitlines()[-1]}",
            ]
            + ["--tag", IMAGE, str(images / "fleet")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            timeout=2400,
        )
    if build.returncode != 0:
        raise FleetError(f"building {IMAGE} failed; see {log}")


def container_state(name: str) -> str | None:
    """running, exited, restarting, ... or None when there is no such container."""
    result = docker("inspect", "--format", "{{.State.Status}}", name, check=False, timeout=60)
    return result.stdout.strip() if result.returncode == 0 else None


def start_repository() -> None:
    if docker("network", "inspect", NETWORK, check=False, timeout=60).returncode != 0:
        docker("network", "create", "--label", f"{LABEL}=network", NETWORK)
    if container_state(REPOSITORY_CONTAINER) == "running":
        return
    docker("rm", "--force", REPOSITORY_CONTAINER, check=False)
    docker(
        "run", "--detach", "--name", REPOSITORY_CONTAINER, "--label", f"{LABEL}=repository",
        "--network", NETWORK, "--network-alias", REPOSITORY_HOST, "--restart", "always",
        "--memory", "64m", IMAGE, "repo",
    )  # fmt: skip


def start_host(host: Host, public_key: Path, tls_folder: Path | None) -> bool:
    """The host's container, started when it does not run; True when it was (re)created."""
    if container_state(host.container) == "running":
        return False
    docker("rm", "--force", host.container, check=False)
    mounts = ["--volume", f"{public_key}:/etc/ssh/fleet_authorized_keys:ro"]
    if tls_folder:
        mounts += ["--volume", f"{tls_folder}:/etc/ssl/fleet:ro"]
    ports = [arg for port in host.ports for arg in ("--publish", f"{host.address}:{port}:{port}")]
    docker(
        "run", "--detach", "--name", host.container, "--hostname", host.short,
        "--label", f"{LABEL}=host", "--label", f"{LABEL}.stack={host.stack.name}",
        "--network", NETWORK, "--network-alias", host.name, "--restart", "always",
        # systemd as PID 1: its own /run, and the cgroups it supervises services with (read-only)
        "--tmpfs", "/run", "--tmpfs", "/run/lock", "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        "--memory", "256m", "--env", f"FLEET_ROLE={host.stack.role}",
        *mounts, *ports, IMAGE,
    )  # fmt: skip
    return True


def wait_until_booted(host: Host, timeout: float = BOOT_TIMEOUT) -> None:
    """Until systemd finished booting the host and its services are active; names the ones that are
    not when it gives up."""
    deadline = time.monotonic() + timeout
    units = host.units
    states: dict[str, str] = {}
    while True:
        state = docker("exec", host.container, "systemctl", "is-system-running", check=False, timeout=30)
        if state.stdout.strip() in ("running", "degraded"):
            active = docker("exec", host.container, "systemctl", "is-active", *units, check=False, timeout=30)
            states = dict(zip(units, active.stdout.split(), strict=False))
            if len(states) == len(units) and all(value == "active" for value in states.values()):
                return
        if time.monotonic() > deadline:
            detail = ", ".join(f"{unit}: {value}" for unit, value in states.items())
            raise FleetError(f"{host.name} did not finish booting in {timeout:.0f} s {detail}".strip())
        time.sleep(1)


def remove_all() -> list[str]:
    """Every container and the network of the fleet (by their label); the image stays."""
    names = docker("ps", "--all", "--quiet", "--filter", f"label={LABEL}", "--format", "{{.Names}}").stdout.split()
    if names:
        docker("rm", "--force", *names)
    if docker("network", "inspect", NETWORK, check=False, timeout=60).returncode == 0:
        docker("network", "rm", NETWORK, check=False)
    return names


def write_hosts_block(hosts: list[Host]) -> None:
    """Name the hosts in /etc/hosts (a marked block, replaced at each start, removed by `fleet down`)."""
    lines = [HOSTS_BEGIN, *(f"{host.address} {host.name}" for host in hosts), HOSTS_END]
    _replace_hosts_block(lines)


def remove_hosts_block() -> None:
    _replace_hosts_block([])


def _replace_hosts_block(lines: list[str]) -> None:
    current = HOSTS_FILE.read_text().splitlines()
    if HOSTS_BEGIN in current and HOSTS_END in current:
        start, end = current.index(HOSTS_BEGIN), current.index(HOSTS_END)
        current = current[:start] + current[end + 1 :]
    text = "\n".join(current + lines) + "\n"
    # in place (not a rename): /etc/hosts may be a bind mount, as in containers
    with open(HOSTS_FILE, "w") as out:
        out.write(text)
