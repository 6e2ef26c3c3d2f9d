"""The README's quick start on the practice fleet, in Chromium, as a newcomer walks it: alice asks
for a dry run of the patching runbook on fleet-web and reads the pending updates, then starts the
live run in sections of one, and carol, from management, watches the patching-status dashboard turn
every host patched."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.browser.test_unattended_browser import log_in_to_home
from tests.fleet.conftest import fleet_command, package_version

pytestmark = pytest.mark.browser
PREFIX = "/services/opshub/"
WEB = ["web-1.fleet", "web-2.fleet", "web-3.fleet"]


def open_patching_form(page, stack: str) -> None:
    page.click("#nav-runbooks")
    page.locator("#runbooks tr", has_text="Patch a server stack").locator("a").first.click()
    expect(page.locator("#request-form")).to_be_visible()
    page.locator("#p-stack").select_option(stack)


def test_the_quick_start_patches_the_fleet_and_management_watches_it(fleet, fleet_hub, browser, page):
    fresh = fleet_command("up", "--fresh")  # the other tests patched it: updates pending again
    assert fresh.returncode == 0, fresh.stderr
    assert all(package_version(host, "fleet-base") == "1.0" for host in WEB)

    # 1. a dry run: the real pending updates, read on the hosts
    log_in_to_home(page, fleet_hub, "alice")
    page.click("#opshub-history-link")
    open_patching_form(page, "fleet-web")
    expect(page.locator("#p-dry_run")).to_be_checked()
    page.click("#request-run")
    page.wait_for_url(re.compile(r"/services/opshub/runs/[0-9a-f-]+$"))
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=300_000)
    notebook = page.frame_locator("iframe.notebook").locator("body")
    expect(notebook).to_contain_text("upgradable from: 1.0")
    screenshot(page, "fleet-dry-run")

    # 2. the live run, one host at a time, after the review
    open_patching_form(page, "fleet-web")
    page.uncheck("#p-dry_run")
    page.fill("#p-batch", "1")
    page.click("#request-run")
    expect(page.locator("#review")).to_be_visible()
    expect(page.locator("#review-values tr[data-name=batch]")).to_contain_text("1")
    page.click("#start-live-run")
    page.wait_for_url(re.compile(r"/services/opshub/runs/[0-9a-f-]+$"))
    expect(page.locator("#run-mode")).to_have_text("live")

    # 3. management opens the dashboard while it runs, and sees every host patched by its end
    viewer = browser.new_context().new_page()
    log_in_to_home(viewer, fleet_hub, "carol")
    viewer.goto(f"{fleet_hub.url}{PREFIX}dashboards/")
    viewer.locator("a[href$='dashboards/patching-status/']").first.click()
    dashboard = viewer.locator("body")
    expect(dashboard).to_contain_text("fleet-web", timeout=120_000)
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=600_000)
    screenshot(page, "fleet-live-run")
    for host in WEB:
        expect(viewer.locator("tr", has_text=host).filter(has_text="patched").first).to_be_visible(timeout=120_000)
    screenshot(viewer, "fleet-dashboard-patched")
    assert all(package_version(host, "fleet-base") == "1.1" for host in WEB)
    viewer.context.close()
