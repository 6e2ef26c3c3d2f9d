"""Secrets a person sets inside a kernel of their live server never reach the run history in clear.

Bob runs cells in real kernels of his server (python3 and bash), driven over the kernel's websocket as
JupyterLab drives them: a cell sets a secret-named variable and prints it. The opshub server extension
records the interactive run; what the service stores (read back through its API with carol's token)
must show [masked] where the value was, and the kernel's execution counts must show that asking the
kernel for its environment added nothing to bob's notebook.
"""

from __future__ import annotations

import json
import sys
import uuid

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tests.kernels import KernelSession
from tests.livehub import wait_for

MASK = "[masked]"


@pytest.fixture(scope="module")
def bob(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    tokens = hub.tokens(users=["bob", "carol"])
    return {"token": tokens["bob"], "reader": tokens["carol"]}


def own_runbook(hub, name: str, kernel: dict, *sources: str) -> str:
    notebook = new_notebook(cells=[new_code_cell(source) for source in sources], metadata={"kernelspec": kernel})
    nbformat.write(notebook, hub.home("bob") / "runbooks" / f"{name}.ipynb")
    return f"runbooks/{name}.ipynb"


def stored_run(hub, reader: str, runbook: str) -> dict:
    """The one interactive run of `runbook` once it ended, as the service stores it."""

    def ended():
        params = {"runbook": runbook, "trigger": "interactive", "user": "bob"}
        runs = hub.service_api(reader, "GET", "runs", params=params).json()["runs"]
        return runs if runs and runs[0]["status"] != "running" else None

    runs = wait_for(ended, timeout=90, what=f"the interactive run of {runbook} to end")
    assert len(runs) == 1
    answer = hub.service_api(reader, "GET", f"runs/{runs[0]['id']}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def counts(results: list[dict]) -> list[int]:
    return [
        message["content"]["execution_count"]
        for result in results
        for message in result["messages"]
        if message["header"]["msg_type"] == "execute_reply"
    ]


def test_a_secret_set_and_printed_in_a_python_kernel_is_stored_masked(hub, bob):
    name = f"kernel-secret-{uuid.uuid4().hex[:8]}"
    password, token = f"pw-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    cells = [
        f"import os\nos.environ['DB_PASSWORD'] = '{password}'\nprint('password:', os.environ['DB_PASSWORD'])",
        f"%env API_TOKEN={token}",
        "print('token:', os.environ['API_TOKEN'])",
    ]
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = own_runbook(hub, name, kernel, *cells)
    with KernelSession(hub.url, "bob", bob["token"], path) as session:
        results = [session.execute(code) for code in cells]
        assert [r["status"] for r in results] == ["ok", "ok", "ok"]
        assert password in results[0]["stdout"], "bob sees his own output live"
        # the questions to the kernel after each cell took no execution count
        assert counts(results) == list(range(counts(results)[0], counts(results)[0] + 3))
    run = stored_run(hub, bob["reader"], f"{name}.ipynb")
    stored = json.dumps(run)
    assert password not in stored and token not in stored
    sources = [cell["source"] for cell in run["output_notebook"]["cells"]]
    assert sources[0] == cells[0].replace(password, MASK) and sources[1] == f"%env API_TOKEN={MASK}"
    outputs = [json.dumps(cell["outputs"]) for cell in run["output_notebook"]["cells"]]
    assert f"password: {MASK}" in outputs[0] and f"token: {MASK}" in outputs[2]


def test_a_secret_exported_in_a_bash_kernel_is_stored_masked(hub, bob):
    spec = hub.home("bob") / ".local" / "share" / "jupyter" / "kernels" / "bash"
    spec.mkdir(parents=True, exist_ok=True)  # found among bob's own kernelspecs, as `pip install --user` puts them
    argv = [sys.executable, "-m", "bash_kernel", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Bash", "language": "bash"}))
    name = f"bash-secret-{uuid.uuid4().hex[:8]}"
    token, password = f"tok-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"
    cells = [f"export API_TOKEN={token}\necho token: $API_TOKEN", f"DB_PASSWORD={password}", "echo pw: $DB_PASSWORD"]
    path = own_runbook(hub, name, {"name": "bash", "display_name": "Bash", "language": "bash"}, *cells)
    with KernelSession(hub.url, "bob", bob["token"], path, kernel="bash") as session:
        results = [session.execute(code) for code in cells]
        assert [r["status"] for r in results] == ["ok", "ok", "ok"], results
        assert token in results[0]["stdout"] and password in results[2]["stdout"]
        assert counts(results) == list(range(counts(results)[0], counts(results)[0] + 3))
    run = stored_run(hub, bob["reader"], f"{name}.ipynb")
    stored = json.dumps(run)
    assert token not in stored and password not in stored
    outputs = [json.dumps(cell["outputs"]) for cell in run["output_notebook"]["cells"]]
    assert f"token: {MASK}" in outputs[0] and f"pw: {MASK}" in outputs[2]
