"""JupyterLab's "Run as recorded run" in a real browser: bob opens a runbook, fills in its
parameters in the form built from its parameters cell, follows the progress, and opens the run."""

from __future__ import annotations

import re
import shutil

import nbformat
from playwright.sync_api import expect

from tests.livehub import wait_for

from .conftest import log_in, screenshot

RUNBOOK = "host-health-check.ipynb"
# A workspace of its own, so the layout these tests leave (open tabs, the runbooks folder) is not
# what the other browser tests find when they open the same person's JupyterLab.
WORKSPACE = "lab/workspaces/opshub-lab-tests/tree"


def log_in_to_lab(page, hub, user: str, path: str, workspace: str = WORKSPACE) -> None:
    log_in(page, hub, user)
    page.goto(f"{hub.url}/hub/spawn/{user}")
    page.wait_for_url(f"**/user/{user}/**", timeout=120_000)
    page.goto(f"{hub.url}/user/{user}/{workspace}/{path}")
    expect(page.locator(".jp-Notebook").first).to_be_visible(timeout=90_000)


def test_run_as_recorded_run_from_jupyterlab(page, hub):
    log_in_to_lab(page, hub, "bob", f"runbooks/{RUNBOOK}")
    page.locator(".opshub-run-recorded").first.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog.locator("input[name=hosts]")).to_have_value("localhost")  # a list without choices: items, commas
    expect(dialog.locator("input[name=fail_on_problem]")).to_be_checked()  # a boolean: a checkbox
    expect(dialog.locator("input[name=disk_warn_percent]")).to_have_attribute("type", "number")
    expect(dialog.locator("input[name=disk_warn_percent]")).to_have_attribute("max", "100")
    dialog.locator("input[name=hosts]").fill("localhost, localhost")
    dialog.locator("input[name=fail_on_problem]").uncheck()
    screenshot(page, "lab-run-parameters")
    dialog.locator("button.jp-mod-accept").click()

    state = page.locator(".opshub-progress-state")
    expect(state).to_contain_text("Running", timeout=30_000)
    expect(page.locator(".opshub-progress-lines")).to_contain_text("opshub run host-health-check.ipynb", timeout=60_000)
    screenshot(page, "lab-run-progress")
    expect(state).to_have_text("The run succeeded.", timeout=180_000)
    link = page.locator("a.opshub-run-link")
    expect(link).to_be_visible()
    screenshot(page, "lab-run-done")

    with page.context.expect_page() as opened:
        link.click()  # target=_blank: the run page opens in a new tab
    run_page = opened.value
    expect(run_page.locator("body")).to_contain_text("host-health-check.ipynb")
    expect(run_page.locator("body")).to_contain_text("succeeded")
    expect(run_page.locator("#parameters tr[data-name=fail_on_problem]")).to_contain_text("false")  # sent as text
    expect(run_page.locator("#parameters tr[data-name=hosts]")).to_contain_text('["localhost", "localhost"]')
    screenshot(run_page, "lab-run-page")
    run_page.close()


