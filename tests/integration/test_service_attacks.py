"""The opshub service's trust boundaries, attacked for real through the hub's proxy with real tokens and
cookies (issue 12): one author against another's dashboards, forged run records, a bogus Authorization
header beside a cookie, restricted dashboards' runs on every route, bad input that used to answer 500,
and the security headers of every page."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
import uuid

import nbformat
import pytest
import requests
from nbformat.v4 import new_code_cell, new_notebook, new_output

from tests.livehub import Hub, wait_for

PREFIX = "/services/opshub/"
RESTRICTED_RUNBOOK = "tls-certificate-expiry.ipynb"  # shown by a dashboard for the `ops` group only
OPEN_RUNBOOK = "host-health-check.ipynb"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub with a second author, dave, beside alice (admin and author)."""

    def configure(settings):
        settings["auth"]["shared_password"]["groups"]["ops-authors"] = ["alice", "dave"]
        settings["dashboards"] = {"pool_size": 1}

    the_hub = Hub(tmp_path_factory.mktemp("attacks"), configure=configure)
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=("alice", "bob", "carol", "dave"))


@pytest.fixture(scope="module")
def sessions(hub):
    """Browser-like sessions, logged in to the hub and, through its OAuth, to the service."""
    logged_in = {user: hub.login(user)[0] for user in ("alice", "bob", "carol")}
    for session in logged_in.values():
        assert session.get(f"{hub.url}{PREFIX}", timeout=60).status_code == 200
    return logged_in


@pytest.fixture(scope="module")
def open_board(hub, tokens):
    """A snapshot dashboard for everyone, of alice's."""
    body = {"name": "open-board", "runbook": OPEN_RUNBOOK}
    assert api(hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
    return "open-board"


def api(hub, token, method, path, **kwargs) -> requests.Response:
    return hub.service_api(token, method, path, **kwargs)


def get(hub, session, path, timeout=60, **kwargs) -> requests.Response:
    return session.get(f"{hub.url}{PREFIX}{path}", timeout=timeout, **kwargs)


def failed_notebook() -> dict:
    """An executed notebook whose cell 1 failed, tagged as JupyterLab's recorder tags it."""
    failing = new_code_cell(
        "raise RuntimeError('disk full')",
        outputs=[new_output("error", ename="RuntimeError", evalue="disk full", traceback=["RuntimeError: disk full"])],
    )
    failing.metadata["tags"] = ["opshub-failed-cell"]
    return nbformat.from_dict(new_notebook(cells=[new_code_cell("print('start')"), failing]))


def record(hub, token, runbook, trigger="headless", status="failed", notebook=None) -> dict:
    run = api(hub, token, "POST", "runs", json={"runbook": runbook, "trigger": trigger})
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    body = {"status": status, "output_notebook": notebook or failed_notebook()}
    if status == "failed":
        body.update(failed_cell=1, error_summary="RuntimeError: disk full")
    finished = api(hub, token, "POST", f"runs/{run_id}/finish", json=body)
    assert finished.status_code == 200, finished.text
    return finished.json()


# 5. Ownership of dashboards


def test_an_author_cannot_republish_or_unpublish_another_authors_dashboard(hub, tokens):
    alices = {"name": "alice-board", "runbook": OPEN_RUNBOOK, "title": "Alice's board"}
    assert api(hub, tokens["alice"], "POST", "dashboards", json=alices).status_code == 201
    for method, body in (("POST", {**alices, "title": "Dave was here", "groups": ["nobody"]}), ("DELETE", None)):
        path = "dashboards" if method == "POST" else "dashboards/alice-board"
        refused = api(hub, tokens["dave"], method, path, json=body)
        assert refused.status_code == 403, refused.text
        assert "belongs to alice" in refused.json()["message"]
    board = api(hub, tokens["alice"], "GET", "dashboards/alice-board").json()
    assert (board["owner"], board["title"], board["groups"]) == ("alice", "Alice's board", [])

    # dave publishes his own; alice, an admin, may take it over and unpublish it
    daves = {"name": "dave-board", "runbook": OPEN_RUNBOOK}
    assert api(hub, tokens["dave"], "POST", "dashboards", json=daves).json()["owner"] == "dave"
    assert api(hub, tokens["dave"], "POST", "dashboards", json={**daves, "title": "v2"}).status_code == 201
    assert api(hub, tokens["alice"], "POST", "dashboards", json=daves).json()["owner"] == "alice"
    assert api(hub, tokens["alice"], "DELETE", "dashboards/dave-board").status_code == 204


def test_nobody_changes_a_dashboard_of_the_repository_by_api(hub, tokens):
    for user in ("dave", "alice"):  # not even an admin: it changes in git
        for method, path, body in (
            ("POST", "dashboards", {"name": "patching-status", "runbook": OPEN_RUNBOOK}),
            ("DELETE", "dashboards/patching-status", None),
        ):
            refused = api(hub, tokens[user], method, path, json=body)
            assert refused.status_code == 403, refused.text
            assert "belongs to the runbooks repository" in refused.json()["message"]
    assert api(hub, tokens["alice"], "GET", "dashboards/patching-status").json()["owner"] == "git"


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "ABC", "a/b", "-a"])
def test_dashboard_names_follow_one_strict_pattern(hub, tokens, name):
    refused = api(hub, tokens["alice"], "POST", "dashboards", json={"name": name, "runbook": OPEN_RUNBOOK})
    assert refused.status_code == 400 and "invalid dashboard name" in refused.json()["message"]
    names = [d["name"] for d in api(hub, tokens["alice"], "GET", "dashboards").json()["dashboards"]]
    assert name not in names and name.strip() not in names


