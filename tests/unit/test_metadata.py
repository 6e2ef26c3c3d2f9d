"""Strict runbook metadata: the schema, its messages, and every place that reads a runbook's `opshub`
metadata refusing a wrong one with the message (opshub run, publishing, the repository's sync and
runbook list), against real notebooks in real git repositories."""

from __future__ import annotations

import io
import json
import logging

import nbformat
import pytest
from jsonschema import Draft202012Validator
from opshub.runbooks.catalog import RunbookCatalog
from opshub.runbooks.headless import EXIT_USAGE, run_runbook
from opshub.runbooks.metadata import SCHEMA, RunbookMetadataError, read_runbook_metadata, runbook_metadata
from opshub.service.dashboards import Dashboards, PublishError, parse_notebook, refuse_live_if_it_changes_systems
from opshub.service.store import RunStore

from tests.helpers import SHARED_NOTEBOOKS, make_work_tree


def notebook(**opshub) -> dict:
    parameters = nbformat.v4.new_code_cell(
        'stack = "lab"\ndry_run = True\nhost = ""', metadata={"tags": ["parameters"]}
    )
    nb = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell("print('patching')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["opshub"] = opshub
    return json.loads(nbformat.writes(nb))


def test_the_schema_is_a_valid_draft_2020_12_schema():
    Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", sorted(SHARED_NOTEBOOKS.rglob("*.ipynb")), ids=lambda p: p.name)
def test_every_shipped_runbook_has_valid_metadata(path):
    metadata = read_runbook_metadata(path)
    assert isinstance(metadata["changes_systems"], bool) and metadata["title"]


def test_defaults_are_filled_in_and_dashboard_true_is_an_object():
    assert runbook_metadata({"metadata": {}}, "x.ipynb") == {
        "title": None,
        "description": "",
        "changes_systems": False,
        "dashboard": None,
        "parameters": None,
        "run_groups": [],
        "credentials": [],
        "locks": [],
        "schedules": [],
        "alerts": [],
    }
    assert runbook_metadata(notebook(dashboard=True), "x.ipynb")["dashboard"] == {}
    assert runbook_metadata(notebook(dashboard=False), "x.ipynb")["dashboard"] is None
    full = {"name": "patching", "mode": "live", "groups": ["managers"], "title": "T", "description": "d"}
    assert runbook_metadata(notebook(changes_systems=True, dashboard=full), "x.ipynb")["dashboard"] == full


@pytest.mark.parametrize(
    ("opshub", "message"),
    [
        ({"changes_systems": "true"}, "patch.ipynb: opshub.changes_systems must be true or false, not 'true'"),
        ({"changes_systems": 1}, "patch.ipynb: opshub.changes_systems must be true or false, not 1"),
        ({"changes_systems": [True]}, "patch.ipynb: opshub.changes_systems must be true or false, not [true]"),
        ({"changes_systems": None}, "opshub.changes_systems must be true or false, not null"),
        ({"changes_system": True}, "opshub.changes_system is not a known key (did you mean changes_systems?)"),
        ({"title": 3}, "opshub.title must be text, not 3"),
        ({"title": ""}, "opshub.title must not be empty"),
        ({"dashboard": "yes"}, "opshub.dashboard must be an object or true or false, not 'yes'"),
        ({"dashboard": {"mode": "both"}}, "opshub.dashboard.mode must be one of snapshot, live, not 'both'"),
        ({"dashboard": {"name": "../x"}}, "opshub.dashboard.name must be 1 to 64 lowercase letters"),
        ({"dashboard": {"groups": "managers"}}, "opshub.dashboard.groups must be a list, not 'managers'"),
        ({"dashboard": {"groups": ["a", 2]}}, "opshub.dashboard.groups[1] must be text, not 2"),
        ({"dashboard": {"grups": ["a"]}}, "opshub.dashboard.grups is not a known key (did you mean groups?)"),
        ({"schedule": []}, "opshub.schedule is not a known key (did you mean schedules?)"),
        ({"locks": "stack:{stack}"}, "opshub.locks must be a list, not 'stack:{stack}'"),
        ({"locks": [""]}, "opshub.locks[0] must not be empty"),
        ({"locks": ["stack:{stack:>3}"]}, "opshub.locks[0]: {stack:>3} in 'stack:{stack:>3}' is not a plain name"),
        ({"schedules": {"cron": "0 3 * * 1"}}, 'opshub.schedules must be a list, not {"cron": "0 3 * * 1"}'),
        ({"schedules": [{}]}, "patch.ipynb: opshub.schedules[0].cron is required"),
        ({"schedules": [{"crn": "0 3 * * 1"}]}, "opshub.schedules[0].crn is not a known key (did you mean cron?)"),
        ({"schedules": [{"cron": 3}]}, "opshub.schedules[0].cron must be text, not 3"),
        ({"schedules": [{"cron": "61 * * * *"}]}, "opshub.schedules[0].cron: '61 * * * *' is not a cron expression"),
        ({"schedules": [{"cron": "@daily"}]}, "opshub.schedules[0].cron: '@daily' is not a cron expression"),
        (
            {"schedules": [{"cron": "0 3 * * 1", "timezone": "Europe/Berln"}]},
            "opshub.schedules[0].timezone: 'Europe/Berln' is not a known time zone (did you mean Europe/Berlin?)",
        ),
        (
            {"schedules": [{"cron": "0 3 * * 1", "name": "Weekly Web"}]},
            "opshub.schedules[0].name must be 1 to 64 lowercase letters, digits and dashes, starting with a letter",
        ),
        ({"schedules": [{"cron": "0 3 * * 1", "name": "w" * 65}]}, "opshub.schedules[0].name must be 1 to 64"),
        (
            {"schedules": [{"cron": "0 3 * * 1", "parameters": ["web"]}]},
            'opshub.schedules[0].parameters must be an object, not ["web"]',
        ),
        (
            {"schedules": [{"name": "weekly", "cron": "0 3 * * 1"}, {"name": "weekly", "cron": "0 4 * * 1"}]},
            "opshub.schedules[1].name: 'weekly' is also the name of opshub.schedules[0]",
        ),
        ({"alerts": [{"matchers": []}]}, "opshub.alerts[0].alertname is required"),
        ({"alerts": [{"alertname": ""}]}, "opshub.alerts[0].alertname must not be empty"),
        ({"alerts": [{"alertname": "HostDown", "labels": {}}]}, "opshub.alerts[0].labels is not a known key"),
        ({"alerts": [{"alertname": "HostDown", "matchers": "a=b"}]}, "opshub.alerts[0].matchers must be a list"),
        (
            {"alerts": [{"alertname": "HostDown", "matchers": ['team=~"(ops"']}]},
            "opshub.alerts[0].matchers[0]: 'team=~\"(ops\"' has a bad regular expression",
        ),
        (
            {"alerts": [{"alertname": "HostDown", "parameters": {"host": "{instance!r}"}}]},
            "opshub.alerts[0].parameters.host: {instance!r} in '{instance!r}' is not a plain name",
        ),
    ],
)
def test_wrong_metadata_is_refused_naming_the_notebook_and_the_key(opshub, message):
    with pytest.raises(RunbookMetadataError) as refused:
        runbook_metadata(notebook(**opshub), "patch.ipynb")
    assert message in str(refused.value)
    assert isinstance(refused.value, ValueError)


def test_opshub_metadata_that_is_no_object_and_every_problem_at_once():
    for value, shown in ((None, "null"), ([], "[]"), ("x", "'x'")):
        with pytest.raises(RunbookMetadataError) as refused:
            runbook_metadata({"metadata": {"opshub": value}}, "x.ipynb")
        assert str(refused.value) == f"x.ipynb: opshub must be an object, not {shown}"
    with pytest.raises(RunbookMetadataError) as refused:
        runbook_metadata(notebook(changes_systems="no", titel="T"), "x.ipynb")
    assert "changes_systems must be true or false" in str(refused.value) and "titel is not a known key" in str(
        refused.value
    )


def test_triggers_come_back_as_declared_and_the_defaults_are_not_shared():
    declared = {
        "locks": ["stack:{stack}"],
        "schedules": [
            {
                "name": "weekly-web",
                "cron": "0 3 * * 1",
                "timezone": "Europe/Berlin",
                "parameters": {"stack": "web", "dry_run": False},
            }
        ],
        "alerts": [
            {
                "alertname": "HostDown",
                "matchers": ['severity="critical"', 'team=~"ops|infra"'],
                "parameters": {"host": "{instance}", "dry_run": True},
            }
        ],
    }
    metadata = runbook_metadata(notebook(title="Patch", **declared), "x.ipynb")
    assert {key: metadata[key] for key in declared} == declared
    empty = runbook_metadata({"metadata": {}}, "x.ipynb")
    empty["locks"].append("mine")
    assert runbook_metadata({"metadata": {}}, "x.ipynb")["locks"] == []


def test_shape_and_trigger_problems_are_reported_at_once():
    with pytest.raises(RunbookMetadataError) as refused:
        runbook_metadata(
            notebook(
                changes_systems="no", schedules=[{"cron": "0 25 * * *"}], alerts=[{"alertname": "A", "matchers": ["x"]}]
            ),
            "x.ipynb",
        )
    problems = str(refused.value).removeprefix("x.ipynb: ").split("; ")
    assert len(problems) == 3, problems
    assert problems[0].startswith("opshub.alerts[0].matchers[0]: 'x' is not a matcher")
    assert problems[1] == "opshub.changes_systems must be true or false, not 'no'"
    assert problems[2] == "opshub.schedules[0].cron: '0 25 * * *' is not a cron expression (Bad hour)"


# Where the metadata is read

BAD = notebook(title="Patch", changes_systems="true")  # the runbook that went live in issue 12


def test_publishing_refuses_wrong_metadata_with_400_and_the_message():
    for check in (
        lambda: parse_notebook(BAD, "runbook patch.ipynb"),
        lambda: refuse_live_if_it_changes_systems(BAD, "runbook patch.ipynb"),
    ):
        with pytest.raises(PublishError) as refused:
            check()
        assert refused.value.status == 400
        assert "runbook patch.ipynb: opshub.changes_systems must be true or false, not 'true'" in str(refused.value)


@pytest.fixture
def repository(tmp_path):
    files = {
        "patch.ipynb": json.dumps(BAD),
        "patch-live.ipynb": json.dumps(notebook(title="P", changes_systems="true", dashboard={"mode": "live"})),
        "status.ipynb": json.dumps(notebook(title="Status", dashboard={"name": "status", "mode": "live"})),
        "broken.ipynb": "{not json",
    }
    return make_work_tree(tmp_path / "runbooks", files=files)


def test_the_runbook_list_shows_invalid_runbooks_instead_of_failing(repository, tmp_path, caplog):
    catalog = RunbookCatalog(str(repository), "main", tmp_path / "cache.git")
    with caplog.at_level(logging.ERROR, logger="opshub.runbooks.catalog"):
        names = catalog.refresh()
    assert names == {"patch.ipynb", "patch-live.ipynb", "status.ipynb", "broken.ipynb"}
    invalid = catalog.invalid()
    assert invalid["patch.ipynb"] == "patch.ipynb: opshub.changes_systems must be true or false, not 'true'"
    assert invalid["broken.ipynb"].startswith("broken.ipynb: not notebook JSON")
    assert set(invalid) == {"patch.ipynb", "patch-live.ipynb", "broken.ipynb"}
    assert catalog.metadata()["status.ipynb"]["title"] == "Status"
    assert "invalid runbook patch.ipynb: opshub.changes_systems" in caplog.text
    caplog.clear()
    catalog.refresh()
    assert "invalid runbook" not in caplog.text, "said once, not on every refresh"


def test_the_repository_sync_skips_a_dashboard_whose_runbook_has_wrong_metadata(repository, tmp_path, caplog):
    store = RunStore(f"sqlite:///{tmp_path / 'history.sqlite'}")
    store.upgrade()
    catalog = RunbookCatalog(str(repository), "main", tmp_path / "cache.git")
    catalog.refresh()
    dashboards = Dashboards(store, tmp_path / "dashboards", "/services/opshub/", catalog=catalog)
    try:
        with caplog.at_level(logging.ERROR, logger="opshub.service.dashboards"):
            dashboards.sync_from_git()
        assert [d.name for d in dashboards.all()] == ["status"]
        assert "patch-live.ipynb: opshub.changes_systems must be true or false, not 'true'" in caplog.text
        assert not (dashboards.published / "patch-live.ipynb").exists()
    finally:
        store.close()


def test_opshub_run_exits_2_with_the_message_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    bad = notebook(changes_systems="true")
    bad["cells"] = [nbformat.v4.new_code_cell(f"open({str(marker)!r}, 'w').write('ran')")]
    runbooks = make_work_tree(tmp_path / "runbooks", files={"patch.ipynb": json.dumps(bad)})

    class NoRecorder:
        def start_run(self, *args, **kwargs):
            raise AssertionError("a runbook with wrong metadata must not be recorded")

    out, err = io.StringIO(), io.StringIO()
    code = run_runbook("patch", runbooks_dir=runbooks, recorder=NoRecorder(), out=out, err=err)
    assert code == EXIT_USAGE and not marker.exists()
    assert "patch.ipynb: opshub.changes_systems must be true or false, not 'true'" in err.getvalue()
    # and the list of runbooks an unknown name shows marks it as invalid
    code = run_runbook("nope", runbooks_dir=runbooks, recorder=NoRecorder(), out=out, err=err)
    assert code == EXIT_USAGE
    assert "patch.ipynb  (invalid: opshub.changes_systems must be true or false, not 'true')" in err.getvalue()


def test_the_metadata_reference_in_the_docs_is_rendered_from_the_schema():
    from opshub.runbooks.metadata_docs import render_reference

    committed = (SHARED_NOTEBOOKS.parent / "hub" / "docs" / "runbooks.md").read_text()
    assert render_reference() in committed, "hub/docs/runbooks.md is stale: run `make docs`"
    for key in ("parameters.NAME.choices_from", "run_groups", "schedules[].cron", "alerts[].parameters"):
        assert f"| `{key}` |" in committed
