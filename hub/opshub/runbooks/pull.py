"""Pull the team's runbooks into a home with nbgitpuller, and say so plainly when it fails."""

from __future__ import annotations

import datetime
import logging
import os
import urllib.parse
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
    try:
        puller = GitPuller(repo, str(target), branch=branch)
        for line in puller.pull():
            log.info("%s", line.rstrip())
    except Exception as e:  # nbgitpuller raises several kinds; all mean "no fresh runbooks"
        reason = _describe(e)
        log.error("pulling runbooks from %s (%s) into %s failed: %s", repo, branch, target, reason)
        note.write_text(
            "# The runbooks could not be pulled\n\n"
            f"When this server started ({datetime.datetime.now().isoformat(timespec='seconds')}), pulling the"
            f" team's runbooks from `{repo}` (branch `{branch}`) into `~/{target.relative_to(home)}` failed:\n\n"
            f"```\n{reason}\n```\n\n"
            + (
                "What is in that folder now may be out of date.\n\n"
                if target.exists()
                else "You have no copy of the runbooks yet.\n\n"
            )
            + "Try *Pull latest runbooks* on the hub's home page, or restart your server. If it keeps"
            " failing, send this note to a hub admin.\n"
        )
        return False
    note.unlink(missing_ok=True)
    return True


def _describe(error: Exception) -> str:
    stderr = getattr(error, "stderr", None)
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    if stderr:
        return f"{error}\n{stderr.strip()}"
    if type(error).__name__ == "BranchExistError":
        return "the branch does not exist in the repository"
    return f"{type(error).__name__}: {error}"
