"""Pull the team's runbooks into a home with nbgitpuller, and say so plainly when it fails."""

from __future__ import annotations

import datetime
import logging
import os
import re
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("opshub.runbooks.pull")
FAILURE_NOTE = "RUNBOOKS-PULL-FAILED.md"


def trust_local_repositories(repos: list[str], home: Path) -> None:
    """Let git read repositories on this machine that another account owns (the hub's mirror).

    Git refuses such "dubious ownership" unless `safe.directory` names them in a protected config
    (not the environment's `-c`), so this server's git gets a system config of its own: the
    machine's, plus those repositories. Set for this process and all it starts (pulls, terminals).
    """
    paths = [urllib.parse.unquote(urllib.parse.urlparse(r).path) for r in repos if r.startswith("file://")]
    if not paths:
        return
    config = home / ".config" / "opshub" / "gitconfig"
    config.parent.mkdir(parents=True, exist_ok=True)
    safe = "".join(f"\tdirectory = {path}\n" for path in paths)
    config.write_text(f"[include]\n\tpath = /etc/gitconfig\n[safe]\n{safe}")
    os.environ["GIT_CONFIG_SYSTEM"] = str(config)


def pull_runbooks(repo: str, branch: str, target: Path, home: Path) -> bool:
    """Clone or update `target` from `repo`, keeping local edits (nbgitpuller's merge).

    On failure, write FAILURE_NOTE in the home so the user sees why their runbooks are missing
    or stale, log the reason, and return False: a failed pull never blocks the server.
    """
    from nbgitpuller.pull import GitPuller

    note = home / FAILURE_NOTE
    # Never wait for a password prompt nobody can answer.
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")
    output = CommandOutput()
    try:
        puller = GitPuller(repo, str(target), branch=branch)
        for line in puller.pull():
            output.add(line)
            log.info("%s", line.rstrip())
    except Exception as e:  # nbgitpuller raises several kinds; all mean "no fresh runbooks"
        failure = explain_failure(e, output.last(), branch=branch, folder=f"~/{target.relative_to(home)}")
        log.error("pulling runbooks from %s (%s) into %s failed: %s", repo, branch, target, failure.as_text())
        note.write_text(
            "# The runbooks could not be pulled\n\n"
            f"When this server started ({datetime.datetime.now().isoformat(timespec='seconds')}), pulling the"
            f" team's runbooks from `{repo}` (branch `{branch}`) into `~/{target.relative_to(home)}` failed:"
            f" {failure.problem}\n\n"
            f"What git said:\n\n```\n{failure.git_says}\n```\n\n"
            + (
                "What is in that folder now may be out of date.\n\n"
                if target.exists()
                else "You have no copy of the runbooks yet.\n\n"
            )
            + f"What to do: {failure.advice}\n"
        )
        return False
    note.unlink(missing_ok=True)
    return True


class CommandOutput:
    """The lines nbgitpuller yields while it pulls (`$ git ...`, then what git printed, stderr included),
    so that a failure can say what the failing command printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if line.startswith("$ "):
            self.lines = []  # a new command: what the earlier ones said is not the failure
        self.lines.append(line)

    def last(self) -> list[str]:
        return list(self.lines)


@dataclass(frozen=True)
class PullFailure:
    """A failed pull as a person can act on it: what went wrong, git's own words, what to do."""

    kind: str  # unreachable, refused, local-changes, not-a-checkout, no-branch, busy, other
    problem: str
    git_says: str
    advice: str

    def as_text(self) -> str:
        return f"{self.problem}\n{self.git_says}\nWhat to do: {self.advice}"


# What git says (in the C locale nbgitpuller runs it with), and what it means for the person pulling.
UNREACHABLE = re.compile(
    r"could not resolve host|unable to access|connection refused|connection timed out|timed out|"
    r"network is unreachable|no route to host|does not appear to be a git repository|"
    r"could not read from remote repository|repository .* not found|unable to connect|not found",
    re.IGNORECASE,
)
REFUSED = re.compile(
    r"authentication failed|permission denied|could not read username|terminal prompts disabled|"
    r"the requested url returned error: 40[13]|dubious ownership",
    re.IGNORECASE,
)
LOCAL_CHANGES = re.compile(
    r"conflict|automatic merge failed|would be overwritten|not possible because you have unmerged|"
    r"you have not concluded your merge|untracked working tree files|needs merge|unmerged files",
    re.IGNORECASE,
)
NOT_A_CHECKOUT = re.compile(r"not a git repository \(or any of the parent directories\)", re.IGNORECASE)
BUSY = re.compile(r"index\.lock|another git process", re.IGNORECASE)
ASK_AN_ADMIN = "If it keeps failing, send this page to a hub admin."


