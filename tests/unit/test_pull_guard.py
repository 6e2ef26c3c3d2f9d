"""The pull-link guard's decisions (opshub.lab.pull_guard), on real folders and symlinks in a
temporary home. tests/integration/test_pull_links.py follows the same links in a live server."""

from __future__ import annotations

import os

import pytest
from opshub.lab.pull_guard import PullLink, PullPolicy, branch_is_plain, normalise_repo, redirect_problem

RUNBOOKS_REPO = "file:///srv/opshub/runbooks.git"
EXTRA_REPO = "https://git.example.com/ops/extra-runbooks"


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "bob"
    (home / "runbooks" / "linux").mkdir(parents=True)
    (home / ".jupyter").mkdir()
    (tmp_path / "alice").mkdir()
    return home


@pytest.fixture
def policy(home):
    return PullPolicy.from_environment(
        {
            "HOME": str(home),
            "OPSHUB_RUNBOOKS_TARGET": "runbooks",
            "OPSHUB_RUNBOOKS_REPO": RUNBOOKS_REPO,
            "OPSHUB_ALLOWED_PULL_REPOS": f"{EXTRA_REPO} https://git.example.com/ops/more.git",
        }
    )


def test_policy_reads_the_servers_environment(policy, home):
    assert policy.allowed_repos == (RUNBOOKS_REPO, EXTRA_REPO, "https://git.example.com/ops/more.git")
    assert policy.runbooks_dir == home / "runbooks"
    assert RUNBOOKS_REPO in policy.allowed() and str(home / "runbooks") in policy.allowed()


@pytest.mark.parametrize(
    "repo",
    [
        RUNBOOKS_REPO,
        "file:///srv/opshub/runbooks.git/",
        "file:///srv/opshub/runbooks",
        EXTRA_REPO + ".git",
        EXTRA_REPO + "/",
        "https://git.example.com/ops/more",
    ],
)
def test_allowed_repositories_however_spelled(policy, repo):
    assert policy.repo_problem(repo) is None


@pytest.mark.parametrize(
    "repo",
    [
        "https://github.com/mallory/evil.git",
        "file:///tmp/evil.git",
        "file:///srv/opshub/runbooks.git/../evil.git",
        "file:///srv/opshub/runbooks.git?x",
        "https://git.example.com/ops/extra-runbooks-fork",
        "https://git.example.com/ops/extra-runbook",
        "--upload-pack=touch /tmp/x",
        "",
        None,
    ],
)
def test_other_repositories_are_refused(policy, repo):
    assert policy.repo_problem(repo)


def test_only_the_runbooks_repository_when_nothing_more_is_listed(home):
    policy = PullPolicy.from_environment({"HOME": str(home), "OPSHUB_RUNBOOKS_REPO": RUNBOOKS_REPO})
    assert policy.allowed_repos == (RUNBOOKS_REPO,)
    assert policy.repo_problem(EXTRA_REPO)


def test_normalise_repo():
    assert normalise_repo(" https://h/x.git/ ") == "https://h/x"
    assert normalise_repo("file:///a/b/") == "file:///a/b"


@pytest.mark.parametrize("targetpath", ["runbooks", "runbooks/", "runbooks/linux", "runbooks/new/folder"])
def test_targets_inside_the_runbooks_folder(policy, home, targetpath):
    assert policy.target_problem(targetpath, home) is None


@pytest.mark.parametrize(
    "targetpath",
    [
        ".jupyter",
        "runbooks/../.jupyter",
        "runbooks/.git",
        "runbooks/./linux",
        "../alice",
        "../alice/runbooks",
        "/tmp/x",
        "/",
        "notes",
        "runbooks-old",
        "runbooks.git",
        "",
        'runbooks/<script>alert("x")</script>',
        "runbooks/a&b",
    ],
)
def test_targets_elsewhere_are_refused(policy, home, targetpath):
    assert policy.target_problem(targetpath, home)


def test_symlink_out_of_the_runbooks_folder_is_refused(policy, home, tmp_path):
    (home / "runbooks" / "jupyter").symlink_to(home / ".jupyter")
    (home / "runbooks" / "elsewhere").symlink_to(tmp_path / "alice")
    (home / "runbooks" / "inside").symlink_to(home / "runbooks" / "linux")
    assert "outside your runbooks folder" in policy.target_problem("runbooks/jupyter", home)
    assert policy.target_problem("runbooks/elsewhere/x", home)
    assert policy.target_problem("runbooks/inside", home) is None  # a symlink that stays inside


def test_runbooks_folder_that_is_a_symlink_is_refused(policy, home, tmp_path):
    (home / "runbooks" / "linux").rmdir()
    (home / "runbooks").rmdir()
    (home / "runbooks").symlink_to(tmp_path / "alice")
    assert policy.target_problem("runbooks", home)


def test_home_reached_through_a_symlink_is_the_same_home(tmp_path):
    """A home path with a symlink in it (such as /home -> /data/home) still finds its runbooks."""
    real = tmp_path / "real-home"
    (real / "runbooks").mkdir(parents=True)
    link = tmp_path / "home-link"
    link.symlink_to(real)
    policy = PullPolicy.from_environment({"HOME": str(link), "OPSHUB_RUNBOOKS_REPO": RUNBOOKS_REPO})
    assert policy.target_problem("runbooks", link) is None
    assert policy.target_problem("runbooks/sub", os.fspath(real)) is None


@pytest.mark.parametrize("branch", ["main", "release/2024-06", "v1.2", "feature_x"])
def test_plain_branches(branch):
    assert branch_is_plain(branch)


@pytest.mark.parametrize(
    "branch", ["-u", "--upload-pack=x", "a..b", "HEAD@{1}", "main/", "x.lock", "a//b", "a b", "main~1", "", "a:b"]
)
def test_odd_refs_are_refused(branch):
    assert not branch_is_plain(branch)


@pytest.mark.parametrize("value", [None, "", "lab/tree/runbooks", "lab/tree/runbooks/host-health-check.ipynb", "."])
def test_redirects_inside_the_server(value):
    assert redirect_problem("urlpath", value) is None


@pytest.mark.parametrize(
    "value",
    [
        "/evil.example.com",
        "//evil.example.com",
        "https://evil.example.com",
        "javascript:alert(1)",
        "../../hub/logout",
        "lab/%2e%2e/%2E%2E/hub/logout",
        "lab\\..\\..\\hub",
        "lab/tree/<script>alert(1)</script>",
        'lab/tree/x"onmouseover="alert(1)',
        "lab?next=https://evil",
    ],
)
def test_redirects_out_of_the_server_or_into_the_page_are_refused(value):
    assert redirect_problem("urlpath", value)


def test_problems_of_a_whole_link(policy, home):
    legit = PullLink(
        repo=RUNBOOKS_REPO,
        targetpath="runbooks",
        branch="main",
        redirects={"urlpath": "lab/tree/runbooks", "subpath": None},
    )
    assert policy.problems(legit, home) == []

    planted = PullLink(repo="https://github.com/mallory/evil", targetpath=".jupyter", branch="main")
    problems = policy.problems(planted, home)
    assert [status for status, _ in problems] == [403, 403]
    assert "https://github.com/mallory/evil" in problems[0][1] and ".jupyter" in problems[1][1]

    malformed = PullLink(repo=RUNBOOKS_REPO, targetpath="runbooks", branch="--x", depth="1; rm", backup="true")
    assert [status for status, _ in policy.problems(malformed, home)] == [400, 400, 400]
    assert policy.problems(PullLink(repo=RUNBOOKS_REPO, targetpath="runbooks", depth="1"), home) == []
