"""The hub's own pages speak opshub (issue 20, part 7), in Chromium against a hub of this module.

- JupyterHub's admin page labels the system accounts (`opshub-runner`, `opshub-dashboards`) and offers
  no Start/Stop for them, nor Start Server for viewers; the Groups page says which role each group gives.
- carol (a viewer) is offered no server anywhere, and cannot get one by any door: the spawn page, the
  API, an admin starting it for her. Nobody starts a system account's server by hand, admins included;
  the opshub service still does (an unattended run succeeds).
- A pull from a repository nobody answers for shows git's own message and what to do.
"""

from __future__ import annotations

import re
import shutil

import pytest
import requests
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import expect

from tests.helpers import open_folder
from tests.integration.test_pull_failure import UNREACHABLE
from tests.integration.test_unattended_runs import commit_runbook, request, wait_for_status
from tests.livehub import Hub

from .conftest import log_in, screenshot

QUICK = "hub-pages-quick.ipynb"
GROUP_ROLES = {"ops-leads": "admin", "ops-authors": "author", "ops": "operator", "management": "viewer"}


@pytest.fixture(scope="module")
def hub():
    root = open_folder("opshub-hub-pages-")
    the_hub = Hub(root, configure=lambda s: s["runbooks"].update(allowed_pull_repositories=[UNREACHABLE]))
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    commit_runbook(the_hub, QUICK, new_notebook(cells=[new_code_cell("1 + 1")], metadata={"kernelspec": kernel}))
    the_hub.start()
    yield the_hub
    the_hub.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=["alice", "bob", "carol"])


def api(hub, token: str, method: str, path: str) -> requests.Response:
    return requests.request(
        method, f"{hub.url}/hub/api/{path}", headers={"Authorization": f"token {token}"}, timeout=60
    )


def servers(hub, token: str, user: str) -> dict:
    answer = api(hub, token, "GET", f"users/{user}")
    assert answer.status_code == 200, answer.text
    return answer.json()["servers"]


def open_admin_page(page, hub, fragment: str = "") -> None:
    log_in(page, hub, "alice")
    page.wait_for_url(re.compile(r".*/user/alice/lab.*"), timeout=90_000)  # her server runs
    page.goto(f"{hub.url}/hub/admin{fragment}")


def test_the_admin_page_labels_the_system_accounts_and_offers_them_no_start_or_stop(page, hub):
    open_admin_page(page, hub)
    labels = {
        "opshub-runner": "system account: runs unattended runbooks",
        "opshub-dashboards": "system account: serves live dashboards",
    }
    for account, label in labels.items():
        row = page.locator(f'tr[data-testid="user-row-{account}"]')
        expect(row.locator(".opshub-system-account")).to_have_text(label)
        buttons = row.locator(".start-button, .stop-button")
        expect(buttons).to_have_count(1)  # React draws one of the two...
        expect(buttons).to_be_hidden()  # ...and opshub's page does not show it
        expect(row.get_by_role("link", name="Spawn Page")).to_be_hidden()
    # people keep theirs: alice's running server has its Stop button, carol has no Start Server
    alice = page.locator('tr[data-testid="user-row-alice"]')
    expect(alice.locator(".stop-button")).to_be_visible()
    expect(alice.locator(".opshub-system-account, .opshub-no-server")).to_have_count(0)
    carol = page.locator('tr[data-testid="user-row-carol"]')
    expect(carol.locator(".opshub-no-server")).to_have_text("viewer: no server")
    expect(carol.locator(".start-button")).to_have_count(1)
    expect(carol.locator(".start-button")).to_be_hidden()
    # Start All would start viewers' and system accounts' servers, Stop All would interrupt runs
    expect(page.get_by_test_id("start-all")).to_be_hidden()
    expect(page.get_by_test_id("stop-all")).to_be_hidden()
    screenshot(page, "admin-page-system-accounts")


def test_the_groups_page_shows_each_groups_role(page, hub):
    open_admin_page(page, hub, "#/groups")
    for group, role in GROUP_ROLES.items():
        item = page.locator("li.list-group-item", has=page.get_by_role("link", name=group, exact=True))
        expect(item.locator(".opshub-group-role")).to_have_text(f"role: {role}")
    table = page.locator("#opshub-group-roles")
    expect(table).to_be_visible()
    for group, role in GROUP_ROLES.items():
        expect(table.locator(f'tr[data-opshub-group="{group}"] td').nth(1)).to_have_text(role)
    screenshot(page, "admin-groups-roles")
    page.goto(f"{hub.url}/hub/admin#/")  # the users' list has no groups' note
    expect(page.locator('tr[data-testid="user-row-alice"]')).to_be_visible()
    expect(table).to_be_hidden()


