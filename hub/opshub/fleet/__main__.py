"""`opshub fleet up|down|status` (`make fleet`, `make fleet-down`): the practice fleet's life."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import machines, monitoring, secrets
from .definition import PROMETHEUS_URL, SSH_USER, STACKS, hosts
from .machines import FleetError

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]  # hub/opshub/fleet -> the checkout


def up(folder: Path, images: Path, fresh: bool, hub_port: int, metrics_token: Path) -> str:
    if os.geteuid() != 0:
        raise FleetError("run it as root: it names the hosts in /etc/hosts and hands the runner's account their key")
    fleet = hosts()
    engine = machines.ensure_engine(folder / "dockerd.log")
    print(f"fleet: Docker: {engine}; building the fleet's image (quick once cached)", flush=True)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    machines.build_image(images, folder / "image-build.log")
    key = secrets.ssh_key(folder / "ssh")
    certificates = secrets.tls_certificates(folder / "tls", [host for host in fleet if host.stack.role == "web"])
    if fresh:
        for host in fleet:
            machines.docker("rm", "--force", host.container, check=False)
    machines.start_repository()
    started = [
        host for host in fleet if machines.start_host(host, key.with_suffix(".pub"), certificates.get(host.name))
    ]
    machines.write_hosts_block(fleet)
    print(
        f"fleet: {len(started)} hosts started, {len(fleet) - len(started)} already running; waiting for them to boot",
        flush=True,
    )
    for host in fleet:
        machines.wait_until_booted(host)
    credential = secrets.install_runner_credential(key)
    monitoring.start(folder / "monitoring", fleet, hub_port, metrics_token)
    return summary(key, credential)


def summary(key: Path, credential: Path) -> str:
    stacks = "\n".join(
        f"    {stack.name:10} {', '.join(h.name for h in hosts() if h.stack == stack)}" for stack in STACKS
    )
    return f"""
The practice fleet is up: {len(hosts())} Debian hosts with sshd, apt and systemd, each with pending updates.
  Stacks (in the runbooks' inventory, inventory/stacks.yaml):
{stacks}
  ssh (as root): ssh -i {key} {SSH_USER}@web-1.fleet
  Unattended runs of the patching and host check runbooks get the key as the credential SSH_PRIVATE_KEY ({credential})
  Prometheus: {PROMETHEUS_URL}  (up{{job="node"}}, probe_success{{service="nginx"}})

Try it (with `make run` going, logged in as alice):
  1. Runbooks > Patch a server stack > Request a run: stack fleet-web, dry_run on: lists the pending updates.
  2. The same with dry_run off and batch 1: each host updated, rebooted and checked, one at a time.
  3. Dashboards > Patching status: the stack's hosts turn from pending to patched as the run goes.
  `make fleet-down` removes the fleet.
"""


def down(folder: Path) -> str:
    stopped = monitoring.stop(folder / "monitoring")
    removed = machines.remove_all() if machines.engine_answers() else []
    machines.remove_hosts_block()
    secrets.remove_runner_credential()
    return f"fleet: removed {len(removed)} containers; stopped {', '.join(stopped) or 'no monitoring'}; /etc/hosts and the runners' key cleaned up"


def status() -> str:
    lines = [
        f"{host.name:14} {host.address:12} {machines.container_state(host.container) or 'absent'}" for host in hosts()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opshub fleet", description=__doc__)
    parser.add_argument("--dir", default="state/fleet", help="where the fleet keeps its keys, logs and Prometheus data")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start the practice fleet (build its image, start its hosts and monitoring)")
    start.add_argument("--fresh", action="store_true", help="recreate every host: no update applied, no change kept")
    start.add_argument("--hub-port", type=int, default=8000, help="the hub whose metrics Prometheus scrapes too")
    start.add_argument("--metrics-token", default="state/metrics-token", help="the hub's metrics token file")
    sub.add_parser("down", help="remove the fleet's hosts, monitoring, /etc/hosts names and key")
    sub.add_parser("status", help="each host and whether it runs")
    args = parser.parse_args(argv)
    folder = Path(args.dir).resolve()
    try:
        if args.command == "up":
            print(up(folder, REPOSITORY_ROOT / "images", args.fresh, args.hub_port, Path(args.metrics_token).resolve()))
        elif args.command == "down":
            print(down(folder))
        else:
            print(status())
    except FleetError as e:
        print(f"fleet: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
