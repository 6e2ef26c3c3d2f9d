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

The guarded handlers also pull in a way a person can follow: the page is opshub's
(templates/runbooks-pull.html), and a failed pull ends the event stream with git's own message and
what to do (runbooks/pull.py `explain_failure`), never nbgitpuller's traceback.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import jinja2
from jupyter_server.utils import url_path_join
from tornado import gen, web

from ..contract import ALLOWED_PULL_REPOS_ENV, RUNBOOKS_REPO_ENV  # space-separated URLs in the first
from ..runbooks.headless import default_runbooks_dir
from ..runbooks.pull import CommandOutput, explain_failure

# Characters nbgitpuller's page may show unescaped: no < > " ' & and no URL syntax beyond paths.
TARGET_PART = re.compile(r"[\w@+,=~-][\w .@+,=~-]*")  # a folder name, not starting with "."
REDIRECT_PATH = re.compile(r"[\w.@+,=~%/-]*")
BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")
DEPTH = re.compile(r"[0-9]{1,9}")
# opshub's pull page: a template of the hub's folder, rendered here, in the person's server
PAGES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).resolve().parent.parent / "templates")),
    autoescape=True,
)


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

    def parent_dir(self) -> str:
        """nbgitpuller's own choice of the folder `targetpath` is relative to (handlers.py SyncHandler.get)."""
        return os.path.join(
            os.path.expanduser(self.settings["server_root_dir"]), os.getenv("NBGITPULLER_PARENTPATH", "")
        )

    def refuse_unless_allowed(self) -> None:
        policy: PullPolicy = self.settings["opshub_pull_policy"]
        problems = policy.problems(self.pull_link(), self.parent_dir())
        if problems:
            status = max(code for code, _ in problems)
            message = "\n".join([*(text for _, text in problems), "", policy.allowed()])
            # Jupyter's error page shows the message, escaped
            raise web.HTTPError(status, "%s", message, reason="Pull link refused")


def guarded_handlers():
    """Subclasses of nbgitpuller's page and event-stream handlers that check the link first."""
    from nbgitpuller.handlers import SyncHandler, UIHandler
    from nbgitpuller.pull import GitPuller

    class GuardedSyncHandler(PullGuard, SyncHandler):
        """nbgitpuller's event stream (the same events: syncing, finished, error), whose error event
        carries git's message (`git`) and what to do (`advice`) instead of a traceback."""

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
            try:
                await self.git_lock.acquire(1)
            except gen.TimeoutError:
                await self.emit_failure(
                    "Another pull is running in your server.", "", "Wait a minute, then pull again."
                )
                return
            try:
                self.set_header("content-type", "text/event-stream")
                self.set_header("cache-control", "no-cache")
                await self.pull()
            finally:
                self.git_lock.release()

        async def pull(self) -> None:
            link = self.pull_link()
            parent_dir = self.parent_dir()
            options = {"branch": link.branch, "depth": int(link.depth) if link.depth else None}
            loop = asyncio.get_running_loop()
            events: asyncio.Queue = asyncio.Queue()

            def pull_in_a_thread():  # git takes its time: the server goes on answering meanwhile
                try:
                    puller = GitPuller(
                        link.repo, os.path.join(parent_dir, link.targetpath), parent=self.settings["nbapp"], **options
                    )
                    for line in puller.pull():
                        loop.call_soon_threadsafe(events.put_nowait, line)
                    loop.call_soon_threadsafe(events.put_nowait, None)
                except Exception as e:  # every failure ends the stream with an explanation
                    loop.call_soon_threadsafe(events.put_nowait, e)

            threading.Thread(target=pull_in_a_thread, daemon=True).start()
            output = CommandOutput()
            while True:
                event = await events.get()
                if event is None:
                    await self.emit({"phase": "finished"})
                    return
                if isinstance(event, Exception):
                    folder = os.path.join("~", os.path.relpath(os.path.join(parent_dir, link.targetpath), Path.home()))
                    failure = explain_failure(event, output.last(), branch=link.branch, folder=folder)
                    self.log.warning("pulling %s into %s failed: %s", link.repo, link.targetpath, failure.as_text())
                    await self.emit_failure(failure.problem, failure.git_says, failure.advice, failure.kind)
                    return
                output.add(event)
                await self.emit({"output": event, "phase": "syncing"})

        async def emit_failure(self, problem: str, git_says: str, advice: str, kind: str = "other") -> None:
            await self.emit(
                {
                    "phase": "error",
                    "message": problem,
                    "error": {"code": kind, "message": problem},
                    "git": git_says,
                    "advice": advice,
                    "output": git_says,
                }
            )

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
            link = self.pull_link()
            stream = {"repo": link.repo, "targetpath": link.targetpath, "_xsrf": self.xsrf_token.decode()}
            stream.update({name: value for name, value in (("branch", link.branch), ("depth", link.depth)) if value})
            hub = os.environ.get("JUPYTERHUB_BASE_URL", "/")
            page = PAGES.get_template("runbooks-pull.html").render(
                repo=link.repo,
                branch=link.branch,
                targetpath=link.targetpath,
                config={
                    "stream": url_path_join(self.base_url, "git-pull", "api"),
                    "query": stream,
                    "next": url_path_join(self.base_url, self.next_path(link)),
                    "runbooks": url_path_join(self.base_url, "lab", "tree", self.runbooks_as_they_are(link)),
                    "hub_home": url_path_join(hub, "hub", "home"),
                },
            )
            self.finish(page)

        def runbooks_as_they_are(self, link: PullLink) -> str:
            """The folder to open when the pull failed: the link's, or the runbooks folder before its first clone."""
            if os.path.isdir(os.path.join(self.parent_dir(), link.targetpath)):
                return link.targetpath
            root = os.path.expanduser(self.settings["server_root_dir"])
            return os.path.relpath(self.settings["opshub_pull_policy"].runbooks_dir, root)

        def next_path(self, link: PullLink) -> str:
            """Where the page goes once pulled, worked out as nbgitpuller's page does (its checks passed)."""
            if link.redirects.get("urlpath"):
                return link.redirects["urlpath"]
            path = os.path.join(
                os.getenv("NBGITPULLER_PARENTPATH", ""), link.targetpath, link.redirects.get("subpath") or "."
            )
            app = self.get_argument("app", os.getenv("NBGITPULLER_APP", "notebook"))
            if app.lower() == "lab":
                return "lab/tree/" + path
            return ("notebooks/" if path.lower().endswith(".ipynb") else "tree/") + path

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
