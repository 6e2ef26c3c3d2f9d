"""The run history pages, live: a list with filters and pages, a run page with the executed
notebook and its failing cell; linked from the hub's home page; viewers read them too."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output


@pytest.fixture(scope="module")
def recorded(hub):
    tokens = hub.tokens(users=["alice", "bob"])
    notebook = new_notebook(
        cells=[
            new_markdown_cell("# Disk check"),
            new_code_cell(
                "print('checking /var')", outputs=[new_output("stream", name="stdout", text="checking /var\n")]
            ),
            new_code_cell(
                "raise RuntimeError('disk full')",
                outputs=[
                    new_output("error", ename="RuntimeError", evalue="disk full", traceback=["RuntimeError: disk full"])
                ],
            ),
            new_code_cell(
                "print('<script>alert(1)</script>')",
                outputs=[new_output("display_data", data={"text/html": "<script>alert(1)</script><b>bold</b>"})],
            ),
        ]
    )
    run = hub.service_api(
        tokens["bob"],
        "POST",
        "runs",
        json={"runbook": "host-health-check.ipynb", "parameters": {"hosts": ["web01"]}, "drift": True},
    ).json()
    hub.service_api(
        tokens["bob"],
        "POST",
        f"runs/{run['id']}/finish",
        json={
            "status": "failed",
            "failed_cell": 2,
            "error_summary": "RuntimeError: disk full",
            "output_notebook": nbformat.from_dict(notebook),
        },
    )
    for _ in range(55):  # more than one page
        other = hub.service_api(
            tokens["alice"], "POST", "runs", json={"runbook": "tls-certificate-expiry.ipynb"}
        ).json()
        hub.service_api(tokens["alice"], "POST", f"runs/{other['id']}/finish", json={"status": "succeeded"})
    return run


def test_home_page_links_to_the_history_for_every_role(hub):
    for user in ["bob", "carol"]:
        session, _ = hub.login(user)
        home = session.get(f"{hub.url}/hub/home")
        assert 'id="opshub-history-link"' in home.text and 'href="/services/opshub/"' in home.text, user


def test_viewer_reads_the_history_list_with_filters_and_pages(hub, recorded):
    carol, _ = hub.login("carol")
    page = carol.get(f"{hub.url}/services/opshub/")  # through the hub's OAuth, as in a browser
    assert page.status_code == 200 and 'id="runs"' in page.text
    assert 'id="older"' in page.text  # more than 50 runs: a next page
    failed = carol.get(f"{hub.url}/services/opshub/", params={"status": "failed", "user": "bob"})
    rows = re.findall(r"<tr>\s*<td><a href=\"/services/opshub/runs/([^\"]+)\"", failed.text)
    assert recorded["id"] in rows
    assert "tls-certificate-expiry.ipynb" not in failed.text.split('id="runs"')[1]
    older = carol.get(f"{hub.url}/services/opshub/", params={"offset": 50})
    assert older.status_code == 200 and 'id="newer"' in older.text
    bad = carol.get(f"{hub.url}/services/opshub/", params={"status": "exploded", "since": "yesterday"})
    assert bad.status_code == 200 and 'id="filter-error"' in bad.text


def test_run_page_shows_parameters_commit_drift_and_the_failing_cell(hub, recorded):
    carol, _ = hub.login("carol")
    page = carol.get(f"{hub.url}/services/opshub/runs/{recorded['id']}")
    assert page.status_code == 200
    assert 'id="drift"' in page.text and "RuntimeError: disk full" in page.text
    # the failing cell named as everywhere: its place counted from 1 and the heading it is under
    assert "web01" in page.text and "cell 3 (Disk check)" in page.text
    notebook = carol.get(f"{hub.url}/services/opshub/runs/{recorded['id']}/notebook")
    assert notebook.status_code == 200
    assert notebook.headers["Content-Security-Policy"].startswith("sandbox")  # runbook HTML cannot run scripts here
    assert "celltag_opshub-failed-cell" in notebook.text and "checking /var" in notebook.text
    assert carol.get(f"{hub.url}/services/opshub/runs/no-such-run").status_code == 404


def test_anonymous_visitors_are_sent_to_log_in(hub):
    import requests

    response = requests.get(f"{hub.url}/services/opshub/", timeout=30)
    assert "/hub/login" in response.url
