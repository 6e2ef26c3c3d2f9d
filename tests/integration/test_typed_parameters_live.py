"""Typed runbook parameters on a live hub, through every way in: the API, `opshub request` and `opshub run`
typed in bob's JupyterLab terminal, a schedule, an alert from a real Alertmanager, and who may request what.

The probe runbook declares its parameters as the shipped patching runbook does (the stack from the
repository's inventory, the hosts of that stack, booleans, a bounded integer, `ssh_options` fixed) and
prints what it received with its type, so a test reads what reached the notebook.
"""

from __future__ import annotations

from html import unescape

import pytest
import requests
from nbformat.v4 import new_code_cell, new_notebook

from tests.alertmanager import running_alertmanager
from tests.integration.test_unattended_runs import commit_runbook, output_text, wait_for_status
from tests.livehub import Hub, wait_for
from tests.terminals import Terminal

PROBE = "typed-probe.ipynb"
DBA_ONLY = "dba-only.ipynb"
BAD_SCHEDULE = "bad-schedule.ipynb"
PARAMETERS = """stack = "lab"
hosts = []
reboot = True
wait_timeout = 900
ssh_options = "-o BatchMode=yes"
"""
PRINT = """print(f"stack={stack!r} hosts={hosts!r} reboot={reboot!r}:{type(reboot).__name__} "
      f"wait_timeout={wait_timeout!r}:{type(wait_timeout).__name__} ssh_options={ssh_options!r}")
"""
INVENTORY = {"file": "inventory/stacks.yaml"}  # the hub's repository starts as a copy of shared-notebooks/
DECLARATION = {
    "stack": {"type": "string", "description": "The stack", "choices_from": {**INVENTORY, "path": ["stacks"]}},
    "hosts": {"type": "list", "choices_from": {**INVENTORY, "path": ["stacks", "{stack}", "hosts"]}},
    "reboot": {"type": "boolean", "description": "Reboot after updating"},
    "wait_timeout": {"type": "integer", "min": 60, "max": 3600},
}


def runbook(opshub: dict, cell: str = PARAMETERS, code: str = PRINT):
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [new_code_cell(cell, metadata={"tags": ["parameters"]}), new_code_cell(code)]
    return new_notebook(cells=cells, metadata={"kernelspec": kernel, "opshub": opshub})


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    def configure(settings):
        settings.setdefault("dashboards", {})["git_sync_interval"] = 1
        settings["auth"]["shared_password"]["groups"]["dba"] = ["alice"]
        settings["roles"]["operator"] = [*settings["roles"]["operator"], "dba"]

    the_hub = Hub(tmp_path_factory.mktemp("typed-parameters"), configure=configure)
    alerts = [{"alertname": "ProbeAlert", "parameters": {"stack": "{stack}", "hosts": ["{instance}"]}}]
    probe = {"parameters": DECLARATION, "locks": ["stack:{stack}"], "alerts": alerts}
    commit_runbook(the_hub, PROBE, runbook(probe))
    commit_runbook(the_hub, DBA_ONLY, runbook({"run_groups": ["dba"], "title": "Fail over the database"}))
    nightly = {"name": "nightly", "cron": "0 3 * * *", "parameters": {"stack": "nope", "wait_timeout": 5}}
    commit_runbook(the_hub, BAD_SCHEDULE, runbook({"parameters": DECLARATION, "schedules": [nightly]}))
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=["alice", "bob", "carol"])


