"""The interactive-run recorder's rules, fed with Jupyter messages as a kernel broadcasts them.

The live behaviour (a real kernel in a real server, delivery to the real service, outages) is
tested in tests/integration/test_interactive_runs.py; these cover the rules one by one."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from types import SimpleNamespace

import pytest
from opshub.lab.recorder import FAILED_CELL_TAG, Deliverer, Recorder, Spool
from opshub.lab.spool import deployment_folder
from opshub.runbooks.client import ServiceClient

from tests.helpers import run_async

KERNEL = "k-1"


class Server(SimpleNamespace):
    """What the recorder reads from the Jupyter server: its root folder, sessions and kernels."""


@pytest.fixture
def server(tmp_path):
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "check.ipynb").write_text(
        json.dumps({"cells": [], "metadata": {"opshub": {"title": "Check"}}})
    )
    (tmp_path / "scratch.ipynb").write_text("{}")
    sessions = sqlite3.connect(":memory:", check_same_thread=False)  # scenarios run in a thread of their own
    sessions.execute("CREATE TABLE session (session_id, path, name, type, kernel_id)")
    kernels = []
    return Server(
        root_dir=str(tmp_path),
        session_manager=SimpleNamespace(cursor=sessions.cursor()),
        kernel_manager=SimpleNamespace(list_kernel_ids=lambda: list(kernels)),
        sessions=sessions,
        kernels=kernels,
    )


def open_notebook(server, path: str, kernel: str = KERNEL) -> None:
    server.sessions.execute("INSERT INTO session VALUES (?, ?, ?, 'notebook', ?)", ("s", path, path, kernel))
    server.kernels.append(kernel)


def recorder_for(server, tmp_path, **options) -> Recorder:
    options.setdefault("secret_names", [])
    options.setdefault("ask_kernels", False)  # no kernel here; tests/integration/test_kernel_secrets.py has one
    return Recorder(server, tmp_path / "runbooks", Spool(tmp_path / "spool"), **options)


def message(kind: str, request: str, **content) -> dict:
    return {"header": {"msg_type": kind}, "parent_header": {"msg_id": request}, "content": content}


def run_cell(recorder: Recorder, request: str, code: str, *outputs: dict, count: int = 1) -> None:
    recorder.on_message(KERNEL, message("status", request, execution_state="busy"))
    recorder.on_message(KERNEL, message("execute_input", request, code=code, execution_count=count))
    for output in outputs:
        recorder.on_message(KERNEL, output)
    recorder.on_message(KERNEL, message("status", request, execution_state="idle"))


def spooled(tmp_path) -> list[dict]:
    return Spool(tmp_path / "spool").records()


def test_cells_and_outputs_are_recorded_in_the_order_they_ran(server, tmp_path):
    open_notebook(server, "runbooks/check.ipynb")
    recorder = recorder_for(server, tmp_path)
    run_cell(recorder, "r1", "print('a')", message("stream", "r1", name="stdout", text="a\n"))
    run_cell(
        recorder,
        "r2",
        "6 * 7",
        message("execute_result", "r2", data={"text/plain": "42"}, metadata={}, execution_count=2),
        count=2,
    )
    (record,) = spooled(tmp_path)
    cells = record["notebook"]["cells"]
    assert [c["source"] for c in cells] == ["print('a')", "6 * 7"]
    assert cells[0]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "a\n"}]
    assert cells[1]["outputs"][0]["data"] == {"text/plain": "42"}
    assert record["start"]["runbook"] == "check.ipynb"
    assert record["start"]["trigger"] == "interactive"
    assert record["notebook"]["metadata"]["opshub"] == {"title": "Check"}
    assert record["end"] is None


def test_an_error_fails_the_run_and_tags_the_cell(server, tmp_path):
    open_notebook(server, "runbooks/check.ipynb")
    recorder = recorder_for(server, tmp_path)
    run_cell(recorder, "r1", "ok = 1")
    error = message("error", "r2", ename="RuntimeError", evalue="disk full", traceback=["RuntimeError: disk full"])
    run_cell(recorder, "r2", "raise RuntimeError('disk full')", error, count=2)
    recorder.end(KERNEL, "the kernel was shut down")
    (record,) = spooled(tmp_path)
    assert record["end"] == {"status": "failed", "failed_cell": 1, "error_summary": "RuntimeError: disk full"}
    assert FAILED_CELL_TAG in record["notebook"]["cells"][1]["metadata"]["tags"]
    assert record["notebook"]["metadata"]["opshub_run"]["ended"] == "the kernel was shut down"


def test_clear_output_clears_what_the_cell_printed_so_far(server, tmp_path):
    open_notebook(server, "runbooks/check.ipynb")
    recorder = recorder_for(server, tmp_path)
    run_cell(
        recorder,
        "r1",
        "progress()",
        message("stream", "r1", name="stdout", text="10%\n"),
        message("clear_output", "r1", wait=False),
        message("stream", "r1", name="stdout", text="100%\n"),
    )
    (record,) = spooled(tmp_path)
    assert record["notebook"]["cells"][0]["outputs"][0]["text"] == "100%\n"


def test_secret_values_are_masked_in_sources_and_outputs(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VAULT_CREDS", "hunter2-value")
    open_notebook(server, "runbooks/check.ipynb")
    recorder = recorder_for(server, tmp_path, secret_names=["VAULT_CREDS"])
    run_cell(recorder, "r1", "login('hunter2-value')", message("stream", "r1", name="stdout", text="hunter2-value\n"))
    text = json.dumps(spooled(tmp_path))
    assert "hunter2-value" not in text
    assert "[masked]" in text


def test_notebooks_outside_the_runbooks_folder_are_left_alone_unless_the_settings_say_so(server, tmp_path):
    open_notebook(server, "scratch.ipynb")
    run_cell(recorder_for(server, tmp_path), "r1", "print('x')")
    assert spooled(tmp_path) == []
    run_cell(recorder_for(server, tmp_path, record_outside=True), "r1", "print('x')")
    (record,) = spooled(tmp_path)
    assert record["start"]["runbook"].endswith("scratch.ipynb")


def test_an_idle_session_ends_and_the_next_cell_starts_a_new_run(server, tmp_path):
    open_notebook(server, "runbooks/check.ipynb")
    recorder = recorder_for(server, tmp_path, idle_minutes=0.001)  # 60 ms
    run_cell(recorder, "r1", "print('x')")
    time.sleep(0.1)
    recorder.check()
    run_cell(recorder, "r2", "print('y')", count=2)
    first, second = spooled(tmp_path)
    assert first["end"]["status"] == "succeeded"
    assert second["end"] is None
    assert first["id"] != second["id"]


def test_a_vanished_kernel_ends_its_run(server, tmp_path):
    open_notebook(server, "runbooks/check.ipynb")
    recorder = recorder_for(server, tmp_path)
    recorder.streams[KERNEL] = SimpleNamespace(close=lambda: None)
    run_cell(recorder, "r1", "print('x')")
    server.kernels.clear()
    recorder.check()
    (record,) = spooled(tmp_path)
    assert record["end"]["status"] == "succeeded"
    assert record["notebook"]["metadata"]["opshub_run"]["ended"] == "the kernel stopped"


def test_a_runbook_not_in_the_repository_is_drift(server, tmp_path):
    open_notebook(server, "runbooks/check.ipynb")  # tmp_path is no git checkout
    run_cell(recorder_for(server, tmp_path), "r1", "print('x')")
    (record,) = spooled(tmp_path)
    assert record["start"]["drift"] is True
    assert record["notebook"]["cells"][0]["metadata"]["opshub"]["edited"] is True


def test_consecutive_stream_messages_are_one_output_so_a_split_secret_is_masked(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "hunter2-value")
    open_notebook(server, "runbooks/check.ipynb")
    recorder = recorder_for(server, tmp_path)
    parts = [message("stream", "r1", name="stdout", text=text) for text in ("pw: hunt", "er2-value\n", "done\n")]
    run_cell(recorder, "r1", "login()", *parts)
    (record,) = spooled(tmp_path)
    assert record["notebook"]["cells"][0]["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "pw: [masked]\ndone\n"}
    ]


def asking_recorder(server, tmp_path, answers: list[dict]):
    """A recorder whose kernel tells the environments in `answers`, one per question, when released."""
    recorder = recorder_for(server, tmp_path, ask_kernels=True)
    recorder.questions = 0
    recorder.release = asyncio.Event()

    async def kernel_environment(kernel_id):
        recorder.questions += 1
        await recorder.release.wait()
        return answers[min(recorder.questions, len(answers)) - 1]

    recorder.kernel_environment = kernel_environment
    return recorder


def test_a_secret_the_kernel_set_is_masked_before_anything_is_spooled(server, tmp_path):
    open_notebook(server, "runbooks/check.ipynb")
    # the first answer predates the cell that sets the secret; the second one has it
    answers = [{"HOME": "/home/bob"}, {"DB_PASSWORD": "set-in-the-kernel", "HOME": "/home/bob"}]

    async def scenario():
        recorder = asking_recorder(server, tmp_path, answers)
        run_cell(recorder, "r0", "print('set-in-the-kernel')", message("stream", "r0", name="stdout", text="x\n"))
        await asyncio.sleep(0.05)  # the kernel is being asked
        code = "os.environ['DB_PASSWORD'] = 'set-in-the-kernel'\nprint(os.environ['DB_PASSWORD'])"
        run_cell(recorder, "r1", code, message("stream", "r1", name="stdout", text="set-in-the-kernel\n"), count=2)
        # a third cell starts and prints before the answer: it is not spooled until it finished
        recorder.on_message(KERNEL, message("execute_input", "r2", code="echo $DB_PASSWORD", execution_count=3))
        recorder.on_message(KERNEL, message("stream", "r2", name="stdout", text="set-in-the-kernel\n"))
        await asyncio.sleep(0.05)
        assert spooled(tmp_path) == [], "nothing is written before the kernel told its environment"
        recorder.release.set()
        await asyncio.sleep(0.05)
        return recorder

    recorder = run_async(scenario())
    assert recorder.questions == 2, "the second cell finished while the first question was out: asked again"
    (record,) = spooled(tmp_path)
    assert "set-in-the-kernel" not in json.dumps(record)
    assert [c["source"] for c in record["notebook"]["cells"]] == [
        "print('[masked]')",
        "os.environ['DB_PASSWORD'] = '[masked]'\nprint(os.environ['DB_PASSWORD'])",
    ]
    assert record["notebook"]["cells"][1]["outputs"][0]["text"] == "[masked]\n"
    # the running cell is in the record once the run ends, masked too
    recorder.end(KERNEL, "the kernel was shut down")
    (record,) = spooled(tmp_path)
    assert len(record["notebook"]["cells"]) == 3 and "set-in-the-kernel" not in json.dumps(record)


def test_a_restart_while_asking_cancels_the_question_and_spools_the_run(server, tmp_path):
    open_notebook(server, "runbooks/check.ipynb")

    async def scenario():
        recorder = asking_recorder(server, tmp_path, [{}])
        run_cell(recorder, "r1", "print('x')")
        await asyncio.sleep(0.05)
        question = recorder.asking[KERNEL]
        recorder.end(KERNEL, "the kernel was restarted")
        await asyncio.sleep(0.05)
        return question

    question = run_async(scenario())
    assert question.cancelled()
    (record,) = spooled(tmp_path)
    assert record["end"]["status"] == "succeeded" and len(record["notebook"]["cells"]) == 1


def test_a_shutdown_right_after_a_cell_waits_for_the_kernels_answer_so_its_secret_is_masked(server, tmp_path):
    """A notebook closed (its kernel shut down) just after a cell that set a secret: the shutdown waits
    for the environment question in flight, so the run is spooled with that secret masked."""
    open_notebook(server, "runbooks/check.ipynb")
    shut_down = []

    async def shutdown_kernel(kernel_id, *args, **kwargs):
        shut_down.append(kernel_id)
        recorder.forget(kernel_id, "the kernel was shut down")  # what jupyter_server's event then does

    async def scenario():
        nonlocal recorder
        recorder = asking_recorder(server, tmp_path, [{"API_TOKEN": "exported-secret"}])
        manager = SimpleNamespace(start_kernel=None, restart_kernel=None, shutdown_kernel=shutdown_kernel)
        recorder.attach(manager)
        run_cell(
            recorder, "r1", "export API_TOKEN=exported-secret", message("stream", "r1", name="stdout", text="ok\n")
        )
        closing = asyncio.ensure_future(manager.shutdown_kernel(KERNEL))
        await asyncio.sleep(0.1)
        assert shut_down == [], "the kernel is not shut down while its answer is out"
        recorder.release.set()
        await closing

    recorder = None
    run_async(scenario())
    assert shut_down == [KERNEL]
    (record,) = spooled(tmp_path)
    assert "exported-secret" not in json.dumps(record) and record["end"] is not None


def test_a_real_kernel_is_heard_from_the_first_cell_sent_at_once_after_its_start_and_restart(server, tmp_path):
    """jupyter_server's own kernel manager with real ipykernel kernels: the first cell sent at once after
    a start or a restart answers is recorded. Several kernels, as each start is its own chance to lose it."""
    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

    async def first_cell(kernel_manager, kernel_id: str, code: str) -> None:
        client = kernel_manager.get_kernel(kernel_id).client()
        client.start_channels()
        try:
            request = client.execute(code)  # at once: no wait_for_ready, as a frontend that just got the kernel
            while True:
                reply = await client.get_shell_msg(timeout=60)
                if reply["parent_header"].get("msg_id") == request:
                    break
            await asyncio.sleep(0.5)  # the recorder's IOPub callbacks run in this loop
        finally:
            client.stop_channels()

    async def scenario() -> list[list[str]]:
        kernel_manager = AsyncMappingKernelManager(root_dir=server.root_dir)
        server.kernel_manager = kernel_manager
        recorder = recorder_for(server, tmp_path)
        recorder.attach(kernel_manager)
        recorded = []
        try:
            for number in range(3):
                kernel_id = await kernel_manager.start_kernel(kernel_name="python3")
                open_notebook(server, "runbooks/check.ipynb", kernel=kernel_id)
                await first_cell(kernel_manager, kernel_id, f"print('first {number}')")
                recorded.append(
                    [cell["source"] for cell in recorder.runs.get(kernel_id, SimpleNamespace(cells=[])).cells]
                )
                await kernel_manager.restart_kernel(kernel_id)
                recorder.end(kernel_id, "restarted")  # what the restart's kernel_actions event does in a server
                await first_cell(kernel_manager, kernel_id, f"print('after restart {number}')")
                recorded.append(
                    [cell["source"] for cell in recorder.runs.get(kernel_id, SimpleNamespace(cells=[])).cells]
                )
        finally:
            await kernel_manager.shutdown_all()
        return recorded

    recorded = run_async(scenario())
    expected = [[f"print('{when} {number}')"] for number in range(3) for when in ("first", "after restart")]
    assert recorded == expected


class FakeService(ServiceClient):
    """What a deployment's opshub service heard from a person's server: every request, in order."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body=None):
        self.requests.append((method, path))


