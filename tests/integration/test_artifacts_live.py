"""Run artifacts on a live hub: a runbook publishes a table with `publish(...)`, run headless with
`opshub run` typed in bob's JupyterLab terminal and requested on the runner; the run's record has it
(secrets masked), a live dashboard's kernel reads it with the data token, and a viewer kept out of a
restricted runbook gets its artifacts from no route.

The hub is this module's own: it commits runbooks into its repository.
"""

from __future__ import annotations

import json
import re
import shlex
from html import unescape

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tests.integration.test_unattended_runs import commit_runbook, request, wait_for_status
from tests.livehub import Hub, wait_for
from tests.terminals import Terminal

DEMO = "artifacts-demo.ipynb"
RESTRICTED = "artifacts-restricted.ipynb"
SECRET = "s3cr3t-artifact-token-9c1e"
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
PREFIX = "/services/opshub/"

# The first cell publishes the hosts as pending; the last replaces them with what was done, and tells
# (as a careless runbook would) the token it used.
DEMO_CELLS = [
    "import os\nfrom opshub.runbooks.artifacts import publish",
    "publish('patched-hosts', [{'host': h, 'package': 'fleet-base', 'version': '1.0', 'state': 'pending'}"
    " for h in hosts])",
    "publish('summary', {'hosts': len(hosts), 'token': os.environ.get('DEPLOY_TOKEN', 'none')})\n"
    "publish('patched-hosts', [{'host': h, 'package': 'fleet-base', 'version': '1.1', 'state': 'patched'}"
    " for h in hosts])",
]
EXPECTED = [
    {"host": "web-1.fleet", "package": "fleet-base", "version": "1.1", "state": "patched"},
    {"host": "web-2.fleet", "package": "fleet-base", "version": "1.1", "state": "patched"},
]


def runbook(parameters: str, cells: list[str]) -> nbformat.NotebookNode:
    notebook = new_notebook(
        cells=[
            new_markdown_cell("# Artifacts"),
            new_code_cell(parameters, metadata={"tags": ["parameters"]}),
            *(new_code_cell(source) for source in cells),
        ],
        metadata={"kernelspec": KERNEL},
    )
    return notebook


def reader_notebook() -> dict:
    """A live dashboard that prints every run's artifacts as the data API gives them to its kernel."""
    code = (
        "import json, os, urllib.request\n"
        "url = os.environ['OPSHUB_HISTORY_URL'] + 'runs?limit=1000'\n"
        "headers = {'Authorization': 'Bearer ' + os.environ['OPSHUB_HISTORY_TOKEN']}\n"
        "for run in json.load(urllib.request.urlopen(urllib.request.Request(url, headers=headers)))['runs']:\n"
        "    print('ARTIFACTS', run['id'], json.dumps(run['artifacts'], sort_keys=True))"
    )
    notebook = new_notebook(cells=[new_code_cell(code)], metadata={"kernelspec": KERNEL})
    notebook.metadata["opshub"] = {"title": "Artifacts reader", "description": "a test", "changes_systems": False}
    return json.loads(nbformat.writes(notebook))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    def configure(settings):
        settings["dashboards"] = {"git_sync_interval": 2, "pool_size": 1}

    the_hub = Hub(tmp_path_factory.mktemp("artifacts"), configure=configure)
    commit_runbook(the_hub, DEMO, runbook("hosts = ['web-1.fleet']", DEMO_CELLS))
    restricted = ["from opshub.runbooks.artifacts import publish\npublish('ops-only', [{'note': 'RESTRICTED-MARK'}])"]
    commit_runbook(the_hub, RESTRICTED, runbook("stack = 'web'", restricted))
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=["alice", "bob", "carol"])


@pytest.fixture(scope="module")
def restricted_dashboard(hub, tokens):
    """A snapshot of RESTRICTED for group `ops` (bob's), which restricts its runs: carol is not in it."""
    body = {"name": "ops-artifacts", "runbook": RESTRICTED, "groups": ["ops"]}
    answer = hub.service_api(tokens["alice"], "POST", "dashboards", json=body)
    assert answer.status_code == 201, answer.text


