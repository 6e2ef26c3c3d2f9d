"""The API JupyterLab's opshub extension calls in the user's server (/user/<name>/opshub/api/)."""

from __future__ import annotations

import uuid

import pytest
import requests


@pytest.fixture(scope="module")
def people(hub):
    for user in ("alice", "bob"):
        session, _ = hub.login(user)
        hub.open_lab(session, user)
    return hub.tokens(users=["alice", "bob", "carol"])


def lab_api(hub, user, token, method, path, **kwargs):
    url = f"{hub.url}/user/{user}/opshub/api/{path}"
    return requests.request(method, url, headers={"Authorization": f"token {token}"}, timeout=60, **kwargs)


def test_a_runbook_is_described_with_its_parameters_and_drift(hub, people):
    # a runbook no other test edits in bob's folder (test_embedded_hub keeps a local edit of another)
    answer = lab_api(hub, "bob", people["bob"], "GET", "runbook", params={"path": "runbooks/patch-server-stack.ipynb"})
    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert info["is_runbook"] and info["runbook"] == "patch-server-stack.ipynb"
    assert info["title"] == "Patch a server stack"
    assert info["changes_systems"] is True
    assert [p["name"] for p in info["parameters"]][:4] == ["stack", "hosts", "inventory", "dry_run"]
    assert info["drift"] is False and info["upstream_moved"] is False
    assert len(info["commit"]) == 40


@pytest.mark.parametrize("path", ["../../../etc/passwd", "/etc/passwd", "runbooks/../../alice/x.ipynb", ""])
def test_paths_outside_the_server_are_refused(hub, people, path):
    answer = lab_api(hub, "bob", people["bob"], "GET", "runbook", params={"path": path})
    assert answer.status_code in (400, 404)
    assert answer.json()["message"]


def test_an_unknown_notebook_is_a_404_that_names_it(hub, people):
    answer = lab_api(hub, "bob", people["bob"], "GET", "runbook", params={"path": "runbooks/nope.ipynb"})
    assert answer.status_code == 404
    assert "runbooks/nope.ipynb" in answer.json()["message"]


def test_only_runbooks_run_as_recorded_runs(hub, people):
    answer = lab_api(hub, "bob", people["bob"], "POST", "runs", json={"path": "runbooks/nope.ipynb"})
    assert answer.status_code == 404
    bad = lab_api(
        hub,
        "bob",
        people["bob"],
        "POST",
        "runs",
        json={"path": "runbooks/host-health-check.ipynb", "parameters": {"hosts": 3}},
    )
    assert bad.status_code == 400 and "parameters" in bad.json()["message"]


def test_an_author_publishes_the_open_notebook_and_an_operator_may_not(hub, people):
    name = f"health-{uuid.uuid4().hex[:6]}"
    body = {"path": "runbooks/host-health-check.ipynb", "name": name, "mode": "snapshot", "groups": []}
    refused = lab_api(hub, "bob", people["bob"], "POST", "publish", json=body)
    assert refused.status_code == 403, refused.text
    assert "publish" in refused.json()["message"]

    published = lab_api(hub, "alice", people["alice"], "POST", "publish", json=body)
    assert published.status_code == 201, published.text
    assert published.json()["url"].rstrip("/").endswith(f"/dashboards/{name}")
    listed = hub.service_api(people["carol"], "GET", "dashboards").json()
    assert name in [d["name"] for d in listed["dashboards"]]
    hub.service_api(people["alice"], "DELETE", f"dashboards/{name}")


def test_a_runbook_that_changes_systems_cannot_be_published_live(hub, people):
    body = {"path": "runbooks/patch-server-stack.ipynb", "name": f"patch-{uuid.uuid4().hex[:6]}", "mode": "live"}
    answer = lab_api(hub, "alice", people["alice"], "POST", "publish", json=body)
    assert answer.status_code == 400, answer.text
    assert "changes systems" in answer.json()["message"] or "changes_systems" in answer.json()["message"]


def test_links_point_to_the_history_the_dashboards_and_an_nbgitpuller_pull(hub, people):
    links = lab_api(hub, "bob", people["bob"], "GET", "links").json()
    assert links["history"] == "/services/opshub/"
    assert links["dashboards"] == "/services/opshub/dashboards/"
    assert links["pull"].startswith("/user/bob/git-pull?repo=")
    # the links lead to the pages themselves, for someone logged in (not to the login page)
    session, _ = hub.login("bob")
    for link, heading in ((links["history"], "Run history"), (links["dashboards"], "Dashboards")):
        shown = session.get(f"{hub.url}{link}", timeout=30)
        assert shown.status_code == 200 and shown.url == f"{hub.url}{link}", (link, shown.status_code, shown.url)
        assert f'<h1 class="h3">{heading}</h1>' in shown.text, shown.text[:500]
