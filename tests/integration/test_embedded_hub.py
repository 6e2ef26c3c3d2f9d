"""The embedded default, live: demo users log in through the form, get (or are refused) a
JupyterLab, find the team's runbooks pulled from git, and keep everything across a restart."""

from __future__ import annotations

import json
import re
import subprocess
from html import unescape

import pytest
import requests

from tests.helpers import git
from tests.livehub import DEMO_PASSWORD, wait_for

NOTEBOOKS = {"patch-server-stack.ipynb", "host-health-check.ipynb", "tls-certificate-expiry.ipynb"}


def test_login_page_says_who_to_log_in_as(hub):
    page = requests.get(f"{hub.url}/hub/login")
    assert 'id="opshub-demo-team"' in page.text
    assert "alice (admin, author), bob (operator), carol (viewer)" in page.text
    assert DEMO_PASSWORD not in page.text  # the password itself is only printed in the terminal


def test_wrong_password_is_refused(hub):
    _, response = hub.login("bob", "not-the-password")
    assert response.status_code == 403
    assert "Invalid username or password" in response.text


def test_people_outside_the_team_are_refused(hub):
    _, response = hub.login("mallory")
    assert response.status_code == 403


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_author_and_operator_get_jupyterlab_with_the_runbooks(hub, user):
    session, response = hub.login(user)
    assert response.status_code == 200
    # straight from the login form to their own server: spawn-pending page, then JupyterLab
    assert f"/user/{user}/" in response.url or f"/hub/spawn-pending/{user}" in response.url
    lab = hub.open_lab(session, user)
    assert "JupyterLab" in lab.text

    listing = hub.contents(session, user, "runbooks")
    assert listing.status_code == 200
    names = {item["name"] for item in listing.json()["content"]}
    assert names >= NOTEBOOKS
    # the checkout is at the commit the hub's git remote serves
    clone = hub.home(user) / "runbooks"
    assert git("rev-parse", "HEAD", cwd=clone) == git("rev-parse", "main", cwd=hub.repository)


def test_alice_is_admin_and_bob_is_not(hub):
    alice, _ = hub.login("alice")
    bob, _ = hub.login("bob")
    assert alice.get(f"{hub.url}/hub/admin").status_code == 200
    assert bob.get(f"{hub.url}/hub/admin").status_code == 403
    groups = {g["name"]: g["users"] for g in alice.get(f"{hub.url}/hub/api/groups").json()}
    assert groups == {"ops-leads": ["alice"], "ops-authors": ["alice"], "ops": ["bob"], "management": ["carol"]}


def test_viewer_gets_no_server_and_cannot_reach_bobs(hub):
    bob, _ = hub.login("bob")
    hub.open_lab(bob, "bob")  # bob's server is running

    carol, landing = hub.login("carol")
    assert landing.status_code == 200
    assert landing.url.endswith("/hub/home")
    assert 'id="opshub-viewer"' in landing.text and "viewer" in landing.text
    assert 'id="start"' not in landing.text  # no "Start My Server" button

    spawn = carol.get(f"{hub.url}/hub/spawn")
    assert spawn.status_code == 403
    assert 'id="opshub-viewer-explanation"' in spawn.text
    assert "Traceback" not in spawn.text

    for path in ["/user/bob/lab", "/user/bob/api/contents/runbooks", "/user/carol/lab"]:
        response = carol.get(hub.url + path)
        assert response.status_code in (403, 404), (path, response.status_code)
        assert "opshub-viewer-explanation" in response.text or response.headers["content-type"].startswith(
            "application/json"
        )
        assert "patch-server-stack" not in response.text

    # not through the REST API either
    xsrf = carol.cookies.get("_xsrf", path="/hub/")
    api = carol.post(f"{hub.url}/hub/api/users/carol/server", headers={"X-XSRFToken": xsrf})
    assert api.status_code == 403
    assert not (hub.home("carol") / "runbooks").exists()


def pull_link(hub, session) -> str:
    home = session.get(f"{hub.url}/hub/home")
    match = re.search(
        r'id="opshub-pull-runbooks"[^>]*href="([^"]+)"|href="([^"]+)"[^>]*id="opshub-pull-runbooks"', home.text
    )
    assert match, "the home page has no 'Pull latest runbooks' link"
    return unescape(match.group(1) or match.group(2))


