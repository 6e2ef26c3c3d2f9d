"""The run history in a browser: from the hub's home page to a run and its failing cell."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from .conftest import log_in, screenshot


def test_viewer_finds_a_failed_run_and_its_failing_cell(page, hub):
    bob = hub.tokens(users=["bob"])["bob"]
    notebook = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# Health check of web01"},
            {
                "cell_type": "code",
                "metadata": {},
                "execution_count": 1,
                "source": "check_disk('/var')",
                "outputs": [
                    {
                        "output_type": "error",
                        "ename": "RuntimeError",
                        "evalue": "/var is 97% full",
                        "traceback": ["RuntimeError: /var is 97% full"],
                    }
                ],
            },
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    run = hub.service_api(
        bob, "POST", "runs", json={"runbook": "host-health-check.ipynb", "parameters": {"hosts": ["web01"]}}
    ).json()
    body = {
        "status": "failed",
        "failed_cell": 1,
        "error_summary": "RuntimeError: /var is 97% full",
        "output_notebook": notebook,
    }
    assert hub.service_api(bob, "POST", f"runs/{run['id']}/finish", json=body).ok

    log_in(page, hub, "carol")
    page.click("#opshub-history-link")
    expect(page.locator("#runs")).to_be_visible()
    page.select_option("#f-status", "failed")
    page.click("text=Filter")
    # The filter form is a GET: wait for the filtered page before looking at it.
    expect(page).to_have_url(re.compile(r"[?&]status=failed"))
    run_link = page.locator(f"a[href='/services/opshub/runs/{run['id']}']")
    expect(run_link).to_be_visible()
    screenshot(page, "history-list")
    run_link.click()
    expect(page.locator("#error-summary")).to_contain_text("/var is 97% full")
    notebook_frame = page.frame_locator("iframe.notebook")
    expect(notebook_frame.locator(".celltag_opshub-failed-cell")).to_be_visible()
    screenshot(page, "history-run")
