"""A person at a browser: the login form, JupyterLab with the runbooks, the viewer's pages."""

from __future__ import annotations

from playwright.sync_api import expect

from .conftest import log_in, screenshot


def test_bob_logs_in_and_finds_the_runbooks_in_jupyterlab(page, hub):
    log_in(page, hub, "bob")
    page.wait_for_url(f"{hub.url}/user/bob/lab**", timeout=90_000)
    runbooks = page.locator(".jp-DirListing-item", has_text="runbooks")
    expect(runbooks).to_be_visible(timeout=60_000)
    runbooks.dblclick()
    for name in ["patch-server-stack.ipynb", "host-health-check.ipynb", "tls-certificate-expiry.ipynb"]:
        expect(page.locator(".jp-DirListing-item", has_text=name)).to_be_visible()
    page.locator(".jp-DirListing-item", has_text="patch-server-stack.ipynb").dblclick()
    expect(page.get_by_role("heading", name="Patch a server stack")).to_be_visible()
    screenshot(page, "bob-jupyterlab-runbook")


def test_carol_sees_what_viewers_may_do_and_cannot_start_a_server(page, hub):
    log_in(page, hub, "carol")
    page.wait_for_url(f"{hub.url}/hub/home")
    expect(page.locator("#opshub-viewer")).to_contain_text("viewer")
    expect(page.locator("#start")).to_have_count(0)
    screenshot(page, "carol-home")

    page.goto(f"{hub.url}/hub/spawn")
    expect(page.locator("#opshub-viewer-explanation")).to_be_visible()
    page.goto(f"{hub.url}/user/bob/lab")
    expect(page.locator("#opshub-viewer-explanation")).to_be_visible()
    screenshot(page, "carol-refused-bobs-server")
    page.get_by_role("link", name="Back to the home page").click()
    page.wait_for_url(f"{hub.url}/hub/home")


def test_home_page_offers_a_runbooks_pull(page, hub):
    log_in(page, hub, "alice")
    page.wait_for_url(f"{hub.url}/user/alice/lab**", timeout=90_000)
    page.goto(f"{hub.url}/hub/home")
    link = page.locator("#opshub-pull-runbooks")
    expect(link).to_be_visible()
    screenshot(page, "alice-home")
    link.click()
    # nbgitpuller's page pulls, then opens the runbooks folder in JupyterLab
    page.wait_for_url("**/user/alice/lab/tree/runbooks**", timeout=90_000)
    expect(page.locator(".jp-DirListing-item", has_text="tls-certificate-expiry.ipynb")).to_be_visible(timeout=60_000)
