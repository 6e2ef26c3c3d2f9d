"""Watching runs live, the pure parts: who a change wakes (service/live.py), what the heartbeat sends while a
run goes (runbooks/execute.py), how a cell is named everywhere (runbooks/results.py), and what
`opshub request --wait` prints per cell (runbooks/request.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import time

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from opshub.runbooks.execute import Heartbeat
from opshub.runbooks.request import CellPrinter
from opshub.runbooks.results import cell_name
from opshub.service.live import LiveChanges
from opshub.service.visibility import RunVisibility


def waited(changes: LiveChanges, after: int, **kwargs) -> tuple[int, float]:
    """Wait while `kwargs["during"]` runs on the loop; the answer and how long it took."""
    during = kwargs.pop("during", None)

    async def main():
        started = time.monotonic()
        task = asyncio.ensure_future(changes.wait(after, **kwargs))
        await asyncio.sleep(0.05)
        if during:
            during()
        return await task, time.monotonic() - started

    # a loop of its own, in a thread: the suite may have left an event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def test_a_wait_ends_at_the_change_it_waits_for_and_not_at_others():
    changes = LiveChanges()
    changes.changed("r1", "a.ipynb", "bob")
    assert waited(changes, 0, run_id="r1", timeout=5)[0] == 1  # it changed already: at once
    seq, took = waited(changes, 1, run_id="r1", timeout=5, during=lambda: changes.changed("r1", "a.ipynb", "bob"))
    assert seq == 2 and took < 1
    seq, took = waited(changes, 2, run_id="r1", timeout=0.3, during=lambda: changes.changed("r2", "a.ipynb", "bob"))
    assert seq == 2 and took >= 0.3  # another run's change: its number stays, after the timeout


def test_changes_a_viewer_may_not_see_wake_nobody_and_leave_the_number_alone():
    changes = LiveChanges()
    carol = RunVisibility.of("carol", {"secret.ipynb"})
    seq, took = waited(
        changes, 0, visibility=carol, timeout=0.3, during=lambda: changes.changed("r1", "secret.ipynb", "bob")
    )
    assert (seq, took >= 0.3) == (0, True)
    assert waited(changes, 0, visibility=RunVisibility.of("bob", {"secret.ipynb"}), timeout=5)[0] == 1  # his own
    seq, took = waited(changes, 1, visibility=carol, timeout=5, during=lambda: changes.changed("r2", "open.ipynb", "x"))
    assert seq == 2 and took < 1


def test_a_number_from_before_a_restart_or_past_what_is_kept_is_answered_at_once():
    changes = LiveChanges(keep=2)
    assert waited(changes, 57, timeout=5)[0] == 0  # the service restarted: fetch again
    for i in range(5):
        changes.changed(f"r{i}", "a.ipynb", "bob")
    assert waited(changes, 1, run_id="unrelated", timeout=5)[0] == 5  # older than what is kept: maybe


def runbook() -> dict:
    return new_notebook(
        cells=[
            new_markdown_cell("# Patch the stack\nintro"),
            new_code_cell("stack = 'web'", metadata={"tags": ["parameters"]}),
            new_markdown_cell("## Reboot the hosts"),
            new_code_cell("print('rebooting')\nraise RuntimeError('host down')"),
        ]
    )


def test_a_cell_is_named_by_its_place_as_the_terminal_counted_and_its_heading():
    nb = runbook()
    assert cell_name(nb, 3) == "cell 4 (Reboot the hosts)"
    assert cell_name(nb, 1) == "cell 2 (Patch the stack)"
    # papermill's banners, added to a failed run's notebook, do not shift the number
    banner = new_markdown_cell(
        "An Exception was encountered at 'In [3]'.", metadata={"tags": ["papermill-error-cell-tag"]}
    )
    nb.cells.insert(0, banner)
    nb.cells.insert(
        4, nbformat.from_dict({**banner, "source": "## Execution using papermill encountered an exception here"})
    )
    assert cell_name(nb, 5) == "cell 4 (Reboot the hosts)"
    untitled = new_notebook(cells=[new_code_cell("x = 1\ny = 2")])
    assert cell_name(untitled, 0) == "cell 1 (x = 1)"


def test_the_heartbeat_sends_the_cells_so_far_masked_and_the_streams_bounded():
    sent = []

    class Recorder:
        def heartbeat(self, run_id, beat=None):
            sent.append(beat.output_notebook if beat else None)

    nb = runbook()
    nb.cells[1].metadata["papermill"] = {"status": "running", "start_time": "2026-12-05T05:00:00+00:00"}
    beat = Heartbeat(Recorder(), "run-1", 60, print, mask=lambda n: {**n, "masked": True}, stream_seconds=60)
    beat.start()
    try:
        beat.show(nb, urgent=True, finished=(1, True))
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sent) == 1 and sent[0]["masked"]
        assert sent[0]["cells"][1]["metadata"]["papermill"]["status"] == "completed"  # marked ended in the copy
        assert "end_time" in sent[0]["cells"][1]["metadata"]["papermill"]
        assert nb.cells[1].metadata["papermill"]["status"] == "running"  # the run's own notebook is untouched
        beat.show(nb, urgent=False)  # a cell printed, less than stream_seconds after the last copy: not yet
        time.sleep(0.3)
        assert len(sent) == 1
    finally:
        beat.stop()


def test_opshub_request_wait_prints_each_cell_once_when_it_has_ended():
    nb = runbook()
    out = io.StringIO()
    printer = CellPrinter(out)
    nb.cells[0].metadata["papermill"] = {"status": "completed"}  # papermill marks markdown cells too
    nb.cells[1].metadata["papermill"] = {"status": "completed", "duration": 0.25}
    nb.cells[3].metadata["papermill"] = {"status": "running"}
    printer.show(nb)
    assert out.getvalue().splitlines() == ["[1/4]   cell 1: # Patch the stack", "[2/4] ▶ cell 2: stack = 'web' ✓ 0.2s"]
    printer.show(nb)  # nothing new: nothing printed again
    assert len(out.getvalue().splitlines()) == 2
    nb.cells[2].metadata["papermill"] = {"status": "completed"}
    nb.cells[3].metadata["papermill"] = {"status": "failed", "duration": 1.5}
    nb.cells[3].outputs = [new_output("stream", name="stdout", text="rebooting\n")]
    printer.show(nb)
    assert out.getvalue().splitlines()[2:] == [
        "[3/4]   cell 3: ## Reboot the hosts",
        "[4/4] ▶ cell 4: print('rebooting') ✗ 1.5s",
        "rebooting",
    ]