def test_upstream_commit_reaches_user_on_re_pull_keeping_local_edits(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    runbook = "runbooks/host-health-check.ipynb"

    # bob edits a runbook in his copy, through the server's contents API as JupyterLab does
    notebook = hub.contents(session, "bob", runbook).json()["content"]
    notebook["cells"][0]["source"] = "# Host health check (bob's notes: check /var first)\n"
    saved = session.put(
        f"{hub.url}/user/bob/api/contents/{runbook}",
        json={"type": "notebook", "format": "json", "content": notebook},
        headers=hub.server_xsrf(session, "bob"),
    )
    assert saved.status_code == 200, saved.text

    # upstream moves on: a new runbook and a change to another one, committed in the team's repo
    (hub.upstream / "restart-service.md").write_text("# Restart a service\n\nsystemctl restart NAME\n")
    tls = hub.upstream / "tls-certificate-expiry.ipynb"
    tls_nb = json.loads(tls.read_text())
    tls_nb["metadata"]["opshub"]["description"] += " Updated upstream."
    tls.write_text(json.dumps(tls_nb, indent=1) + "\n")
    git("add", "-A", cwd=hub.upstream)
    git("commit", "-qm", "Add restart-service, clarify tls", cwd=hub.upstream)
    wait_for(
        lambda: "clarify tls" in git("log", "-1", "--format=%s", "main", cwd=hub.repository),
        timeout=30,
        what="the runbooks mirror to publish the commit",
    )

    # the re-pull, through the link on the hub's home page (nbgitpuller)
    link = pull_link(hub, session)
    page = session.get(hub.url + link)
    assert page.status_code == 200 and "/user/bob/git-pull" in page.url
    query = page.url.split("?", 1)[1]
    stream = session.get(f"{hub.url}/user/bob/git-pull/api?{query}", timeout=120)
    assert stream.status_code == 200
    assert '"phase": "finished"' in stream.text and '"phase": "error"' not in stream.text, stream.text[-2000:]

    names = {item["name"] for item in hub.contents(session, "bob", "runbooks").json()["content"]}
    assert "restart-service.md" in names
    pulled = hub.contents(session, "bob", "runbooks/tls-certificate-expiry.ipynb").json()["content"]
    assert pulled["metadata"]["opshub"]["description"].endswith("Updated upstream.")
    kept = hub.contents(session, "bob", runbook).json()["content"]
    assert "bob's notes" in "".join(kept["cells"][0]["source"])


def test_failed_pull_is_shown_in_the_home(hub):
    """A broken runbooks checkout does not silently leave alice without runbooks."""
    session, _ = hub.login("alice")
    hub.open_lab(session, "alice")
    xsrf = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}
    assert session.delete(f"{hub.url}/hub/api/users/alice/server", headers=xsrf).status_code in (202, 204)
    wait_for(
        lambda: session.get(f"{hub.url}/hub/api/users/alice").json()["servers"] == {},
        timeout=60,
        what="alice's server to stop",
    )
    # a checkout nbgitpuller cannot work with: divergent history it refuses to merge
    clone = hub.home("alice") / "runbooks"
    subprocess.run(["rm", "-rf", str(clone / ".git")], check=True)

    hub.open_lab(session, "alice")
    note = hub.contents(session, "alice", "RUNBOOKS-PULL-FAILED.md")
    assert note.status_code == 200
    assert "could not be pulled" in note.json()["content"]
    assert "pulling runbooks from" in hub.log_file.read_text()


def test_hub_restart_keeps_users_and_files(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    saved = session.put(
        f"{hub.url}/user/bob/api/contents/notes.txt",
        json={"type": "file", "format": "text", "content": "patched web01 on Tuesday\n"},
        headers=hub.server_xsrf(session, "bob"),
    )
    assert saved.status_code in (200, 201), saved.text

    hub.stop()
    assert wait_for(lambda: not hub.processes_of_this_hub(), timeout=15, what="no stray processes") is True
    hub.start()

    alice, _ = hub.login("alice")
    users = {u["name"] for u in alice.get(f"{hub.url}/hub/api/users").json()}
    assert {"alice", "bob", "carol"} <= users
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    note = hub.contents(session, "bob", "notes.txt")
    assert note.status_code == 200 and note.json()["content"] == "patched web01 on Tuesday\n"
    assert "bob's notes" in "".join(
        hub.contents(session, "bob", "runbooks/host-health-check.ipynb").json()["content"]["cells"][0]["source"]
    )