def spool_of(base, deployment: str) -> Spool:
    return Spool(deployment_folder(base, deployment))


def test_a_deployment_delivers_only_its_own_spooled_runs(server, tmp_path):
    """bob's account (and home) is the same for every deployment on the machine: A's run, spooled by A's
    recorder, goes to A's service and never to B's, whichever server of bob's delivers next."""
    base = tmp_path / "home" / ".local" / "share" / "opshub" / "interactive-runs"
    open_notebook(server, "runbooks/check.ipynb")
    recorder = Recorder(server, tmp_path / "runbooks", spool_of(base, "a" * 16), secret_names=[], ask_kernels=False)
    run_cell(recorder, "r1", "print('a')", message("stream", "r1", name="stdout", text="a\n"))
    recorder.end(KERNEL, "the kernel was shut down")
    (record,) = spool_of(base, "a" * 16).records()

    service_b = FakeService()
    assert Deliverer(spool_of(base, "b" * 16), lambda: service_b).deliver_once()
    assert service_b.requests == []
    assert spool_of(base, "a" * 16).records() == [record]  # still A's, waiting for A
    service_a = FakeService()  # and the positive control: A's own server delivers it
    assert Deliverer(spool_of(base, "a" * 16), lambda: service_a).deliver_once()
    assert service_a.requests == [("POST", "api/runs"), ("POST", f"api/runs/{record['id']}/finish")]
    assert spool_of(base, "a" * 16).records() == []


