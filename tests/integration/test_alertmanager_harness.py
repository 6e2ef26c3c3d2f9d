"""The Alertmanager harness (tests/alertmanager.py) against a tiny webhook receiver of the test's own:
the real Alertmanager sends a fired alert as a webhook (version 4, bearer token, labels,
fingerprint), sends its resolve, and notifies each instance separately. Also checks the example
receiver configuration shipped for operators with amtool."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.alertmanager import Alertmanager, check_config, running_alertmanager
from tests.helpers import ROOT

EXAMPLE = ROOT / "hub" / "docs" / "monitoring" / "alertmanager.yml"
TOKEN = "harness-alerts-token-0123456789"
PATH = "/services/opshub/api/alerts"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST: (path, headers, JSON body)."""

    def __init__(self):
        self.received: list[dict] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.changed:
                    receiver.received.append(
                        {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                    )
                    receiver.changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, predicate, count: int = 1, timeout: float = 10) -> list[dict]:
        """The first `count` notifications whose body matches `predicate`, waiting for them."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [n for n in self.received if predicate(n["body"])]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(found)} of {count} notifications after {timeout}s: {self.received}")
                self.changed.wait(left)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alertname_is(name: str):
    return lambda body: body["groupLabels"].get("alertname") == name


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alertmanager(receiver, tmp_path_factory):
    root = tmp_path_factory.mktemp("alertmanager")
    token_file = root / "alerts-token"
    token_file.write_text(TOKEN + "\n")  # as the hub writes it: Alertmanager strips the newline
    with running_alertmanager(root, receiver.url + PATH, token_file) as server:
        yield server


def test_a_fired_alert_is_a_webhook_and_its_resolve_follows(receiver, alertmanager: Alertmanager):
    labels = {"instance": "web-1", "severity": "critical", "opshub_runbook": "true"}
    alertmanager.fire("HarnessHostDown", labels, {"summary": "web-1 is down"})
    assert [a["labels"]["instance"] for a in alertmanager.alerts(filter='alertname="HarnessHostDown"')] == ["web-1"]

    (firing,) = receiver.wait(lambda b: alertname_is("HarnessHostDown")(b) and b["status"] == "firing")
    assert firing["path"] == PATH
    assert firing["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert firing["headers"]["Content-Type"] == "application/json"
    body = firing["body"]
    assert body["version"] == "4" and body["receiver"] == "opshub"
    assert body["groupLabels"] == {"alertname": "HarnessHostDown", "instance": "web-1"}
    (alert,) = body["alerts"]
    assert alert["status"] == "firing"
    assert alert["labels"] == {"alertname": "HarnessHostDown", **labels}
    assert alert["annotations"] == {"summary": "web-1 is down"}
    assert len(alert["fingerprint"]) == 16

    alertmanager.resolve("HarnessHostDown", labels)
    (resolved,) = receiver.wait(lambda b: alertname_is("HarnessHostDown")(b) and b["status"] == "resolved")
    (gone,) = resolved["body"]["alerts"]
    assert gone["status"] == "resolved" and gone["fingerprint"] == alert["fingerprint"]
    assert gone["labels"] == alert["labels"]
    assert not gone["endsAt"].startswith("0001-")
    assert resolved["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert alertmanager.alerts(filter='alertname="HarnessHostDown"') == []


def test_each_instance_is_a_notification_of_its_own(receiver, alertmanager: Alertmanager):
    alertmanager.fire("HarnessDiskFull", {"instance": "db-1"})
    alertmanager.fire("HarnessDiskFull", {"instance": "db-2"})
    notifications = receiver.wait(alertname_is("HarnessDiskFull"), count=2)
    instances = sorted(n["body"]["groupLabels"]["instance"] for n in notifications)
    assert instances == ["db-1", "db-2"]
    for n in notifications:
        (alert,) = n["body"]["alerts"]
        assert alert["labels"]["instance"] == n["body"]["groupLabels"]["instance"]
    assert notifications[0]["body"]["groupKey"] != notifications[1]["body"]["groupKey"]
    # re-sent by Prometheus while it keeps firing: nothing new before repeat_interval (1h)
    alertmanager.fire("HarnessDiskFull", {"instance": "db-1"})
    time.sleep(2.5)  # over two group_interval ticks
    assert len([n for n in receiver.received if alertname_is("HarnessDiskFull")(n["body"])]) == 2


def test_the_harness_config_passes_amtool(alertmanager: Alertmanager):
    check = check_config(alertmanager.config_file)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_example_receiver_config_passes_amtool():
    check = check_config(EXAMPLE)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout and "2 receivers" in check.stdout, check.stdout

    config = yaml.safe_load(EXAMPLE.read_text())

    def routes(route):
        yield route
        for child in route.get("routes", []):
            yield from routes(child)

    to_opshub = [r for r in routes(config["route"]) if r.get("receiver") == "opshub"]
    assert to_opshub, "no route sends alerts to the receiver opshub"
    for route in to_opshub:
        group_by = route.get("group_by", config["route"].get("group_by"))
        assert set(group_by) == {"alertname", "instance"}, route
    (opshub,) = [r for r in config["receivers"] if r["name"] == "opshub"]
    (webhook,) = opshub["webhook_configs"]
    assert webhook["url"] == "https://ops.example.com/services/opshub/api/alerts"
    assert webhook["send_resolved"] is True
    assert webhook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/alertmanager/opshub-alerts-token",
    }
