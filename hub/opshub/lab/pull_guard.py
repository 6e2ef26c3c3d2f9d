"""Pull links write only where they say (THREAT-MODEL invariant 8).

Every person's server runs nbgitpuller, whose links (`/git-pull?repo=...&targetpath=...`) make the
server of whoever follows them clone or merge a repository. Unguarded, a link someone sends could
plant `~/.jupyter/jupyter_server_config.py` (code that runs at the next start), write outside the
home (`../alice`, `/tmp/x`) or pull any repository. nbgitpuller's page also renders `repo` and the
page path it redirects to without escaping them.

So, in the person's own server, a pull link is refused with a 4xx page naming the problem unless:
- `repo` is the runbooks repository ($OPSHUB_RUNBOOKS_REPO) or one in $OPSHUB_ALLOWED_PULL_REPOS
  (`runbooks.allowed_pull_repositories`), compared without trailing slashes and `.git`;
- `targetpath` resolves (symlinks too) to the runbooks folder ($HOME/$OPSHUB_RUNBOOKS_TARGET) or a
  folder inside it, with no absolute path and no part starting with `.` (`..`, `.jupyter`, `.git`);
- `branch` is a plain branch name, `depth` a number, `backup` unset (it moves the runbooks folder
  aside into the home), and `urlpath`/`subpath` (where the page goes afterwards) stay in the server.

`install` puts guarded subclasses of nbgitpuller's page and event-stream handlers in place of its own
(`git-sync` and `interact`, its legacy routes, only redirect to the guarded page).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from jupyter_server.utils import url_path_join
from tornado import web

from ..contract import ALLOWED_PULL_REPOS_ENV, RUNBOOKS_REPO_ENV  # space-separated URLs in the first
from ..runbooks.headless import default_runbooks_dir

# Characters nbgitpuller's page may show unescaped: no < > " ' & and no URL syntax beyond paths.
TARGET_PART = re.compile(r"[\w@+,=~-][\w .@+,=~-]*")  # a folder name, not starting with "."
REDIRECT_PATH = re.compile(r"[\w.@+,=~%/-]*")
BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")
DEPTH = re.compile(r"[0-9]{1,9}")


def normalise_repo(url: str) -> str:
    """The same repository however the link spells it: no trailing slash, no `.git`."""
    return url.strip().rstrip("/").removesuffix(".git").rstrip("/")


@dataclass(frozen=True)
class PullLink:
    """What a pull link asks for, read from the request the way nbgitpuller reads it."""

    repo: str | None
    targetpath: str
    branch: str | None = None
    depth: str | None = None
    backup: str | bool = False
    redirects: Mapping[str, str | None] = field(default_factory=dict)  # urlpath, subpath (the page only)


@dataclass(frozen=True)
class PullPolicy:
    allowed_repos: tuple[str, ...]  # as configured, shown in refusals
    runbooks_dir: Path  # $HOME/$OPSHUB_RUNBOOKS_TARGET

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> PullPolicy:
        environ = os.environ if environ is None else environ
        repos = [environ.get(RUNBOOKS_REPO_ENV, ""), *environ.get(ALLOWED_PULL_REPOS_ENV, "").split()]
        return cls(tuple(dict.fromkeys(r for r in repos if r.strip())), default_runbooks_dir(environ))

    def allowed(self) -> str:
        """What a pull link may do here, for the refusal page."""
        repos = ", ".join(self.allowed_repos) or "(none configured)"
        return f"Pull links may pull only {repos} into your runbooks folder {self.runbooks_dir} or a folder inside it."

    def repo_problem(self, repo: str | None) -> str | None:
        if not repo or not repo.strip():
            return "The link names no repository (repo=)."
        if normalise_repo(repo) not in {normalise_repo(r) for r in self.allowed_repos}:
            return f"The repository {repo} is not one this server pulls from."
        return None

    def target_problem(self, targetpath: str, parent_dir: str | os.PathLike) -> str | None:
        """Whether `targetpath`, taken relative to `parent_dir` as nbgitpuller does, stays in the
        runbooks folder. The folder itself is not resolved: a runbooks folder that is a symlink is refused."""
        if not targetpath:
            return "The link names no folder to pull into (targetpath=)."
        if os.path.isabs(targetpath):
            return f"The folder {targetpath} is an absolute path; pull links write only inside your runbooks folder."
        parts = targetpath.rstrip("/").split("/")
        if ".." in parts:
            return f"The folder {targetpath} climbs out with '..'."
        if any(part.startswith(".") for part in parts):
            return f"The folder {targetpath} is or goes through a hidden folder (a name starting with '.')."
        if not all(TARGET_PART.fullmatch(part) for part in parts):
            return f"The folder {targetpath} has characters a folder name here may not have."
        allowed = Path(os.path.realpath(self.runbooks_dir.parent)) / self.runbooks_dir.name
        target = Path(os.path.realpath(Path(parent_dir) / targetpath))
        if not target.is_relative_to(allowed):
            return f"The folder {targetpath} is outside your runbooks folder (it leads to {target})."
        return None

    def problems(self, link: PullLink, parent_dir: str | os.PathLike) -> list[tuple[int, str]]:
        """(HTTP status, problem) for each thing the link may not do: 403 for what is not allowed, 400
        for what is malformed. Empty when the link may pull."""
        found = []
        for problem in (self.repo_problem(link.repo), self.target_problem(link.targetpath, parent_dir)):
            if problem:
                found.append((403, problem))
        if link.branch is not None and not branch_is_plain(link.branch):
            found.append((400, f"The branch {link.branch} is not a plain branch name."))
        if link.depth and not DEPTH.fullmatch(link.depth):
            found.append((400, f"The depth {link.depth} is not a number."))
        if link.backup:
            found.append((400, "backup= is not supported: it would move your runbooks folder aside into your home."))
        for name, value in link.redirects.items():
            problem = redirect_problem(name, value)
            if problem:
                found.append((400, problem))
        return found


def branch_is_plain(branch: str) -> bool:
    """A branch name as `git check-ref-format --branch` takes it, minus the odd corners (`..`, `@{`,
    a leading `-` that git would read as an option)."""
    return (
        bool(BRANCH.fullmatch(branch))
        and ".." not in branch
        and "//" not in branch
        and not branch.endswith(("/", ".", ".lock"))
    )


def redirect_problem(name: str, value: str | None) -> str | None:
    """nbgitpuller sends the browser to the server's base URL + this path once pulled, and shows it
    unescaped: it must be a plain path inside the server."""
    if not value:
        return None
    if not REDIRECT_PATH.fullmatch(value) or value.startswith("/"):
        return f"{name}={value} is not a plain path inside your server (letters, digits, . _ - ~ / % @ + , =)."
    if ".." in unquote(value).split("/"):  # browsers treat %2e%2e as ..
        return f"{name}={value} leads out of your server with '..'."
    return None


class PullGuard:
    """Mixed into nbgitpuller's handlers: refuse the link before nbgitpuller sees it."""

    def pull_link(self) -> PullLink:
        raise NotImplementedError

    def refuse_unless_allowed(self) -> None:
        policy: PullPolicy = self.settings["opshub_pull_policy"]
        # nbgitpuller's own choice of parent folder (handlers.py SyncHandler.get)
        parent_dir = os.path.join(
            os.path.expanduser(self.settings["server_root_dir"]), os.getenv("NBGITPULLER_PARENTPATH", "")
        )
        problems = policy.problems(self.pull_link(), parent_dir)
        if problems:
            status = max(code for code, _ in problems)
            message = "\n".join([*(text for _, text in problems), "", policy.allowed()])
            # Jupyter's error page shows the message, escaped
            raise web.HTTPError(status, "%s", message, reason="Pull link refused")


