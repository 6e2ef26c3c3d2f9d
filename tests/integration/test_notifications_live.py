"""Notifications on a live hub: a `notifications:` setting whose target's Apprise URL (`json://`) reaches
the service from the hub's environment, a real HTTP receiver on 127.0.0.1, unattended runs that fail on
the runner, the opshub service killed (SIGKILL) between a run's end and its notification's delivery,
a failed scheduled run, a run stuck behind a lock and a schedule's fire missed while the service was
frozen (SIGSTOP)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time

import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tests.integration.test_metrics import service_pid
from tests.integration.test_unattended_runs import commit_runbook, request, wait_for_status
from tests.livehub import Hub, wait_for
from tests.unit.test_notifier import Receiver

RUNBOOK = "notify-probe.ipynb"
QUIET = "quiet-probe.ipynb"  # fails too, but no rule is about it
CODE = 'raise RuntimeError(f"disk full on {host}")'


SCHEDULED = "notify-every-minute.ipynb"  # fails every minute (committed by the last test only)
LOCKED = "notify-locked.ipynb"  # holds the lock stack:<stack> while it sleeps
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def failing_runbook(opshub: dict | None = None):
    cells = [new_code_cell('host = "web1"\nattempt = 1', metadata={"tags": ["parameters"]}), new_code_cell(CODE)]
    return new_notebook(cells=cells, metadata={"kernelspec": KERNEL, "opshub": opshub or {}})


def sleeping_runbook():
    cells = [new_code_cell('stack = "web"\nseconds = 1', metadata={"tags": ["parameters"]})]
    cells.append(new_code_cell("import time\ntime.sleep(seconds)"))
    return new_notebook(cells=cells, metadata={"kernelspec": KERNEL, "opshub": {"locks": ["stack:{stack}"]}})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def port():
    return free_port()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, port):
    def configure(settings):
        settings.setdefault("dashboards", {})["git_sync_interval"] = 1
        settings["notifications"] = {
            "targets": {"ops-chat": {"url_env": "OPSHUB_NOTIFY_OPS_CHAT"}},
            "rules": [
                {
                    "to": ["ops-chat"],
                    "runbooks": ["notify-*.ipynb"],
                    "on": ["failed", "missed", "waiting"],
                    "waiting_minutes": 1,
                },
            ],
        }
        # a fire more than a minute late (the service frozen) is missed, not run late
        settings.setdefault("runner", {})["catch_up_minutes"] = 0

    env = {"OPSHUB_NOTIFY_OPS_CHAT": f"json://127.0.0.1:{port}/hook"}
    the_hub = Hub(tmp_path_factory.mktemp("notifications-hub"), configure=configure, env=env)
    commit_runbook(the_hub, RUNBOOK, failing_runbook())
    commit_runbook(the_hub, QUIET, failing_runbook())
    commit_runbook(the_hub, LOCKED, sleeping_runbook())
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def bob(hub):
    return hub.tokens(users=["bob"])["bob"]


def posts_about(receiver: Receiver, run_id: str) -> list[dict]:
    return [post for post in receiver.posts if post["message"].endswith(f"/runs/{run_id}")]


def notification_rows(hub: Hub, run_id: str) -> list[tuple]:
    """The service's outbox, read straight from its SQLite database."""
    with sqlite3.connect(hub.state / "opshub.sqlite") as db:
        return db.execute(
            "SELECT status, attempts, last_error FROM notifications WHERE run_id = ?", (run_id,)
        ).fetchall()


def test_a_failed_run_is_told_once_with_its_runbook_trigger_who_parameters_cell_error_and_link(hub, bob, port):
    receiver = Receiver(port)
    try:
        quiet = request(hub, bob, runbook=QUIET, host="db1").json()
        queued = request(hub, bob, runbook=RUNBOOK, host="web7", attempt=2)
        assert queued.status_code == 201, queued.text
        run = wait_for_status(hub, bob, queued.json()["id"])
        assert run["status"] == "failed" and "disk full on web7" in run["error_summary"]
        wait_for(lambda: posts_about(receiver, run["id"]), timeout=30, what="the notification")
        assert wait_for_status(hub, bob, quiet["id"])["status"] == "failed"
        time.sleep(3)  # a second one would have come by now

        (post,) = receiver.posts  # the quiet runbook's failure matched no rule
        assert post["path"] == "/hook" and post["title"] == f"opshub: {RUNBOOK} failed"
        body = post["message"]
        assert f"Runbook: {RUNBOOK}" in body and "Trigger: requested" in body and "Who: bob" in body
        assert 'Parameters: attempt=2, host="web7"' in body
        # named as the run's page names it: its place (the injected parameters counted) and its first line
        assert 'Failed in: cell 3 (raise RuntimeError(f"disk full on {host}"))' in body and "disk full on web7" in body
        assert body.endswith(f"Run: {hub.url}/services/opshub/runs/{run['id']}")
        assert notification_rows(hub, run["id"]) == [("sent", 1, None)]
    finally:
        receiver.close()