# 6. Runs reported by a person's server say so


@pytest.mark.parametrize(
    ("trigger", "status"), [("schedule", 403), ("api", 403), ("requested", 403), ("alert", 403), ("made-up", 400)]
)
def test_a_persons_token_cannot_record_a_trusted_trigger(hub, tokens, trigger, status):
    forged = api(hub, tokens["bob"], "POST", "runs", json={"runbook": "patch-server-stack.ipynb", "trigger": trigger})
    assert forged.status_code == status, forged.text
    assert "headless" in forged.json()["message"] and "interactive" in forged.json()["message"]
    listed = api(hub, tokens["bob"], "GET", "runs", params={"runbook": "patch-server-stack.ipynb"}).json()
    assert all(run["trigger"] in ("headless", "interactive") for run in listed["runs"])


def test_a_run_says_who_reported_it_and_from_where(hub, tokens, sessions):
    run = record(hub, tokens["bob"], "patch-server-stack.ipynb", status="succeeded")
    assert run["reported_by"] == "bob"
    assert re.fullmatch(r"API token from \S+( via \S+)?", run["reported_from"]), run["reported_from"]
    assert api(hub, tokens["carol"], "GET", f"runs/{run['id']}").json()["reported_from"] == run["reported_from"]
    page = get(hub, sessions["carol"], f"runs/{run['id']}")
    reported = re.search(r'<td id="reported">(.*?)</td>', page.text, re.S).group(1)
    assert "by bob" in reported and "API token from" in reported and "reported this run" in reported


# 4. The service's own runs (requested, schedule, alert) are reported by its runner alone


def forge_the_service_run(hub, tokens, run_id: str, runbook: str, state: str) -> None:
    """Every move a person's token has on the run through the person's API: 403 naming why, each time."""
    notebook = new_notebook(cells=[new_code_cell("print('all hosts patched')")])
    for user in ("bob", "alice"):  # its requester; an admin
        for move, path, body in (
            ("begin", "runs", {"id": run_id, "runbook": runbook, "trigger": "headless"}),
            ("heartbeat", f"runs/{run_id}/heartbeat", {"output_notebook": notebook}),
            ("finish", f"runs/{run_id}/finish", {"status": "succeeded", "output_notebook": notebook}),
            ("fail", f"runs/{run_id}/finish", {"status": "failed", "error_summary": "forged by a person"}),
        ):
            refused = api(hub, tokens[user], "POST", path, json=body)
            assert refused.status_code == 403, (state, user, move, refused.status_code, refused.text)
            message = refused.json()["message"]
            assert "recorded by the opshub service" in message and "only its runner reports it" in message, message


