"""Schedules on a live hub, and unattended runs across restarts: the opshub service killed (SIGKILL) and the
hub restarted with runs queued, running and due. Nothing lost, nothing doubled, nothing left running."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.test_metrics import service_pid
from tests.integration.test_unattended_runs import (
    commit_runbook,
    printed,
    probe_notebook,
    request,
    wait_for_first_cell,
    wait_for_status,
)
from tests.livehub import Hub, wait_for

ENDED = ("succeeded", "failed", "interrupted", "cancelled", "missed")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    def configure(settings):
        settings.setdefault("dashboards", {})["git_sync_interval"] = 1
        settings.setdefault("history", {})["heartbeat_timeout"] = 30
        settings["runner"] = {"max_concurrent": 1}

    the_hub = Hub(tmp_path_factory.mktemp("restarts-hub"), configure=configure)
    commit_runbook(the_hub, "unattended-probe.ipynb", probe_notebook())
    schedule = {"name": "each-minute", "cron": "* * * * *", "parameters": {"message": "scheduled"}}
    commit_runbook(the_hub, "every-minute.ipynb", probe_notebook(schedules=[schedule]))
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=["alice", "bob", "carol"])


def schedule_runs(hub, token) -> list[dict]:
    return hub.service_api(token, "GET", "runs", params={"trigger": "schedule", "limit": 1000}).json()["runs"]


def next_minute(after: float) -> datetime.datetime:
    moment = datetime.datetime.fromtimestamp(after, datetime.timezone.utc)
    return moment.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)


def sleep_until(moment: datetime.datetime, before: float) -> None:
    time.sleep(max(0.0, moment.timestamp() - before - time.time()))


def assert_each_fire_once(runs: list[dict]) -> None:
    fires = Counter(run["due_at"] for run in runs)
    assert all(n == 1 for n in fires.values()), fires


def test_a_schedule_fires_on_time_and_the_schedules_page_shows_it(hub, tokens):
    def fired():
        runs = [run for run in schedule_runs(hub, tokens["carol"]) if run["status"] == "succeeded"]
        return runs[0] if runs else None

    run = wait_for(fired, timeout=150, interval=1, what="a scheduled run to succeed")
    assert run["user"] == "opshub-runner" and run["requested_by"] == "schedule each-minute"
    assert run["parameters"] == {"message": "scheduled", "seconds": 0}  # every value that applied
    due = datetime.datetime.fromisoformat(run["due_at"])
    assert due.second == 0 and due.microsecond == 0
    assert datetime.datetime.fromisoformat(run["queued_at"]) - due < datetime.timedelta(seconds=5)
    full = hub.service_api(tokens["carol"], "GET", f"runs/{run['id']}").json()
    assert "message: scheduled" in printed(full)

    schedules = hub.service_api(tokens["carol"], "GET", "schedules").json()["schedules"]
    (mine,) = [s for s in schedules if s["runbook"] == "every-minute.ipynb"]
    assert mine["cron"] == "* * * * *" and mine["last_status"] in ENDED + ("queued", "running")
    assert datetime.datetime.fromisoformat(mine["next_fire"]) > datetime.datetime.now(datetime.timezone.utc)
    carol, _ = hub.login("carol")
    page = carol.get(f"{hub.url}/services/opshub/schedules", timeout=30)
    assert page.status_code == 200 and "every-minute.ipynb" in page.text and "each-minute" in page.text


def test_killing_the_service_loses_and_doubles_nothing(hub, tokens):
    bob = tokens["bob"]
    running = request(hub, bob, message="running across the kill", seconds=25).json()
    wait_for_first_cell(hub, bob, running["id"])
    queued = request(hub, bob, message="queued across the kill").json()
    assert hub.service_api(bob, "GET", f"runs/{queued['id']}").json()["status"] == "queued"

    due = next_minute(time.time() + 8)  # a fire comes due while the service is down or restarting
    sleep_until(due, before=2)
    os.kill(service_pid(hub), signal.SIGKILL)
    wait_for(lambda: hub.service_api(bob, "GET", "runs").status_code == 200, timeout=60, what="the service's restart")

    assert wait_for_status(hub, bob, running["id"], timeout=120)["status"] == "succeeded"
    assert wait_for_status(hub, bob, queued["id"], timeout=120)["status"] == "succeeded"

    def fired_at_due():
        runs = [run for run in schedule_runs(hub, bob) if run["due_at"] == due.isoformat()]
        return runs if runs else None

    (fire,) = wait_for(fired_at_due, timeout=90, what=f"the fire due at {due}")
    assert wait_for_status(hub, bob, fire["id"], timeout=120)["status"] == "succeeded"
    assert_each_fire_once(schedule_runs(hub, bob))


def test_restarting_the_hub_loses_and_doubles_nothing(hub, tokens):
    """SIGTERM is a restart (an upgrade): the hub and its services stop, the run goes on, and the next hub
    takes its server over; the run ends `succeeded` with all its output, the queued one runs after it."""
    bob = tokens["bob"]
    running = request(hub, bob, message="running across the restart", seconds=40).json()
    wait_for_first_cell(hub, bob, running["id"])
    queued = request(hub, bob, message="queued across the restart").json()

    hub.kill(signal.SIGTERM)
    assert not processes_of_service(hub)  # the hub stopped its services...
    hub.start()
    bob = hub.tokens(users=["bob"])["bob"]

    ended = wait_for_status(hub, bob, running["id"], timeout=150)  # ...and not the run
    assert ended["status"] == "succeeded", ended
    assert "message: running across the restart" in printed(ended)
    assert wait_for_status(hub, bob, queued["id"], timeout=150)["status"] == "succeeded"
    assert_each_fire_once(schedule_runs(hub, bob))


def test_a_hub_killed_with_sigkill_leaves_no_service_behind_and_its_run_ends_recorded(hub, tokens):
    bob = hub.tokens(users=["bob"])["bob"]
    running = request(hub, bob, message="running across a crash", seconds=30).json()
    wait_for_first_cell(hub, bob, running["id"])
    services = processes_of_service(hub)
    assert services

    hub.kill(signal.SIGKILL)
    # its services end with it (the next start would find their ports taken); the run goes on
    wait_for(lambda: not processes_of_service(hub), timeout=20, what=f"the hub's services {services} to end")
    hub.start()
    bob = hub.tokens(users=["bob"])["bob"]
    ended = wait_for_status(hub, bob, running["id"], timeout=150)
    assert ended["status"] == "succeeded", ended
    assert "message: running across a crash" in printed(ended)
    assert "Address already in use" not in hub.log_file.read_text()


def test_ctrl_c_stops_the_runs_it_interrupts_records_them_and_says_which(hub, tokens):
    bob = hub.tokens(users=["bob"])["bob"]
    running = request(hub, bob, message="stopped by Ctrl-C", seconds=120).json()
    wait_for_first_cell(hub, bob, running["id"])
    time.sleep(3)  # into its long last cell, past what it prints first
    before = time.monotonic()
    hub.stop()  # SIGINT, as Ctrl-C in `make run`'s terminal
    stopped_in = time.monotonic() - before
    # the module's every-minute schedule may have a run going too: it is listed beside this one
    said = re.findall(r"interrupting unattended run\(s\) (.*)", hub.log_file.read_text())
    assert said and running["id"] in said[-1].split(", "), said
    assert not hub.processes_of_this_hub(), hub.processes_of_this_hub()
    hub.start()
    bob = hub.tokens(users=["bob"])["bob"]
    run = hub.service_api(bob, "GET", f"runs/{running['id']}").json()
    assert run["status"] == "interrupted", run  # recorded by its job before the service stopped
    assert "message: stopped by Ctrl-C" in printed(run)
    assert stopped_in < 30, f"Ctrl-C took {stopped_in:.0f}s"


def test_a_killed_runner_server_takes_its_run_with_it_and_the_record_says_so(hub, tokens):
    """The run's sandbox ends with its runner's server: nothing of the run goes on unrecorded, and a cancel
    sent afterwards does not claim to have stopped it."""
    bob, alice = (hub.tokens(users=["bob", "alice"])[name] for name in ("bob", "alice"))
    running = request(hub, bob, message="its server killed", seconds=90).json()
    wait_for_first_cell(hub, bob, running["id"])
    assert processes_in_run(running["id"])  # its job and kernel work in the run's folder
    server = "run-" + running["id"].replace("-", "")[:26]
    os.kill(runner_server_pid(server), signal.SIGKILL)

    wait_for(lambda: not processes_in_run(running["id"]), timeout=15, what="the run's processes to end with it")
    cancel = hub.service_api(alice, "POST", f"runs/{running['id']}/cancel")
    assert cancel.status_code in (200, 409), cancel.text  # 409: the runner recorded the loss first
    ended = wait_for_status(hub, bob, running["id"], timeout=90)
    assert ended["status"] == "interrupted", ended
    # whichever sees it first: the runner's look at its servers, or the sweep of silent runs (30 s here)
    assert "runner's server stopped" in ended["error_summary"] or "no heartbeat" in ended["error_summary"]


def runner_server_pid(server: str) -> int:
    """The process of the runner's named server `server` (root reads even a non-dumpable one's environment)."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and f"JUPYTERHUB_SERVER_NAME={server}\0".encode() in (proc / "environ").read_bytes():
                return int(proc.name)
    raise AssertionError(f"no process of the runner's server {server}")


def processes_in_run(run_id: str) -> list[int]:
    """Processes working in the run's folder (its job, its kernel, what they started)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and run_id in os.readlink(proc / "cwd"):
                found.append(int(proc.name))
    return found


def processes_of_service(hub) -> list[str]:
    """The hub's services still running (the opshub service and the runbooks mirror of this hub)."""
    out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True).stdout
    return [
        line
        for line in out.splitlines()
        if ("opshub.service" in line and str(hub.state) in line)
        or ("opshub.runbooks.mirror" in line and str(hub.repository) in line)
    ]


def test_nothing_stays_queued_or_running(hub, tokens):
    bob = hub.tokens(users=["bob"])["bob"]
    commit_runbook(hub, "every-minute.ipynb", probe_notebook())  # the schedule removed in git

    def settled():
        active = [
            run
            for status in ("queued", "running")
            for run in hub.service_api(bob, "GET", "runs", params={"status": status}).json()["runs"]
        ]
        return not active

    wait_for(settled, timeout=180, interval=2, what="no queued or running runs")
    assert_each_fire_once(schedule_runs(hub, bob))