def test_runs_spooled_before_deployment_ids_go_to_the_first_deployment_then_are_left_alone(server, tmp_path, caplog):
    base = tmp_path / "interactive-runs"
    open_notebook(server, "runbooks/check.ipynb")
    earlier = Recorder(
        server, tmp_path / "runbooks", Spool(deployment_folder(base, None)), secret_names=[], ask_kernels=False
    )
    run_cell(earlier, "r1", "print('a')")
    earlier.end(KERNEL, "the kernel was shut down")
    (record,) = Spool(base).records()  # no id: spooled where it always was

    assert spool_of(base, "a" * 16).records() == [record]  # the first deployment with an id takes it over
    assert not list(base.glob("*.json"))
    (base / "old-run.json").write_text(json.dumps(record))  # one more from before, now that A has a folder
    with caplog.at_level("WARNING", logger="opshub.recorder"):
        assert spool_of(base, "b" * 16).records() == []
    assert (base / "old-run.json").exists()
    assert "left alone, not delivered" in caplog.text and "a" * 16 in caplog.text


def test_a_deployment_id_that_is_not_a_folder_name_spools_where_runs_always_were(tmp_path, caplog):
    base = tmp_path / "interactive-runs"
    with caplog.at_level("ERROR", logger="opshub.recorder"):
        assert deployment_folder(base, "../../elsewhere") == base
    assert "not a folder name" in caplog.text


def test_a_spooled_run_that_is_not_a_run_record_is_set_aside_naming_the_field(server, tmp_path):
    """Records are checked as the service checks them (opshub.run_record) before they are sent: one the
    service would refuse for good is set aside with the reason, and the others are still delivered."""
    open_notebook(server, "runbooks/check.ipynb")
    recorder = recorder_for(server, tmp_path)
    run_cell(recorder, "r1", "print('a')")
    recorder.end(KERNEL, "the kernel was shut down")
    (good,) = spooled(tmp_path)
    spool = Spool(tmp_path / "spool")
    bad = {**good, "id": "bad-run", "end": {**good["end"], "failed_cell": "1"}}
    spool.write(bad)
    service = FakeService()
    assert Deliverer(spool, lambda: service).deliver_once()
    assert spool.records() == []
    reason = (tmp_path / "spool" / "bad-run.refused.reason").read_text()
    assert "failed_cell must be a whole number or null" in reason
    assert ("POST", f"api/runs/{good['id']}/finish") in service.requests
    assert ("POST", "api/runs/bad-run/finish") not in service.requests
