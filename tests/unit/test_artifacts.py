# ruff: noqa: F811 (the store fixtures are imported from test_store.py, and tests take them by name)
"""Run artifacts: publishing them from a real kernel, finding them in a recorded notebook (last one of
a name wins, malformed ones skipped, the caps), and keeping them on the run in the store.

The store tests run on SQLite here and on PostgreSQL in tests/integration/test_artifacts_postgres.py
(which overrides `database_url`, as test_store_postgres.py does).
"""

from __future__ import annotations

import json

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook, new_output
from opshub.runbooks.artifacts import ARTIFACT_MIME_TYPE, MAX_ARTIFACT_BYTES, MAX_ARTIFACTS, checked
from opshub.runbooks.masking import MASK, mask_notebook
from opshub.service.queue import RunQueue
from opshub.service.run_artifacts import REFUSED, artifacts_of
from sqlalchemy.orm.exc import DetachedInstanceError

from tests.unit.test_store import Clock, clock, database_url, start, store  # noqa: F401 (fixtures)

KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
ROWS = [{"host": "web-1.fleet", "package": "fleet-base", "version": "1.1", "rebooted": True, "down_s": 7.5}]


def artifact_output(name, data, output_type="display_data", **bundle) -> dict:
    """An output as a recorded notebook holds it (update_display_data: as an interactive run records it)."""
    output = {"output_type": output_type, "metadata": {}}
    output["data"] = {ARTIFACT_MIME_TYPE: {"name": name, "data": data, **bundle}, "text/plain": f"artifact {name}"}
    if output_type == "execute_result":
        output["execution_count"] = 1
    return output


def notebook_with(*outputs_per_cell) -> dict:
    """A recorded notebook: a markdown cell, then one code cell per list of outputs."""
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# a runbook"}]
    for outputs in outputs_per_cell:
        cells.append({"cell_type": "code", "metadata": {}, "source": "publish(...)", "outputs": list(outputs)})
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


# Publishing, in a real kernel


def test_publish_in_a_kernel_keeps_one_current_copy_with_a_table(tmp_path):
    code = [
        "from opshub.runbooks.artifacts import publish",
        f"publish('patched-hosts', {ROWS!r})",
        "publish('summary', {'hosts': 1})",
        f"publish('patched-hosts', {ROWS * 2!r})",  # a later cell: replaces the first
    ]
    notebook = new_notebook(cells=[new_code_cell(source) for source in code], metadata={"kernelspec": KERNEL})
    NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    shown = [
        (index, output["data"][ARTIFACT_MIME_TYPE]["name"], output["data"])
        for index, cell in enumerate(notebook.cells)
        for output in cell.outputs
        if ARTIFACT_MIME_TYPE in output.get("data", {})
    ]
    # one output per name, in the cell that first published it, updated to the latest data
    assert [(index, name) for index, name, _ in shown] == [(1, "patched-hosts"), (2, "summary")]
    table = shown[0][2]
    assert table[ARTIFACT_MIME_TYPE]["data"] == ROWS * 2
    assert table["text/html"].count("<tr>") == 3 and "<th>package</th>" in table["text/html"]
    assert "web-1.fleet  fleet-base  1.1" in table["text/plain"]
    assert "text/html" not in shown[1][2]  # not rows: no table
    assert artifacts_of(nbformat.writes(notebook)) == {"patched-hosts": ROWS * 2, "summary": {"hosts": 1}}