def test_a_persons_token_never_begins_heartbeats_or_finishes_a_requested_run(hub, tokens):
    """Queued (behind a lock bob's own run holds), running, ended: 403 every time, and the record is
    the runner's."""
    runbook, parameters = "patch-server-stack.ipynb", {"stack": "lab"}
    hold = api(hub, tokens["bob"], "POST", "runs", json={"runbook": runbook, "parameters": parameters})
    assert hold.status_code == 201 and hold.json()["locks"] == ["stack:lab"], hold.text
    requested = api(hub, tokens["bob"], "POST", "requests", json={"runbook": runbook, "parameters": parameters})
    assert requested.status_code == 201, requested.text
    run_id = requested.json()["id"]

    def run() -> dict:
        return api(hub, tokens["bob"], "GET", f"runs/{run_id}").json()

    assert run()["status"] == "queued"
    forge_the_service_run(hub, tokens, run_id, runbook, "queued")
    assert run()["status"] == "queued" and run()["output_notebook"] is None

    assert api(hub, tokens["bob"], "POST", f"runs/{hold.json()['id']}/finish", json={"status": "succeeded"}).ok
    wait_for(lambda: run()["first_cell_at"], timeout=180, interval=1, what=f"run {run_id} to reach its first cell")
    forge_the_service_run(hub, tokens, run_id, runbook, "running")

    ended = wait_for(
        lambda: (r := run())["ended_at"] and r, timeout=300, interval=1, what=f"run {run_id} to end on the runner"
    )
    forge_the_service_run(hub, tokens, run_id, runbook, "ended")
    final = run()
    assert final == ended
    assert final["status"] == "succeeded", (final["status"], final["error_summary"])
    assert final["reported_by"] == "opshub service" and "forged" not in (final["error_summary"] or "")
    assert "all hosts patched" not in json.dumps(final["output_notebook"])


# 8. XSRF: a header that authenticates nothing changes nothing


def test_a_bogus_authorization_header_does_not_switch_off_the_xsrf_check(hub, tokens, sessions, open_board):
    alice = sessions["alice"]
    assert get(hub, alice, "api/runs").status_code == 200  # her cookie session authenticates
    run = record(hub, tokens["bob"], OPEN_RUNBOOK)
    bogus = {"Authorization": "token bogus"}
    deleted = alice.delete(f"{hub.url}{PREFIX}api/runs/{run['id']}", headers=bogus, timeout=30)
    assert deleted.status_code == 403 and "_xsrf" in deleted.json()["message"], deleted.text
    published = alice.post(
        f"{hub.url}{PREFIX}api/dashboards", json={"name": "csrf-board", "runbook": OPEN_RUNBOOK}, headers=bogus
    )
    assert published.status_code == 403, published.text
    assert api(hub, tokens["alice"], "GET", f"runs/{run['id']}").status_code == 200
    assert api(hub, tokens["alice"], "GET", "dashboards/csrf-board").status_code == 404

    # the same cookie session with the service's XSRF token (set by a dashboard page) may delete
    assert get(hub, alice, f"dashboards/{open_board}/").status_code == 200
    xsrf = {"X-XSRFToken": alice.cookies.get("_xsrf", path=PREFIX)}
    assert xsrf["X-XSRFToken"], "the dashboard page set no _xsrf cookie for the service"
    assert alice.delete(f"{hub.url}{PREFIX}api/runs/{run['id']}", headers=xsrf, timeout=30).status_code == 204


