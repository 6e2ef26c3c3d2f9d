"""`opshub run` typed in a JupyterLab terminal of bob's live server, recording through the live
opshub service: his server's environment, his account, his home, as a person runs it."""

from __future__ import annotations

import contextlib
import json
import os
import shlex

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tests.helpers import git
from tests.livehub import wait_for
from tests.terminals import Terminal

SECRET = "s3cr3t-deploy-token-4d2f"


@pytest.fixture(scope="module")
def bob(hub):
    """A terminal of bob's running JupyterLab."""
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    with Terminal(hub.url, "bob", hub.tokens(users=["bob"])["bob"]) as terminal:
        yield terminal


def opshub_run(terminal, *args, extra_env=None):
    """`opshub run ...` typed in the terminal (after `NAME=value` for `extra_env`): output, exit code."""
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in (extra_env or {}).items())
    return terminal.run(f"{assignments} opshub run {shlex.join(args)}".strip(), timeout=300)


@contextlib.contextmanager
def own_runbook(hub, name: str, parameters: str, code: str):
    """A runbook bob writes next to the team's (not in the repository), removed afterwards."""
    notebook = new_notebook(
        cells=[
            new_markdown_cell(f"# {name}"),
            new_code_cell(parameters, metadata={"tags": ["parameters"]}),
            new_code_cell(code),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    path = hub.home("bob") / "runbooks" / f"{name}.ipynb"
    nbformat.write(notebook, path)
    home = hub.home("bob").stat()
    os.chown(path, home.st_uid, home.st_gid)  # his, as if he had saved it
    try:
        yield path
    finally:
        path.unlink()


def find_run(hub, runbook: str, status: str) -> dict:
    token = hub.tokens(users=["carol"])["carol"]
    runs = hub.service_api(token, "GET", "runs", params={"runbook": runbook, "status": status, "user": "bob"}).json()
    assert runs["runs"], (runbook, status)
    return hub.service_api(token, "GET", f"runs/{runs['runs'][0]['id']}").json()


def test_headless_run_succeeds_and_is_recorded(hub, bob):
    # a runbook bob has not edited (other tests edit host-health-check in his copy)
    out, rc = opshub_run(bob, "patch-server-stack", "-p", "stack", "lab", "-p", "dry_run", "True")
    assert rc == 0, out
    assert "▶" in out and "[dry run] ssh" in out  # progress per cell, then the cell's output
    run = find_run(hub, "patch-server-stack.ipynb", "succeeded")
    assert run["user"] == "bob" and run["trigger"] == "headless"
    assert {name: run["parameters"][name] for name in ("stack", "hosts", "dry_run", "reboot")} == {
        "stack": "lab",
        "hosts": [],
        "dry_run": True,
        "reboot": True,
    }  # every value that applied: the given ones and the defaults
    clone = hub.home("bob") / "runbooks"
    assert run["runbook_commit"] == git("rev-parse", "origin/main", cwd=clone) and run["drift"] is False
    assert run["output_notebook"]["cells"]


def test_failing_runbook_exits_non_zero_with_the_failing_cell(hub, bob):
    out, rc = opshub_run(bob, "host-health-check", "-p", "services", "[]", "-p", "disk_fail_percent", "0")
    assert rc == 1, out
    run = find_run(hub, "host-health-check.ipynb", "failed")
    cell = run["output_notebook"]["cells"][run["failed_cell"]]
    assert "raise RuntimeError" in "".join(cell["source"])
    assert "health check failed" in run["error_summary"]


def test_unknown_runbook_and_undeclared_parameter_are_refused_before_anything_runs(hub, bob):
    token = hub.tokens(users=["carol"])["carol"]
    before = hub.service_api(token, "GET", "runs").json()["total"]
    out, rc = opshub_run(bob, "reboot-everything")
    assert rc == 2 and "patch-server-stack.ipynb" in out
    out, rc = opshub_run(bob, "patch-server-stack", "-p", "force", "True")
    assert rc == 2 and "dry_run" in out
    assert opshub_run(bob, "../.bashrc")[1] == 2
    assert hub.service_api(token, "GET", "runs").json()["total"] == before


def test_secrets_appear_nowhere_and_local_edits_are_drift(hub, bob):
    # bob's own runbook is not in the repository, so it is drift
    code = "import os\nprint('using', os.environ['DEPLOY_TOKEN'])\nprint(token_hint)"
    with own_runbook(hub, "deploy-check", "token_hint = 'none'", code):
        out, rc = opshub_run(bob, "deploy-check", "-p", "token_hint", SECRET, extra_env={"DEPLOY_TOKEN": SECRET})
    assert rc == 0, out
    printed = out.replace(f"token_hint {SECRET}", "").replace(f"DEPLOY_TOKEN={SECRET}", "")  # the typed line
    assert SECRET not in printed and "[masked]" in out
    run = find_run(hub, "deploy-check.ipynb", "succeeded")
    assert run["drift"] is True
    carol, _ = hub.login("carol")
    page = carol.get(f"{hub.url}/services/opshub/runs/{run['id']}")
    rendered = carol.get(f"{hub.url}/services/opshub/runs/{run['id']}/notebook")
    for text in [str(run), page.text, rendered.text]:
        assert SECRET not in text
    assert "[masked]" in rendered.text
    for database_file in hub.state.glob("opshub.sqlite*"):  # the database and its write-ahead log
        assert SECRET.encode() not in database_file.read_bytes(), database_file


def test_ctrl_c_ends_the_record_as_interrupted(hub, bob):
    with own_runbook(
        hub, "slow-rollout", "hosts = 3", "import time\nprint('rolling out', flush=True)\ntime.sleep(120)"
    ):
        mark = bob.start("opshub run slow-rollout")
        bob.read_until(rf"{mark}-start\n.*rolling out")
        bob.press("\x03")  # Ctrl-C
        out, rc = bob.finish(mark)
        assert rc == 130, out
    run = find_run(hub, "slow-rollout.ipynb", "interrupted")
    assert run["ended_at"] and run["user"] == "bob"


def test_events_json_gives_a_program_json_lines_with_a_run_id_the_history_knows(hub, bob):
    # as a program runs it: stdout only (people's progress goes to stderr)
    out, rc = bob.run("opshub run patch-server-stack -p stack lab --events json 2>/dev/null", timeout=300)
    assert rc == 0, out
    lines = [line for line in out.splitlines() if line.startswith("{")]  # the rest: the typed line's echo
    events = [json.loads(line) for line in lines]
    assert [event["event"] for event in events[:1] + events[-1:]] == ["started", "ended"], out
    assert all(event["event"] == "cell" and event["status"] == "succeeded" for event in events[1:-1])
    assert len(events) > 3 and "▶" not in out  # a line per code cell, and no line for people
    started, ended = events[0], events[-1]
    assert ended["run_id"] == started["run_id"] and ended["status"] == "succeeded" and ended["exit_code"] == 0
    token = hub.tokens(users=["carol"])["carol"]
    run = hub.service_api(token, "GET", f"runs/{started['run_id']}").json()
    assert run["status"] == "succeeded" and run["user"] == "bob" and run["runbook"] == "patch-server-stack.ipynb"
    assert started["url"] == run["url"] and started["parameters"] == run["parameters"]


def test_a_headless_runs_output_reaches_its_record_while_it_runs_masked(hub, bob):
    """The run's page shows a headless run's cells as they come: a long cell's output is sent while it
    runs (at most every 2 s), masked like everything the history keeps."""
    code = (
        "import os, time\nprint('halfway there with', os.environ['DEPLOY_TOKEN'], flush=True)\n"
        "time.sleep(45)\nprint('never seen: the test stops it first')"
    )
    with own_runbook(hub, "long-step", "hosts = 3", code):
        mark = bob.start(f"DEPLOY_TOKEN={SECRET} opshub run long-step")
        bob.read_until(rf"{mark}-start\n.*halfway there")
        token = hub.tokens(users=["carol"])["carol"]

        def live_output():
            run = find_run(hub, "long-step.ipynb", "running")
            text = json.dumps(run["output_notebook"] or {})
            return "halfway there with [masked]" in text and (run, text)  # the output (the source says less)

        run, text = wait_for(live_output, timeout=15, interval=0.5, what="the running cell's output on record")
        assert run["status"] == "running" and run["ended_at"] is None
        assert SECRET not in text
        page = hub.login("carol")[0].get(f"{hub.url}/services/opshub/runs/{run['id']}", timeout=30).text
        assert 'id="running-cell"' in page and "cell 3 (long-step)" in page  # the cell running now, named
        assert hub.service_api(token, "GET", f"runs/{run['id']}").json()["status"] == "running"
        bob.press("\x03")  # Ctrl-C: the test has seen enough
        _, rc = bob.finish(mark)
        assert rc == 130