def test_in_jupyterlab_a_cell_run_again_shows_it_anew_and_other_cells_update_it():
    """JupyterLab sends each request's cell id: the cell that shows an artifact, run again, has its
    output cleared, so it displays it anew; another cell updates it where it is."""
    manager, client = start_new_kernel(kernel_name="python3")

    def run(code: str, cell: str) -> list[tuple[str, object]]:
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
        request = client.session.msg("execute_request", content, metadata={"cellId": cell})
        client.shell_channel.send(request)
        shown = []
        while True:
            message = client.get_iopub_msg(timeout=60)
            if message["parent_header"].get("msg_id") != request["header"]["msg_id"]:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content["execution_state"] == "idle":
                return shown
            if kind == "error":
                raise AssertionError(content["evalue"])
            if kind in ("display_data", "update_display_data"):
                shown.append((kind, content["data"][ARTIFACT_MIME_TYPE]["data"]))

    try:
        run("from opshub.runbooks.artifacts import publish", "imports")
        assert run("publish('hosts', [1])", "first") == [("display_data", [1])]
        assert run("publish('hosts', [2])", "first") == [("display_data", [2])]  # run again
        assert run("publish('hosts', [3])", "later") == [("update_display_data", [3])]
        assert run("publish('hosts', [4]); publish('hosts', [5])", "loop") == [
            ("update_display_data", [4]),
            ("update_display_data", [5]),
        ]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("Patched Hosts", [], "artifact name 'Patched Hosts' is not valid"),
        ("_refused", [], "is not valid"),
        ("a" * 65, [], "is not valid"),
        (None, [], "artifact name None is not valid"),
        ("hosts", {"when": object()}, "artifact 'hosts': the data must be JSON-serialisable"),
        ("hosts", float("nan"), "the data must be JSON-serialisable"),
        ("hosts", "x" * MAX_ARTIFACT_BYTES, "more than the 262,144 bytes a run keeps"),
    ],
)
def test_publish_refuses_what_the_service_would_not_keep(name, data, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        checked(name, data)


def test_tuples_come_back_as_json_does():
    assert checked("pairs", {"a": (1, 2)}) == {"a": [1, 2]}


# Finding them in a recorded notebook


def test_the_last_of_a_name_wins_whatever_the_output_type():
    notebook = notebook_with(
        [artifact_output("hosts", ["old"]), artifact_output("summary", {"n": 1}, "execute_result")],
        [artifact_output("hosts", ["new"], "update_display_data")],
    )
    found = artifacts_of(notebook)
    assert found == {"hosts": ["new"], "summary": {"n": 1}}
    assert list(found) == ["hosts", "summary"]  # in the order they were first published
    assert artifacts_of(json.dumps(notebook)) == found  # as the JSON text a report carries


def test_malformed_bundles_are_skipped_and_the_rest_kept():
    stream = new_output("stream", name="stdout", text=json.dumps({ARTIFACT_MIME_TYPE: {"name": "x", "data": 1}}))
    notebook = notebook_with(
        [
            new_output("display_data", data={ARTIFACT_MIME_TYPE: "not an object"}),
            new_output("display_data", data={ARTIFACT_MIME_TYPE: ["hosts", 1]}),
            artifact_output("Bad Name", 1),
            artifact_output("../etc", 1),
            new_output("display_data", data={ARTIFACT_MIME_TYPE: {"name": "no-data"}}),
            new_output("display_data", data={ARTIFACT_MIME_TYPE: {"name": "nan", "data": float("nan")}}),
            stream,  # printed text is not an artifact
            artifact_output("good", {"ok": True}),
        ]
    )
    notebook["cells"].append({"cell_type": "code", "outputs": "not a list", "source": ""})
    notebook["cells"].append("not a cell")
    notebook["cells"][0]["outputs"] = [artifact_output("in-markdown", 1)]  # only code cells' outputs count
    assert artifacts_of(notebook) == {"good": {"ok": True}}


@pytest.mark.parametrize("notebook", [None, "not json {", "[]", {"cells": "none"}, {"no": "cells"}])
def test_no_notebook_has_no_artifacts(notebook):
    assert artifacts_of(notebook) is None


def test_more_than_the_count_cap_keeps_the_first_and_says_what_was_refused():
    outputs = [artifact_output(f"a{i}", i) for i in range(MAX_ARTIFACTS + 3)]
    found = artifacts_of(notebook_with(outputs))
    assert [name for name in found if name != REFUSED] == [f"a{i}" for i in range(MAX_ARTIFACTS)]
    refused = found[REFUSED]
    assert refused["names"] == ["a64", "a65", "a66"] and refused["count"] == 3
    assert f"at most {MAX_ARTIFACTS} artifacts" in refused["reason"]


def test_more_than_the_size_cap_keeps_none_of_the_excess():
    big = "x" * (MAX_ARTIFACT_BYTES // 2)
    outputs = [artifact_output("first", big), artifact_output("second", big), artifact_output("small", [1, 2])]
    found = artifacts_of(notebook_with(outputs))
    assert found["first"] == big and "second" not in found and found["small"] == [1, 2]
    assert found[REFUSED]["names"] == ["second"] and "262,144 bytes" in found[REFUSED]["reason"]
    kept = {name: data for name, data in found.items() if name != REFUSED}
    assert len(json.dumps(kept, separators=(",", ":")).encode()) <= MAX_ARTIFACT_BYTES


def test_exactly_at_the_size_cap_is_kept():
    overhead = len(json.dumps({"edge": ""}, separators=(",", ":")))
    found = artifacts_of(notebook_with([artifact_output("edge", "x" * (MAX_ARTIFACT_BYTES - overhead))]))
    assert REFUSED not in found and len(found["edge"]) == MAX_ARTIFACT_BYTES - overhead


def test_masking_reaches_the_artifacts():
    secret = "hunter2-deploy-token"
    notebook = notebook_with([artifact_output("hosts", [{"host": "web-1", "note": f"token={secret}"}, secret])])
    found = artifacts_of(mask_notebook(notebook, [secret]))
    assert found == {"hosts": [{"host": "web-1", "note": f"token={MASK}"}, MASK]}


# Keeping them on the run (the store's column)


def test_heartbeats_and_the_finish_keep_the_current_artifacts(store):
    run = start(store)
    assert store.get_run(run.id).artifacts is None
    store.heartbeat(run.id, "bob", notebook_with([artifact_output("hosts", ["web-1"])]))
    assert store.get_run(run.id).artifacts == {"hosts": ["web-1"]}
    store.heartbeat(run.id, "bob")  # a heartbeat without the notebook changes nothing
    assert store.get_run(run.id).artifacts == {"hosts": ["web-1"]}
    store.heartbeat(run.id, "bob", notebook_with([artifact_output("hosts", ["web-1", "web-2"])]))
    assert store.get_run(run.id).artifacts == {"hosts": ["web-1", "web-2"]}
    finished = store.finish_run(run.id, "bob", "succeeded")  # no notebook: the last heartbeat's stay
    assert finished.artifacts == {"hosts": ["web-1", "web-2"]}


def test_the_finish_replaces_them_and_a_notebook_without_any_clears_them(store):
    run = start(store)
    store.heartbeat(run.id, "bob", notebook_with([artifact_output("hosts", ["web-1"])]))
    notebook = notebook_with([artifact_output("hosts", ["web-1", "web-2", "web-3"]), artifact_output("odd", 1)])
    assert store.finish_run(run.id, "bob", "succeeded", output_notebook=notebook).artifacts == {
        "hosts": ["web-1", "web-2", "web-3"],
        "odd": 1,
    }
    other = start(store)
    store.heartbeat(other.id, "bob", notebook_with([artifact_output("hosts", ["web-1"])]))
    store.heartbeat(other.id, "bob", notebook_with([]))  # the cells re-ran and published nothing
    assert store.get_run(other.id).artifacts is None


def test_artifacts_survive_the_output_cap(store):
    """The output cap trims outputs from the end; the artifacts have caps of their own."""
    padding = new_output("stream", name="stdout", text="x" * 30_000)  # more than the store's 20,000 bytes
    notebook = notebook_with([padding], [artifact_output("hosts", ["web-1"])])
    run = start(store)
    stored = store.finish_run(run.id, "bob", "failed", failed_cell=1, output_notebook=notebook)
    assert stored.output_truncated and ARTIFACT_MIME_TYPE not in stored.output_notebook
    assert stored.artifacts == {"hosts": ["web-1"]}


def test_a_malformed_artifact_never_fails_the_record(store):
    run = start(store)
    notebook = notebook_with([new_output("display_data", data={ARTIFACT_MIME_TYPE: 42}), artifact_output("ok", 1)])
    store.heartbeat(run.id, "bob", notebook)
    assert store.get_run(run.id).artifacts == {"ok": 1}


def test_the_caps_hold_in_the_database(store):
    outputs = [artifact_output(f"a{i}", "y" * 5000) for i in range(MAX_ARTIFACTS)]
    run = start(store)
    stored = store.finish_run(run.id, "bob", "succeeded", output_notebook=notebook_with(outputs))
    assert stored.artifacts[REFUSED]["count"] == MAX_ARTIFACTS - len(stored.artifacts) + 1
    assert store.get_run(run.id).artifacts == stored.artifacts


def test_the_runner_s_reports_keep_them_with_their_notebook(store):
    """A runner's heartbeat and finish (queue.py) store the artifacts in the same write as the notebook."""
    queue = RunQueue(store)
    queued = queue.enqueue("patch.ipynb", "requested", user="bob", requested_by="bob")
    ((claim,), _) = queue.claim(1)
    assert claim.run.id == queued.id
    queue.runner_heartbeat(queued.id, claim.token, output_notebook=notebook_with([artifact_output("hosts", ["web-1"])]))
    assert store.get_run(queued.id).artifacts == {"hosts": ["web-1"]}
    queue.runner_finish(queued.id, claim.token, "succeeded")  # a finish without the notebook keeps them
    assert store.get_run(queued.id).artifacts == {"hosts": ["web-1"]}


def test_lists_load_them_only_when_asked(store):
    run = start(store)
    store.heartbeat(run.id, "bob", notebook_with([artifact_output("hosts", ["web-1"])]))
    (listed,), _ = store.list_runs()
    with pytest.raises(DetachedInstanceError):
        listed.artifacts  # noqa: B018 (reading it is the test)
    (listed,), _ = store.list_runs(with_artifacts=True)
    assert listed.artifacts == {"hosts": ["web-1"]}
