"""Dashboards in a browser: carol, a viewer, opens the list, uses the live patching-status dashboard's
stack dropdown, then reads the snapshot of the last patching run (made with `opshub run`): outputs only,
no code. A broken live dashboard shows carol a page written for her and the list marks it; alice
publishes and unpublishes a dashboard from the Dashboards page."""

from __future__ import annotations

import json

import nbformat
from playwright.sync_api import expect

from tests.helpers import ARTIFACTS
from tests.livehub import wait_for
from tests.terminals import Terminal

from .conftest import log_in, screenshot


def test_viewer_uses_a_live_dashboard_and_reads_a_snapshot(page, hub, tmp_path):
    tokens = hub.tokens(users=["alice", "bob"])
    snapshot = {"name": "patching-last-run", "mode": "snapshot", "runbook": "patch-server-stack.ipynb"}
    published = hub.service_api(tokens["alice"], "POST", "dashboards", json=snapshot)
    assert published.status_code == 201, published.text
    # bob patches the web stack (a dry run) from a terminal of his JupyterLab, recorded like any headless run
    hub.open_lab(hub.login("bob")[0], "bob")
    with Terminal(hub.url, "bob", tokens["bob"]) as terminal:
        out, rc = terminal.run("opshub run patch-server-stack -p stack web", timeout=300)
    (ARTIFACTS / "dashboards-opshub-run.log").write_text(out)
    assert rc == 0, out

    # preheated pages ran before bob's run: the service makes them again within seconds of a run's end
    carol, _ = hub.login("carol")
    shown = wait_for(
        lambda: (
            "(dry run)"
            in (text := carol.get(f"{hub.url}/services/opshub/dashboards/patching-status/", timeout=120).text)
            and text
        ),
        timeout=90,
        interval=2,
        what="the live dashboard to show bob's run",
    )
    assert "bob (own server)" in shown  # reported by his server, and labelled so

    try:
        log_in(page, hub, "carol")
        page.click("#opshub-dashboards-link")
        expect(page.locator("#dashboards")).to_be_visible()
        expect(page.locator("tr[data-dashboard='patching-status']")).to_contain_text("live")
        screenshot(page, "dashboards-list")

        page.click("text=Patching status")
        header = page.locator("#opshub-header")  # opshub's header and navigation on Voila's page
        expect(header).to_be_visible(timeout=60_000)
        expect(header).to_contain_text("Patching status")
        expect(header).to_contain_text("live")
        for link in ("Home", "Run history", "Runbooks", "Schedules", "Dashboards"):
            expect(header.get_by_role("link", name=link, exact=True)).to_be_visible()
        picker = page.locator(".widget-dropdown select")
        expect(picker).to_be_visible(timeout=60_000)
        expect(page.locator(".widget-output")).to_contain_text("Stack db", timeout=60_000)
        screenshot(page, "dashboard-live-db")
        picker.select_option("web")
        output = page.locator(".widget-output")
        expect(output).to_contain_text("Stack web", timeout=60_000)
        expect(output).to_contain_text("web01.example.internal")
        expect(output).not_to_contain_text("Stack db")
        # the table of every stack shows bob's dry run of web, from the run history
        expect(page.locator("body")).to_contain_text("(dry run)")
        chart = output.locator("img")  # the runs of web per month, drawn by matplotlib in the kernel
        expect(chart).to_be_visible()
        chart.scroll_into_view_if_needed()
        screenshot(page, "dashboard-live-web")

        page.goto(f"{hub.url}/services/opshub/dashboards/")
        page.locator("tr[data-dashboard='patching-last-run'] a").click()
        expect(page.locator("#dashboard-title")).to_have_text("Patch a server stack")
        expect(page.locator("#run-status")).to_have_text("succeeded")
        expect(page.locator("#snapshot-facts")).to_contain_text("bob")
        frame = page.frame_locator("iframe.notebook")
        expect(frame.locator("body")).to_contain_text("ops@web01.example.internal", timeout=30_000)
        # outputs only, like a Voila page: the runbook's markdown, no code, prompts or papermill cells
        expect(frame.locator("body")).to_contain_text("Pick the stack")
        expect(frame.locator("body")).not_to_contain_text("import shlex")
        expect(frame.locator("body")).not_to_contain_text("Parameters: override with")
        expect(frame.locator(".jp-InputArea-editor")).to_have_count(0)
        expect(frame.locator(".jp-InputPrompt")).to_have_count(0)
        expect(frame.locator(".celltag_injected-parameters")).to_have_count(0)
        expect(page.locator("#snapshot-facts")).to_contain_text("snapshot of run")
        screenshot(page, "dashboard-snapshot")
    finally:
        hub.service_api(tokens["alice"], "DELETE", "dashboards/patching-last-run")


def test_a_broken_live_dashboard_shows_a_page_for_viewers_and_the_list_marks_it(page, hub):
    alice = hub.tokens(users=["alice"])["alice"]
    code = "raise RuntimeError('the monitoring API is down')"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["opshub"] = {"title": "Web latency", "changes_systems": False}
    body = {"name": "web-latency", "mode": "live", "notebook": json.loads(nbformat.writes(notebook))}
    published = hub.service_api(alice, "POST", "dashboards", json=body)
    assert published.status_code == 201, published.text
    try:
        log_in(page, hub, "carol")
        page.goto(f"{hub.url}/services/opshub/dashboards/")
        page.locator("tr[data-dashboard='web-latency'] a").click()
        broken = page.locator("#dashboard-broken")
        expect(broken).to_contain_text("This dashboard is broken", timeout=120_000)
        expect(broken).to_contain_text("Its author, alice")
        expect(page.locator("body")).not_to_contain_text("There was an error when executing")
        expect(page.locator("body")).not_to_contain_text("monitoring API is down")  # for its author only
        expect(page.locator("#broken-details")).to_have_count(0)
        screenshot(page, "dashboard-broken-viewer")
        page.click("text=← Dashboards")
        health = page.locator("tr[data-dashboard='web-latency'] td.health")
        expect(health).to_contain_text("broken since")
        screenshot(page, "dashboards-list-broken")
    finally:
        hub.service_api(alice, "DELETE", "dashboards/web-latency")


def test_an_author_publishes_and_unpublishes_from_the_dashboards_page(page, hub):
    log_in(page, hub, "alice")
    page.goto(f"{hub.url}/services/opshub/dashboards/")
    expect(page.locator("#publish-hint")).to_contain_text("Publish as dashboard")
    page.select_option("#publish-runbook", "tls-certificate-expiry.ipynb")
    page.fill("#publish-name", "certs-from-page")
    page.select_option("#publish-mode", "snapshot")
    screenshot(page, "dashboards-publish-form")
    page.click("#publish-submit")
    row = page.locator("tr[data-dashboard='certs-from-page']")
    try:
        expect(row).to_contain_text("snapshot")
        expect(row).to_contain_text("alice")
        row.get_by_role("link", name="Unpublish").click()
        expect(page.locator("h1")).to_contain_text("Unpublish")
        screenshot(page, "dashboards-unpublish-confirm")
        page.click("#confirm-unpublish")
        expect(page.locator("h1")).to_have_text("Dashboards")
        expect(page.locator("tr[data-dashboard='certs-from-page']")).to_have_count(0)
    finally:
        hub.service_api(hub.tokens(users=["alice"])["alice"], "DELETE", "dashboards/certs-from-page")
