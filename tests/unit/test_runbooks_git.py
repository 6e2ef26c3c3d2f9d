"""Runbooks through real git: mirroring a folder into a bare repo, pulling it into a home."""

from __future__ import annotations

import pytest
from opshub.runbooks.mirror import MirrorError, mirror
from opshub.runbooks.pull import FAILURE_NOTE, pull_runbooks

from tests.helpers import git, make_work_tree


def test_mirror_publishes_committed_content_of_a_subfolder(tmp_path):
    project = make_work_tree(tmp_path / "project", {"README.md": "x", "notebooks/a.ipynb": "{}", "notebooks/b.md": "b"})
    dest = tmp_path / "runbooks.git"
    commit = mirror(project / "notebooks", dest, "main")
    assert commit
    assert git("ls-tree", "--name-only", "main", cwd=dest).splitlines() == ["a.ipynb", "b.md"]
    # nothing new: no new commit
    assert mirror(project / "notebooks", dest, "main") is None
    # uncommitted edits are not published
    (project / "notebooks" / "a.ipynb").write_text('{"changed": 1}')
    assert mirror(project / "notebooks", dest, "main") is None
    # a commit is, on top of the previous one
    git("commit", "-qam", "edit a", cwd=project)
    second = mirror(project / "notebooks", dest, "main")
    assert second and git("rev-parse", "main~1", cwd=dest) == commit
    assert git("show", "main:a.ipynb", cwd=dest) == '{"changed": 1}'
    assert "edit a" in git("log", "-1", "--format=%s", "main", cwd=dest)


def test_mirror_refuses_what_it_cannot_publish(tmp_path):
    project = make_work_tree(tmp_path / "project", {"README.md": "x"})
    (project / "new").mkdir()
    (project / "new" / "x.ipynb").write_text("{}")
    with pytest.raises(MirrorError, match="no committed content"):
        mirror(project / "new", tmp_path / "dest.git")
    with pytest.raises(MirrorError, match="does not exist"):
        mirror(project / "missing", tmp_path / "dest.git")
    (tmp_path / "plain").mkdir()
    with pytest.raises(MirrorError, match="rev-parse"):
        mirror(tmp_path / "plain", tmp_path / "dest2.git")


@pytest.fixture
def remote(tmp_path):
    upstream = make_work_tree(tmp_path / "upstream", {"patch.ipynb": "line 1\nline 2\n", "health.ipynb": "h\n"})
    bare = tmp_path / "runbooks.git"
    mirror(upstream, bare, "main")
    return upstream, bare


def test_pull_clones_then_merges_upstream_keeping_local_edits(tmp_path, remote):
    upstream, bare = remote
    home = tmp_path / "home"
    home.mkdir()
    target = home / "runbooks"
    assert pull_runbooks(bare.as_uri(), "main", target, home)
    assert git("rev-parse", "HEAD", cwd=target) == git("rev-parse", "main", cwd=bare)
    assert (target / "patch.ipynb").read_text() == "line 1\nline 2\n"

    (target / "health.ipynb").write_text("my local edit\n")  # the user's edit
    (upstream / "patch.ipynb").write_text("line 1\nline 2\nline 3\n")  # upstream moves on
    (upstream / "tls.ipynb").write_text("new runbook\n")
    git("add", "-A", cwd=upstream)
    git("commit", "-qm", "upstream change", cwd=upstream)
    mirror(upstream, bare, "main")

    assert pull_runbooks(bare.as_uri(), "main", target, home)
    assert (target / "health.ipynb").read_text() == "my local edit\n"
    assert (target / "patch.ipynb").read_text() == "line 1\nline 2\nline 3\n"
    assert (target / "tls.ipynb").exists()
    assert not (home / FAILURE_NOTE).exists()


def test_failed_pull_leaves_a_note_in_the_home_then_clears_it(tmp_path, remote, caplog):
    _, bare = remote
    home = tmp_path / "home"
    home.mkdir()
    missing = (tmp_path / "nowhere.git").as_uri()
    assert not pull_runbooks(missing, "main", home / "runbooks", home)
    note = (home / FAILURE_NOTE).read_text()
    assert missing in note and "no copy of the runbooks yet" in note
    assert any("nowhere.git" in r.getMessage() for r in caplog.records)  # the log says why

    assert not pull_runbooks(bare.as_uri(), "no-such-branch", home / "runbooks", home)
    assert "branch does not exist" in (home / FAILURE_NOTE).read_text()

    assert pull_runbooks(bare.as_uri(), "main", home / "runbooks", home)
    assert not (home / FAILURE_NOTE).exists()
