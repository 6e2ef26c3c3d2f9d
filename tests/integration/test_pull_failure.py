"""A failed "Pull latest runbooks" says what git said and what to do, never a traceback (issue 20, part 7).

bob follows pull links in his own server (a hub of this module); each failure is a real one: a
repository nobody answers for (a closed port), his checkout's remote gone (`git fetch` fails, the
failure nbgitpuller used to show as "git fetch returned non-zero exit status 128" alone), another
git command's lock in the way. The event stream's error carries git's own message (`git`) and the
advice (`advice`); bob's runbooks are left as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.helpers import git, open_folder
from tests.integration.test_embedded_hub import pull_link
from tests.livehub import Hub


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


UNREACHABLE = f"http://127.0.0.1:{closed_port()}/team/runbooks.git"


@pytest.fixture(scope="module")
def hub():
    """A hub whose servers may also pull UNREACHABLE (listed, so the guard lets the link through)."""
    root = open_folder("opshub-pull-failure-")
    the_hub = Hub(root, configure=lambda s: s["runbooks"].update(allowed_pull_repositories=[UNREACHABLE]))
    the_hub.start()
    yield the_hub
    the_hub.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bob(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    return session


def home_link_query(hub, session) -> dict[str, str]:
    """The query of the home page's "Pull latest runbooks" link, as bob's server receives it."""
    page = session.get(hub.url + pull_link(hub, session), timeout=60)
    assert page.status_code == 200, page.text[-2000:]
    return {name: values[0] for name, values in parse_qs(urlsplit(page.url).query).items()}


def pull_events(hub, session, params: dict) -> tuple[list[dict], str]:
    """The pull's event stream (what the pull page follows): its events, and the raw text."""
    response = session.get(f"{hub.url}/user/bob/git-pull/api?{urlencode(params)}", timeout=120)
    assert response.status_code == 200, response.text[-2000:]
    events = [json.loads(line[len("data: ") :]) for line in response.text.splitlines() if line.startswith("data: ")]
    return events, response.text


def the_failure(events: list[dict], raw: str) -> dict:
    """The stream's last event, which must be its one error, explained: no traceback anywhere."""
    assert events and events[-1]["phase"] == "error", raw[-2000:]
    assert [e["phase"] for e in events].count("error") == 1
    assert "Traceback" not in raw and 'File "' not in raw, raw[-3000:]
    failure = events[-1]
    assert failure["git"].strip() and failure["advice"].strip(), failure
    return failure


def test_an_unreachable_repository_shows_gits_message_and_what_to_do(hub, bob):
    before = git("-c", "safe.directory=*", "rev-parse", "HEAD", cwd=hub.home("bob") / "runbooks")
    params = {"repo": UNREACHABLE, "targetpath": "runbooks/team", "urlpath": "lab/tree/runbooks/team"}

    page = bob.get(f"{hub.url}/user/bob/git-pull?{urlencode(params)}", timeout=60)
    assert page.status_code == 200
    assert "Pulling the team&#39;s runbooks" in page.text or "Pulling the team's runbooks" in page.text
    assert UNREACHABLE in unescape(page.text)

    failure = the_failure(*pull_events(hub, bob, params))
    assert failure["message"] == "The runbooks repository could not be reached."
    assert failure["error"]["code"] == "unreachable"
    port = urlsplit(UNREACHABLE).port
    assert "unable to access" in failure["git"] and f"port {port}" in failure["git"], failure["git"]
    assert "Try again in a few minutes" in failure["advice"] and "hub admin" in failure["advice"]
    assert not (hub.home("bob") / "runbooks" / "team").exists()
    assert git("-c", "safe.directory=*", "rev-parse", "HEAD", cwd=hub.home("bob") / "runbooks") == before


def test_a_fetch_that_fails_shows_what_git_fetch_said(hub, bob):
    """bob's checkout's remote is gone (moved, renamed): `git fetch` fails inside nbgitpuller's pull."""
    runbooks = hub.home("bob") / "runbooks"
    origin = git("-c", "safe.directory=*", "remote", "get-url", "origin", cwd=runbooks).strip()
    gone = hub.shared / "moved-away" / "runbooks.git"
    config = runbooks / ".git" / "config"
    owner = config.stat()
    git("-c", "safe.directory=*", "remote", "set-url", "origin", str(gone), cwd=runbooks)
    try:
        failure = the_failure(*pull_events(hub, bob, home_link_query(hub, bob)))
    finally:
        git("-c", "safe.directory=*", "remote", "set-url", "origin", origin, cwd=runbooks)
        os.chown(config, owner.st_uid, owner.st_gid)  # git rewrote it as the tests' account
    assert failure["error"]["code"] == "unreachable", failure
    assert f"'{gone}' does not appear to be a git repository" in failure["git"], failure["git"]
    assert "non-zero exit status" not in failure["git"] + failure["message"]
    # once the remote is back, the same link pulls again
    events, raw = pull_events(hub, bob, home_link_query(hub, bob))
    assert events[-1]["phase"] == "finished", raw[-2000:]


def test_another_git_commands_lock_says_wait_and_how_to_clear_it(hub, bob):
    lock = hub.home("bob") / "runbooks" / ".git" / "index.lock"
    lock.write_text("")
    try:
        failure = the_failure(*pull_events(hub, bob, home_link_query(hub, bob)))
    finally:
        lock.unlink()
    assert failure["error"]["code"] == "busy"
    assert "index.lock" in failure["git"] and "rm ~/runbooks/.git/index.lock" in failure["advice"]


def test_bad_input_to_the_stream_is_refused_by_name_not_a_traceback(hub, bob):
    params = {"repo": UNREACHABLE, "targetpath": "runbooks/team", "depth": "many"}
    response = bob.get(f"{hub.url}/user/bob/git-pull/api?{urlencode(params)}", timeout=60)
    assert response.status_code == 400 and "The depth many is not a number" in unescape(response.text)
    assert "Traceback" not in response.text


def test_a_runbooks_folder_that_lost_its_git_checkout_says_how_to_start_afresh(hub, bob):
    runbooks = hub.home("bob") / "runbooks"
    (runbooks / ".git").rename(runbooks.parent / "runbooks-git-aside")
    try:
        failure = the_failure(*pull_events(hub, bob, home_link_query(hub, bob)))
    finally:
        (runbooks.parent / "runbooks-git-aside").rename(runbooks / ".git")
    assert failure["error"]["code"] == "not-a-checkout"
    assert "fatal: not a git repository" in failure["git"]
    assert "mv ~/runbooks ~/runbooks-old" in failure["advice"]
