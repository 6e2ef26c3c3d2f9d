"""A runbook's git state: the commit its checkout is based on, whether it drifted from it, its committed cells.

Both kinds of runs record these: `opshub run` for the runbook it executes, and the lab recorder for the
notebook a person runs cell by cell (where the committed cells also tell which executed cells were edited).
Git failing, or no git checkout at all, is an answer too (no commit, drift), never an error.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..git import run_git
from .results import source_text


def git_state(folder: Path, relative: str) -> tuple[str | None, bool]:
    """(commit, drift) of the runbook `relative` (a path inside `folder`).

    The commit is the one the checkout is based on in the team's repository: `git merge-base HEAD
    @{upstream}`, or HEAD when there is no upstream. Not the last commit touching the file, because a
    runbook reads other files of the repository (`inventory/stacks.yaml`): the checkout's commit is what
    reproduces the run. Not plain HEAD, because nbgitpuller commits local edits ("Automatic commit by
    nbgitpuller") before merging: HEAD then exists only in this clone and hides the edits.

    Drift is whether the file differs from that commit: edits (committed locally or not, staged or not)
    or a file the commit does not have. For a notebook, only its cells count (types and sources, in
    order): outputs and execution counts that JupyterLab saved after running it are not drift. Not a
    git checkout, or git failing: (None, True).
    """
    try:
        commit = base_commit(folder)
        if commit is None:
            return None, True
        # Paths relative to `folder` ("./"), which may be a sub-folder of the repository.
        if _git(folder, "cat-file", "-e", f"{commit}:./{relative}").returncode != 0:
            return commit, True
        diff = _git(folder, "diff", "--quiet", commit, "--", relative)
        if diff.returncode == 0:
            return commit, False
        if not relative.endswith(".ipynb"):
            return commit, True
        # Outputs, execution counts and metadata saved by JupyterLab are not drift: the cells are.
        committed = committed_text(folder, commit, relative)
        return commit, committed is None or notebook_cells(committed) != notebook_cells(
            (Path(folder) / relative).read_text()
        )
    except (OSError, subprocess.SubprocessError):
        return None, True


def base_commit(folder: Path) -> str | None:
    """The commit the checkout in `folder` is based on in the team's repository (see `git_state`): `git
    merge-base HEAD @{upstream}`, or HEAD without an upstream; None when `folder` is no git checkout."""
    head = _git(folder, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head.returncode != 0:
        return None
    base = _git(folder, "merge-base", "HEAD", "@{upstream}")
    return (base.stdout if base.returncode == 0 and base.stdout.strip() else head.stdout).strip()


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    # a person's clone, read while they work in it: take no lock they could trip over
    return run_git(*args, cwd=folder, timeout=60, check=False, env={"GIT_OPTIONAL_LOCKS": "0"})


def committed_text(folder: Path, commit: str, relative: str) -> str | None:
    """The file `relative` (a path inside `folder`) as `commit` has it, or None if git cannot show it."""
    shown = _git(folder, "show", f"{commit}:./{relative}")
    return shown.stdout if shown.returncode == 0 else None


def notebook_cells(text: str) -> list[tuple[str, str]] | None:
    """What a notebook does: its cells' types and sources, in order (None if it is not a notebook)."""
    try:
        cells = json.loads(text)["cells"]
        return [(c["cell_type"], source_text(c["source"])) for c in cells]
    except (ValueError, KeyError, TypeError):
        return None