def test_carol_is_offered_no_server_and_finds_what_she_can_do(page, hub):
    log_in(page, hub, "carol")
    page.wait_for_url(f"{hub.url}/hub/home")
    expect(page.get_by_text(re.compile("Start (My )?Server"))).to_have_count(0)
    expect(page.locator("#opshub-dashboards-link")).to_be_visible()
    page.goto(f"{hub.url}/hub/spawn")
    expect(page.get_by_role("heading", name="No server for viewers")).to_be_visible()
    expect(page.get_by_text("Spawn failed")).to_have_count(0)
    expect(page.get_by_text("Traceback")).to_have_count(0)
    screenshot(page, "carol-spawn-page")
    page.get_by_role("link", name="Open the run history").click()
    page.wait_for_url(f"{hub.url}/services/opshub/**")
    page.goto(f"{hub.url}/hub/spawn/carol")
    page.get_by_role("link", name="Open the dashboards").click()
    page.wait_for_url(f"{hub.url}/services/opshub/dashboards/**")


def test_carol_cannot_get_a_server_by_any_door(hub, tokens):
    carol, _ = hub.login("carol")
    xsrf = {"X-XSRFToken": carol.cookies.get("_xsrf", path="/hub/")}
    doors = {
        "the spawn page": carol.get(f"{hub.url}/hub/spawn", timeout=60),
        "the spawn form": carol.post(f"{hub.url}/hub/spawn", data={}, headers=xsrf, timeout=60),
        "the API, as the page calls it": carol.post(f"{hub.url}/hub/api/users/carol/server", headers=xsrf, timeout=60),
        "the API with her token": api(hub, tokens["carol"], "POST", "users/carol/server"),
    }
    for door, answer in doors.items():
        assert answer.status_code == 403, (door, answer.status_code, answer.text[-1000:])
        assert "Traceback" not in answer.text, door
    # an admin cannot start one for her either: the hub says why
    by_admin = api(hub, tokens["alice"], "POST", "users/carol/server")
    assert by_admin.status_code == 403, by_admin.text
    assert "carol may not have a server" in by_admin.json()["message"]
    assert servers(hub, tokens["alice"], "carol") == {}
    assert not hub.home("carol").exists()


def test_nobody_starts_a_system_accounts_server_by_hand_but_the_service_does(hub, tokens):
    alice, _ = hub.login("alice")
    for path in ["users/opshub-runner/server", "users/opshub-runner/servers/by-hand"]:
        answer = api(hub, tokens["alice"], "POST", path)
        assert answer.status_code == 403, (path, answer.text)
        assert "system account" in answer.json()["message"] or "named servers" in answer.json()["message"]
    answer = api(hub, tokens["alice"], "POST", "users/opshub-runner/server")
    assert "opshub-runner is an opshub system account (runs unattended runbooks)" in answer.json()["message"]
    spawn_page = alice.get(f"{hub.url}/hub/spawn/opshub-runner", timeout=60)
    assert spawn_page.status_code == 403 and "system account" in spawn_page.text
    assert "Traceback" not in spawn_page.text
    if "" not in servers(hub, tokens["alice"], "opshub-dashboards"):  # a running one cannot be started anyway
        answer = api(hub, tokens["alice"], "POST", "users/opshub-dashboards/server")
        assert answer.status_code == 403 and "serves live dashboards" in answer.json()["message"], answer.text
    assert servers(hub, tokens["alice"], "opshub-runner") == {}
    # the opshub service, which the rule leaves them to, still starts the runner's servers
    asked = request(hub, tokens["bob"], QUICK)
    assert asked.status_code == 201, asked.text
    assert wait_for_status(hub, tokens["bob"], asked.json()["id"])["status"] == "succeeded"


def test_a_pull_from_an_unreachable_repository_shows_gits_message(page, hub):
    log_in(page, hub, "bob")
    page.wait_for_url(re.compile(r".*/user/bob/lab.*"), timeout=90_000)
    query = f"repo={UNREACHABLE}&targetpath=runbooks/team&urlpath=lab/tree/runbooks/team"
    page.goto(f"{hub.url}/hub/user-redirect/git-pull?{query}")
    expect(page.locator("#pull-failure")).to_be_visible(timeout=60_000)
    expect(page.locator("#pull-problem")).to_have_text("The runbooks repository could not be reached.")
    expect(page.locator("#pull-git-message")).to_contain_text(f"fatal: unable to access '{UNREACHABLE}/'")
    expect(page.locator("#pull-advice")).to_contain_text("Try again in a few minutes")
    expect(page.get_by_text("Traceback")).to_have_count(0)
    screenshot(page, "pull-unreachable-repository")
    # runbooks/team was never cloned: the link opens the runbooks folder as it is
    page.get_by_role("link", name="Open your runbooks as they are").click()
    page.wait_for_url(re.compile(r".*/user/bob/lab/tree/runbooks(\?.*)?$"), timeout=60_000)
    expect(page.locator(".jp-DirListing-item", has_text="patch-server-stack.ipynb")).to_be_visible(timeout=60_000)
