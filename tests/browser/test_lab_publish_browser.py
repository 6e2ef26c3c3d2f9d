"""JupyterLab where authors look: alice publishes a runbook from the notebook toolbar's button and
finds it on the Dashboards page; the File menu has the command, the launcher's tiles have icons; a
notebook that is no runbook has no Publish button. And opening a runbook, kernel started, then saving
it changes nothing: no git diff in ~/runbooks, no drift."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid

import nbformat
from playwright.sync_api import expect

from tests.helpers import git
from tests.livehub import wait_for

from .conftest import screenshot
from .test_lab_recorded_run import log_in_to_lab

# workspaces of their own: the tabs these tests leave open are not in other tests' way
WORKSPACE = "lab/workspaces/opshub-publish-tests/tree"
# alice's copy: the other tests leave it as the repository has it, and writable by her (a copy the tests
# rewrote as root would be read-only in her JupyterLab); and committed in a layout of its own (metadata keys
# unsorted), not the one JupyterLab writes, so an unchanged save must keep the committed bytes
RUNBOOK = "host-health-check.ipynb"


def visible_panel(page):
    return page.locator(".jp-NotebookPanel:visible")


def test_an_author_publishes_a_runbook_from_the_notebook_toolbar(page, hub):
    name = f"toolbar-{uuid.uuid4().hex[:8]}"
    tokens = hub.tokens(users=["alice"])
    log_in_to_lab(page, hub, "alice", f"runbooks/{RUNBOOK}", WORKSPACE)
    button = visible_panel(page).locator(".opshub-publish")
    expect(button).to_be_visible(timeout=60_000)  # shown once opshub says the notebook is a runbook
    expect(button).to_have_attribute("title", "Publish this runbook as a read-only dashboard")
    expect(button.locator("svg")).to_be_visible()  # its icon
    screenshot(page, "lab-publish-button")
    try:
        button.click()
        dialog = page.locator(".jp-Dialog")
        expect(dialog.locator("input[name=name]")).to_have_value("host-health-check")
        dialog.locator("input[name=name]").fill(name)
        expect(dialog.locator("select[name=mode]")).to_have_value("snapshot")
        screenshot(page, "lab-publish-dialog")
        dialog.locator("button.jp-mod-accept").click()
        expect(page.locator(".Toastify__toast", has_text=f"Published {name}")).to_be_visible(timeout=30_000)
        screenshot(page, "lab-published")

        page.goto(f"{hub.url}/services/opshub/dashboards/")
        row = page.locator(f"tr[data-dashboard='{name}']")
        expect(row).to_contain_text("Host health check")  # its title, from the runbook
        expect(row).to_contain_text("snapshot")
        screenshot(page, "lab-published-on-dashboards-page")
        ours = hub.service_api(tokens["alice"], "GET", f"dashboards/{name}").json()
        assert ours["runbook"] == RUNBOOK and ours["mode"] == "snapshot" and ours["owner"] == "alice"
    finally:
        hub.service_api(tokens["alice"], "DELETE", f"dashboards/{name}")


def test_the_file_menu_and_the_launcher_offer_opshub(page, hub):
    log_in_to_lab(page, hub, "alice", f"runbooks/{RUNBOOK}", WORKSPACE)
    visible_panel(page).locator(".jp-Notebook").click()  # the notebook is the current widget
    page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
    item = page.locator(".lm-Menu-item[data-command='opshub:publish']")
    expect(item).to_be_visible()
    expect(item).to_contain_text("Publish as dashboard")
    expect(item).not_to_have_class("lm-mod-disabled")
    screenshot(page, "lab-file-menu-publish")
    page.keyboard.press("Escape")
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").click()
    expect(page.locator(".lm-Menu-item[data-command='opshub:run-recorded']")).to_be_visible()
    page.keyboard.press("Escape")

    page.keyboard.press("Control+Shift+l")  # a new launcher
    for label in ("Run history", "Dashboards"):
        card = page.locator(".jp-LauncherCard", has_text=label)
        expect(card).to_be_visible()
        expect(card.locator(".jp-LauncherCard-icon svg")).to_be_visible()
    screenshot(page, "lab-launcher-icons")


def test_a_notebook_that_is_no_runbook_has_no_publish_button(page, hub):
    home = hub.home("alice")
    scratch = home / f"scratch-{uuid.uuid4().hex[:8]}.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), scratch)
    owner = hub.account("alice")
    if os.geteuid() == 0:
        shutil.chown(scratch, owner, owner)
    try:
        log_in_to_lab(page, hub, "alice", scratch.name, "lab/workspaces/opshub-scratch/tree")
        panel = visible_panel(page)
        expect(panel.locator(".opshub-run-recorded")).to_be_visible(timeout=30_000)  # it says why it cannot
        page.wait_for_timeout(3000)  # time for opshub's answer, which keeps the button hidden
        expect(panel.locator(".opshub-publish")).to_be_hidden()
    finally:
        scratch.unlink(missing_ok=True)


def current_tab(page):
    return page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current")


def wait_for_the_kernel(page) -> None:
    expect(page.locator(".jp-StatusBar-TextItem", has_text="Idle").first).to_be_visible(timeout=90_000)
    page.wait_for_timeout(1500)  # JupyterLab writes the kernel's language_info once it answers


def save_in_lab(page, path) -> dict:
    """Save the open notebook with Ctrl+S, and return what was saved."""
    before = path.stat().st_mtime_ns
    visible_panel(page).locator(".jp-Notebook").click()
    page.keyboard.press("Control+s")
    wait_for(lambda: path.stat().st_mtime_ns != before, timeout=30, what=f"JupyterLab to save {path.name}")
    return json.loads(path.read_text())


def test_opening_and_saving_a_runbook_leaves_no_diff_and_no_drift(page, hub):
    session, _ = hub.login("alice")
    hub.open_lab(session, "alice")  # her server started: the runbooks are pulled into ~/runbooks
    home = hub.home("alice")
    runbook = home / "runbooks" / RUNBOOK
    kept = runbook.read_bytes()
    # the same notebook outside the runbooks folder: what JupyterLab writes there is what it wrote in
    # ~/runbooks before (the kernel's full language_info), so this test sees the change it guards against
    elsewhere = home / f"copy-{uuid.uuid4().hex[:8]}.ipynb"
    elsewhere.write_bytes(kept)
    if os.geteuid() == 0:
        shutil.chown(elsewhere, hub.account("alice"), hub.account("alice"))
    try:
        log_in_to_lab(page, hub, "alice", elsewhere.name, "lab/workspaces/opshub-save-elsewhere/tree")
        wait_for_the_kernel(page)
        expect(current_tab(page)).to_have_class(re.compile(r"\bjp-mod-dirty\b"))  # modified by opening it
        saved = save_in_lab(page, elsewhere)
        assert "version" in saved["metadata"]["language_info"], saved["metadata"]  # the kernel's, written in

        page.goto(f"{hub.url}/user/alice/lab/workspaces/opshub-save-runbook/tree/runbooks/{RUNBOOK}")
        expect(page.locator(".jp-Notebook").first).to_be_visible(timeout=90_000)
        wait_for_the_kernel(page)
        expect(current_tab(page)).to_contain_text(RUNBOOK)
        expect(current_tab(page)).not_to_have_class(re.compile(r"\bjp-mod-dirty\b"))  # not marked modified
        saved = save_in_lab(page, runbook)
        screenshot(page, "lab-runbook-saved")
        assert saved["metadata"]["language_info"] == {"name": "python"}, saved["metadata"]
        assert git("status", "--porcelain", "--", RUNBOOK, cwd=runbook.parent) == ""
        assert git("diff", "HEAD", "--", RUNBOOK, cwd=runbook.parent) == ""
        # no drift, as opshub.lab sees it in alice's server (and the drift warning shows it)
        info = session.get(f"{hub.url}/user/alice/opshub/api/runbook", params={"path": f"runbooks/{RUNBOOK}"}).json()
        assert info["is_runbook"] and info["drift"] is False, info
    finally:
        elsewhere.unlink(missing_ok=True)
        if runbook.read_bytes() != kept:  # other tests count on alice's copy as the repository has it
            runbook.write_bytes(kept)
