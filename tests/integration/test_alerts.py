"""Alert-driven runs, live: Debian's real Alertmanager (0.25) routes its webhooks to a real opshub's
receiver (`/services/opshub/api/alerts`, bearer token from `state/alerts-token`), and the runner (a
named server of `opshub-runner`) executes the runbooks the alerts match.

- a matching alert runs its runbook once, with the alert's label as the parameter; an alert the
  matchers refuse starts nothing; repeated notifications of a firing alert start no second run
- one run per instance (Alertmanager groups by alertname and instance)
- a resolve cancels the alert's run still queued (runner.max_concurrent 1, the runner busy), and
  leaves the running one alone
- the receiver's refusals: no token, a wrong one, a person's hub token (401, no run), bodies that
  are not Alertmanager's (400 naming the problem, never 500)

One hub for the module (max_concurrent 1, the runbooks re-read every second). Each test waits for its
runs to end, so the next finds the runner free. Results are awaited by polling the APIs, never slept.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from html import unescape

import nbformat
import pytest
import requests

from tests.alertmanager import Alertmanager, running_alertmanager
from tests.helpers import git
from tests.livehub import Hub, wait_for

RUN_TIMEOUT = 120  # a run's server takes ~5-10 s to start on a 2-core machine; generous
END_STATES = {"succeeded", "failed", "interrupted", "cancelled", "missed"}

DISK_FULL = "alerts/disk-full.ipynb"  # DiskFull, severity="critical": sleeps 10 s
SERVICE_DOWN = "alerts/service-down.ipynb"  # ServiceDown: quick
SLOW_DISK = "alerts/slow-disk.ipynb"  # SlowDisk: sleeps 20 s, holds the runner


def alert_runbook(title: str, alerts: list[dict]) -> str:
    """A runbook that prints the host it was given, sleeps `seconds`, and says it is done."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["opshub"] = {"title": title, "alerts": alerts}
    parameters = nbformat.v4.new_code_cell('host = "nowhere"\nseconds = 0')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [
        parameters,
        nbformat.v4.new_code_cell(
            "import time\n"
            "print(f'responding to the alert on host={host}', flush=True)\n"
            "time.sleep(seconds)\n"
            "print(f'done with host={host}')"
        ),
    ]
    return nbformat.writes(nb)


RUNBOOKS = {
    DISK_FULL: alert_runbook(
        "Free disk space",
        [
            {
                "alertname": "DiskFull",
                "matchers": ['severity="critical"'],
                "parameters": {"host": "{instance}", "seconds": 10},
            }
        ],
    ),
    SERVICE_DOWN: alert_runbook(
        "Restart a service", [{"alertname": "ServiceDown", "parameters": {"host": "{instance}"}}]
    ),
    SLOW_DISK: alert_runbook(
        "Look at a slow disk", [{"alertname": "SlowDisk", "parameters": {"host": "{instance}", "seconds": 20}}]
    ),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    def configure(settings):
        settings["dashboards"] = {"git_sync_interval": 1}
        settings["runner"] = {**settings.get("runner", {}), "max_concurrent": 1}

    the_hub = Hub(tmp_path_factory.mktemp("alerts"), configure=configure)
    for name, text in RUNBOOKS.items():
        (the_hub.upstream / name).parent.mkdir(parents=True, exist_ok=True)
        (the_hub.upstream / name).write_text(text)
    git("add", "-A", cwd=the_hub.upstream)
    git("commit", "--quiet", "-m", "runbooks that answer alerts", cwd=the_hub.upstream)
    the_hub.start()
    try:
        yield the_hub
    finally:
        the_hub.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=("alice", "bob"))


@pytest.fixture(scope="module")
def ready(hub, tokens):
    """The hub, once its service has read the alert runbooks from the repository (mirrored every second)."""

    def known() -> bool:
        return all(service_page(hub, tokens["alice"], f"runbooks/{name}").status_code == 200 for name in RUNBOOKS)

    wait_for(known, timeout=60, interval=0.5, what="the service to read the alert runbooks")
    return hub


