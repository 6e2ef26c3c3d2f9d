"""Which runbooks exist in the team's repository: the notebooks on its branch.

The service keeps a shallow bare copy of the repository and lists it, so that metric labels
only ever name runbooks that exist (anything else is counted as `other`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from pathlib import Path

log = logging.getLogger("opshub.runbooks.catalog")


class RunbookCatalog:
    def __init__(self, repository: str, branch: str, cache_dir: Path | str):
        self.repository = repository
        self.branch = branch
        self.cache_dir = Path(cache_dir)
        self._names: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def names(self) -> frozenset[str]:
        """The runbooks as of the last refresh (paths of .ipynb files on the branch)."""
        return self._names

    def refresh(self) -> frozenset[str]:
        """Fetch the branch and list its notebooks; on failure keep the last list and log why."""
        with self._lock:
            try:
                if not (self.cache_dir / "HEAD").exists():
                    self.cache_dir.mkdir(parents=True, exist_ok=True)
                    self._git("init", "--quiet", "--bare")
                ref = f"refs/heads/{self.branch}"
                self._git("fetch", "--quiet", "--depth", "1", "--no-tags", "--", self.repository, f"+{ref}:{ref}")
                listing = self._git("ls-tree", "-r", "--name-only", ref)
            except subprocess.CalledProcessError as e:
                log.error("cannot list the runbooks of %s (%s): %s", self.repository, self.branch, e.stderr.strip())
                return self._names
            self._names = frozenset(name for name in listing.splitlines() if name.endswith(".ipynb"))
            return self._names

    def _git(self, *args: str) -> str:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        result = subprocess.run(
            ["git", *args], cwd=self.cache_dir, capture_output=True, text=True, env=env, check=True, timeout=120
        )
        return result.stdout
