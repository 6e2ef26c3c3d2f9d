"""Start a user's JupyterLab: pull the team's runbooks, then become `jupyterhub-singleuser`.

The spawner runs this instead of `jupyterhub-singleuser`, with the runbooks repository in the
environment (see `opshub.configure.spawner.user_environment`). Pulling here, inside the
user's own environment and with their permissions, works the same for local processes,
containers and Kubernetes pods.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from . import lab
from .contract import (
    ALLOWED_PULL_REPOS_ENV,
    DEFAULT_RUNBOOKS_TARGET,
    RUNBOOKS_BRANCH_ENV,
    RUNBOOKS_REPO_ENV,
    RUNBOOKS_TARGET_ENV,
)
from .runbooks.pull import pull_runbooks, trust_local_repositories


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    repo = os.environ.get(RUNBOOKS_REPO_ENV)
    if repo:
        home = Path(os.environ.get("HOME") or os.getcwd())
        target = home / os.environ.get(RUNBOOKS_TARGET_ENV, DEFAULT_RUNBOOKS_TARGET)
        allowed = os.environ.get(ALLOWED_PULL_REPOS_ENV, "").split()
        trust_local_repositories([repo, *allowed], home)
        pull_runbooks(repo, os.environ.get(RUNBOOKS_BRANCH_ENV, "main"), target, home)
    # Our Jupyter config and data folders come first: they enable the opshub server extension (which
    # records interactive runs) and the JupyterLab extension, and turn off JupyterLab's news prompt.
    for variable, folder in (("JUPYTER_CONFIG_PATH", lab.CONFIG_DIR), ("JUPYTER_PATH", lab.DATA_DIR)):
        os.environ[variable] = os.pathsep.join(filter(None, [str(folder), os.environ.get(variable)]))
    os.environ["OPSHUB_BIN"] = os.path.dirname(sys.executable)
    if Path("/bin/bash").exists() and not any(a.startswith("--ServerApp.terminado_settings") for a in args):
        shell = ["/bin/bash", "--rcfile", str(lab.TERMINAL_RC), "-i"]
        args.append(f"--ServerApp.terminado_settings=shell_command={json.dumps(shell)}")
    os.execv(sys.executable, [sys.executable, "-m", "jupyterhub.singleuser", *args])


if __name__ == "__main__":
    main()
