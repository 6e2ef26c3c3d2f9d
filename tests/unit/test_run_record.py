"""The run record on the wire (opshub.run_record): what every client sends is what the API accepts,
exactly, and each refusal names the field."""

from __future__ import annotations

import json

import pytest
from opshub import run_record
from opshub.run_record import (
    CellProgress,
    FirstCell,
    Heartbeat,
    RecordError,
    RunEnd,
    RunEnded,
    RunStart,
    RunStarted,
    event_line,
    parse_event,
)
from opshub.runbooks.client import ServiceClient
from opshub.service.handlers.runner import runner_handlers
from opshub.service.handlers.runs import run_handlers

NOTEBOOK = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}

RECORDS = [
    RunStart("patch.ipynb"),
    RunStart(
        "net/check.ipynb", "interactive", {"hosts": ["a", "b"]}, "a" * 40, True, "5b0c4f3e-0000-4000-8000-000000000000"
    ),
    Heartbeat(),
    Heartbeat(NOTEBOOK, True),
    Heartbeat(json.dumps(NOTEBOOK)),  # a notebook may travel as its JSON text
    FirstCell(),
    RunEnd("succeeded"),
    RunEnd("failed", 3, "RuntimeError: disk full", NOTEBOOK, True),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_comes_back_as_it_went_through_json(record):
    body = json.loads(json.dumps(record.to_json()))
    assert type(record).from_json(body) == record


def test_the_bodies_are_those_clients_have_always_sent():
    """Servers of an older version send these: the field names never changed."""
    old_start = {
        "runbook": "patch.ipynb",
        "trigger": "headless",
        "parameters": {},
        "runbook_commit": None,
        "drift": False,
    }
    assert RunStart.from_json(old_start) == RunStart("patch.ipynb")
    spooled = {"id": "x", "runbook": "r.ipynb", "trigger": "interactive", "runbook_commit": None, "drift": True}
    assert RunStart.from_json({**spooled, "parameters": {}}).id == "x"
    assert Heartbeat.from_json({}) == Heartbeat()
    old_end = {"status": "failed", "failed_cell": None, "error_summary": None, "output_notebook": None}
    assert RunEnd.from_json(old_end) == RunEnd("failed")
    assert set(RunStart("a").to_json()) == {"runbook", "trigger", "parameters", "runbook_commit", "drift", "id"}
    assert set(RunEnd("failed").to_json()) == {"status", "failed_cell", "error_summary", "output_notebook", "drift"}


@pytest.mark.parametrize(
    ("kind", "body", "field", "message"),
    [
        (RunStart, {"runbook": "a", "user": "alice"}, "user", "unknown field(s) user (the user comes from the token)"),
        (RunStart, {}, "runbook", "runbook is required"),
        (RunStart, {"runbook": 7}, "runbook", "runbook must be text, not 7"),
        (RunStart, {"runbook": "a", "trigger": None}, "trigger", "trigger must be text, not null"),
        (
            RunStart,
            {"runbook": "a", "parameters": [1, 2]},
            "parameters",
            "parameters must be a JSON object, not a JSON list",
        ),
        (
            RunStart,
            {"runbook": "a", "runbook_commit": 1},
            "runbook_commit",
            "runbook_commit must be text or null, not 1",
        ),
        (RunStart, {"runbook": "a", "drift": "yes"}, "drift", 'drift must be true or false, not "yes"'),
        (RunStart, {"runbook": "a", "id": 5}, "id", "id must be text or null, not 5"),
        (Heartbeat, {"status": "succeeded"}, "status", "unknown field(s) status"),
        (
            Heartbeat,
            {"output_notebook": [1]},
            "output_notebook",
            "output_notebook must be a JSON object or text or null",
        ),
        (Heartbeat, {"drift": 1}, "drift", "drift must be true or false, not 1"),
        (FirstCell, {"at": "now"}, "at", "unknown field(s) at"),
        (RunEnd, {}, "status", "status is required"),
        (
            RunEnd,
            {"status": "failed", "failed_cell": True},
            "failed_cell",
            "failed_cell must be a whole number or null",
        ),
        (RunEnd, {"status": "failed", "failed_cell": 1.5}, "failed_cell", "failed_cell must be a whole number or null"),
        (
            RunEnd,
            {"status": "failed", "error_summary": {"a": 1}},
            "error_summary",
            "must be text or null, not a JSON object",
        ),
        (RunEnd, {"status": "failed", "user": "x", "owner": "y"}, "owner", "unknown field(s) owner, user"),
        (RunEnd, ["status"], None, "the request body must be a JSON object"),
    ],
)
def test_each_refusal_names_the_field(kind, body, field, message):
    with pytest.raises(RecordError) as refused:
        kind.from_json(body)
    assert refused.value.field == field and message in str(refused.value)


def test_events_are_one_json_object_per_line_and_read_back():
    events = [
        RunStarted("id-1", "/services/opshub/runs/id-1", "patch.ipynb", None, False, {"stack": "web"}),
        CellProgress(2, "succeeded", 0.25),
        RunEnded("id-1", "failed", 3, "RuntimeError: x", None, 1, "/home/bob/.opshub/runs/id-1.ipynb"),
    ]
    for event in events:
        line = event_line(event)
        assert "\n" not in line and json.loads(line)["event"] == event.event
        assert parse_event(line) == event
    assert json.loads(event_line(CellProgress(0, "failed", 1))) == {
        "event": "cell",
        "index": 0,
        "status": "failed",
        "seconds": 1,
    }
    for line, field in [
        ("not json", None),
        ('{"event": "nope"}', "event"),
        ('{"event": "cell", "index": 0}', "status"),
    ]:
        with pytest.raises(RecordError) as refused:
            parse_event(line)
        assert refused.value.field == field


def test_the_paths_are_declared_once_for_clients_and_routes():
    assert run_record.path(run_record.RUN_FINISH, "abc") == "api/runs/abc/finish"
    assert run_record.path(run_record.RUNNER_BEGIN, "abc") == "api/runner/runs/abc/begin"
    routes = [pattern for pattern, *_ in run_handlers("/services/opshub/") + runner_handlers("/services/opshub/")]
    for template in (
        run_record.RUNS,
        run_record.RUN,
        run_record.RUN_HEARTBEAT,
        run_record.RUN_FINISH,
        run_record.RUNNER_BEGIN,
        run_record.RUNNER_HEARTBEAT,
        run_record.RUNNER_FINISH,
    ):
        assert "/services/opshub/" + run_record.route(template) in routes, template


def test_the_client_sends_the_records_to_their_paths():
    class Heard(ServiceClient):
        def __init__(self):
            super().__init__("http://127.0.0.1:9/services/opshub/", "token")
            self.requests = []

        def request(self, method, path, body=None):
            self.requests.append((method, path, body))
            return {"id": "r"}

    client = Heard()
    client.start_run(RunStart("patch.ipynb", parameters={"stack": "web"}))
    client.heartbeat("r")
    client.finish_run("r", RunEnd("failed", 1, "boom"))
    assert client.requests == [
        ("POST", "api/runs", RunStart("patch.ipynb", parameters={"stack": "web"}).to_json()),
        ("POST", "api/runs/r/heartbeat", {"output_notebook": None, "drift": False}),
        ("POST", "api/runs/r/finish", RunEnd("failed", 1, "boom").to_json()),
    ]
