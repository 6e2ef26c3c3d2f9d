"""Steering schedules on a live hub of this module's own (its runbooks repository is not shared): pausing
with a reason and resuming over the API and from the Schedules page, a paused schedule's fire skipped on
record, "Run now", and the attacks: a viewer, an operator outside a runbook's `run_groups`, a form
without its XSRF token, bad input."""

from __future__ import annotations

import re

import pytest
import requests

from tests.integration.test_unattended_runs import commit_runbook, probe_notebook, wait_for_status
from tests.livehub import Hub, wait_for

PREFIX = "/services/opshub/"
OPEN = "steered.ipynb"  # anyone who may request runs may request it
RESTRICTED = "restricted.ipynb"  # run_groups: ops-leads (alice), not bob
EACH_MINUTE = {"name": "each-minute", "cron": "* * * * *", "parameters": {"message": "from the schedule"}}
MONTHLY = {"name": "monthly", "cron": "0 3 * * 2#3", "timezone": "Europe/Berlin", "parameters": {"message": "monthly"}}
WEEKLY = {"name": "weekly", "cron": "0 3 * * 1", "timezone": "Europe/Berlin"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    def configure(settings):
        settings.setdefault("dashboards", {})["git_sync_interval"] = 1
        settings["runner"] = {"max_concurrent": 2}

    the_hub = Hub(tmp_path_factory.mktemp("schedule-control-hub"), configure=configure)
    commit_runbook(the_hub, OPEN, probe_notebook(schedules=[EACH_MINUTE, MONTHLY]))
    commit_runbook(the_hub, RESTRICTED, probe_notebook(run_groups=["ops-leads"], schedules=[WEEKLY]))
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    tokens = hub.tokens(users=["alice", "bob", "carol"])
    # the service has read the repository: both runbooks' schedules are there
    wait_for(lambda: len(schedules(hub, tokens["alice"])) == 3, timeout=60, what="the three schedules")
    return tokens


def schedules(hub, token) -> dict[str, dict]:
    response = hub.service_api(token, "GET", "schedules")
    assert response.status_code == 200, response.text
    return {row["id"]: row for row in response.json()["schedules"]}


def steer(hub, token, path: str, action: str, **body) -> requests.Response:
    return hub.service_api(token, "POST", f"schedules/{path}/{action}", json=body)


def fires_after(hub, token, runbook: str, after: str) -> list[dict]:
    runs = hub.service_api(token, "GET", "runs", params={"runbook": runbook, "trigger": "schedule", "limit": 50})
    assert runs.status_code == 200, runs.text
    return [run for run in runs.json()["runs"] if run["due_at"] and run["due_at"] > after]


def test_an_operator_pauses_a_schedule_with_a_reason_a_viewer_may_not_and_its_fire_is_skipped(hub, tokens):
    path, sid = f"{OPEN}/each-minute", f"{OPEN}#each-minute"
    # carol, a viewer, may not pause or resume, and is told why
    refused = steer(hub, tokens["carol"], path, "pause", reason="I want it to stop")
    assert refused.status_code == 403, refused.text
    assert "custom:opshub:runs:request" in refused.json()["message"]
    assert schedules(hub, tokens["carol"])[sid]["may_steer"] is False
    assert schedules(hub, tokens["bob"])[sid]["may_steer"] is True
    # bad input names the problem
    no_reason = steer(hub, tokens["bob"], path, "pause")
    assert no_reason.status_code == 400 and "reason is required" in no_reason.json()["message"]
    blank = steer(hub, tokens["bob"], path, "pause", reason="   ")
    assert blank.status_code == 400 and "reason is required" in blank.json()["message"]
    extra = steer(hub, tokens["bob"], path, "pause", reason="freeze", until="Monday")
    assert extra.status_code == 400 and "unknown field(s) until" in extra.json()["message"]
    not_json = hub.service_api(tokens["bob"], "POST", f"schedules/{path}/pause", data="reason=freeze")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["message"]
    unknown = steer(hub, tokens["bob"], f"{OPEN}/no-such", "pause", reason="freeze")
    assert unknown.status_code == 404 and "each-minute, monthly" in unknown.json()["message"]
    elsewhere = steer(hub, tokens["bob"], "no-such.ipynb/each-minute", "pause", reason="freeze")
    assert elsewhere.status_code == 404
    assert steer(hub, tokens["bob"], path, "resume").status_code == 409  # not paused: nothing to resume

    paused = steer(hub, tokens["bob"], path, "pause", reason="change freeze until Monday")
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"]["paused_by"] == "bob"
    seen = schedules(hub, tokens["carol"])[sid]["paused"]  # everyone who sees the schedule sees why
    assert (seen["paused_by"], seen["reason"]) == ("bob", "change freeze until Monday")
    again = steer(hub, tokens["alice"], path, "pause", reason="me too")
    assert again.status_code == 409 and "paused by bob" in again.json()["message"]
    assert steer(hub, tokens["carol"], path, "resume").status_code == 403
    # the next due time passes while paused: skipped, on record with the reason, never queued
    skipped = wait_for(
        lambda: fires_after(hub, tokens["carol"], OPEN, seen["paused_at"]),
        timeout=80,
        interval=1,
        what="a fire due while paused",
    )
    assert skipped[0]["status"] == "missed", skipped
    assert "paused by bob" in skipped[0]["error_summary"]
    assert skipped[0]["error_summary"].endswith(": change freeze until Monday")
    assert skipped[0]["queued_at"] is None

    resumed = steer(hub, tokens["bob"], path, "resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["paused"] is None and resumed.json()["last_resumed"]["resumed_by"] == "bob"
    after = skipped[0]["due_at"]
    fired = wait_for(
        lambda: [run for run in fires_after(hub, tokens["bob"], OPEN, after) if run["status"] != "missed"],
        timeout=80,
        interval=1,
        what="a fire after the resume",
    )
    assert fired[0]["queued_at"] is not None and fired[0]["parameters"]["message"] == "from the schedule"
    # alice (an admin) pauses it for the rest of the module: the machine is shared
    assert steer(hub, tokens["alice"], path, "pause", reason="the tests are done with it").status_code == 200


def test_a_runbook_s_run_groups_decide_who_steers_its_schedules(hub, tokens):
    path = f"{RESTRICTED}/weekly"
    refused = steer(hub, tokens["bob"], path, "pause", reason="freeze")
    assert refused.status_code == 403, refused.text
    assert "run_groups" in refused.json()["message"] and "ops-leads" in refused.json()["message"]
    assert schedules(hub, tokens["bob"])[f"{RESTRICTED}#weekly"]["may_steer"] is False
    assert steer(hub, tokens["bob"], path, "run").status_code == 403
    assert steer(hub, tokens["alice"], path, "pause", reason="ops-leads only: freeze").status_code == 200
    assert steer(hub, tokens["bob"], path, "resume").status_code == 403
    assert schedules(hub, tokens["alice"])[f"{RESTRICTED}#weekly"]["paused"]["paused_by"] == "alice"
    assert steer(hub, tokens["alice"], path, "resume").status_code == 200


def test_run_now_is_the_person_s_request_with_the_schedule_s_parameters(hub, tokens):
    path = f"{OPEN}/monthly"
    assert steer(hub, tokens["carol"], path, "run").status_code == 403
    assert steer(hub, tokens["bob"], path, "run", parameters={"message": "mine"}).status_code == 400

    answer = steer(hub, tokens["bob"], path, "run")
    assert answer.status_code == 201, answer.text
    run = answer.json()
    assert (run["trigger"], run["user"], run["requested_by"], run["status"]) == ("requested", "bob", "bob", "queued")
    assert run["parameters"] == {"message": "monthly", "seconds": 0}
    events = hub.service_api(tokens["bob"], "GET", "events", params={"run": run["id"]}).json()["events"]
    noted = [event for event in events if event["action"] == "run now"]
    assert noted and noted[0]["actor"] == "bob" and f"schedule {OPEN}#monthly" in noted[0]["note"]
    assert wait_for_status(hub, tokens["bob"], run["id"])["status"] == "succeeded"


STEERING = re.compile(r'href="[^"]*schedules/[^"]+/(pause|resume|run)"')  # the buttons' links


def page_xsrf(html: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', html).group(1)


def test_the_schedules_page_shows_the_cron_in_words_and_asks_before_pausing(hub, tokens):
    bob, _ = hub.login("bob")
    carol, _ = hub.login("carol")
    listing = bob.get(f"{hub.url}{PREFIX}schedules", timeout=60)
    assert listing.status_code == 200, listing.text
    text = listing.text
    assert "At 03:00, on the third Tuesday of the month" in text and 'title="cron: 0 3 * * 2#3 (Europe/Berlin)"' in text
    assert re.search(r"Tue \d{4}-\d\d-\d\d 03:00 CES?T", text)  # the next fire on Berlin's clock
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT0[12]:00:00Z"', text)  # and in UTC for the script
    assert 'id="schedules-live" data-live' in text
    assert {m.group(1) for m in STEERING.finditer(text)} == {"pause", "resume", "run"}  # each-minute is paused
    assert f"schedules/{OPEN}/monthly/pause" in text and f"schedules/{OPEN}/monthly/run" in text
    assert f"schedules/{RESTRICTED}/weekly/pause" not in text  # bob may not steer the restricted one

    # asking first: the GET is a question with a reason field, nothing is paused yet
    ask = bob.get(f"{hub.url}{PREFIX}schedules/{OPEN}/monthly/pause", timeout=30)
    assert ask.status_code == 200 and 'id="pause-reason"' in ask.text
    assert schedules(hub, tokens["bob"])[f"{OPEN}#monthly"]["paused"] is None
    form = {"_xsrf": page_xsrf(ask.text), "confirm": "yes"}
    action = f"{hub.url}{PREFIX}schedules/{OPEN}/monthly/pause"
    empty = bob.post(action, data={**form, "reason": ""}, timeout=30)
    assert empty.status_code == 400 and "reason is required" in empty.text
    assert bob.post(action, data={"confirm": "yes", "reason": "no token"}, timeout=30).status_code == 403
    done = bob.post(action, data={**form, "reason": "change freeze until Monday"}, timeout=30)
    assert done.status_code == 200 and done.url.endswith(f"{PREFIX}schedules"), done.url
    assert "by bob" in done.text and "change freeze until Monday" in done.text

    # carol, a viewer, sees the pause but no buttons, and her forged form is refused
    theirs = carol.get(f"{hub.url}{PREFIX}schedules", timeout=60).text
    assert "change freeze until Monday" in theirs
    assert not STEERING.search(theirs)
    question = carol.get(f"{hub.url}{PREFIX}schedules/{OPEN}/monthly/resume", timeout=30)
    assert question.status_code == 403 and 'id="confirm-resume"' not in question.text
    resume = f"{hub.url}{PREFIX}schedules/{OPEN}/monthly/resume"
    # her form, forged with her own valid XSRF token (the service's cookie: the page offers no form)
    xsrf = next(c.value for c in carol.cookies if c.name == "_xsrf" and "services" in (c.path or ""))
    forged = carol.post(resume, data={"_xsrf": xsrf, "confirm": "yes"}, timeout=30)
    assert forged.status_code == 403
    assert schedules(hub, tokens["bob"])[f"{OPEN}#monthly"]["paused"]["paused_by"] == "bob"
    back = bob.post(resume, data={**form}, timeout=30)
    assert back.status_code == 200 and schedules(hub, tokens["bob"])[f"{OPEN}#monthly"]["paused"] is None