def guarded_handlers():
    """Subclasses of nbgitpuller's page and event-stream handlers that check the link first."""
    from nbgitpuller.handlers import SyncHandler, UIHandler

    class GuardedSyncHandler(PullGuard, SyncHandler):
        def pull_link(self) -> PullLink:
            repo = self.get_argument("repo", None)
            return PullLink(
                repo=repo,
                targetpath=self.get_argument("targetpath", (repo or "").split("/")[-1]),
                branch=self.get_argument("branch", None),
                depth=self.get_argument("depth", None),
                backup=self.get_argument("backup", False),
            )

        @web.authenticated
        async def get(self):
            self.refuse_unless_allowed()
            await super().get()

    class GuardedUIHandler(PullGuard, UIHandler):
        def pull_link(self) -> PullLink:
            repo = self.get_argument("repo", None)
            return PullLink(
                repo=repo,
                targetpath=self.get_argument("targetpath", None)
                or self.get_argument("targetPath", (repo or "").rstrip("/").split("/")[-1]),
                branch=self.get_argument("branch", None),
                depth=self.get_argument("depth", None),
                backup=self.get_argument("backup", False),
                redirects={
                    "urlpath": self.get_argument("urlpath", None) or self.get_argument("urlPath", None),
                    "subpath": self.get_argument("subpath", None) or self.get_argument("subPath", None),
                },
            )

        @web.authenticated
        async def get(self):
            self.refuse_unless_allowed()
            await super().get()

    return {SyncHandler: GuardedSyncHandler, UIHandler: GuardedUIHandler}


def _rules(router):
    """Every routing rule under `router`, depth first (tornado nests a router per host pattern)."""
    for rule in getattr(router, "rules", []):
        yield rule
        yield from _rules(rule.target)


def install(serverapp, policy: PullPolicy) -> int:
    """Guard nbgitpuller's routes in this server; returns how many of its handlers were replaced.

    Extensions load in name order, so nbgitpuller's routes exist already and, being registered
    first, would answer before any of ours: they are replaced in place. The guarded routes are
    registered as well, so the guard answers whichever extension loads first."""
    from nbgitpuller._compat import get_base_handler

    get_base_handler(serverapp)  # nbgitpuller's handlers subclass the base handler of this app
    from nbgitpuller.handlers import SyncHandler, UIHandler

    guards = guarded_handlers()
    web_app = serverapp.web_app
    web_app.settings["opshub_pull_policy"] = policy
    web_app.settings.setdefault("nbapp", serverapp)  # what nbgitpuller's handlers expect
    replaced = 0
    for rule in list(_rules(web_app.default_router)):
        if rule.target in guards:
            rule.target = guards[rule.target]
            replaced += 1
    base = url_path_join(serverapp.base_url, "git-pull")
    web_app.add_handlers(".*$", [(url_path_join(base, "api"), guards[SyncHandler]), (base, guards[UIHandler])])
    return replaced