@pytest.fixture(scope="module")
def bob_lab(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")


def request(hub: Hub, token: str, runbook: str = PROBE, as_text: bool = False, **parameters) -> requests.Response:
    body = {"runbook": runbook, "parameters": parameters, "as_text": as_text}
    return hub.service_api(token, "POST", "requests", json=body)


def page(hub: Hub, token: str, path: str) -> tuple[int, str]:
    response = requests.get(
        f"{hub.url}/services/opshub/{path}", headers={"Authorization": f"token {token}"}, timeout=30
    )
    return response.status_code, unescape(response.text)


def runs_of(hub: Hub, token: str, runbook: str) -> list[dict]:
    return hub.service_api(token, "GET", "runs", params={"runbook": runbook, "limit": 200}).json()["runs"]


REFUSED = [
    (
        {"stack": "nope"},
        "parameter stack: 'nope' is not one of web, db, monitoring, lab, fleet-web, fleet-db (from inventory/stacks.yaml)",
    ),
    ({"stack": "web", "hosts": ["localhost"]}, "parameter hosts: 'localhost' is not one of web01.example.internal"),
    ({"wait_timeout": "abc"}, "parameter wait_timeout: 'abc' is not a whole number"),
    ({"wait_timeout": 5}, "parameter wait_timeout: 5 is not at least 60"),
    ({"reboot": "maybe"}, "parameter reboot: 'maybe' is not true or false"),
    ({"reboot": 0}, "parameter reboot: 0 is not true or false"),
    ({"ssh_options": '-o ProxyCommand="sh -c id"'}, "parameter ssh_options cannot be set: it keeps its default"),
    ({"colour": "red"}, "parameter colour is not a parameter of this runbook"),
]


@pytest.mark.parametrize(("parameters", "message"), REFUSED)
def test_the_api_refuses_each_wrong_value_naming_it_and_queues_nothing(hub, tokens, parameters, message):
    before = len(runs_of(hub, tokens["alice"], PROBE))
    response = request(hub, tokens["bob"], **parameters)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert len(runs_of(hub, tokens["alice"], PROBE)) == before


def test_a_request_records_every_value_that_applies_and_the_values_reach_the_notebook_typed(hub, tokens):
    response = request(hub, tokens["bob"], as_text=True, stack="web", hosts="web02.example.internal", reboot="false")
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["parameters"] == {
        "stack": "web",
        "hosts": ["web02.example.internal"],
        "reboot": False,
        "wait_timeout": 900,
        "ssh_options": "-o BatchMode=yes",
    }
    ended = wait_for_status(hub, tokens["bob"], run["id"])
    assert ended["status"] == "succeeded", ended.get("error_summary")
    assert (
        "stack='web' hosts=['web02.example.internal'] reboot=False:bool wait_timeout=900:int "
        "ssh_options='-o BatchMode=yes'" in output_text(ended)
    )
    assert ended["locks"] == ["stack:web"]


def test_opshub_request_and_opshub_run_in_a_terminal_check_the_same_declaration(hub, tokens, bob_lab):
    with Terminal(hub.url, "bob", tokens["bob"]) as terminal:
        out, code = terminal.run("opshub request typed-probe --help", timeout=60)
        assert code == 0, out
        assert 'stack (string; default "lab"): The stack' in out and "from inventory/stacks.yaml stacks" in out
        assert "ssh_options (string, fixed: it keeps its default" in out

        out, code = terminal.run("opshub request typed-probe -p stack nope", timeout=60)
        assert code == 2 and "parameter stack: 'nope' is not one of web, db, monitoring, lab" in out, out
        out, code = terminal.run("opshub request typed-probe -p ssh_options '-o ProxyCommand=id'", timeout=60)
        assert code == 2 and "parameter ssh_options cannot be set" in out, out

        out, code = terminal.run("opshub request typed-probe -p reboot false -p wait_timeout 120 --wait", timeout=180)
        assert code == 0, out

        out, code = terminal.run("opshub run typed-probe -p wait_timeout abc", timeout=60)
        assert code == 2 and "parameter wait_timeout: 'abc' is not a whole number" in out, out
        out, code = terminal.run("opshub run typed-probe --help", timeout=60)
        assert code == 0 and "wait_timeout (integer; default 900)" in out and "min 60; max 3600" in out, out
        out, code = terminal.run("opshub run typed-probe -p reboot no -p hosts localhost", timeout=180)
        assert code == 0, out
        assert "stack='lab' hosts=['localhost'] reboot=False:bool" in out or "reboot=False" in out, out
    runs = runs_of(hub, tokens["bob"], PROBE)
    requested = next(run for run in runs if run["trigger"] == "requested" and run["parameters"]["wait_timeout"] == 120)
    assert requested["parameters"]["reboot"] is False and requested["status"] == "succeeded"
    headless = next(run for run in runs if run["trigger"] == "headless")
    assert headless["parameters"]["reboot"] is False and headless["parameters"]["hosts"] == ["localhost"]


def test_a_schedule_with_a_wrong_value_is_refused_when_the_runbook_is_read(hub, tokens):
    status, text = page(hub, tokens["bob"], "runbooks/")
    assert status == 200
    assert f"{BAD_SCHEDULE}: " in text and "opshub.schedules[0].parameters: parameter stack: 'nope'" in text
    assert "parameter wait_timeout: 5 is not at least 60" in text
    schedules = hub.service_api(tokens["bob"], "GET", "schedules").json()["schedules"]
    assert [row for row in schedules if row["runbook"] == BAD_SCHEDULE] == []


def test_an_alert_fills_list_templates_and_a_wrong_value_is_on_record(hub, tokens, tmp_path):
    admin = tokens["alice"]
    with running_alertmanager(
        tmp_path / "am", f"{hub.url}/services/opshub/api/alerts", hub.state / "alerts-token"
    ) as am:
        am.fire("ProbeAlert", {"stack": "lab", "instance": "localhost"})
        am.fire("ProbeAlert", {"stack": "nope", "instance": "web9"})

        def alert_runs():
            runs = [run for run in runs_of(hub, admin, PROBE) if run["trigger"] == "alert"]
            return runs if len(runs) == 2 and all(run["status"] not in ("queued", "running") for run in runs) else None

        runs = wait_for(alert_runs, timeout=120, interval=0.5, what="both alerts' runs to end")
    by_stack = {run["parameters"].get("stack", "refused"): run for run in runs}
    good = wait_for_status(hub, admin, by_stack["lab"]["id"])
    assert good["status"] == "succeeded" and good["parameters"]["hosts"] == ["localhost"]
    assert "hosts=['localhost']" in output_text(good)
    refused = by_stack["refused"]
    assert refused["status"] == "failed"
    assert "parameter stack: 'nope' is not one of web, db, monitoring, lab" in refused["error_summary"]


def test_only_the_runbooks_groups_may_request_it_and_others_are_told_why(hub, tokens, bob_lab):
    response = request(hub, tokens["bob"], DBA_ONLY)
    assert response.status_code == 403
    assert "dba-only.ipynb may be requested or run only by members of dba" in response.json()["message"]
    with Terminal(hub.url, "bob", tokens["bob"]) as terminal:
        out, code = terminal.run("opshub request dba-only", timeout=60)
        assert code == 1 and "may be requested or run only by members of dba" in out, out
        out, code = terminal.run("opshub request dba-only --help", timeout=60)
        assert code == 0 and "You may not request it" in out, out
        out, code = terminal.run("opshub run dba-only", timeout=60)
        assert code == 3 and "may be requested or run only by members of dba" in out, out
    status, text = page(hub, tokens["bob"], "runbooks/")
    assert status == 200 and DBA_ONLY in text
    status, text = page(hub, tokens["bob"], f"runbooks/{DBA_ONLY}")
    assert status == 200 and "may be requested or run only by members of dba" in text
    assert hub.service_api(tokens["bob"], "GET", f"runbooks/{DBA_ONLY}").json()["may_request"] is False

    assert hub.service_api(tokens["alice"], "GET", f"runbooks/{DBA_ONLY}").json()["may_request"] is True
    response = request(hub, tokens["alice"], DBA_ONLY)
    assert response.status_code == 201, response.text
    assert wait_for_status(hub, tokens["alice"], response.json()["id"])["status"] == "succeeded"
