"""`opshub run` inside a live user server, recording through the live opshub service.

The command runs with exactly the environment of bob's running single-user server (his server
token, the service URL, his home), as in a terminal of his JupyterLab."""

from __future__ import annotations

import contextlib
import subprocess

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tests.helpers import VENV_BIN, git

SECRET = "s3cr3t-deploy-token-4d2f"


@pytest.fixture(scope="module")
def bob_env(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    return hub.server_environment("bob")


def opshub_run(env, *args, extra_env=None):
    return subprocess.run(
        [str(VENV_BIN / "opshub"), "run", *args],
        env={**env, **(extra_env or {})},
        cwd=env["HOME"],
        capture_output=True,
        text=True,
        timeout=300,
    )


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
    try:
        yield path
    finally:
        path.unlink()


def find_run(hub, runbook: str, status: str) -> dict:
    token = hub.tokens(users=["carol"])["carol"]
    runs = hub.service_api(token, "GET", "runs", params={"runbook": runbook, "status": status, "user": "bob"}).json()
    assert runs["runs"], (runbook, status)
    return hub.service_api(token, "GET", f"runs/{runs['runs'][0]['id']}").json()


def test_headless_run_succeeds_and_is_recorded(hub, bob_env):
    # a runbook bob has not edited (other tests edit host-health-check in his copy)
    result = opshub_run(bob_env, "patch-server-stack", "-p", "stack", "lab", "-p", "dry_run", "True")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "▶" in result.stdout and "[dry run] ssh" in result.stdout  # progress per cell, then the cell's output
    run = find_run(hub, "patch-server-stack.ipynb", "succeeded")
    assert run["user"] == "bob" and run["trigger"] == "headless"
    assert run["parameters"] == {"stack": "lab", "dry_run": True}
    clone = hub.home("bob") / "runbooks"
    assert run["runbook_commit"] == git("rev-parse", "origin/main", cwd=clone) and run["drift"] is False
    assert run["output_notebook"]["cells"]


def test_failing_runbook_exits_non_zero_with_the_failing_cell(hub, bob_env):
    result = opshub_run(bob_env, "host-health-check", "-p", "services", "[]", "-p", "disk_fail_percent", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    run = find_run(hub, "host-health-check.ipynb", "failed")
    cell = run["output_notebook"]["cells"][run["failed_cell"]]
    assert "raise RuntimeError" in "".join(cell["source"])
    assert "health check failed" in run["error_summary"]


def test_unknown_runbook_and_undeclared_parameter_are_refused_before_anything_runs(hub, bob_env):
    token = hub.tokens(users=["carol"])["carol"]
    before = hub.service_api(token, "GET", "runs").json()["total"]
    unknown = opshub_run(bob_env, "reboot-everything")
    assert unknown.returncode == 2 and "patch-server-stack.ipynb" in unknown.stdout + unknown.stderr
    undeclared = opshub_run(bob_env, "patch-server-stack", "-p", "force", "True")
    assert undeclared.returncode == 2 and "dry_run" in undeclared.stdout + undeclared.stderr
    tricks = opshub_run(bob_env, "../.bashrc")
    assert tricks.returncode == 2
    assert hub.service_api(token, "GET", "runs").json()["total"] == before


def test_secrets_appear_nowhere_and_local_edits_are_drift(hub, bob_env):
    # bob's own runbook is not in the repository, so it is drift
    code = "import os\nprint('using', os.environ['DEPLOY_TOKEN'])\nprint(token_hint)"
    with own_runbook(hub, "deploy-check", "token_hint = 'none'", code):
        result = opshub_run(bob_env, "deploy-check", "-p", "token_hint", SECRET, extra_env={"DEPLOY_TOKEN": SECRET})
    assert result.returncode == 0, result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr
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


def test_ctrl_c_ends_the_record_as_interrupted(hub, bob_env):
    import signal
    import time

    with own_runbook(
        hub, "slow-rollout", "hosts = 3", "import time\nprint('rolling out', flush=True)\ntime.sleep(120)"
    ):
        process = subprocess.Popen(
            [str(VENV_BIN / "opshub"), "run", "slow-rollout"],
            env=bob_env,
            cwd=bob_env["HOME"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        seen = ""
        while "rolling out" not in seen and time.monotonic() < deadline:
            seen += process.stdout.readline()
        assert "rolling out" in seen, seen
        process.send_signal(signal.SIGINT)  # Ctrl-C
        process.communicate(timeout=60)
        assert process.returncode == 130
    run = find_run(hub, "slow-rollout.ipynb", "interrupted")
    assert run["ended_at"] and run["user"] == "bob"
