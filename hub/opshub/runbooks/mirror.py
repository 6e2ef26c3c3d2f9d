"""Mirror the committed content of a folder in a git working tree into a bare repository.

The embedded default serves this project's `shared-notebooks/` to every server through a real
git remote: a bare repository in the state folder whose branch holds exactly the committed
content of that folder (uncommitted edits are not published, as with any git remote).
Run once at hub start, then every few seconds as a hub-managed service.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..git import run_git
from ..hardening import die_with_parent

log = logging.getLogger("opshub.runbooks.mirror")
SOURCE_REF = "refs/opshub/source"
# A fixed identity keeps mirror commits reproducible and independent of anyone's git config.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "opshub runbooks mirror",
    "GIT_AUTHOR_EMAIL": "opshub@localhost",
    "GIT_COMMITTER_NAME": "opshub runbooks mirror",
    "GIT_COMMITTER_EMAIL": "opshub@localhost",
}


class MirrorError(Exception):
    pass


def _git(*args: str, cwd: Path | str, check: bool = True) -> str:
    try:
        result = run_git(*args, cwd=cwd, check=False, env=GIT_IDENTITY)
    except subprocess.TimeoutExpired:
        raise MirrorError(f"git {' '.join(args)} in {cwd} did not finish in time") from None
    if check and result.returncode != 0:
        raise MirrorError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()


def mirror(source: Path | str, dest: Path | str, branch: str = "main") -> str | None:
    """Publish the committed content of `source` as `branch` of the bare repository `dest`.

    Returns the new commit, or None when the branch already has that content.
    """
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise MirrorError(f"the runbooks folder {source} does not exist")
    top = _git("rev-parse", "--show-toplevel", cwd=source)
    prefix = _git("rev-parse", "--show-prefix", cwd=source).rstrip("/")
    if not (dest / "HEAD").exists():
        dest.mkdir(parents=True, exist_ok=True)
        _git("init", "--quiet", "--bare", f"--initial-branch={branch}", cwd=dest)
    _git("fetch", "--quiet", "--no-tags", "--", top, f"+HEAD:{SOURCE_REF}", cwd=dest)
    tree = _git(
        "rev-parse",
        "--verify",
        "--quiet",
        f"{SOURCE_REF}:{prefix}" if prefix else f"{SOURCE_REF}^{{tree}}",
        cwd=dest,
        check=False,
    )
    if not tree:
        raise MirrorError(f"{prefix or source} has no committed content yet: commit it first")
    parent = _git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=dest, check=False)
    if parent and _git("rev-parse", f"{parent}^{{tree}}", cwd=dest) == tree:
        return None
    source_commit = _git("rev-parse", "--short=12", SOURCE_REF, cwd=dest)
    subject = _git("log", "-1", "--format=%s", SOURCE_REF, cwd=dest)
    message = f"Runbooks as of {source_commit}: {subject}"
    commit = _git("commit-tree", tree, *(["-p", parent] if parent else []), "-m", message, cwd=dest)
    _git("update-ref", f"refs/heads/{branch}", commit, *([parent] if parent else []), cwd=dest)
    log.info("published %s to %s (%s)", source_commit, dest, branch)
    return commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opshub-runbooks-mirror", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="folder inside a git working tree")
    parser.add_argument("--dest", required=True, help="bare repository to publish into")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--interval", type=float, default=0, help="repeat every N seconds (0: once)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    for sig in (signal.SIGTERM, signal.SIGINT):  # the hub stops its services with SIGINT, then SIGTERM
        signal.signal(sig, lambda *_: sys.exit(0))
    die_with_parent()  # the hub's managed service: never outlives a hub killed with SIGKILL
    while True:
        try:
            mirror(args.source, args.dest, args.branch)
        except MirrorError as e:
            log.error("%s", e)
            if not args.interval:
                return 1
        if not args.interval:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