def test_stopping_a_dashboard_kernel_needs_the_xsrf_token(hub, sessions, open_board):
    carol = sessions["carol"]
    unknown = uuid.uuid4()
    for headers in ({}, {"Authorization": "token bogus"}):
        refused = carol.post(f"{hub.url}{PREFIX}dashboards/-/voila/api/shutdown/{unknown}", headers=headers)
        assert refused.status_code == 403 and "XSRF" in refused.json()["message"], refused.text
    get(hub, carol, f"dashboards/{open_board}/")
    data = {"_xsrf": carol.cookies.get("_xsrf", path=PREFIX)}  # what Voila's page sends
    passed = carol.post(f"{hub.url}{PREFIX}dashboards/-/voila/api/shutdown/{unknown}", data=data)
    assert passed.status_code == 404 and "unknown kernel" in passed.json()["message"]


# 9. A restricted dashboard restricts its runbook's runs on every route


@pytest.fixture(scope="module")
def restricted_run(hub, tokens):
    body = {"name": "ops-only", "runbook": RESTRICTED_RUNBOOK, "groups": ["ops"]}
    assert api(hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
    # a second dashboard of the same runbook, for everyone: the restriction still holds
    body = {"name": "tls-for-all", "runbook": RESTRICTED_RUNBOOK}
    assert api(hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
    return record(hub, tokens["bob"], RESTRICTED_RUNBOOK)


def test_a_viewer_outside_the_groups_reads_the_runs_on_no_route(hub, tokens, sessions, restricted_run):
    carol, run_id = sessions["carol"], restricted_run["id"]
    for path in (f"runs/{run_id}", f"runs/{run_id}/notebook", f"api/runs/{run_id}"):
        refused = get(hub, carol, path)
        assert refused.status_code == 403 and "restricted" in refused.text, (path, refused.status_code)
        assert "disk full" not in refused.text
    assert api(hub, tokens["carol"], "GET", f"runs/{run_id}").status_code == 403
    listed = api(hub, tokens["carol"], "GET", "runs", params={"runbook": RESTRICTED_RUNBOOK}).json()
    assert listed == {"runs": [], "total": 0}
    assert run_id not in api(hub, tokens["carol"], "GET", "runs", params={"limit": 1000}).text
    assert run_id not in get(hub, carol, "", params={"runbook": RESTRICTED_RUNBOOK}).text
    for name in ("ops-only", "tls-for-all"):
        for path in (f"dashboards/{name}/", f"dashboards/{name}/notebook"):
            page = get(hub, carol, path)
            assert page.status_code == 403 and "disk full" not in page.text, (path, page.status_code)
    assert run_id not in get(hub, carol, "dashboards/").text
    # nor through what happened to runs (the audit feed), nor by waiting for the run's changes
    assert run_id not in api(hub, tokens["carol"], "GET", "events", params={"limit": 1000}).text
    assert api(hub, tokens["carol"], "GET", "events", params={"run": run_id}).status_code == 403
    assert api(hub, tokens["carol"], "GET", "changes", params={"run": run_id, "timeout": 0}).status_code == 403
    # carol reads the other runbooks' runs as before
    other = record(hub, tokens["bob"], OPEN_RUNBOOK)
    assert get(hub, carol, f"runs/{other['id']}/notebook").status_code == 200


def test_a_restricted_runs_change_wakes_only_those_who_may_see_it(hub, tokens, restricted_run):
    """Pages that update in place wait on `api/changes`: a new restricted run must not wake the page of
    someone outside the groups (it would tell them a run of the runbook happened, and when)."""
    seq = api(hub, tokens["carol"], "GET", "changes", params={"timeout": 0}).json()["seq"]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        waits = {user: pool.submit(time_the_wait, hub, tokens[user], seq, timeout=6) for user in ("carol", "alice")}
        time.sleep(1)  # both are waiting
        record(hub, tokens["bob"], RESTRICTED_RUNBOOK)
        (carol_seq, carol_waited), (alice_seq, alice_waited) = waits["carol"].result(), waits["alice"].result()
    assert alice_seq > seq and alice_waited < 5  # an admin sees it: woken at once
    assert carol_seq == seq and carol_waited >= 5.5  # carol: nothing she may see changed, until the timeout
    # and a change she may see wakes her
    with concurrent.futures.ThreadPoolExecutor() as pool:
        wait = pool.submit(time_the_wait, hub, tokens["carol"], carol_seq, timeout=20)
        time.sleep(1)
        record(hub, tokens["bob"], OPEN_RUNBOOK)
        woken_seq, waited = wait.result()
    assert woken_seq > carol_seq and waited < 15


def time_the_wait(hub, token, after: int, timeout: int) -> tuple[int, float]:
    started = time.monotonic()
    answer = api(hub, token, "GET", "changes", params={"after": after, "timeout": timeout})
    assert answer.status_code == 200, answer.text
    return answer.json()["seq"], time.monotonic() - started


def test_the_groups_admins_and_the_runner_read_the_restricted_runs(hub, tokens, sessions, restricted_run):
    run_id = restricted_run["id"]
    for user in ("alice", "bob"):  # an admin; a member of `ops` who also ran it
        assert api(hub, tokens[user], "GET", f"runs/{run_id}").status_code == 200, user
        assert get(hub, sessions[user], f"runs/{run_id}/notebook").status_code == 200, user
        assert run_id in get(hub, sessions[user], "", params={"runbook": RESTRICTED_RUNBOOK}).text, user
    # its only run failed: the snapshot says so to those who may see it, with no good snapshot to show
    ops_only = get(hub, sessions["bob"], "dashboards/ops-only/")
    assert ops_only.status_code == 200 and "This dashboard is broken" in ops_only.text


# 10. Bad input gets a clear 4xx, never a 500


def test_the_notebook_of_a_failed_interactive_run_is_shown(hub, tokens, sessions):
    run = record(hub, tokens["bob"], OPEN_RUNBOOK, trigger="interactive")
    notebook = get(hub, sessions["carol"], f"runs/{run['id']}/notebook")
    assert notebook.status_code == 200 and "celltag_opshub-failed-cell" in notebook.text
    body = {"name": "health-snapshot", "runbook": OPEN_RUNBOOK}
    assert api(hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
    # a snapshot shows the last good run only: the failed one is not a dashboard
    snapshot = get(hub, sessions["carol"], "dashboards/health-snapshot/")
    assert snapshot.status_code == 200 and "disk full" not in snapshot.text


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"offset": str(2**64)}, "offset must be between 0 and"),
        ({"offset": "-1"}, "offset must be between 0 and"),
        ({"limit": str(2**70)}, "limit must be between"),
        ({"limit": "ten"}, "limit must be a whole number"),
        ({"since": "yesterday"}, "since must be an ISO 8601 time"),
        ({"since": "9999-12-31T23:59:59-05:00"}, "since must be an ISO 8601 time"),
        ({"until": "0001-01-01T00:00:00+05:00"}, "until must be an ISO 8601 time"),
        ({"status": "done"}, "status must be one of"),
        ({"trigger": "cron"}, "trigger must be one of"),
    ],
)
def test_bad_queries_get_a_400_naming_the_problem(hub, tokens, sessions, query, problem):
    answer = api(hub, tokens["carol"], "GET", "runs", params=query)
    assert answer.status_code == 400 and problem in answer.json()["message"], answer.text
    if "limit" in query:
        return  # the history page has no limit to give
    page = get(hub, sessions["carol"], "", params=query)
    assert page.status_code in (200, 400) and problem in page.text.replace("&#39;", "'"), page.status_code
    assert "Traceback" not in page.text


