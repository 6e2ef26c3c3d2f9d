"""Requesting an unattended run from a runbook's page, in a browser: "an operator requests the patching
runbook (dry run) from the page, watches it queue, run and finish, and a viewer sees it."

The runner runs one run at a time here (runner.max_concurrent 1), and a slow runbook requested over
the API holds that slot, so bob's run is seen `queued` before it runs. The run page follows the run in
place (never reloading itself): the test never reloads it either.
"""

from __future__ import annotations

import re
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.helpers import git
from tests.livehub import Hub, wait_for

from .conftest import log_in, screenshot

RUNBOOK = "patch-server-stack.ipynb"
SLOW = "slow-warm-up.ipynb"  # holds the runner's only slot while bob requests his run
SLOW_SECONDS = 30
PREFIX = "/services/opshub/"


def slow_notebook() -> dict:
    return new_notebook(
        cells=[
            new_markdown_cell("# Slow warm-up (holds the runner)"),
            new_code_cell("seconds = 1", metadata={"tags": ["parameters"]}),
            new_code_cell("import time\ntime.sleep(seconds)\nprint('warmed up')"),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    def configure(settings):
        settings["runner"] = {"max_concurrent": 1}

    the_hub = Hub(tmp_path_factory.mktemp("unattended-browser-hub"), configure=configure)
    nbformat.write(slow_notebook(), the_hub.upstream / SLOW)
    git("add", SLOW, cwd=the_hub.upstream)
    git("commit", "-q", "-m", f"add {SLOW}", cwd=the_hub.upstream)
    the_hub.start()
    yield the_hub
    the_hub.stop()


def snap(page, name: str) -> None:
    """A screenshot of a page that may be refreshing itself: retry when it was caught mid-navigation."""
    for attempt in range(5):
        try:
            screenshot(page, name)
            return
        except PlaywrightError:
            if attempt == 4:
                raise
            page.wait_for_load_state("load")


def log_in_to_home(page, hub, user: str) -> None:
    """Log in through the form to the hub's home page (an operator's login would otherwise go on
    to start their JupyterLab, which this test does not need)."""
    from tests.livehub import DEMO_PASSWORD

    page.goto(f"{hub.url}/hub/login?next=/hub/home")
    page.fill("#username_input", user)
    page.fill("#password_input", DEMO_PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(re.compile(r"/hub/home$"))


def api_run(hub, token, run_id) -> dict:
    return hub.service_api(token, "GET", f"runs/{run_id}").json()


def test_operator_requests_a_dry_run_from_the_page_and_a_viewer_sees_it(page, browser, hub):
    started = time.monotonic()
    timings: dict[str, float] = {}

    def mark(what):
        timings[what] = round(time.monotonic() - started, 1)

    tokens = hub.tokens(users=["bob", "carol"])
    # The runner's only slot is taken by a slow run (requested over the API), so bob's run has to wait.
    slow = hub.service_api(
        tokens["bob"], "POST", "requests", json={"runbook": SLOW, "parameters": {"seconds": SLOW_SECONDS}}
    )
    assert slow.status_code == 201, slow.text
    slow_id = slow.json()["id"]
    wait_for(
        lambda: api_run(hub, tokens["bob"], slow_id)["first_cell_at"],
        timeout=120,
        interval=0.5,
        what="the slow run to take the runner's slot",
    )
    mark("slow run running")

    # bob, an operator, from the hub's home page and the run history to the patching runbook's page
    log_in_to_home(page, hub, "bob")
    page.click("#opshub-history-link")
    expect(page.locator("#runs")).to_be_visible()
    expect(page.locator(f"#runs a[href='{PREFIX}runs/{slow_id}']")).to_be_visible()
    snap(page, "unattended-history-bob")
    # No run of the patching runbook yet: the Runbooks list (in the navigation) links to its page.
    page.click("#nav-runbooks")
    page.locator("#runbooks a", has_text=RUNBOOK).click()
    form = page.locator("#request-form")
    expect(form).to_be_visible()
    expect(page.locator("#no-request")).to_have_count(0)
    expect(page.locator("#p-stack")).to_have_value("lab")  # the parameters cell's default, picked in its list
    expect(page.locator("#p-dry_run")).to_be_checked()
    page.locator("#p-stack").select_option("lab")
    snap(page, "unattended-runbook-form")

    # every navigation of the main frame after the request: only the redirect to the run page
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: frame == page.main_frame and navigations.append(frame.url))
    page.click("#request-run")
    page.wait_for_url(re.compile(r"/services/opshub/runs/[0-9a-f-]+$"))
    run_id = page.url.rstrip("/").rsplit("/", 1)[1]
    mark("requested")

    status = page.locator("#run-status")
    expect(status).to_have_text("queued")
    expect(page.locator("#queued-note")).to_be_visible()
    expect(page.locator("#requested-by")).to_contain_text("bob")
    expect(page.locator("#cancel-run")).to_be_visible()  # bob requested it: he may cancel it
    expect(page.locator("#parameters")).to_contain_text("stack")
    expect(page.locator("#run-mode")).to_have_text("dry run")
    assert page.locator("meta[http-equiv='refresh']").count() == 0  # it follows the run in place
    snap(page, "unattended-run-queued")
    mark("seen queued")

    # a dry run may start and end between two of the page's updates: seen running, or already done
    expect(status).to_have_text(re.compile(r"^(running|succeeded)$"), timeout=120_000)
    if status.inner_text() == "running":
        expect(page.locator("#cancel-run")).to_be_visible()
        snap(page, "unattended-run-running")
    mark("seen running (or done)")

    expect(status).to_have_text("succeeded", timeout=180_000)
    mark("seen succeeded")
    expect(page.locator("#cancel-run")).to_have_count(0)
    expect(page.locator("#requested-by")).to_contain_text("bob")
    output = page.frame_locator("iframe.notebook")
    expect(output.locator("body")).to_contain_text("[dry run] ssh", timeout=30_000)
    expect(output.locator("body")).to_contain_text("DRY RUN: commands are printed, nothing is changed")
    snap(page, "unattended-run-succeeded")
    # what happened, on the page's own trail, however fast: queued, taken by the runner, succeeded
    trail = page.locator("#run-events")
    expect(trail).to_contain_text("new → queued")
    expect(trail).to_contain_text("queued → running")
    expect(trail).to_contain_text("running → succeeded")
    assert len(navigations) == 1, navigations  # queued -> (running ->) succeeded, in place: no reload

    slow_run = api_run(hub, tokens["bob"], slow_id)
    ours = api_run(hub, tokens["bob"], run_id)
    assert ours["trigger"] == "requested" and ours["requested_by"] == "bob"
    assert ours["parameters"]["stack"] == "lab" and ours["parameters"]["dry_run"] is True  # every value applied
    assert ours["first_cell_at"] >= slow_run["ended_at"]  # it did wait for the runner's only slot

    # carol, a viewer, in a browser of her own
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    try:
        carol = context.new_page()
        log_in(carol, hub, "carol")
        carol.click("#opshub-history-link")
        expect(carol.locator("#runs")).to_be_visible()
        carol.select_option("#f-trigger", "requested")
        carol.click("text=Filter")
        expect(carol).to_have_url(re.compile(r"[?&]trigger=requested"))
        row = carol.locator("#runs tbody tr", has=carol.locator(f"a[href='{PREFIX}runs/{run_id}']"))
        expect(row).to_contain_text(RUNBOOK)
        expect(row).to_contain_text("bob")
        expect(row).to_contain_text("succeeded")
        snap(carol, "unattended-history-carol")
        row.locator(f"a[href='{PREFIX}runs/{run_id}']").click()
        expect(carol.locator("#run-status")).to_have_text("succeeded")
        expect(carol.locator("#requested-by")).to_contain_text("bob")
        expect(carol.locator("#cancel-run")).to_have_count(0)
        expect(carol.frame_locator("iframe.notebook").locator("body")).to_contain_text("[dry run]")
        snap(carol, "unattended-run-carol")
        carol.click(f"h1 a[href='{PREFIX}runbooks/{RUNBOOK}']")
        expect(carol.locator("#no-request")).to_be_visible()
        expect(carol.locator("#request-form")).to_have_count(0)
        snap(carol, "unattended-runbook-carol")
        carol.click("#nav-schedules")
        expect(carol.locator("#schedules")).to_be_visible()
    finally:
        context.close()
    mark("viewer done")
    print("timings (s since start):", timings)
