"""What the practice fleet is: its stacks and hosts, where each answers, what monitoring checks.

The shipped inventory (shared-notebooks/inventory/stacks.yaml) lists the same stacks for the runbooks;
tests/unit/test_fleet.py keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

DOMAIN = "fleet"  # hosts are web-1.fleet, db-1.fleet, ...: names nothing else on a network uses
SSH_USER = "ops"  # passwordless sudo on every host
PROMETHEUS_PORT = 9390
BLACKBOX_PORT = 9391
PROMETHEUS_URL = f"http://127.0.0.1:{PROMETHEUS_PORT}"
ADDRESS_PREFIX = "127.77.0."  # loopback: the hosts answer on this machine only
CONTAINER_PREFIX = "opshub-fleet-"
NETWORK = "opshub-fleet"
REPOSITORY_HOST = f"repo.{DOMAIN}"  # the fleet's package repository, inside the fleet's network
SOON_EXPIRING_DAYS = 20  # the first web host's certificate: the certificate check warns about it


@dataclass(frozen=True)
class Service:
    unit: str  # the systemd unit
    port: int
    probe: str  # the blackbox exporter's module
    target: str  # what it probes, {host} filled in


@dataclass(frozen=True)
class Stack:
    name: str
    role: str
    description: str
    host_count: int
    first_address: int
    services: tuple[Service, ...]


WEB = (Service("nginx", 80, "http_2xx", "http://{host}/"),)
DB = (Service("redis-server", 6379, "tcp_connect", "{host}:6379"),)
STACKS = (
    Stack("fleet-web", "web", "Practice fleet (make fleet): web servers, nginx", 3, 11, WEB),
    Stack("fleet-db", "db", "Practice fleet (make fleet): redis servers", 2, 21, DB),
)
NODE_EXPORTER = "prometheus-node-exporter"
NODE_EXPORTER_PORT = 9100
TLS_PORT = 443  # web hosts: nginx with the fleet's certificate


@dataclass(frozen=True)
class Host:
    name: str  # web-1.fleet
    short: str  # web-1
    stack: Stack
    address: str

    @property
    def container(self) -> str:
        return CONTAINER_PREFIX + self.short

    @property
    def ports(self) -> list[int]:
        tls = [TLS_PORT] if self.stack.role == "web" else []
        return [22, NODE_EXPORTER_PORT, *tls, *(service.port for service in self.stack.services)]

    @property
    def units(self) -> list[str]:
        return [service.unit for service in self.stack.services] + [NODE_EXPORTER]


def hosts() -> list[Host]:
    return [
        Host(f"{stack.role}-{n}.{DOMAIN}", f"{stack.role}-{n}", stack, f"{ADDRESS_PREFIX}{stack.first_address + n - 1}")
        for stack in STACKS
        for n in range(1, stack.host_count + 1)
    ]


def inventory() -> dict:
    """The fleet's stacks as the runbooks' inventory lists them."""
    return {
        stack.name: {
            "description": stack.description,
            "hosts": [host.name for host in hosts() if host.stack == stack],
            "package_manager": "apt",
            "services": [service.unit for service in stack.services] + [NODE_EXPORTER],
            "ssh_user": SSH_USER,
            "prometheus": PROMETHEUS_URL,
        }
        for stack in STACKS
    }
