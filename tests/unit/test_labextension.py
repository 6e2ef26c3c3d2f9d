"""The JupyterLab extension's own checks (jest and the linters, run by npm in hub/labextension/), and the
server side's pre-save hook that keeps a runbook as committed when JupyterLab saves it after opening."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from jupyter_server.services.contents.filemanager import FileContentsManager
from opshub.lab.save_hook import RunbookSaves
from opshub.runbooks.gitstate import git_state

from tests.helpers import ROOT, SHARED_NOTEBOOKS, git, make_work_tree

LABEXTENSION = ROOT / "hub" / "labextension"
# what a Python kernel answers, and JupyterLab writes into the notebook once the kernel is ready
KERNEL_LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": "3.11.2",
}


def npm(script: str) -> subprocess.CompletedProcess:
    if not (LABEXTENSION / "node_modules" / ".bin" / "jest").exists():
        message = "hub/labextension/node_modules is missing: `make install-test` installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        ["npm", "run", "--silent", script], cwd=LABEXTENSION, capture_output=True, text=True, timeout=300
    )


def test_the_extensions_jest_tests_pass():
    done = npm("test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "failed" not in done.stderr.lower()


def test_the_extension_passes_its_linters():
    done = npm("lint")  # prettier --check, then eslint
    assert done.returncode == 0, done.stdout + done.stderr


# -- the pre-save hook -------------------------------------------------------------------------


@pytest.fixture
def server_root(tmp_path) -> Path:
    """A person's server root: ~/runbooks a clone of the team's repository (the shipped runbooks)."""
    upstream = make_work_tree(tmp_path / "upstream", copy_from=SHARED_NOTEBOOKS)
    root = tmp_path / "home"
    root.mkdir()
    git("clone", "--quiet", str(upstream), str(root / "runbooks"), cwd=root)
    return root


def contents_manager(root: Path) -> FileContentsManager:
    manager = FileContentsManager(root_dir=str(root))
    RunbookSaves(root / "runbooks").register(manager)
    return manager


def opened_and_saved(manager: FileContentsManager, path: str, language_info: dict) -> dict:
    """What JupyterLab does: load the notebook, start its kernel (language_info written in), save."""
    model = manager.get(path, content=True, type="notebook")
    content = json.loads(json.dumps(model["content"]))
    content["metadata"]["language_info"] = copy.deepcopy(language_info)
    return manager.save({"type": "notebook", "format": "json", "content": content}, path)


def test_a_runbook_saved_after_its_kernel_started_is_left_as_committed(server_root):
    runbook = server_root / "runbooks" / "host-health-check.ipynb"
    committed = runbook.read_bytes()  # in a layout of its own (keys unsorted), not nbformat's
    saved = opened_and_saved(contents_manager(server_root), "runbooks/host-health-check.ipynb", KERNEL_LANGUAGE_INFO)
    assert runbook.read_bytes() == committed
    # the time JupyterLab is told is the file's: its next save does not think someone else changed it
    assert saved["last_modified"].timestamp() == pytest.approx(runbook.stat().st_mtime, abs=1e-3)
    assert git("status", "--porcelain", "--", runbook.name, cwd=runbook.parent) == ""
    assert git_state(runbook.parent, runbook.name)[1] is False


def test_without_the_hook_the_same_save_changes_the_runbook(server_root):
    """The change the hook prevents: a save without it lands the kernel's language_info in the clone."""
    manager = FileContentsManager(root_dir=str(server_root))
    opened_and_saved(manager, "runbooks/host-health-check.ipynb", KERNEL_LANGUAGE_INFO)
    assert "host-health-check.ipynb" in git("status", "--porcelain", cwd=server_root / "runbooks")


def test_edits_are_saved_and_only_language_info_is_kept(server_root):
    manager = contents_manager(server_root)
    path = "runbooks/tls-certificate-expiry.ipynb"
    model = manager.get(path, content=True, type="notebook")
    content = json.loads(json.dumps(model["content"]))
    content["metadata"]["language_info"] = KERNEL_LANGUAGE_INFO
    content["metadata"]["kernelspec"]["display_name"] = "Python 3 (ops)"  # a kernel chosen: a real change
    content["cells"].append(nbformat.v4.new_code_cell("print('an edit')", id="an-edit").dict())
    manager.save({"type": "notebook", "format": "json", "content": content}, path)
    saved = json.loads((server_root / path).read_text())
    assert saved["metadata"]["language_info"] == {"name": "python"}
    assert saved["metadata"]["kernelspec"]["display_name"] == "Python 3 (ops)"
    assert saved["cells"][-1]["source"] == ["print('an edit')"]
    assert git_state(server_root / "runbooks", "tls-certificate-expiry.ipynb")[1] is True  # the edit is drift