@pytest.fixture(scope="module")
def bob(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    with Terminal(hub.url, "bob", hub.tokens(users=["bob"])["bob"]) as terminal:
        yield terminal


def opshub_run(terminal, name: str, *parameters: str, env: str = "") -> str:
    """`opshub run` typed in bob's terminal; the id of the run it recorded."""
    out, rc = terminal.run(f"{env} opshub run {shlex.join([name, *parameters])}".strip(), timeout=300)
    assert rc == 0, out
    found = re.search(r"^run ([0-9a-f-]{36})", out, re.M)
    assert found, out
    return found.group(1)


def run_of(hub, token, run_id) -> dict:
    answer = hub.service_api(token, "GET", f"runs/{run_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def headless_run(hub, bob, restricted_dashboard) -> str:
    return opshub_run(
        bob, "artifacts-demo", "-p", "hosts", json.dumps(["web-1.fleet", "web-2.fleet"]), env=f"DEPLOY_TOKEN={SECRET}"
    )


@pytest.fixture(scope="module")
def restricted_run(hub, bob, restricted_dashboard) -> str:
    return opshub_run(bob, "artifacts-restricted")


def test_a_headless_runs_artifacts_are_on_its_record_the_last_of_each_name_and_masked(hub, tokens, headless_run):
    run = run_of(hub, tokens["carol"], headless_run)  # a viewer: the run is not restricted
    assert run["status"] == "succeeded" and run["trigger"] == "headless"
    assert run["artifacts"] == {"patched-hosts": EXPECTED, "summary": {"hosts": 2, "token": "[masked]"}}
    # the notebook holds one current copy of each: the first cell's output, updated
    shown = [
        output["data"]["application/vnd.opshub.artifact+json"]["name"]
        for cell in run["output_notebook"]["cells"]
        for output in cell.get("outputs", [])
        if "application/vnd.opshub.artifact+json" in output.get("data", {})
    ]
    assert sorted(shown) == ["patched-hosts", "summary"]
    assert SECRET not in json.dumps(run)
    # the run's page renders the table the artifact displays
    carol, _ = hub.login("carol")
    rendered = carol.get(f"{hub.url}{PREFIX}runs/{headless_run}/notebook", timeout=60)
    assert rendered.status_code == 200 and "<th>package</th>" in rendered.text and "web-2.fleet" in rendered.text
    assert SECRET not in rendered.text
    for database_file in hub.state.glob("opshub.sqlite*"):  # the database and its write-ahead log
        assert SECRET.encode() not in database_file.read_bytes(), database_file


def test_a_requested_runs_artifacts_come_from_the_runner(hub, tokens):
    answer = request(hub, tokens["bob"], DEMO, hosts=["db-1.fleet"])
    assert answer.status_code == 201, answer.text
    run = wait_for_status(hub, tokens["bob"], answer.json()["id"], timeout=240)
    assert run["status"] == "succeeded", run.get("error_summary")
    assert run["artifacts"]["patched-hosts"] == [
        {"host": "db-1.fleet", "package": "fleet-base", "version": "1.1", "state": "patched"}
    ]
    assert run["artifacts"]["summary"] == {"hosts": 1, "token": "none"}


def test_the_dashboards_data_token_reads_artifacts_but_not_a_restricted_runbooks(
    hub, tokens, headless_run, restricted_run
):
    # bob ran it and sees it; an admin sees it: it has artifacts, which carol must not get
    assert run_of(hub, tokens["bob"], restricted_run)["artifacts"] == {"ops-only": [{"note": "RESTRICTED-MARK"}]}
    assert run_of(hub, tokens["alice"], restricted_run)["artifacts"] == {"ops-only": [{"note": "RESTRICTED-MARK"}]}

    body = {"name": "artifacts-reader", "mode": "live", "notebook": reader_notebook()}
    answer = hub.service_api(tokens["alice"], "POST", "dashboards", json=body)
    assert answer.status_code == 201, answer.text
    carol, _ = hub.login("carol")

    def rendered():  # a page of a preheated kernel may predate the runs: the next one does not
        page = carol.get(f"{hub.url}{PREFIX}dashboards/artifacts-reader/", timeout=120)
        text = unescape(page.text)
        return text if page.status_code == 200 and f"ARTIFACTS {restricted_run}" in text else None

    text = wait_for(rendered, timeout=180, interval=2, what="the reader dashboard to show both runs")
    lines = dict(re.findall(r"ARTIFACTS ([0-9a-f-]{36}) (.*)$", text, re.M))
    assert json.loads(lines[headless_run]) == {
        "patched-hosts": EXPECTED,
        "summary": {"hosts": 2, "token": "[masked]"},
    }
    assert json.loads(lines[restricted_run]) is None  # left out: the data token knows no viewer
    assert "RESTRICTED-MARK" not in text and SECRET not in text


def test_a_viewer_kept_out_of_a_restricted_runbook_gets_its_artifacts_from_no_route(hub, tokens, restricted_run):
    carol, _ = hub.login("carol")
    refused = hub.service_api(tokens["carol"], "GET", f"runs/{restricted_run}")
    assert refused.status_code == 403 and "restricted" in refused.text and "RESTRICTED-MARK" not in refused.text
    listed = hub.service_api(tokens["carol"], "GET", "runs", params={"limit": 1000})
    assert listed.status_code == 200 and restricted_run not in listed.text and "RESTRICTED-MARK" not in listed.text
    for path in (f"runs/{restricted_run}", f"runs/{restricted_run}/notebook", "runs", "dashboards/ops-artifacts/"):
        page = carol.get(f"{hub.url}{PREFIX}{path}", timeout=60)
        assert "RESTRICTED-MARK" not in page.text, path
    events = hub.service_api(tokens["carol"], "GET", f"events?run={restricted_run}")
    assert "RESTRICTED-MARK" not in events.text


FORGED_CELL = (
    "from opshub.runbooks.artifacts import publish\n"
    "publish('hosts', [{'host': 'web-1.fleet', 'status': 'patched', 'packages': 'FORGED-PATCH'}])"
)


def rendered_outputs(page: str) -> str:
    """A Voila page's cell outputs as HTML: inline, or in the JSON it streams them in."""
    streamed = re.findall(r'<script type="application/vnd.voila.cell-output\+json">\s*(.*?)\s*</script>', page, re.S)
    return "\n".join([unescape(page), *(json.loads(o).get("data", {}).get("text/html", "") for o in streamed)])


def test_a_persons_own_run_cannot_mark_hosts_patched_on_the_patching_dashboard(hub, bob):
    """bob rewrites his copy of the patching runbook to publish web-1.fleet as patched, and runs it
    from his terminal: the run is recorded (labelled as his server's), and management's patching-status
    dashboard shows its run but takes no host state from it: hosts rest on opshub's own runs only."""
    forged = runbook('stack = "fleet-web"', [FORGED_CELL])
    forged.metadata["opshub"] = {"title": "Patch a server stack", "changes_systems": True}
    text = shlex.quote(nbformat.writes(forged))
    out, rc = bob.run(f"printf '%s' {text} > ~/runbooks/patch-server-stack.ipynb", timeout=30)
    assert rc == 0, out
    run_id = opshub_run(bob, "patch-server-stack")
    run = run_of(hub, hub.tokens(users=["bob"])["bob"], run_id)
    assert run["trigger"] == "headless" and run["artifacts"]["hosts"][0]["status"] == "patched"

    carol, _ = hub.login("carol")

    def fresh():  # a page from a kernel preheated before bob's run does not show it yet: the next one does
        page = carol.get(f"{hub.url}{PREFIX}dashboards/patching-status/", timeout=120)
        row = re.search(r"<tr>\s*<th>fleet-web</th>(.*?)</tr>", rendered_outputs(page.text), re.S)
        return row.group(1) if page.status_code == 200 and row and "bob (own server)" in row.group(1) else None

    row = wait_for(fresh, timeout=240, interval=2, what="the patching dashboard to show bob's run")
    assert "patched" not in row and "3 no run yet" in row, row
