"""Which runbooks exist in the team's repository: the notebooks on its branch.

The service keeps a shallow bare copy of the repository and lists it, so that metric labels
only ever name runbooks that exist (anything else is counted as `other`). Each runbook's `opshub`
metadata is checked on every refresh: a runbook with wrong metadata is still listed, with its problem
in `invalid()` (and the service's log), never a crash.
"""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
import threading
from pathlib import Path
from typing import Any

from ..git import run_git
from .metadata import RunbookMetadataError, runbook_metadata

log = logging.getLogger("opshub.runbooks.catalog")


class RunbookCatalog:
    def __init__(self, repository: str, branch: str, cache_dir: Path | str):
        self.repository = repository
        self.branch = branch
        self.cache_dir = Path(cache_dir)
        self._names: frozenset[str] = frozenset()
        self._metadata: dict[str, dict[str, Any]] = {}
        self._invalid: dict[str, str] = {}
        self._lock = threading.Lock()
        # why the last refresh could not reach the repository (None: it could): said on the service's
        # pages and in refusals, logged once per outage
        self.unreachable: str | None = None
        self.refreshed_at: datetime.datetime | None = None  # the last refresh that reached it

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
                self._unreachable(e.stderr.strip())
                return self._names
            if self.unreachable:
                log.warning("the runbooks repository %s answers again", self.repository)
            self.unreachable, self.refreshed_at = None, datetime.datetime.now(datetime.timezone.utc)
            names = frozenset(name for name in listing.splitlines() if name.endswith(".ipynb"))
            try:
                self._check_metadata(ref, sorted(names))
            except subprocess.CalledProcessError as e:
                log.error("cannot read the runbooks of %s (%s): %s", self.repository, self.branch, e.stderr.strip())
            self._names = names
            return self._names

    def _unreachable(self, error: str) -> None:
        said = (error.splitlines() or ["git failed"])[-1][:300]
        since = (
            f"the list of runbooks is from {self.refreshed_at:%Y-%m-%d %H:%M} UTC"
            if self.refreshed_at
            else "no runbooks were read yet"
        )
        if self.unreachable is None:
            log.error(
                "cannot read the runbooks of %s (%s): %s (logged once until it answers again)",
                self.repository,
                self.branch,
                error,
            )
        self.unreachable = f"The runbooks repository {self.repository} cannot be reached ({said}): {since}."

    def metadata(self) -> dict[str, dict[str, Any]]:
        """The checked `opshub` metadata (with defaults) of each runbook whose metadata is right."""
        return self._metadata

    def invalid(self) -> dict[str, str]:
        """The runbooks whose metadata is wrong, with the problem (`patch.ipynb: opshub.changes_systems ...`)."""
        return self._invalid

    def _check_metadata(self, ref: str, names: list[str]) -> None:
        metadata, invalid = {}, {}
        files: dict[str, str] = {}

        def read_file(path: str) -> str:  # for choices from a file: the schedules' values are checked now
            if path not in files:
                try:
                    files[path] = self.show(ref, path)
                except subprocess.CalledProcessError:
                    raise LookupError(f"the repository has no file {path}") from None
            return files[path]

        for name, text in zip(names, self._contents(ref, names), strict=True):
            try:
                metadata[name] = runbook_metadata(json.loads(text), name, read_file)
            except ValueError as e:  # not JSON, or RunbookMetadataError
                problem = str(e) if isinstance(e, RunbookMetadataError) else f"{name}: not notebook JSON: {e}"
                invalid[name] = problem
                if self._invalid.get(name) != problem:  # said once, not on every refresh
                    log.error("invalid runbook %s", problem)
        self._metadata, self._invalid = metadata, invalid

    def _contents(self, ref: str, names: list[str]) -> list[str]:
        """The text of each file `names` at `ref`, read with one `git cat-file --batch`."""
        request = "".join(f"{ref}:{name}\n" for name in names).encode()
        result = run_git("cat-file", "--batch", cwd=self.cache_dir, input=request, text=False)
        out, position, texts = result.stdout, 0, []
        for _ in names:
            header_end = out.index(b"\n", position)
            header = out[position:header_end].split()  # <object> blob <size>, or <name> missing
            size = int(header[2]) if len(header) == 3 else 0
            texts.append(out[header_end + 1 : header_end + 1 + size].decode("utf-8", errors="replace"))
            position = header_end + 1 + size + (1 if len(header) == 3 else 0)
        return texts

    def _git(self, *args: str, text: bool = True):
        return run_git(*args, cwd=self.cache_dir, text=text).stdout

    # -- reading the cache, for the service's other parts (the dashboards registry) ------------------

    def commit(self) -> str | None:
        """The branch's commit in the cache, None before the first fetch."""
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"refs/heads/{self.branch}").strip() or None
        except (subprocess.CalledProcessError, OSError):
            return None

    def show(self, commit: str, path: str) -> str:
        """The file `path` at `commit`."""
        return self._git("show", f"{commit}:{path}")

    def show_runbook(self, commit: str, path: str) -> str:
        """The runbook `path` at `commit`, fetching that commit from the repository if the cache lacks
        it (it keeps only the branch's latest). LookupError naming what is missing."""
        if not self._has(commit):
            with self._lock:
                # git fetches a full hash by itself; an abbreviated one only with the branch's history
                ref = f"refs/heads/{self.branch}"
                wanted = commit if len(commit) in (40, 64) else f"+{ref}:{ref}"
                depth = "1" if wanted == commit else "2147483647"
                try:
                    self._git("fetch", "--quiet", "--depth", depth, "--no-tags", "--", self.repository, wanted)
                except subprocess.CalledProcessError:
                    raise LookupError(f"the runbooks repository has no commit {commit}") from None
            if not self._has(commit):
                raise LookupError(f"the runbooks repository's branch {self.branch} has no commit {commit}")
        try:
            return self.show(commit, path)
        except subprocess.CalledProcessError:
            raise LookupError(f"there is no runbook {path!r} at commit {commit[:12]}") from None

    def full_commit(self, commit: str) -> str:
        """The full hash of a commit the cache has."""
        return self._git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}").strip()

    def _has(self, commit: str) -> bool:
        try:
            return bool(self.full_commit(commit))
        except subprocess.CalledProcessError:
            return False

    def archive(self, commit: str) -> bytes:
        """The repository's files at `commit`, as a tar."""
        return self._git("archive", "--format=tar", commit, text=False)