def test_another_language_is_a_change_and_is_saved(server_root):
    bash = {"name": "bash", "mimetype": "text/x-sh", "file_extension": ".sh"}
    opened_and_saved(contents_manager(server_root), "runbooks/host-health-check.ipynb", bash)
    saved = json.loads((server_root / "runbooks" / "host-health-check.ipynb").read_text())
    assert saved["metadata"]["language_info"] == bash


def test_a_runbook_the_commit_does_not_have_keeps_what_is_on_disk(server_root):
    new = server_root / "runbooks" / "new-runbook.ipynb"
    shutil.copy(server_root / "runbooks" / "host-health-check.ipynb", new)
    opened_and_saved(contents_manager(server_root), "runbooks/new-runbook.ipynb", KERNEL_LANGUAGE_INFO)
    assert json.loads(new.read_text())["metadata"]["language_info"] == {"name": "python"}


def test_notebooks_outside_the_runbooks_folder_are_saved_as_jupyterlab_sends_them(server_root):
    shutil.copy(server_root / "runbooks" / "host-health-check.ipynb", server_root / "scratch.ipynb")
    opened_and_saved(contents_manager(server_root), "scratch.ipynb", KERNEL_LANGUAGE_INFO)
    saved = json.loads((server_root / "scratch.ipynb").read_text())
    assert saved["metadata"]["language_info"] == KERNEL_LANGUAGE_INFO


def test_a_runbooks_folder_that_is_no_git_checkout_keeps_what_is_on_disk(server_root):
    shutil.rmtree(server_root / "runbooks" / ".git")
    runbook = server_root / "runbooks" / "host-health-check.ipynb"
    before = json.loads(runbook.read_text())
    opened_and_saved(contents_manager(server_root), "runbooks/host-health-check.ipynb", KERNEL_LANGUAGE_INFO)
    assert json.loads(runbook.read_text()) == before  # the same notebook (in JupyterLab's layout: no commit to keep)


# -- the run's URL as a terminal prints it (opshub.runbooks.public_links) ------------------------------


def test_a_runs_path_is_printed_absolute_when_the_hub_says_its_public_address():
    from opshub.runbooks.public_links import absolute_url

    path = "/services/opshub/runs/6f1c"
    hub = {"JUPYTERHUB_PUBLIC_HUB_URL": "https://ops.example.com/hub/", "JUPYTERHUB_PUBLIC_URL": ""}
    assert absolute_url(path, hub) == "https://ops.example.com/services/opshub/runs/6f1c"
    # under a base URL the path already has it: only the scheme and host are added
    based = {"JUPYTERHUB_PUBLIC_URL": "https://ops.example.com:8443/jhub/user/bob/"}
    assert absolute_url("/jhub/services/opshub/runs/6f1c", based) == (
        "https://ops.example.com:8443/jhub/services/opshub/runs/6f1c"
    )
    assert absolute_url(path, {"OPSHUB_PUBLIC_URL": "http://127.0.0.1:8000/"}) == (
        "http://127.0.0.1:8000/services/opshub/runs/6f1c"
    )


def test_without_a_usable_public_address_the_path_is_printed_as_it_is():
    from opshub.runbooks.public_links import absolute_url

    path = "/services/opshub/runs/6f1c"
    assert absolute_url(path, {}) == path
    assert absolute_url(path, {"JUPYTERHUB_PUBLIC_HUB_URL": "", "JUPYTERHUB_PUBLIC_URL": ""}) == path
    for unusable in ("http://0.0.0.0:8000/", "http://:8000/", "ftp://ops.example.com/", "http://ops:port/", "ops"):
        assert absolute_url(path, {"OPSHUB_PUBLIC_URL": unusable}) == path, unusable
    known = {"OPSHUB_PUBLIC_URL": "https://ops.example.com/"}
    assert absolute_url("https://elsewhere.example/x", known) == "https://elsewhere.example/x"  # already absolute
    assert absolute_url(None, known) is None and absolute_url("", known) == ""
    assert absolute_url("//evil.example/x", known) == "//evil.example/x"  # not a path of ours
