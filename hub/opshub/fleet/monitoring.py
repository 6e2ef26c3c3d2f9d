"""Monitoring of the practice fleet: Prometheus (Debian's package) scraping every host's
node_exporter and the blackbox exporter's probes of its services, beside opshub's own metrics, on
loopback. Every fleet series carries `host` (web-1.fleet) and `stack`; probes also `service` (the
systemd unit they stand for), so a runbook asks `probe_success{host="web-1.fleet"}`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from .definition import BLACKBOX_PORT, NODE_EXPORTER_PORT, PROMETHEUS_PORT, PROMETHEUS_URL, Host
from .machines import FleetError, install_debian_packages

PROMETHEUS = "/usr/bin/prometheus"
BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
SCRAPE_INTERVAL = "2s"  # a fleet host reboots in seconds: a slower scrape would not see it away
OPSHUB_DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring"


def ensure_installed() -> None:
    missing = [
        pkg
        for pkg, path in (("prometheus", PROMETHEUS), ("prometheus-blackbox-exporter", BLACKBOX))
        if not Path(path).exists()
    ]
    if missing:
        install_debian_packages(missing)


def blackbox_config() -> dict:
    return {
        "modules": {
            "http_2xx": {"prober": "http", "timeout": "2s", "http": {"preferred_ip_protocol": "ip4"}},
            "tcp_connect": {"prober": "tcp", "timeout": "2s", "tcp": {"preferred_ip_protocol": "ip4"}},
        }
    }


def prometheus_config(hosts: list[Host], hub_port: int, metrics_token: Path) -> dict:
    """node_exporter of every host, a probe of every service, and opshub's own jobs (as
    hub/docs/monitoring/prometheus.yml has them, pointed at this machine's hub)."""
    node = [
        {"targets": [f"{host.name}:{NODE_EXPORTER_PORT}"], "labels": {"host": host.name, "stack": host.stack.name}}
        for host in hosts
    ]
    probes = [
        {
            "targets": [service.target.format(host=host.name)],
            "labels": {"host": host.name, "stack": host.stack.name, "service": service.unit, "module": service.probe},
        }
        for host in hosts
        for service in host.stack.services
    ]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(OPSHUB_DOCS / "opshub-alerts.yml")],
        "scrape_configs": [
            {"job_name": "node", "static_configs": node},
            {
                "job_name": "blackbox",
                "metrics_path": "/probe",
                "static_configs": probes,
                "relabel_configs": [
                    {"source_labels": ["module"], "target_label": "__param_module"},
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"target_label": "__address__", "replacement": f"127.0.0.1:{BLACKBOX_PORT}"},
                ],
            },
            {
                "job_name": "opshub",
                "scrape_interval": "15s",
                "metrics_path": "/services/opshub/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(metrics_token)},
                "static_configs": [{"targets": [f"127.0.0.1:{hub_port}"]}],
            },
        ],
    }


def _pid_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.pid"


def _ours(folder: Path, name: str) -> int | None:
    """The pid of the `name` this fleet started, if it still runs (checked by its command line, so a
    stale pid file never names someone else's process)."""
    try:
        pid = int(_pid_file(folder, name).read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if str(folder) in command else None


def _start(folder: Path, name: str, argv: list[str], ready_url: str) -> None:
    if _ours(folder, name):
        return
    with open(folder / f"{name}.log", "a") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file(folder, name).write_text(str(process.pid))
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(ready_url, timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise FleetError(f"{name} did not start; see {folder / (name + '.log')}") from None
            time.sleep(0.3)


def start(folder: Path, hosts: list[Host], hub_port: int, metrics_token: Path) -> None:
    """Prometheus and the blackbox exporter, started when they do not run; the configuration is
    written again each time (Prometheus reloads it on SIGHUP)."""
    ensure_installed()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (folder / "blackbox.yml").write_text(yaml.safe_dump(blackbox_config(), sort_keys=False))
    (folder / "prometheus.yml").write_text(
        yaml.safe_dump(prometheus_config(hosts, hub_port, metrics_token), sort_keys=False)
    )
    _start(
        folder,
        "blackbox",
        [BLACKBOX, f"--config.file={folder / 'blackbox.yml'}", f"--web.listen-address=127.0.0.1:{BLACKBOX_PORT}"],
        f"http://127.0.0.1:{BLACKBOX_PORT}/",
    )
    running = _ours(folder, "prometheus")
    if running:
        os.kill(running, signal.SIGHUP)
    _start(
        folder,
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'prometheus-data'}",
            "--storage.tsdb.retention.time=7d",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        ],
        f"{PROMETHEUS_URL}/-/ready",
    )


def stop(folder: Path) -> list[str]:
    """End the monitoring processes this fleet started (and only those); returns their names."""
    stopped = []
    for name in ("prometheus", "blackbox"):
        pid = _ours(folder, name)
        if pid:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            stopped.append(name)
        _pid_file(folder, name).unlink(missing_ok=True)
    return stopped