def explain_failure(
    error: BaseException, output: list[str], branch: str | None = None, folder: str = "~/runbooks"
) -> PullFailure:
    """What a failed nbgitpuller pull means: `error` as it raised it, `output` the lines the failing
    command printed (CommandOutput.last()), `folder` the one pulled into, as the person would type it.
    Never a traceback: git's own message, and what to do."""
    git_says = _git_message(error, output)
    name = type(error).__name__
    if name == "BranchExistError":
        return PullFailure(
            "no-branch",
            f"The branch {branch} does not exist in the runbooks repository (the branch does not exist).",
            git_says or f"git ls-remote lists no branch {branch}",
            "Nothing was changed in your runbooks folder. Tell a hub admin: the settings name a branch"
            " (runbooks.branch) the repository does not have.",
        )
    if BUSY.search(git_says):
        return PullFailure(
            "busy",
            "Another git command is working in your runbooks folder, or one was interrupted.",
            git_says,
            "Wait a minute and pull again. If it keeps saying so, no git command is running and"
            f" .git/index.lock is left over: remove it in a terminal (rm {folder}/.git/index.lock).",
        )
    if NOT_A_CHECKOUT.search(git_says):
        return PullFailure(
            "not-a-checkout",
            "Your runbooks folder is no longer a git checkout (its .git folder is gone), so it cannot be updated.",
            git_says,
            f"Move the folder aside in a terminal (mv {folder} {folder}-old), then pull again: you get a"
            f" fresh copy, and your files stay in {folder}-old. " + ASK_AN_ADMIN,
        )
    if name == "MergeError" or LOCAL_CHANGES.search(git_says):
        return PullFailure(
            "local-changes",
            "Your local changes are in the way of the team's: git could not merge them.",
            git_says,
            f"Your files are as they were. In a terminal, `cd {folder}` and `git status` list the files"
            " both you and the team changed: copy your version aside, `git merge --abort` if a merge is"
            " half done, `git checkout -- FILE` to take the team's, then pull again. " + ASK_AN_ADMIN,
        )
    if REFUSED.search(git_says):
        return PullFailure(
            "refused",
            "The runbooks repository refused this server's access.",
            git_says,
            "Your runbooks folder is as it was. Tell a hub admin: this server's access to the runbooks"
            " repository (its credentials or the repository's permissions) needs fixing.",
        )
    if UNREACHABLE.search(git_says) or name in ("RemoteError", "CloneError", "BranchResolveError"):
        return PullFailure(
            "unreachable",
            "The runbooks repository could not be reached.",
            git_says,
            "Your runbooks folder is as it was: keep working with it. Try again in a few minutes (the"
            " repository or the network may be down for a while). " + ASK_AN_ADMIN,
        )
    return PullFailure("other", "Pulling the runbooks failed.", git_says, "Try again in a few minutes. " + ASK_AN_ADMIN)


def _git_message(error: BaseException, output: list[str]) -> str:
    """git's own words: its stderr when nbgitpuller captured it (ls-remote), else what the failing
    command printed, else the error's message (nbgitpuller's own, such as its lock check)."""
    for candidate in (error, error.__cause__, error.__context__):
        stderr = getattr(candidate, "stderr", None)
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        if stderr and stderr.strip():
            return stderr.strip()
    printed = "".join(line if line.endswith("\n") else line + "\n" for line in output if not line.startswith("$ "))
    if printed.strip():
        return printed.strip()
    if isinstance(error, subprocess.CalledProcessError):
        return f"{' '.join(map(str, error.cmd))} failed (exit status {error.returncode}) and printed nothing"
    return str(error).strip() or type(error).__name__
