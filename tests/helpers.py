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
        # the tests (root) also look into people's clones, which their own accounts own
        ["git", "-c", "safe.directory=*", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
        check=False,
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


def run_async(coroutine):
    """asyncio.run in a thread of its own: in the full suite Playwright's sync API keeps an event loop
    running in the main thread, where asyncio.run refuses to start another."""
    import asyncio
    import threading

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def open_folder(prefix: str) -> Path:
    """A new folder that every account can enter (0755), outside pytest's root-only temporary
    folder: per-person accounts must reach their homes and the runbooks repository. The caller
    removes it."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def ensure_debian_package(package: str, path: str) -> None:
    """Install a Debian package the tests need when `path` is missing (we run as root on Debian).

    Under CI=true a component that cannot be installed fails the test; elsewhere it skips it.
    """
    import shutil

    import pytest

    if Path(path).exists():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    if not Path(path).exists():
        message = f"Debian package {package} ({path}) is missing and could not be installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
