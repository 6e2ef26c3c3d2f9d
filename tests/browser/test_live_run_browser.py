"""Watching a run live, in a browser: "bob requests a runbook and watches its cells arrive one by one,
scrolled where he left off, while the run history in another tab turns it from running to succeeded;
a failed run's link lands on the failing cell, named the way the terminal names it."

Nothing here reloads a page: each page follows the run in place (service/static/live.js), and the test
counts the main frame's navigations to prove it.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from playwright.sync_api import expect

from tests.helpers import git
from tests.livehub import Hub, wait_for

from .conftest import screenshot
from .test_unattended_browser import api_run, log_in_to_home

PREFIX = "/services/opshub/"
STEPS = "live-steps.ipynb"
FAILS = "fails-at-reboot.ipynb"
FRAME = "iframe.notebook"  # the notebook shown (a newer one loads hidden, and is not .notebook until shown)
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def steps_notebook() -> dict:
    cells = [new_markdown_cell("# Live steps"), new_code_cell("pause = 4", metadata={"tags": ["parameters"]})]
    for step in range(1, 5):
        cells.append(new_markdown_cell(f"## Step {step}"))
        # each step prints a screenful, so that the page is taller than the window
        cells.append(
            new_code_cell(
                f"import time\ntime.sleep(pause)\nfor line in range(30):\n    print('step {step} line', line)\nprint('step', {step}, 'done')"
            )
        )
    return new_notebook(cells=cells, metadata={"kernelspec": KERNEL})


def failing_notebook() -> dict:
    # the runbook's own HTML tries to run scripts in the viewer's browser: it never may
    attack = (
        "from IPython.display import HTML, display\n"
        "display(HTML(\"<b id='bold'>inventory read</b><script>document.body.innerHTML = 'pw' + 'ned'</script>"
        "<img src='data:,' onerror=\\\"document.body.innerHTML = 'pw' + 'ned'\\\">\"))\n"
        "for host in range(80):\n    print('checked host', host)"
    )
    return new_notebook(
        cells=[
            new_markdown_cell("# Patch the stack"),
            new_code_cell(attack),
            new_markdown_cell("## Reboot the hosts"),
            new_code_cell("raise RuntimeError('web2 did not come back')"),
            new_code_cell("print('never reached')"),
        ],
        metadata={"kernelspec": KERNEL},
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    the_hub = Hub(tmp_path_factory.mktemp("live-run-browser"))
    for name, notebook in ((STEPS, steps_notebook()), (FAILS, failing_notebook())):
        nbformat.write(notebook, the_hub.upstream / name)
        git("add", name, cwd=the_hub.upstream)
    git("commit", "-q", "-m", "add the live runbooks", cwd=the_hub.upstream)
    the_hub.start()
    yield the_hub
    the_hub.stop()


def main_frame_navigations(page) -> list[str]:
    seen: list[str] = []
    page.on("framenavigated", lambda frame: frame == page.main_frame and seen.append(frame.url))
    return seen


def script_errors(page) -> list[str]:
    """What the page's scripts raised or logged as errors (a broken live.js must fail the test, not hang it)."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # the notebook frame's own (blocked: that is the point) scripts are not the page's
    page.on(
        "console",
        lambda message: (
            message.type == "error"
            and "/notebook" not in message.location.get("url", "")
            and errors.append(message.text)
        ),
    )
    return errors


def request(hub, token, runbook: str, **parameters) -> str:
    answer = hub.service_api(token, "POST", "requests", json={"runbook": runbook, "parameters": parameters})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_a_requested_runs_cells_appear_one_by_one_and_the_reader_keeps_his_place(page, hub):
    tokens = hub.tokens(users=["bob"])
    page.set_viewport_size({"width": 1280, "height": 600})
    errors = script_errors(page)
    log_in_to_home(page, hub, "bob")
    history = page.context.new_page()
    history.goto(f"{hub.url}{PREFIX}")
    expect(history.locator("#runs")).to_be_visible()
    history_navigations = main_frame_navigations(history)

    run_id = request(hub, tokens["bob"], STEPS)
    page.goto(f"{hub.url}{PREFIX}runs/{run_id}")
    navigations = main_frame_navigations(page)
    output = page.frame_locator(FRAME).locator("body")
    try:
        expect(output).to_contain_text("step 1 done", timeout=120_000)
    finally:
        print("script errors:", errors)
    # the run goes on: its later cells are not there yet, and the page says which cell runs now
    assert "step 3 done" not in output.inner_text()
    expect(page.locator("#run-status")).to_have_text("running")
    expect(page.locator("#running-cell")).to_contain_text("(Step 2)")
    expect(page.locator("#cells-done")).to_contain_text("of 5 code cells ran")
    screenshot(page, "live-run-step-1")
    # the history tab shows the run without being reloaded
    row = history.locator("#runs tbody tr", has=history.locator(f"a[href='{PREFIX}runs/{run_id}']"))
    expect(row.locator(".status-badge")).to_have_text("running", timeout=30_000)

    # bob scrolls up a little, away from the end: new cells arrive and he stays where he was
    page.evaluate("window.scrollTo(0, 150)")
    expect(output).to_contain_text("step 2 done", timeout=60_000)
    page.wait_for_timeout(500)  # the new notebook has replaced the old one
    assert page.evaluate("window.scrollY") == 150

    # then he scrolls to the end: the page follows the end as the cells come
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    expect(output).to_contain_text("step 3 done", timeout=60_000)
    page.wait_for_timeout(500)
    place = page.evaluate("[window.innerHeight, window.scrollY, document.documentElement.scrollHeight]")
    assert place[0] + place[1] >= place[2] - 60, place  # at the end still

    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=120_000)
    expect(output).to_contain_text("step 4 done")
    assert errors == []
    expect(page.locator("#run-report")).to_contain_text("Succeeded")
    screenshot(page, "live-run-succeeded")
    expect(row.locator(".status-badge")).to_have_text("succeeded", timeout=30_000)
    assert navigations == [] and history_navigations == []  # all of it in place


def test_a_failed_runs_link_lands_on_the_failing_cell_and_the_runbooks_scripts_never_run(page, hub):
    tokens = hub.tokens(users=["bob"])
    run_id = request(hub, tokens["bob"], FAILS)
    wait_for(lambda: api_run(hub, tokens["bob"], run_id)["status"] == "failed", timeout=180, what="the run to fail")

    log_in_to_home(page, hub, "bob")
    page.goto(f"{hub.url}{PREFIX}runs/{run_id}")
    # the error first, and the failing cell named one way: its place as the terminal counts and its heading
    expect(page.locator("#error-summary")).to_contain_text("RuntimeError: web2 did not come back")
    link = page.locator("#failed-cell-link")
    expect(link).to_have_text("cell 4 (Reboot the hosts)")
    output = page.frame_locator(FRAME)
    expect(output.locator("#bold")).to_have_text("inventory read")
    assert "pwned" not in output.locator("body").inner_text()
    expect(output.locator("body")).not_to_contain_text("An Exception was encountered")  # no papermill banner

    failing = output.locator(".celltag_opshub-failed-cell")
    assert failing.bounding_box()["y"] > 1200  # far below the window (80 hosts printed above)
    link.click()
    expect(page).to_have_url(re.compile(r"#failed-cell$"))
    wait_for(lambda: 0 <= failing.bounding_box()["y"] < 700, timeout=10, interval=0.2, what="the failing cell in view")
    screenshot(page, "live-run-failed-cell")
