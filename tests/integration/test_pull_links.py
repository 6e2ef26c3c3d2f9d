"""Pull links write only where they say (THREAT-MODEL invariant 8), against a live hub.

Someone sends bob an nbgitpuller link; bob, logged in, follows it; his own server would do the
writing. Each hostile link is refused by his server, on nbgitpuller's page and on its event stream,
with a page naming the problem and what is allowed, and nothing lands in his home. The link on the
hub's home page, and one to a repository listed in `runbooks.allowed_pull_repositories`, still pull.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.helpers import git, make_work_tree, open_folder
from tests.integration.test_embedded_hub import pull_link
from tests.livehub import Hub

# Runs at the next server start if it ever lands in ~/.jupyter: the attack this guard exists for.
PLANTED_CONFIG = "open('/tmp/opshub-pull-link-owned', 'w').write('owned')\n"


def bare_repository(folder: Path, name: str, files: dict[str, str]) -> str:
    """A bare git repository with one commit of `files`, as a file:// URL every account can read."""
    work = make_work_tree(folder / f"{name}-work", files=files)
    bare = folder / f"{name}.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(work), str(bare)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(bare)], check=True)
    return bare.as_uri()


@pytest.fixture(scope="module")
def repos():
    folder = open_folder("opshub-pull-repos-")
    yield {
        "extra": bare_repository(folder, "extra-runbooks", {"README.md": "# Extra runbooks\n"}),
        "foreign": bare_repository(
            folder, "foreign", {"jupyter_server_config.py": PLANTED_CONFIG, "README.md": "# Not yours\n"}
        ),
    }
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(repos):
    """A hub whose servers may also pull the `extra` repository (never the `foreign` one)."""
    root = open_folder("opshub-pull-links-")
    the_hub = Hub(root, configure=lambda s: s["runbooks"].update(allowed_pull_repositories=[repos["extra"]]))
    the_hub.start()
    yield the_hub
    the_hub.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bob(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    return session


def runbooks_repo(hub, session) -> str:
    """The runbooks repository as the home page's pull link names it."""
    return parse_qs(urlsplit(pull_link(hub, session)).query)["repo"][0]


def home_files(home: Path) -> dict[str, tuple]:
    """Every path in the home with what would show a write; the server's runtime files left out."""
    found = {}
    for folder, dirs, files in os.walk(home):
        rel = os.path.relpath(folder, home)
        if rel.startswith(os.path.join(".local", "share", "jupyter", "runtime")):
            continue
        for name in dirs + files:
            stat = os.lstat(os.path.join(folder, name))
            found[os.path.join(rel, name)] = (stat.st_mode, stat.st_size, stat.st_mtime_ns)
    return found


def follow(hub, session, params: dict, route: str = "hub/user-redirect/git-pull"):
    """bob clicks the link: nbgitpuller's page (through the hub's user-redirect)."""
    return session.get(f"{hub.url}/{route}?{urlencode(params)}", timeout=60)


def stream(hub, session, params: dict):
    """What nbgitpuller's page then opens: the event stream that does the pulling."""
    return session.get(f"{hub.url}/user/bob/git-pull/api?{urlencode(params)}", timeout=120)


def assert_refused(response, status: int, *phrases: str) -> None:
    text = unescape(response.text)
    assert response.status_code == status, (response.status_code, re.findall(r"(?s)<pre.*?</pre>", text))
    assert "Pull link refused" in text and "Traceback" not in text
    for phrase in phrases:
        assert phrase in text, (phrase, text[-2000:])
    assert "data: " not in text  # no event of a pull that started


def hostile_links(hub, repos, runbooks, tmp):
    """(what it tries, query, status, phrase of the refusal)."""
    to_alice = os.path.relpath(hub.home("alice") / "planted", hub.home("bob"))
    return [
        ("plant ~/.jupyter config", {"repo": runbooks, "targetpath": ".jupyter"}, 403, "hidden folder"),
        ("climb out of runbooks", {"repo": runbooks, "targetpath": "runbooks/../.jupyter"}, 403, "climbs out"),
        ("write into alice's home", {"repo": runbooks, "targetpath": to_alice}, 403, to_alice),
        ("absolute path", {"repo": runbooks, "targetpath": str(tmp / "planted")}, 403, "absolute path"),
        ("symlink out of runbooks", {"repo": runbooks, "targetpath": "runbooks/escape/planted"}, 403, "outside"),
        ("another folder of the home", {"repo": runbooks, "targetpath": "notes"}, 403, "outside"),
        ("no targetpath: nbgitpuller's default", {"repo": runbooks}, 403, "The folder runbooks.git"),
        ("foreign repository", {"repo": repos["foreign"], "targetpath": "runbooks/foreign"}, 403, repos["foreign"]),
        ("foreign repository into .jupyter", {"repo": repos["foreign"], "targetpath": ".jupyter"}, 403, "foreign"),
        ("option as branch", {"repo": runbooks, "targetpath": "runbooks", "branch": "--upload-pack=id"}, 400, "branch"),
        ("backup moves runbooks", {"repo": runbooks, "targetpath": "runbooks", "backup": "true"}, 400, "backup"),
    ]


def test_hostile_links_are_refused_and_write_nothing(hub, repos, bob):
    home = hub.home("bob")
    tmp = open_folder("opshub-pull-outside-")
    tmp.chmod(0o777)  # a folder bob's account could write to, as /tmp is
    (home / "runbooks" / "escape").symlink_to(home)  # a symlink in runbooks that leads out of it
    try:
        before = home_files(home)
        head = git("-c", "safe.directory=*", "rev-parse", "HEAD", cwd=home / "runbooks")
        runbooks = runbooks_repo(hub, bob)
        allowed = [runbooks, str(home / "runbooks")]
        for what, params, status, phrase in hostile_links(hub, repos, runbooks, tmp):
            page = follow(hub, bob, params)
            assert "/user/bob/git-pull" in page.url, what
            assert_refused(page, status, phrase, *allowed)
            assert_refused(stream(hub, bob, params), status, phrase, *allowed)
            assert home_files(home) == before, what
        # the legacy route redirects to the guarded page
        legacy = follow(hub, bob, {"repo": repos["foreign"], "targetpath": ".jupyter"}, route="user/bob/git-sync")
        assert_refused(legacy, 403, repos["foreign"])

        assert home_files(home) == before
        assert git("-c", "safe.directory=*", "rev-parse", "HEAD", cwd=home / "runbooks") == head
        assert not (home / ".jupyter" / "jupyter_server_config.py").exists()
        assert not (home / "planted").exists() and not (home / "notes").exists()
        assert not (hub.home("alice") / "planted").exists()
        assert list(tmp.iterdir()) == []
        assert not Path("/tmp/opshub-pull-link-owned").exists()
    finally:
        (home / "runbooks" / "escape").unlink()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize(
    "urlpath, phrase",
    [
        ("https://evil.example.com/", "not a plain path"),
        ("//evil.example.com", "not a plain path"),
        ("../../hub/logout", "leads out of your server"),
        ("lab/%2e%2e/%2e%2e/hub/logout", "leads out of your server"),
    ],
)
def test_page_does_not_send_bob_elsewhere_afterwards(hub, bob, urlpath, phrase):
    page = follow(hub, bob, {"repo": runbooks_repo(hub, bob), "targetpath": "runbooks", "urlpath": urlpath})
    assert_refused(page, 400, f"urlpath={urlpath}", phrase)


def test_page_shows_no_markup_from_the_link(hub, bob):
    """nbgitpuller's page renders the redirect path unescaped: script in a link would run in bob's server."""
    script = "<script>document.title='owned'</script>"
    page = follow(hub, bob, {"repo": runbooks_repo(hub, bob), "targetpath": "runbooks", "urlpath": f"lab/{script}"})
    assert page.status_code == 400
    assert script not in page.text


def test_the_home_pages_link_still_pulls(hub, bob):
    link = pull_link(hub, bob)
    page = bob.get(hub.url + link, timeout=60)
    assert page.status_code == 200 and "/user/bob/git-pull" in page.url, page.text[-2000:]
    query = page.url.split("?", 1)[1]
    pulled = bob.get(f"{hub.url}/user/bob/git-pull/api?{query}", timeout=120)
    assert pulled.status_code == 200
    assert '"phase": "finished"' in pulled.text and '"phase": "error"' not in pulled.text, pulled.text[-2000:]


def test_a_listed_repository_pulls_into_the_runbooks_folder(hub, repos, bob):
    # a repository of another account (root's here): opshub.singleuser trusts the listed ones for git
    assert Path(urlsplit(repos["extra"]).path).stat().st_uid != hub.home("bob").stat().st_uid
    params = {"repo": repos["extra"] + "/", "targetpath": "runbooks/extra", "urlpath": "lab/tree/runbooks/extra"}
    assert follow(hub, bob, params).status_code == 200
    pulled = stream(hub, bob, params)
    assert '"phase": "finished"' in pulled.text, pulled.text[-2000:]
    assert (hub.home("bob") / "runbooks" / "extra" / "README.md").read_text() == "# Extra runbooks\n"
