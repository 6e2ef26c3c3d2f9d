"""The opshub service's run API, live behind the hub and proxy: identity comes from the token,
RBAC decides who reads, records and deletes."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens()


def api(hub, token, method, path, **kwargs):
    return hub.service_api(token, method, path, **kwargs)


def start(hub, token, **body):
    return api(
        hub, token, "POST", "runs", json={"runbook": "host-health-check.ipynb", "parameters": {"hosts": ["h1"]}, **body}
    )


def test_operator_records_a_run_from_start_to_end(hub, tokens):
    started = start(hub, tokens["bob"], runbook_commit="a" * 40)
    assert started.status_code == 201, started.text
    run = started.json()
    assert run["user"] == "bob" and run["status"] == "running" and run["trigger"] == "headless"
    assert run["url"] == f"/services/opshub/runs/{run['id']}"
    assert api(hub, tokens["bob"], "POST", f"runs/{run['id']}/heartbeat").status_code == 200
    notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    finished = api(
        hub,
        tokens["bob"],
        "POST",
        f"runs/{run['id']}/finish",
        json={
            "status": "failed",
            "failed_cell": 3,
            "error_summary": "RuntimeError: disk full",
            "output_notebook": notebook,
        },
    )
    assert finished.status_code == 200 and finished.json()["status"] == "failed"
    again = api(hub, tokens["bob"], "POST", f"runs/{run['id']}/finish", json={"status": "succeeded"})
    assert again.status_code == 409 and "already ended" in again.json()["message"]

    listed = api(hub, tokens["carol"], "GET", "runs", params={"user": "bob", "status": "failed"}).json()
    assert run["id"] in [r["id"] for r in listed["runs"]] and listed["total"] >= 1
    one = api(hub, tokens["carol"], "GET", f"runs/{run['id']}").json()
    assert one["failed_cell"] == 3 and one["output_notebook"] == notebook


def test_nobody_records_as_someone_else(hub, tokens):
    refused = start(hub, tokens["bob"], user="alice")
    assert refused.status_code == 400 and "the user comes from the token" in refused.json()["message"]
    run = start(hub, tokens["alice"]).json()
    assert run["user"] == "alice"
    for action, body in [("heartbeat", {}), ("finish", {"status": "succeeded"})]:
        response = api(hub, tokens["bob"], "POST", f"runs/{run['id']}/{action}", json=body)
        assert response.status_code == 403, (action, response.text)
    assert api(hub, tokens["alice"], "POST", f"runs/{run['id']}/finish", json={"status": "succeeded"}).ok


def test_viewer_reads_but_cannot_record(hub, tokens):
    assert api(hub, tokens["carol"], "GET", "runs").status_code == 200
    refused = start(hub, tokens["carol"])
    assert refused.status_code == 403 and "custom:opshub:runs:record" in refused.json()["message"]


def test_anonymous_and_bad_tokens_are_refused(hub):
    for token in [None, "not-a-token"]:
        assert api(hub, token, "GET", "runs").status_code == 403
        assert start(hub, token).status_code == 403


def test_only_admins_delete(hub, tokens):
    run = start(hub, tokens["bob"]).json()
    assert api(hub, tokens["bob"], "DELETE", f"runs/{run['id']}").status_code == 403
    assert api(hub, tokens["alice"], "DELETE", f"runs/{run['id']}").status_code == 204
    assert api(hub, tokens["alice"], "GET", f"runs/{run['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"runbook": ""}, "runbook must be a non-empty string"),
        ({"trigger": "cron"}, "trigger must be one of"),
        ({"parameters": [1, 2]}, "parameters must be a JSON object"),
    ],
)
def test_bad_records_name_the_problem(hub, tokens, body, expected):
    response = start(hub, tokens["bob"], **body)
    assert response.status_code == 400 and expected in response.json()["message"]


@pytest.mark.parametrize(
    ("action", "body", "expected"),
    [
        ("start", {"runbook": "host-health-check.ipynb", "drift": "yes"}, 'drift must be true or false, not "yes"'),
        ("start", {"runbook": "host-health-check.ipynb", "parameters": None}, "parameters must be a JSON object"),
        ("heartbeat", {"output_notebok": {}}, "unknown field(s) output_notebok"),
        ("heartbeat", {"drift": "true"}, "drift must be true or false"),
        ("finish", {"status": "failed", "failed_cell": "3"}, 'failed_cell must be a whole number or null, not "3"'),
        ("finish", {"status": "failed", "user": "alice"}, "unknown field(s) user"),
        ("finish", {"failed_cell": 1}, "status is required"),
    ],
)
def test_each_field_of_a_record_is_checked_and_a_refusal_names_it(hub, tokens, action, body, expected):
    """The API takes exactly the records of opshub.run_record; the run goes on untouched."""
    if action == "start":
        response = api(hub, tokens["bob"], "POST", "runs", json=body)
    else:
        run = start(hub, tokens["bob"]).json()
        response = api(hub, tokens["bob"], "POST", f"runs/{run['id']}/{action}", json=body)
        assert api(hub, tokens["bob"], "GET", f"runs/{run['id']}").json()["status"] == "running"
    assert response.status_code == 400 and expected in response.json()["message"], response.text
