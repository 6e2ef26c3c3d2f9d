"""A real Alertmanager (Debian package prometheus-alertmanager, 0.25) for the tests: it routes every
alert to one webhook receiver, `opshub`, exactly as an operator would configure it, so that the tests
fire real notifications (routes, grouping, resolve) at opshub's alerts API.

    ensure_alertmanager()
    am = Alertmanager(tmp_path, f"{hub.url}/services/opshub/api/alerts", hub.state / "alerts-token")
    am.fire("HostDown", {"instance": "web-1"}, {"summary": "web-1 is down"})
    am.resolve("HostDown", {"instance": "web-1"})
    am.stop()
"""

from __future__ import annotations

import contextlib
import datetime
import subprocess
from collections.abc import Iterator
from pathlib import Path

import requests
import yaml

from tests.helpers import ensure_debian_package
from tests.livehub import free_port_block, start_server

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
AMTOOL = "/usr/bin/amtool"


def ensure_alertmanager() -> None:
    """Install prometheus-alertmanager when missing (skips, or fails under CI=true, when it cannot)."""
    ensure_debian_package("prometheus-alertmanager", ALERTMANAGER)


def check_config(path: Path | str) -> subprocess.CompletedProcess:
    """`amtool check-config path` (amtool ships in prometheus-alertmanager)."""
    ensure_alertmanager()
    return subprocess.run([AMTOOL, "check-config", str(path)], capture_output=True, text=True, timeout=60)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _rfc3339(when: datetime.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


class Alertmanager:
    """One Alertmanager on a free loopback port, without clustering, its own storage under `root`.

    Every alert goes to the receiver `opshub`: a webhook to `webhook_url` with `send_resolved`,
    authorized by `Authorization: Bearer <the content of token_file>` (Alertmanager reads the file
    at each notification). Alerts are grouped by alertname and instance: one notification per
    instance. Timings are Alertmanager durations ("0s", "100ms", "1h"): `group_wait` before the
    first notification of a new group, `group_interval` between notifications of a group that
    changed (resolved alerts are sent at the next tick), `repeat_interval` before the same
    notification is sent again, `resolve_timeout` after which an alert without endsAt resolves.
    """

    def __init__(
        self,
        root: Path,
        webhook_url: str,
        token_file: Path,
        *,
        group_wait: str = "0s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        resolve_timeout: str = "5m",
        group_by: tuple[str, ...] = ("alertname", "instance"),
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.webhook_url = webhook_url
        self.port = free_port_block(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {
            "global": {"resolve_timeout": resolve_timeout},
            "route": {
                "receiver": "opshub",
                "group_by": list(group_by),
                "group_wait": group_wait,
                "group_interval": group_interval,
                "repeat_interval": repeat_interval,
            },
            "receivers": [
                {
                    "name": "opshub",
                    "webhook_configs": [
                        {
                            "url": webhook_url,
                            "send_resolved": True,
                            "http_config": {
                                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                            },
                        }
                    ],
                }
            ],
        }
        self.config_file = self.root / "alertmanager.yml"
        self.config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._started: dict[tuple, str] = {}  # startsAt of the alerts fired, by identity
        self.proc = start_server(
            [
                ALERTMANAGER,
                f"--config.file={self.config_file}",
                f"--storage.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # no HA mode: no gossip port, no peer wait
            ],
            f"alertmanager-{self.port}.log",
            f"{self.url}/-/ready",
        )

    @staticmethod
    def _identity(alertname: str, labels: dict) -> tuple:
        return (alertname, *sorted(labels.items()))

    def _post(self, alerts: list[dict]) -> None:
        response = requests.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=10)
        assert response.ok, f"Alertmanager refused {alerts}: {response.status_code} {response.text}"

    def fire(self, alertname: str, labels: dict, annotations: dict | None = None, ends_at=None) -> dict:
        """Post a firing alert (as Prometheus does), startsAt now. Without `ends_at` (a datetime)
        Alertmanager resolves it by itself after `resolve_timeout`. Returns the alert posted."""
        identity = self._identity(alertname, labels)
        starts_at = self._started.setdefault(identity, _rfc3339(_now()))
        alert = {
            "labels": {"alertname": alertname, **labels},
            "annotations": dict(annotations or {}),
            "startsAt": starts_at,
            "generatorURL": "http://127.0.0.1/opshub-tests",
        }
        if ends_at is not None:
            alert["endsAt"] = _rfc3339(ends_at)
        self._post([alert])
        return alert

    def resolve(self, alertname: str, labels: dict, annotations: dict | None = None) -> dict:
        """Post the alert with the same labels resolved: endsAt now (as Prometheus does when a rule
        stops firing). Returns the alert posted."""
        identity = self._identity(alertname, labels)
        alert = {
            "labels": {"alertname": alertname, **labels},
            "annotations": dict(annotations or {}),
            "endsAt": _rfc3339(_now()),
        }
        starts_at = self._started.pop(identity, None)
        if starts_at:
            alert["startsAt"] = starts_at
        self._post([alert])
        return alert

    def alerts(self, **filters) -> list[dict]:
        """The alerts Alertmanager holds now, not resolved (GET /api/v2/alerts; `filters` are its
        query parameters, e.g. filter='instance="web-1"')."""
        response = requests.get(f"{self.url}/api/v2/alerts", params=filters, timeout=10)
        assert response.ok, response.text
        return response.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_alertmanager(root: Path, webhook_url: str, token_file: Path, **timing) -> Iterator[Alertmanager]:
    """An Alertmanager for the `with` block (installing the package first): for fixtures."""
    ensure_alertmanager()
    server = Alertmanager(root, webhook_url, token_file, **timing)
    try:
        yield server
    finally:
        server.stop()