@pytest.fixture
def alertmanager(ready, tmp_path):
    """A real Alertmanager (no repeats within the test) whose only receiver is the hub's."""
    with running_alertmanager(tmp_path / "am", webhook_url(ready), ready.state / "alerts-token") as server:
        yield server


def webhook_url(hub: Hub) -> str:
    return f"{hub.url}/services/opshub/api/alerts"


def alerts_token(hub: Hub) -> str:
    return (hub.state / "alerts-token").read_text().strip()


# -- reading what happened -------------------------------------------------------------------------------


def alert_runs(hub: Hub, token: str, runbook: str | None = None) -> list[dict]:
    params = {"trigger": "alert", "limit": 200, **({"runbook": runbook} if runbook else {})}
    response = hub.service_api(token, "GET", "runs", params=params)
    assert response.status_code == 200, response.text
    return response.json()["runs"]


def runs_for(hub: Hub, token: str, runbook: str, host: str) -> list[dict]:
    return [run for run in alert_runs(hub, token, runbook) if run["parameters"].get("host") == host]


def get_run(hub: Hub, token: str, run_id: str) -> dict:
    response = hub.service_api(token, "GET", f"runs/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_run(hub: Hub, token: str, runbook: str, host: str, timeout: float = 60) -> dict:
    def found():
        runs = runs_for(hub, token, runbook, host)
        return runs[0] if runs else None

    return wait_for(found, timeout=timeout, interval=0.5, what=f"a run of {runbook} for {host}")


def wait_for_status(hub: Hub, token: str, run_id: str, statuses, timeout: float = RUN_TIMEOUT) -> dict:
    statuses = set(statuses)

    def reached():
        run = get_run(hub, token, run_id)
        return run if run["status"] in statuses else None

    return wait_for(reached, timeout=timeout, interval=0.5, what=f"run {run_id} to be {' or '.join(sorted(statuses))}")


def wait_for_end(hub: Hub, token: str, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
    return wait_for_status(hub, token, run_id, END_STATES, timeout)


def printed(run: dict) -> str:
    """Everything the run's notebook printed (its recorded output)."""
    notebook = run.get("output_notebook") or {"cells": []}
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            texts.append("".join(text) if isinstance(text, list) else text)
    return "".join(texts)


def service_page(hub: Hub, token: str, path: str) -> requests.Response:
    """A page of the service (not its API), as the token's owner."""
    return requests.get(f"{hub.url}/services/opshub/{path}", headers={"Authorization": f"token {token}"}, timeout=30)


def run_page(hub: Hub, token: str, run_id: str) -> str:
    response = service_page(hub, token, f"runs/{run_id}")
    assert response.status_code == 200, response.text
    return unescape(response.text)


def requested_by(hub: Hub, token: str, run_id: str) -> str:
    found = re.search(r'<td id="requested-by">([^<,]*)', run_page(hub, token, run_id))
    assert found, f"run {run_id}'s page does not say who requested it"
    return found.group(1).strip()


def stored_run(hub: Hub, run_id: str) -> dict:
    """The run's row in the history database (SQLite in the state folder), read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{hub.state / 'opshub.sqlite'}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert row is not None, f"run {run_id} is not in the history database"
    return dict(row)


def fingerprint(am: Alertmanager, alertname: str, instance: str) -> str:
    (alert,) = am.alerts(filter=[f'alertname="{alertname}"', f'instance="{instance}"'])
    return alert["fingerprint"]


def webhook_deliveries(am: Alertmanager) -> int:
    """Webhook notifications Alertmanager delivered (sent minus failed), from its own metrics."""
    text = requests.get(f"{am.url}/metrics", timeout=10).text

    def total(metric: str) -> float:
        pattern = rf'^{metric}\{{[^}}]*integration="webhook"[^}}]*\}} (\S+)$'
        return sum(float(value) for value in re.findall(pattern, text, re.M))

    return int(total("alertmanager_notifications_total") - total("alertmanager_notifications_failed_total"))


def wait_for_deliveries(am: Alertmanager, count: int, timeout: float = 30) -> int:
    return wait_for(
        lambda: (n := webhook_deliveries(am)) >= count and n,
        timeout=timeout,
        interval=0.2,
        what=f"{count} webhook notifications delivered to the hub",
    )


# -- the tests -------------------------------------------------------------------------------------------


def test_a_fired_alert_runs_its_runbook_once_with_the_label_as_parameter(ready, tokens, tmp_path):
    hub, admin = ready, tokens["alice"]
    # Alertmanager sends the notification again every ~2 s while the alert fires: each one must find
    # the alert's run queued or running and start nothing.
    with running_alertmanager(
        tmp_path / "am", webhook_url(hub), hub.state / "alerts-token", repeat_interval="2s"
    ) as am:
        am.fire("DiskFull", {"instance": "db-1", "severity": "critical"}, {"summary": "/var is full on db-1"})
        am.fire("DiskFull", {"instance": "db-9", "severity": "warning"}, {"summary": "/var fills up on db-9"})
        run = wait_for_run(hub, admin, DISK_FULL, "db-1")
        assert run["parameters"] == {"host": "db-1", "seconds": 10}
        assert run["trigger"] == "alert" and run["user"] == "opshub-runner"
        assert run["status"] in ("queued", "running")
        assert requested_by(hub, admin, run["id"]) == f"alert DiskFull {fingerprint(am, 'DiskFull', 'db-1')}"

        # the first notifications of both alerts have reached the hub; then repeats while it runs
        started = wait_for_status(hub, admin, run["id"], {"running"} | END_STATES)
        assert started["status"] == "running", started
        delivered = wait_for_deliveries(am, 2)
        wait_for_deliveries(am, delivered + 2)  # at least one repeat of db-1's notification
        assert get_run(hub, admin, run["id"])["status"] == "running", "the run ended before the repeats were seen"
        assert [r["id"] for r in runs_for(hub, admin, DISK_FULL, "db-1")] == [run["id"]]
        assert runs_for(hub, admin, DISK_FULL, "db-9") == [], "a severity=warning alert started the runbook"
        # resolved while it runs: no more repeats, and a running run goes on
        am.resolve("DiskFull", {"instance": "db-1", "severity": "critical"})
        am.resolve("DiskFull", {"instance": "db-9", "severity": "warning"})

        ended = wait_for_end(hub, admin, run["id"])
    assert ended["status"] == "succeeded", ended
    assert ended["error_summary"] is None
    output = printed(ended)
    assert "responding to the alert on host=db-1" in output and "done with host=db-1" in output, output
    assert [r["id"] for r in alert_runs(hub, admin, DISK_FULL)] == [run["id"]]


def test_each_instance_fired_together_gets_a_run_of_its_own(ready, tokens, alertmanager):
    hub, admin = ready, tokens["alice"]
    alertmanager.fire("ServiceDown", {"instance": "web-1"})
    alertmanager.fire("ServiceDown", {"instance": "web-2"})
    first = wait_for_run(hub, admin, SERVICE_DOWN, "web-1")
    second = wait_for_run(hub, admin, SERVICE_DOWN, "web-2")
    wait_for_deliveries(alertmanager, 2)
    runs = alert_runs(hub, admin, SERVICE_DOWN)
    assert sorted(r["parameters"]["host"] for r in runs) == ["web-1", "web-2"], runs
    fingerprints = {
        requested_by(hub, admin, first["id"]),
        requested_by(hub, admin, second["id"]),
    }
    assert fingerprints == {
        f"alert ServiceDown {fingerprint(alertmanager, 'ServiceDown', 'web-1')}",
        f"alert ServiceDown {fingerprint(alertmanager, 'ServiceDown', 'web-2')}",
    }
    for run, host in ((first, "web-1"), (second, "web-2")):
        ended = wait_for_end(hub, admin, run["id"])
        assert ended["status"] == "succeeded", ended
        assert f"responding to the alert on host={host}" in printed(ended), printed(ended)
    assert len(alert_runs(hub, admin, SERVICE_DOWN)) == 2
    alertmanager.resolve("ServiceDown", {"instance": "web-1"})
    alertmanager.resolve("ServiceDown", {"instance": "web-2"})


def test_a_resolve_cancels_the_queued_run_and_leaves_the_running_one(ready, tokens, alertmanager):
    hub, admin = ready, tokens["alice"]
    alertmanager.fire("SlowDisk", {"instance": "san-1"})
    busy = wait_for_run(hub, admin, SLOW_DISK, "san-1")
    busy = wait_for_status(hub, admin, busy["id"], {"running"} | END_STATES)
    assert busy["status"] == "running", busy

    alertmanager.fire("SlowDisk", {"instance": "san-2"})
    waiting = wait_for_run(hub, admin, SLOW_DISK, "san-2")
    assert waiting["status"] == "queued", waiting  # max_concurrent 1: san-1's run holds the runner
    alertmanager.resolve("SlowDisk", {"instance": "san-2"})

    cancelled = wait_for_end(hub, admin, waiting["id"], timeout=30)
    assert cancelled["status"] == "cancelled", cancelled
    assert "SlowDisk resolved" in (cancelled["error_summary"] or ""), cancelled["error_summary"]
    assert "before it started" in cancelled["error_summary"], cancelled["error_summary"]
    assert cancelled["output_notebook"] is None
    row = stored_run(hub, waiting["id"])
    assert row["first_cell_at"] is None and row["runner_server"] is None, row  # it never reached the runner
    assert get_run(hub, admin, busy["id"])["status"] == "running", "the resolve of san-2 touched san-1's run"

    ended = wait_for_end(hub, admin, busy["id"])
    assert ended["status"] == "succeeded", ended
    assert "done with host=san-1" in printed(ended), printed(ended)
    assert get_run(hub, admin, waiting["id"])["status"] == "cancelled"  # and it never ran afterwards
    assert stored_run(hub, waiting["id"])["first_cell_at"] is None
    alertmanager.resolve("SlowDisk", {"instance": "san-1"})


# -- the receiver's refusals ------------------------------------------------------------------------------


def firing(alertname: str, instance: str, fingerprint: str, **labels) -> dict:
    """One alert of a webhook notification, as Alertmanager 0.25 writes it."""
    return {
        "status": "firing",
        "labels": {"alertname": alertname, "instance": instance, **labels},
        "annotations": {},
        "startsAt": "2024-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1/opshub-tests",
        "fingerprint": fingerprint,
    }


def notification(*alerts: dict) -> dict:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="ServiceDown"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "opshub",
        "groupLabels": {"alertname": "ServiceDown"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


def post_alerts(hub: Hub, authorization: str | None, **kwargs) -> requests.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return requests.post(webhook_url(hub), headers={**headers, **kwargs.pop("headers", {})}, timeout=30, **kwargs)


def test_the_receiver_refuses_whoever_lacks_the_alerts_token(ready, tokens):
    hub, admin = ready, tokens["alice"]
    body = notification(firing("ServiceDown", "intruder-1", "00000000000000aa"))
    before = len(alert_runs(hub, admin))
    attempts = {
        "no token": None,
        "an empty bearer": "Bearer ",
        "a wrong token": "Bearer " + "x" * 43,
        "the token with a prefix": "Bearer " + alerts_token(hub) + "x",
        "the token as a hub token": "token " + alerts_token(hub),
        "bob's hub token": "token " + tokens["bob"],
        "bob's hub token as bearer": "Bearer " + tokens["bob"],
        "an admin's hub token": "token " + admin,
    }
    for what, authorization in attempts.items():
        response = post_alerts(hub, authorization, json=body)
        assert response.status_code == 401, (what, response.status_code, response.text)
        assert "alerts bearer token" in response.json()["message"], (what, response.text)
    # bob's logged-in browser session (cookies, XSRF) is no way in either
    session, _ = hub.login("bob")
    xsrf = session.cookies.get("_xsrf", path="/hub/") or ""
    response = session.post(webhook_url(hub), json=body, headers={"X-XSRFToken": xsrf}, timeout=30)
    assert response.status_code == 401, response.text
    assert len(alert_runs(hub, admin)) == before
    assert runs_for(hub, admin, SERVICE_DOWN, "intruder-1") == []


def test_a_body_that_is_not_alertmanagers_is_refused_by_name(ready, tokens):
    hub, admin = ready, tokens["alice"]
    bearer = "Bearer " + alerts_token(hub)
    before = len(alert_runs(hub, admin))
    refused = {
        "not JSON": (b"alerts: ServiceDown", "not JSON"),
        "empty JSON object": (b"{}", "alerts must be a list"),
        "a JSON array": (json.dumps([firing("ServiceDown", "bad-1", "00000000000000b1")]).encode(), "JSON object"),
        "a JSON string": (b'"firing"', "JSON object"),
        "alerts an object": (json.dumps({"alerts": {"0": firing("ServiceDown", "bad-2", "b2")}}).encode(), "list"),
        "alerts null": (b'{"alerts": null}', "alerts must be a list"),
        "too many alerts": (
            json.dumps(notification(*[firing("ServiceDown", f"bad-{i}", f"{i:016x}") for i in range(1001)])).encode(),
            "at most 1000",
        ),
        "invalid UTF-8": (b'{"alerts": [\xff\xfe]}', "not JSON"),
    }
    for what, (data, words) in refused.items():
        response = post_alerts(hub, bearer, data=data, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (what, response.status_code, response.text[:300])
        assert words in response.json()["message"], (what, response.json())

    # alerts of the wrong shape inside a notification: named in its problems, nothing started, never a 500
    broken = {
        "an alert that is a string": "firing",
        "an alert without labels": {**firing("ServiceDown", "bad-3", "00000000000000b3"), "labels": None},
        "labels that are a list": {**firing("ServiceDown", "bad-4", "00000000000000b4"), "labels": ["a"]},
        "no fingerprint": {k: v for k, v in firing("ServiceDown", "bad-5", "x").items() if k != "fingerprint"},
        "a fingerprint that is a number": {**firing("ServiceDown", "bad-6", "x"), "fingerprint": 6},
        "an empty fingerprint": firing("ServiceDown", "bad-7", ""),
        "a 65-character fingerprint": firing("ServiceDown", "bad-8", "f" * 65),
    }
    for what, alert in broken.items():
        response = post_alerts(hub, bearer, json=notification(alert))
        assert response.status_code == 200, (what, response.status_code, response.text[:300])
        answer = response.json()
        assert answer["started"] == [] and answer["cancelled"] == [], (what, answer)
        assert any("without labels or fingerprint" in p for p in answer["problems"]), (what, answer)
    # a matching alert without the label its runbook's parameter template needs
    unlabelled = {**firing("ServiceDown", "x", "00000000000000b9"), "labels": {"alertname": "ServiceDown"}}
    response = post_alerts(hub, bearer, json=notification(unlabelled))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["started"] == [], answer
    assert any("{instance}" in p and SERVICE_DOWN in p for p in answer["problems"]), answer
    # on record once, so the history says why the alert ran nothing (Alertmanager sends it again and again)
    assert post_alerts(hub, bearer, json=notification(unlabelled)).json()["started"] == []
    runs = alert_runs(hub, admin)
    assert len(runs) == before + 1
    assert runs[0]["status"] == "failed" and "Not run:" in runs[0]["error_summary"]
    assert "{instance}" in runs[0]["error_summary"]


def test_a_fingerprint_the_history_cannot_store_is_a_problem_not_a_500(ready, tokens):
    """A notification (with the right token) whose matching alert has a NUL in its fingerprint: the run
    cannot be recorded (`requested_by` may not hold NUL): named as a problem or refused with 400, never 500."""
    hub, admin = ready, tokens["alice"]
    bearer = "Bearer " + alerts_token(hub)
    before = len(alert_runs(hub, admin))
    response = post_alerts(hub, bearer, json=notification(firing("ServiceDown", "nul-1", "00000000\x0000000b")))
    assert response.status_code in (200, 400), (response.status_code, response.text[:300])
    if response.status_code == 200:
        assert response.json()["started"] == [] and response.json()["problems"], response.json()
    assert len(alert_runs(hub, admin)) == before
