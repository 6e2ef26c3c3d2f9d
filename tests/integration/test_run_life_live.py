"""A run's life on a live hub (issue 21): the audit trail on the run's page and in the feed, the admins'
export, a deletion that stays on record, and a run that never started counted in the metrics.

The hub is this module's own: the never-started test takes the runner's account away from it.
"""

from __future__ import annotations

import json
from html import unescape

import pytest
import requests
from nbformat.v4 import new_code_cell, new_notebook

from tests.integration.test_metrics import scrape
from tests.integration.test_unattended_runs import commit_runbook, request, wait_for_status
from tests.livehub import Hub, wait_for

FAILING = "life-failing.ipynb"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    the_hub = Hub(tmp_path_factory.mktemp("run-life"))
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [new_code_cell("stack = 'web'", metadata={"tags": ["parameters"]}), new_code_cell("1 / 0")]
    commit_runbook(the_hub, FAILING, new_notebook(cells=cells, metadata={"kernelspec": kernel}))
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=["alice", "bob", "carol"])


def trail(hub: Hub, token: str, run_id: str) -> list[tuple[str, str, str, str]]:
    answer = hub.service_api(token, "GET", f"events?run={run_id}")
    assert answer.status_code == 200, answer.text
    return [(e["action"], e["from"], e["to"], e["actor"]) for e in answer.json()["events"]]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text exposition (0 when it is not there)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_failed_runs_life_is_on_its_page_in_the_feed_and_in_the_admins_export(hub, tokens):
    answer = request(hub, tokens["bob"], FAILING, stack="db")
    assert answer.status_code == 201, answer.text
    run_id = answer.json()["id"]
    assert wait_for_status(hub, tokens["bob"], run_id)["status"] == "failed"

    assert trail(hub, tokens["bob"], run_id) == [
        ("queued", "new", "queued", "bob"),
        ("claimed", "queued", "running", "opshub runner"),
        ("finished", "running", "failed", "opshub runner"),
    ]
    # the page says it too, to anyone who may see the run (carol is a viewer)
    session, _ = hub.login("carol")
    page = session.get(f"{hub.url}/services/opshub/runs/{run_id}", timeout=30)
    assert page.status_code == 200
    rows = unescape(page.text.split('id="run-events"', 1)[1].split("</table>", 1)[0])
    assert "queued → running" in rows and "running → failed" in rows and "opshub runner" in rows

    # the feed, polled from an event id on, as another tool would
    feed = hub.service_api(tokens["carol"], "GET", "events?after=0&limit=1000").json()
    mine = [e for e in feed["events"] if e["run_id"] == run_id]
    assert [e["to"] for e in mine] == ["queued", "running", "failed"] and feed["next_after"] >= mine[-1]["id"]
    later = hub.service_api(tokens["carol"], "GET", f"events?after={feed['next_after']}").json()
    assert all(e["id"] > feed["next_after"] for e in later["events"])
    bad = hub.service_api(tokens["carol"], "GET", "events?after=-1")
    assert bad.status_code == 400 and "after" in bad.json()["message"]

    # an admin deletes the run: the record goes, its trail stays, with the deletion and who did it
    assert hub.service_api(tokens["alice"], "DELETE", f"runs/{run_id}").status_code == 204
    assert hub.service_api(tokens["bob"], "GET", f"runs/{run_id}").status_code == 404
    export = hub.service_api(tokens["alice"], "GET", "events.jsonl")
    assert export.status_code == 200 and export.headers["Content-Type"].startswith("application/x-ndjson")
    exported = [json.loads(line) for line in export.text.splitlines()]
    assert [(e["to"], e["actor"]) for e in exported if e["run_id"] == run_id] == [
        ("queued", "bob"),
        ("running", "opshub runner"),
        ("failed", "opshub runner"),
        ("deleted", "alice"),
    ]
    # the export is the admins': bob, whose run it was, cannot read it whole (nor delete anything of it)
    assert hub.service_api(tokens["bob"], "GET", "events.jsonl").status_code == 403


def test_a_run_that_never_starts_is_counted_and_leaves_nothing_in_progress(hub, tokens):
    """The hub cannot start the runner's server (its account was removed from the hub): the run ends
    `failed` saying why, and the metrics count it, instead of keeping it in progress for ever."""
    before = scrape(hub).text
    failed_before = metric(before, "opshub_runbook_runs_total", runbook=FAILING, status="failed", trigger="requested")
    runner_account = f"{hub.url}/hub/api/users/opshub-runner"
    admin = {"Authorization": f"token {tokens['alice']}"}

    def no_runner_servers():  # the last run's server is being removed: the hub deletes no active server
        return requests.get(runner_account, headers=admin, timeout=30).json()["servers"] == {}

    wait_for(no_runner_servers, timeout=60, what="the runner's servers to be gone")
    removed = requests.delete(runner_account, headers=admin, timeout=30)
    assert removed.status_code == 204, removed.text

    answer = request(hub, tokens["bob"], FAILING)
    assert answer.status_code == 201, answer.text
    run = wait_for_status(hub, tokens["bob"], answer.json()["id"])
    assert run["status"] == "failed" and run["first_cell_at"] is None
    assert run["error_summary"].startswith("The runner could not start the run: the hub answered 404")
    assert trail(hub, tokens["bob"], run["id"])[-1] == ("never started", "running", "failed", "opshub runner")

    def counted():
        text = scrape(hub).text
        failed = metric(text, "opshub_runbook_runs_total", runbook=FAILING, status="failed", trigger="requested")
        in_progress = metric(text, "opshub_runbook_runs_in_progress", runbook=FAILING)
        return text if (failed, in_progress) == (failed_before + 1, 0) else None

    wait_for(counted, timeout=10, what="the never-started run counted as failed, none in progress")
