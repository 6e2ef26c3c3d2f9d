"""Dashboards in a browser: carol, a viewer, opens the list, uses the live patching-status dashboard's
stack dropdown, then reads the snapshot of the last patching run (made with `opshub run`)."""

from __future__ import annotations

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
        screenshot(page, "dashboard-snapshot")
    finally:
        hub.service_api(tokens["alice"], "DELETE", "dashboards/patching-last-run")
