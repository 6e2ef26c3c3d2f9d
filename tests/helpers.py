"""Test helpers: where things are, and small real-git helpers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_NOTEBOOKS = ROOT / "shared-notebooks"
VENV_BIN = Path(os.environ.get("OPSHUB_VENV_BIN", ROOT / ".venv" / "bin"))
ARTIFACTS = ROOT / "test-artifacts"

GIT_ENV = {
    "GIT_AUTHOR_NAME": "opshub tests",
    "GIT_AUTHOR_EMAIL": "tests@localhost",
    "GIT_COMMITTER_NAME": "opshub tests",
    "GIT_COMMITTER_EMAIL": "tests@localhost",
}


def git(*args: str, cwd: Path | str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {cwd}: {result.stderr}")
    return result.stdout.strip()


def make_work_tree(path: Path, files: dict[str, str] | None = None, copy_from: Path | None = None) -> Path:
    """A git working tree with one commit, made of `files` or a copy of a folder."""
    import shutil

    if copy_from:
        shutil.copytree(copy_from, path)
    else:
        path.mkdir(parents=True)
    for name, text in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git("init", "--quiet", "--initial-branch=main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "--quiet", "-m", "initial runbooks", cwd=path)
    return path
