"""Pausing a schedule from the Schedules page, in a browser: "an operator pauses the monthly patching
schedule for a change freeze, with the reason; the page shows it paused, by whom and why; a viewer sees
that, and no buttons, and her API calls are refused".

The schedules here are far apart (monthly, weekly): nothing fires while the test runs.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.integration.test_unattended_runs import commit_runbook, probe_notebook
from tests.livehub import Hub, wait_for

from .conftest import screenshot
from .test_unattended_browser import log_in_to_home

PREFIX = "/services/opshub/"
RUNBOOK = "monthly-patching.ipynb"
MONTHLY = {"name": "monthly", "cron": "0 3 * * 2#3", "timezone": "Europe/Berlin", "parameters": {"message": "patch"}}
WEEKLY = {"name": "weekly", "cron": "30 2 * * 1-5", "parameters": {"message": "report"}}
REASON = "change freeze until Monday"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    the_hub = Hub(tmp_path_factory.mktemp("schedules-browser-hub"))
    commit_runbook(the_hub, RUNBOOK, probe_notebook(schedules=[MONTHLY, WEEKLY]))
    the_hub.start()
    yield the_hub
    the_hub.stop()


def row(page, schedule: str):
    return page.locator(f"tr[data-schedule='{RUNBOOK}#{schedule}']")


def test_an_operator_pauses_a_schedule_from_the_page_and_a_viewer_sees_it_without_buttons(page, browser, hub):
    tokens = hub.tokens(users=["bob", "carol"])
    wait_for(
        lambda: len(hub.service_api(tokens["bob"], "GET", "schedules").json()["schedules"]) == 2,
        timeout=60,
        what="the runbook's two schedules",
    )

    # bob, an operator, from the hub's home page to the Schedules page
    log_in_to_home(page, hub, "bob")
    page.click("#opshub-history-link")
    page.click("#nav-schedules")
    monthly = row(page, "monthly")
    expect(monthly).to_be_visible()
    words = monthly.locator(".cron-words")
    expect(words).to_have_text("At 03:00, on the third Tuesday of the month")
    expect(words).to_have_attribute("title", "cron: 0 3 * * 2#3 (Europe/Berlin)")  # the raw cron on hover
    expect(monthly.locator(".next-fires .zone-time").first).to_have_text(re.compile(r"^Tue \S+ 03:00 CES?T$"))
    expect(monthly.locator(".next-fires time").first).to_have_attribute("datetime", re.compile(r"T0[12]:00:00Z$"))
    expect(row(page, "weekly").locator(".cron-words")).to_have_text("At 02:30, Monday through Friday")
    expect(monthly.locator(".schedule-state")).to_contain_text("active")
    screenshot(page, "schedules-before-pause")

    # Pause…: a question first, with the reason to give; nothing is paused until it is answered
    monthly.locator(".pause-schedule").click()
    expect(page.locator("#schedule-confirm")).to_be_visible()
    expect(page.locator("#schedule-confirm")).to_contain_text(f"Pause monthly of {RUNBOOK}?")
    api_row = next(
        s for s in hub.service_api(tokens["bob"], "GET", "schedules").json()["schedules"] if s["key"] == "monthly"
    )
    assert api_row["paused"] is None
    page.fill("#pause-reason", REASON)
    screenshot(page, "schedules-pause-question")
    page.click("#confirm-pause")
    page.wait_for_url(re.compile(r"/services/opshub/schedules$"))

    monthly = row(page, "monthly")
    expect(monthly.locator(".schedule-state .badge")).to_have_text("paused")
    expect(monthly.locator(".pause-note")).to_contain_text("by bob")
    expect(monthly.locator(".pause-note")).to_contain_text(REASON)
    expect(monthly.locator(".pause-note time")).to_have_count(1)  # when: shown in the viewer's zone by the page
    expect(monthly.locator(".resume-schedule")).to_be_visible()
    expect(monthly.locator(".pause-schedule")).to_have_count(0)
    expect(row(page, "weekly").locator(".schedule-state")).to_contain_text("active")  # the other is untouched
    screenshot(page, "schedules-paused")

    # carol, a viewer, may not request the runbook: she sees the pause and why, and no buttons
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        theirs = context.new_page()
        log_in_to_home(theirs, hub, "carol")
        theirs.goto(f"{hub.url}{PREFIX}schedules")
        expect(row(theirs, "monthly").locator(".pause-note")).to_contain_text(REASON)
        for button in (".pause-schedule", ".resume-schedule", ".run-schedule"):
            expect(theirs.locator(button)).to_have_count(0)
        # the question page, asked for anyway, refuses and offers nothing to click
        answer = theirs.goto(f"{hub.url}{PREFIX}schedules/{RUNBOOK}/monthly/resume")
        assert answer.status == 403
        expect(theirs.locator("#schedule-error")).to_contain_text("custom:opshub:runs:request")
        expect(theirs.locator("#confirm-resume")).to_have_count(0)
        screenshot(theirs, "schedules-viewer")
    finally:
        context.close()

    # ... and the API refuses her too
    for action, body in (("resume", {}), ("pause", {"reason": "mine"}), ("run", {})):
        refused = hub.service_api(tokens["carol"], "POST", f"schedules/{RUNBOOK}/monthly/{action}", json=body)
        assert refused.status_code == 403, (action, refused.text)
        assert "custom:opshub:runs:request" in refused.json()["message"]
    api_row = next(
        s for s in hub.service_api(tokens["bob"], "GET", "schedules").json()["schedules"] if s["key"] == "monthly"
    )
    assert api_row["paused"]["paused_by"] == "bob" and api_row["paused"]["reason"] == REASON

    # bob resumes it from the page
    monthly.locator(".resume-schedule").click()
    expect(page.locator("#schedule-confirm")).to_contain_text("It was paused by bob")
    page.click("#confirm-resume")
    page.wait_for_url(re.compile(r"/services/opshub/schedules$"))
    expect(row(page, "monthly").locator(".schedule-state .badge")).to_have_text("active")
    expect(row(page, "monthly").locator(".resume-note")).to_contain_text("resumed by bob")
