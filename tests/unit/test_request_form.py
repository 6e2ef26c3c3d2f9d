"""The request page's form as the service builds it from a runbook's typed parameters (handlers/requests.py):
which widget each parameter gets, the value it shows (entered, or its default), each problem of the
service's check under the field it names, and when a live run is reviewed first."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from opshub.runbooks.params import DeclaredParameter
from opshub.runbooks.typed_parameters import ParameterError, form_fields, parameters_of, resolve
from opshub.service.handlers.requests import form_field, needs_review, problems_by_field, value_source

INVENTORY = """
stacks:
  web: {hosts: [web01, web02]}
  db: {hosts: [db01]}
"""
CELL = {
    "stack": DeclaredParameter("stack", '"web"'),
    "hosts": DeclaredParameter("hosts", "[]"),
    "dry_run": DeclaredParameter("dry_run", "True"),
    "wait_timeout": DeclaredParameter("wait_timeout", "900"),
    "tags": DeclaredParameter("tags", '["a"]'),
    "mode": DeclaredParameter("mode", '"fast"'),
    "ssh_options": DeclaredParameter("ssh_options", '"-o BatchMode=yes"'),
}
METADATA = {
    "changes_systems": True,
    "parameters": {
        "stack": {"type": "string", "choices_from": {"file": "inv.yaml", "path": ["stacks"]}},
        "hosts": {"type": "list", "choices_from": {"file": "inv.yaml", "path": ["stacks", "{stack}", "hosts"]}},
        "dry_run": {"type": "boolean", "description": "change nothing"},
        "wait_timeout": {"type": "integer", "min": 60, "max": 3600},
        "tags": {"type": "list"},
        "mode": {"type": "string", "choices": ["fast", "slow"]},
    },
}


def read_file(path: str) -> str:
    assert path == "inv.yaml"
    return INVENTORY


@pytest.fixture
def parameters():
    return parameters_of(METADATA, CELL)


def fields_by_name(parameters, entered=None, errors=None) -> dict:
    return {f["name"]: form_field(f, entered or {}, errors or {}) for f in form_fields(parameters, read_file)}


def test_each_parameter_gets_the_widget_its_declaration_says(parameters):
    fields = fields_by_name(parameters)
    widgets = {name: f["widget"] for name, f in fields.items()}
    assert widgets == {
        "stack": "select",
        "hosts": "dependent",
        "dry_run": "checkbox",
        "wait_timeout": "number",
        "tags": "list",
        "mode": "select",
        "ssh_options": "fixed",
    }
    assert fields["stack"]["options"] == ["web", "db"] and fields["stack"]["value"] == "web"
    assert fields["hosts"]["groups"] == {"web": ["web01", "web02"], "db": ["db01"]}
    assert fields["hosts"]["parent"] == "stack" and fields["hosts"]["selected"] == []
    assert fields["dry_run"]["checked"] is True and fields["dry_run"]["description"] == "change nothing"
    assert (fields["wait_timeout"]["min"], fields["wait_timeout"]["max"], fields["wait_timeout"]["value"]) == (
        60,
        3600,
        "900",
    )
    assert fields["tags"]["value"] == "a"  # a list without choices: items separated by commas
    assert fields["ssh_options"]["default_text"] == '"-o BatchMode=yes"'


def test_what_was_entered_is_shown_again_with_the_problems_under_their_fields(parameters):
    entered = {"stack": "db", "hosts": ["db01"], "dry_run": "false", "wait_timeout": "5", "tags": "x, y"}
    with pytest.raises(ParameterError) as refused:
        resolve(parameters, {**entered, "ssh_options": "-o ProxyCommand=evil", "nope": "1"}, read_file, text=True)
    by_field, other = problems_by_field(refused.value.problems, parameters)
    assert list(by_field) == ["wait_timeout"] and "is not at least 60" in by_field["wait_timeout"][0]
    # a fixed parameter and an unknown one have no field to stand under: they go at the top
    assert len(other) == 2 and any("ssh_options cannot be set" in p for p in other)
    assert any("nope is not a parameter" in p for p in other)
    fields = fields_by_name(parameters, entered, by_field)
    assert fields["wait_timeout"]["value"] == "5" and fields["wait_timeout"]["errors"] == by_field["wait_timeout"]
    assert fields["stack"]["value"] == "db" and fields["hosts"]["selected"] == ["db01"]
    assert fields["dry_run"]["checked"] is False and fields["tags"]["value"] == "x, y"
    assert fields["stack"]["errors"] == []


def test_a_live_run_of_a_runbook_that_changes_systems_is_reviewed(parameters):
    live = resolve(parameters, {"stack": "web", "dry_run": "false"}, read_file, text=True)
    dry = resolve(parameters, {"stack": "web"}, read_file, text=True)
    runbook = SimpleNamespace(metadata=METADATA, parameters=parameters)
    assert needs_review(runbook, live) and not needs_review(runbook, dry)
    assert not needs_review(SimpleNamespace(metadata={"changes_systems": False}, parameters=parameters), live)
    sources = {name: value_source(parameters[name], value) for name, value in live.items()}
    assert sources["dry_run"] == "set" and sources["stack"] == "default" and sources["ssh_options"] == "fixed"