@pytest.mark.parametrize("run_id", ["not-a-uuid", "%00", "..%2F..", "x" * 300])
def test_malformed_run_ids_are_not_found(hub, tokens, sessions, run_id):
    for path in (f"api/runs/{run_id}", f"runs/{run_id}", f"runs/{run_id}/notebook"):
        answer = get(hub, sessions["carol"], path)
        assert answer.status_code == 404, (path, answer.status_code)
    for path in (f"runs/{run_id}/finish", f"runs/{run_id}/heartbeat"):
        answer = api(hub, tokens["bob"], "POST", path, json={"status": "succeeded"})
        assert answer.status_code == 404 and "no run with id" in answer.json()["message"], (path, answer.text)
    assert api(hub, tokens["alice"], "DELETE", f"runs/{run_id}").status_code == 404


def test_bad_values_in_a_finish_are_refused(hub, tokens):
    run_id = api(hub, tokens["bob"], "POST", "runs", json={"runbook": "patch-server-stack.ipynb"}).json()["id"]
    for body in (
        {"status": "failed", "failed_cell": "2"},
        {"status": "failed", "failed_cell": 2**64},
        {"status": "failed", "error_summary": {"not": "text"}},
    ):
        answer = api(hub, tokens["bob"], "POST", f"runs/{run_id}/finish", json=body)
        assert answer.status_code == 400, (body, answer.text)
    assert api(hub, tokens["bob"], "POST", f"runs/{run_id}/finish", json={"status": "succeeded"}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "dashboards/-/voila/templates/",
        "dashboards/-/voila/templates/lab/",
        "dashboards/-/voila/templates/lab/static/",
        "dashboards/-/voila/templates/x/y/z",
        "dashboards/-/voila/templates/lab/static/nope.js",
        "dashboards/-/voila/static/x",
        "dashboards/-/voila/render/patching-status.ipynb",
        "dashboards/-/voila/tree/",
        "dashboards/-/api/kernels",
        "dashboards/patching-status/voila/templates/lab/static/x",
        "dashboards/abc%0A",
        "dashboards/abc%0A/",
        "nothing-here",
    ],
)
def test_voila_and_unknown_routes_are_4xx(hub, sessions, path):
    answer = get(hub, sessions["carol"], path)
    assert 400 <= answer.status_code < 500, (path, answer.status_code)
    assert "Traceback" not in answer.text and "frame-ancestors 'self'" in answer.headers["Content-Security-Policy"]


