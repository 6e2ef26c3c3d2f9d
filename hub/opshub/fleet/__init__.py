"""The practice fleet: a few small Debian hosts on this machine to run the shipped runbooks against
live (`make fleet`, `make fleet-down`; hub/docs/practice-fleet.md).

- `definition.py`: its stacks, hosts, loopback addresses, services and what monitoring probes;
- `machines.py`: the hosts themselves, Docker containers with systemd as PID 1 (images/fleet/);
- `secrets.py`: its ssh key (a runner credential) and its TLS certificates;
- `monitoring.py`: Prometheus, node_exporter's scrapes and the blackbox exporter's probes;
- `__main__.py`: `opshub fleet up|down|status`.
"""