def test_a_service_killed_between_the_event_and_the_delivery_delivers_it_after_its_restart_once(hub, bob, port):
    # the receiver is down: the run's notification is stored and its first attempts fail
    run_id = request(hub, bob, runbook=RUNBOOK, host="web8").json()["id"]
    assert wait_for_status(hub, bob, run_id)["status"] == "failed"
    wait_for(lambda: notification_rows(hub, run_id), timeout=30, what="the stored notification")
    ((status, attempts, error),) = wait_for(
        lambda: [row for row in notification_rows(hub, run_id) if row[1] >= 1], timeout=30, what="a failed attempt"
    )
    assert status == "pending" and error

    os.kill(service_pid(hub), signal.SIGKILL)
    receiver = Receiver(port)
    try:
        wait_for(
            lambda: hub.service_api(bob, "GET", "runs").status_code == 200, timeout=60, what="the service's restart"
        )
        wait_for(
            lambda: posts_about(receiver, run_id), timeout=90, interval=1, what="the notification after the restart"
        )
        time.sleep(3)
        assert len(posts_about(receiver, run_id)) == 1
        ((status, attempts_now, error),) = notification_rows(hub, run_id)
        assert status == "sent" and attempts_now > attempts and error is None
    finally:
        receiver.close()


def titled(receiver: Receiver, title: str) -> list[dict]:
    return [post for post in receiver.posts if post["title"] == title]


def test_a_failed_scheduled_run_a_run_stuck_behind_a_lock_and_a_missed_fire_are_each_told_once(hub, bob, port):
    receiver = Receiver(port)
    try:
        # a run holding stack:web for a while, and one queued behind it
        holder = request(hub, bob, runbook=LOCKED, seconds=300).json()["id"]
        wait_for(lambda: hub.service_api(bob, "GET", f"runs/{holder}").json()["first_cell_at"], 90, what="the holder")
        waiting = request(hub, bob, runbook=LOCKED, seconds=1).json()["id"]
        # and a schedule that fails every minute
        commit_runbook(hub, SCHEDULED, failing_runbook({"schedules": [{"name": "every-minute", "cron": "* * * * *"}]}))

        wait_for(lambda: titled(receiver, f"opshub: {SCHEDULED} failed"), 150, interval=1, what="the schedule's")
        (failed,) = titled(receiver, f"opshub: {SCHEDULED} failed")
        assert "Trigger: schedule" in failed["message"] and "Who: schedule every-minute" in failed["message"]
        assert "disk full on web1" in failed["message"]

        # told once that it waits (the rule's waiting_minutes: 1, the default being 60), with the lock
        wait_for(lambda: posts_about(receiver, waiting), 120, interval=1, what="the waiting run's notification")
        (told,) = posts_about(receiver, waiting)
        assert told["title"] == f"opshub: {LOCKED} is waiting behind a lock" and "stack:web" in told["message"]
        for run_id in (waiting, holder):
            assert hub.service_api(bob, "POST", f"runs/{run_id}/cancel").status_code == 200

        # frozen over a fire's due time and a minute more: the fire is missed, and told once
        pid = service_pid(hub)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(60 - time.time() % 60 + 65)  # past the next minute, by more than the minute a fire may be late
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: titled(receiver, f"opshub: {SCHEDULED} was missed"), 60, interval=1, what="the missed fire's")
        time.sleep(5)  # a second one would have come by now
        (missed,) = titled(receiver, f"opshub: {SCHEDULED} was missed")
        assert "Status: missed" in missed["message"] and "while opshub was not running" in missed["message"]
        assert len(posts_about(receiver, waiting)) == 1
    finally:
        receiver.close()
