"""Interactive runs: cells a person runs in a runbook's kernel, in a live user server, land in the history.

The kernel is driven through the Jupyter protocol exactly as JupyterLab drives it: a session created
with the server's REST API, then execute requests over the kernel's websocket. The opshub server
extension in bob's server records what the kernel broadcasts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
import requests
from nbformat.v4 import new_code_cell, new_notebook

from tests.kernels import KernelSession
from tests.livehub import wait_for


@pytest.fixture(scope="module")
def bob(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    tokens = hub.tokens(users=["bob", "carol"])
    return {"token": tokens["bob"], "reader": tokens["carol"], "home": hub.home("bob")}


def own_runbook(hub, name: str, *sources: str) -> str:
    """A runbook bob writes in his runbooks folder (not in the repository). Returns its server path."""
    notebook = new_notebook(
        cells=[new_code_cell(source) for source in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(notebook, hub.home("bob") / "runbooks" / f"{name}.ipynb")
    return f"runbooks/{name}.ipynb"


def interactive_runs(hub, reader: str, runbook: str, status: str | None = None) -> list[dict]:
    params = {"runbook": runbook, "trigger": "interactive", "user": "bob"}
    if status:
        params["status"] = status
    answer = hub.service_api(reader, "GET", "runs", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["runs"]


def ended_run(hub, reader: str, runbook: str, timeout: float = 60) -> dict:
    """The one interactive run of `runbook`, once it has ended, with its recorded notebook."""

    def ended():
        runs = interactive_runs(hub, reader, runbook)
        return runs if runs and runs[0]["status"] != "running" else None

    runs = wait_for(ended, timeout=timeout, what=f"the interactive run of {runbook} to end")
    assert len(runs) == 1, f"expected one interactive run of {runbook}, got {len(runs)}"
    return hub.service_api(reader, "GET", f"runs/{runs[0]['id']}").json()


def outputs_text(cell: dict) -> str:
    return json.dumps(cell["outputs"])


def test_cells_outputs_and_a_failing_cell_are_recorded(hub, bob):
    name = f"interactive-{uuid.uuid4().hex[:8]}"
    path = own_runbook(hub, name, "print('checking disks')", "1 / 0")
    with KernelSession(hub.url, "bob", bob["token"], path) as kernel:
        assert kernel.execute("print('checking disks')")["status"] == "ok"
        assert kernel.execute("1 / 0")["status"] == "error"
        assert kernel.execute("answer = 6 * 7\nanswer")["status"] == "ok"
        # while the session goes on, the history shows it running with the cells so far
        running = wait_for(
            lambda: interactive_runs(hub, bob["reader"], f"{name}.ipynb", "running"), timeout=30, what="running run"
        )
        assert running[0]["user"] == "bob"
    run = ended_run(hub, bob["reader"], f"{name}.ipynb")
    assert run["status"] == "failed"
    assert run["trigger"] == "interactive"
    assert run["drift"] is True, "a runbook the repository does not have is drift"
    cells = run["output_notebook"]["cells"]
    assert [c["source"] for c in cells] == ["print('checking disks')", "1 / 0", "answer = 6 * 7\nanswer"]
    assert "checking disks" in outputs_text(cells[0])
    assert cells[1]["outputs"][0]["ename"] == "ZeroDivisionError"
    assert run["failed_cell"] == 1
    assert "ZeroDivisionError" in run["error_summary"]
    assert cells[2]["outputs"][0]["data"]["text/plain"] == "42"
    assert [c["execution_count"] for c in cells] == sorted(c["execution_count"] for c in cells)
    # bob's server says so in its log (a local server writes to the hub's output)
    assert f"opshub: recording the interactive run {run['id']}" in hub.log_file.read_text()

    token = (hub.state / "metrics-token").read_text().strip()
    metrics = requests.get(f"{hub.url}/services/opshub/metrics", headers={"Authorization": f"Bearer {token}"})
    # a runbook the repository does not have is counted as `other` (bounded label values)
    counted = re.search(
        r'opshub_runbook_runs_total\{runbook="other",status="failed",trigger="interactive"\} (\S+)', metrics.text
    )
    assert counted and float(counted.group(1)) >= 1, metrics.text


def test_a_kernel_restart_ends_the_run_and_the_next_cell_starts_another(hub, bob):
    name = f"restart-{uuid.uuid4().hex[:8]}"
    path = own_runbook(hub, name, "print('first')")
    with KernelSession(hub.url, "bob", bob["token"], path) as kernel:
        kernel.execute("print('first')")
        kernel.restart()
        wait_for(
            lambda: interactive_runs(hub, bob["reader"], f"{name}.ipynb", "succeeded"), timeout=60, what="first run"
        )
        kernel.execute("print('second')")

    def two_ended():
        runs = interactive_runs(hub, bob["reader"], f"{name}.ipynb")
        return runs if len(runs) == 2 and all(r["status"] != "running" for r in runs) else None

    runs = wait_for(two_ended, timeout=60, what="two ended runs")
    assert sorted(r["status"] for r in runs) == ["succeeded", "succeeded"]


def test_secrets_printed_in_a_cell_are_masked(hub, bob):
    name = f"secret-{uuid.uuid4().hex[:8]}"
    code = "import os\nprint('token is', os.environ['JUPYTERHUB_API_TOKEN'])"
    path = own_runbook(hub, name, code)
    server_token = hub.server_environment("bob")["JUPYTERHUB_API_TOKEN"]
    with KernelSession(hub.url, "bob", bob["token"], path) as kernel:
        reply = kernel.execute(code)
        assert server_token in reply["stdout"], "the kernel really printed the secret"
    run = ended_run(hub, bob["reader"], f"{name}.ipynb")
    text = outputs_text(run["output_notebook"]["cells"][0])
    assert server_token not in json.dumps(run)
    assert "token is [masked]" in text


def test_an_unchanged_runbook_has_no_drift_and_an_edited_one_has(hub, bob):
    runbook = "patch-server-stack.ipynb"  # no other test edits it in bob's folder; its parameters only assign
    path = bob["home"] / "runbooks" / runbook
    notebook = nbformat.read(path, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    before = {r["id"] for r in interactive_runs(hub, bob["reader"], runbook)}

    with KernelSession(hub.url, "bob", bob["token"], f"runbooks/{runbook}") as kernel:
        assert kernel.execute(parameters.source)["status"] == "ok"
    unchanged = wait_for(lambda: new_ended(hub, bob["reader"], runbook, before), timeout=60, what="unchanged run")
    assert unchanged["drift"] is False
    assert unchanged["runbook_commit"]

    saved = path.with_suffix(".saved")
    shutil.copy(path, saved)
    try:
        parameters.source = parameters.source.replace('stack = "lab"', 'stack = "web"')
        assert 'stack = "web"' in parameters.source
        nbformat.write(notebook, path)  # a local edit, as nbgitpuller keeps them
        before |= {unchanged["id"]}
        with KernelSession(hub.url, "bob", bob["token"], f"runbooks/{runbook}") as kernel:
            assert kernel.execute(parameters.source)["status"] == "ok"
        edited = wait_for(lambda: new_ended(hub, bob["reader"], runbook, before), timeout=60, what="edited run")
        assert edited["drift"] is True
        assert edited["output_notebook"]["cells"][0]["metadata"]["opshub"]["edited"] is True
    finally:
        shutil.move(saved, path)


def new_ended(hub, reader, runbook, known):
    fresh = [r for r in interactive_runs(hub, reader, runbook) if r["id"] not in known and r["status"] != "running"]
    return hub.service_api(reader, "GET", f"runs/{fresh[0]['id']}").json() if fresh else None


def test_notebooks_outside_the_runbooks_folder_are_not_recorded(hub, bob):
    marker = f"scratch-{uuid.uuid4().hex[:8]}"
    nbformat.write(new_notebook(cells=[new_code_cell(f"print('{marker}')")]), bob["home"] / f"{marker}.ipynb")
    with KernelSession(hub.url, "bob", bob["token"], f"{marker}.ipynb") as kernel:
        assert kernel.execute(f"print('{marker}')")["status"] == "ok"
    # Recording is asynchronous. A runbook run after the scratch notebook is delivered after it (the
    # spool is sent oldest first), so once that run has ended in the history, a recorded scratch
    # notebook would have been delivered (or refused) too.
    control = own_runbook(hub, f"after-{marker}", "print('control')")
    with KernelSession(hub.url, "bob", bob["token"], control) as kernel:
        assert kernel.execute("print('control')")["status"] == "ok"
    assert ended_run(hub, bob["reader"], f"after-{marker}.ipynb")["status"] == "succeeded"

    runs = hub.service_api(bob["reader"], "GET", "runs", params={"user": "bob", "limit": 1000}).json()["runs"]
    assert [r["runbook"] for r in runs if marker in r["runbook"]] == [f"after-{marker}.ipynb"]
    log = hub.log_file.read_text().splitlines()
    assert not [line for line in log if "recording the interactive run" in line and f"/{marker}.ipynb" in line]
    spool = bob["home"] / ".local" / "share" / "opshub" / "interactive-runs"
    # (each deployment's spool is a folder of its own in there)
    left = [p.name for p in spool.rglob("*") if p.is_file() and f"print('{marker}')" in p.read_text()]
    assert not left, f"the scratch notebook is in the spool (pending or refused): {left}"


def service_pids(hub) -> list[int]:
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    return [
        int(line.split()[0])
        for line in out.splitlines()
        if "-m opshub.service " in line and str(hub.state) in line and "ps -eww" not in line
    ]


def test_cells_run_while_the_service_is_down_are_delivered_once(hub, bob):
    name = f"outage-{uuid.uuid4().hex[:8]}"
    path = own_runbook(hub, name, "print('before')", "print('during 1')", "print('during 2')", "print('after')")
    with KernelSession(hub.url, "bob", bob["token"], path) as kernel:
        kernel.execute("print('before')")
        wait_for(lambda: interactive_runs(hub, bob["reader"], f"{name}.ipynb"), timeout=30, what="the run's start")
        (old,) = service_pids(hub)
        os.kill(old, signal.SIGKILL)
        # the hub restarts its managed service; the cells below run while it is down or starting
        kernel.execute("print('during 1')")
        kernel.execute("print('during 2')")

        def restarted():
            pids = [p for p in service_pids(hub) if p != old]
            try:
                up = requests.get(f"{hub.url}/services/opshub/api/runs", timeout=5).status_code == 403
            except requests.RequestException:
                up = False
            return pids if pids and up else None

        wait_for(restarted, timeout=90, what="the opshub service to be restarted by the hub")
        kernel.execute("print('after')")
    run = ended_run(hub, bob["reader"], f"{name}.ipynb", timeout=120)
    texts = [outputs_text(c) for c in run["output_notebook"]["cells"]]
    assert len(texts) == 4
    for expected, text in zip(["before", "during 1", "during 2", "after"], texts, strict=True):
        assert expected in text
    assert run["status"] == "succeeded"


FRESH_KERNELS = 16  # with the race open, a few of these lose their first cell under load
AT_ONCE = 4  # kernels started together, as when several notebooks are opened and run at once


def test_the_first_cell_of_every_fresh_kernel_is_recorded_under_load(hub, bob):
    """A freshly opened notebook's "Run All": the session is created and its first cell sent at once.

    Many fresh kernels, a few at a time, while two processes burn the CPU: the first cell of every one
    of them must be in its recorded run, with its output.
    """
    name = f"first-cell-{uuid.uuid4().hex[:8]}"
    runbooks = [f"{name}-{i}" for i in range(FRESH_KERNELS)]
    for runbook in runbooks:
        own_runbook(hub, runbook, f"print('first of {runbook}')", "print('second')")

    def first_cell_at_once(runbook: str) -> None:
        with KernelSession(hub.url, "bob", bob["token"], f"runbooks/{runbook}.ipynb") as kernel:
            assert kernel.execute(f"print('first of {runbook}')")["status"] == "ok"
            assert kernel.execute("print('second')")["status"] == "ok"  # so a run exists even if the first is lost

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        with ThreadPoolExecutor(AT_ONCE) as pool:
            list(pool.map(first_cell_at_once, runbooks))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()

    lost = []
    deadline = time.monotonic() + 120  # delivery is asynchronous; one deadline for all, so every loss is listed
    for runbook in runbooks:
        try:
            run = ended_run(hub, bob["reader"], f"{runbook}.ipynb", timeout=max(deadline - time.monotonic(), 1))
        except TimeoutError:
            lost.append((runbook, "no run recorded at all"))
            continue
        cells = run["output_notebook"]["cells"]
        if [c["source"] for c in cells] != [f"print('first of {runbook}')", "print('second')"]:
            lost.append((runbook, [c["source"] for c in cells]))
        elif f"first of {runbook}" not in outputs_text(cells[0]):
            lost.append((runbook, "the first cell's output"))
    assert not lost, f"{len(lost)} of {FRESH_KERNELS} fresh kernels lost their first cell: {lost}"