def test_the_run_dialog_offers_the_patching_runbooks_typed_fields(page, hub):
    """Dropdowns from the inventory, the hosts following the stack, checkboxes, a bounded number field, and
    ssh_options fixed: the same declaration as the request page's. The dialog is cancelled: nothing runs."""
    # a workspace of its own: the tab it leaves open is not in the way of the other tests' notebooks; alice's
    # server: other modules count on bob's copy of the patching runbook being as the repository has it
    log_in_to_lab(page, hub, "alice", "runbooks/patch-server-stack.ipynb", "lab/workspaces/opshub-typed-dialog/tree")
    expect(page.locator(".jp-NotebookPanel:visible .jp-Notebook")).to_contain_text("Patch", timeout=30_000)
    page.locator(".jp-NotebookPanel:visible .opshub-run-recorded").click()  # other runbooks may be open too
    dialog = page.locator(".jp-Dialog")
    stack, hosts = dialog.locator("select[name=stack]"), dialog.locator("select[name=hosts]")
    expect(stack).to_have_value("lab")
    values = "options => options.map(o => o.value).filter(v => v)"
    assert sorted(stack.locator("option").evaluate_all(values)) == [
        "db",
        "fleet-db",
        "fleet-web",
        "lab",
        "monitoring",
        "web",
    ]
    assert hosts.locator("option").evaluate_all(values) == ["localhost"]
    stack.select_option("db")  # the hosts follow the stack
    expect(hosts.locator("option")).to_have_count(2)
    assert hosts.locator("option").evaluate_all(values) == ["db02.example.internal", "db01.example.internal"]
    expect(dialog.locator("input[name=dry_run]")).to_be_checked()
    expect(dialog.locator("input[name=wait_timeout]")).to_have_attribute("min", "60")
    expect(dialog.locator("input[name=ssh_options]")).to_have_attribute("readonly", "readonly")
    expect(dialog.locator(".opshub-param[data-name=stack]")).to_contain_text("The stack to patch")
    screenshot(page, "lab-run-typed-fields")
    # a live run of a runbook that changes systems asks again, listing the values; declined, nothing runs
    dialog.locator("input[name=dry_run]").uncheck()
    dialog.locator("button.jp-mod-accept").click()
    confirm = page.locator(".jp-Dialog", has_text="Start a live run of")
    expect(confirm).to_contain_text("dry_run = false")
    expect(confirm).to_contain_text("stack = db")
    screenshot(page, "lab-run-live-confirm")
    confirm.locator("button.jp-mod-reject").click()
    expect(page.locator(".jp-Dialog")).to_have_count(0)
    expect(page.locator(".opshub-progress")).to_have_count(0)


def test_a_locally_edited_runbook_is_flagged_when_opened(page, hub):
    path = hub.home("alice") / "runbooks" / "tls-certificate-expiry.ipynb"
    log_in_to_lab(page, hub, "alice", "runbooks/host-health-check.ipynb")  # alice's server, runbooks pulled
    saved = path.with_suffix(".saved")
    shutil.copy(path, saved)
    try:
        notebook = nbformat.read(path, as_version=4)
        notebook.cells.append(nbformat.v4.new_code_cell("print('my local change')"))
        nbformat.write(notebook, path)
        page.goto(f"{hub.url}/user/alice/{WORKSPACE}/runbooks/tls-certificate-expiry.ipynb")
        toast = page.locator(".Toastify__toast", has_text="differs from the repository")
        expect(toast).to_be_visible(timeout=60_000)
        screenshot(page, "lab-drift-warning")
    finally:
        shutil.move(saved, path)


def test_stepping_through_a_runbook_is_recorded_and_found_in_the_history(page, hub):
    log_in_to_lab(page, hub, "bob", f"runbooks/{RUNBOOK}")
    expect(page.locator(".jp-StatusBar-TextItem", has_text="Idle").first).to_be_visible(timeout=60_000)
    page.locator(".jp-Notebook .jp-Cell").first.click()
    for _ in range(4):  # the title, the parameters, a heading, the collecting cell: Shift+Enter each
        page.keyboard.press("Shift+Enter")
        page.wait_for_timeout(300)
    collect = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
    expect(collect.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"), timeout=60_000)
    screenshot(page, "lab-stepping-through")

    page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click()
    page.locator(".lm-Menu-itemLabel", has_text="Shut Down Kernel").click()
    expect(page.locator(".jp-StatusBar-TextItem", has_text="No Kernel").first).to_be_visible(timeout=30_000)

    history = f"{hub.url}/services/opshub/?trigger=interactive&user=bob&runbook={RUNBOOK}"

    def newest_row_ended():
        page.goto(history)
        row = page.locator("#runs tbody tr").first
        return row.inner_text() if "running" not in row.inner_text() else None

    text = wait_for(newest_row_ended, timeout=90, interval=2, what="the interactive run in the history")
    assert "interactive" in text and "succeeded" in text
    screenshot(page, "history-interactive-run")
    page.locator("#runs tbody tr a").first.click()
    notebook = page.frame_locator("iframe.notebook")
    expect(notebook.locator("body")).to_contain_text("hosts = ")
    screenshot(page, "history-interactive-run-page")