def test_every_page_and_api_answer_sends_a_csp_and_refuses_foreign_frames(hub, tokens, sessions, open_board):
    carol = sessions["carol"]
    run = record(hub, tokens["bob"], OPEN_RUNBOOK)
    answers = {
        "history": get(hub, carol, ""),
        "run page": get(hub, carol, f"runs/{run['id']}"),
        "dashboards": get(hub, carol, "dashboards/"),
        "snapshot": get(hub, carol, f"dashboards/{open_board}/"),
        "api": api(hub, tokens["carol"], "GET", "runs"),
        "api error": api(hub, tokens["carol"], "DELETE", f"runs/{run['id']}"),
        "page error": get(hub, carol, f"runs/{uuid.uuid4()}"),
        "anonymous api": api(hub, None, "GET", "runs"),
    }
    for what, answer in answers.items():
        csp = answer.headers.get("Content-Security-Policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'self'" in csp, (what, csp)
        assert answer.headers.get("X-Frame-Options") == "SAMEORIGIN", what
    assert answers["api error"].status_code == 403 and answers["api error"].json()["message"]
    assert answers["page error"].status_code == 404 and 'id="error-message"' in answers["page error"].text
    # the executed notebook: sandboxed by its CSP and by the run page's iframe, in an opaque origin of its
    # own (never allow-same-origin), where the one script that runs is ours, by its hash (its height)
    notebook = get(hub, carol, f"runs/{run['id']}/notebook")
    csp = notebook.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox allow-scripts;") and "allow-same-origin" not in csp, csp
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+';", csp) and "unsafe" not in csp.split("style-src")[0], csp
    iframe = re.search(r"<iframe[^>]*>", answers["run page"].text).group(0)
    assert re.search(r'\ssandbox="allow-scripts"', iframe), iframe


def test_the_live_dashboard_page_allows_its_scripts_and_own_sockets_only(hub, sessions):
    live = get(hub, sessions["carol"], "dashboards/patching-status/", timeout=120)
    assert live.status_code == 200, live.text[:500]
    csp = live.headers["Content-Security-Policy"]
    assert "'unsafe-eval'" in csp and "frame-ancestors 'self'" in csp
    connect = re.search(r"connect-src ([^;]*)", csp).group(1).split()
    host = hub.url.split("://", 1)[1]
    assert set(connect) == {"'self'", f"ws://{host}", f"wss://{host}"}
