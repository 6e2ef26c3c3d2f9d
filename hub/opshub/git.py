"""The one way opshub calls git: never a prompt nobody can answer, messages in English (they reach
people and logs), and always a timeout, so that an unreachable remote cannot hang a server or the
service."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

TIMEOUT = 120  # seconds: a fetch of the runbooks repository over a slow link, with margin


def run_git(
    *args: str,
    cwd: str | Path,
    timeout: float = TIMEOUT,
    check: bool = True,
    text: bool = True,
    input: bytes | str | None = None,  # noqa: A002 (subprocess's own name)
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`git ARGS` in `cwd`, output captured. With `check`, a failure raises CalledProcessError (its
    `stderr` says why); `env` adds to the process's environment."""
    environment = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})}
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=text,
        input=input,
        env=environment,
        check=check,
        timeout=timeout,
    )
