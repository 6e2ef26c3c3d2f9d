"""One system account per person in the embedded default started as root, as TLJH does.

JupyterHub's `LocalProcessSpawner` starts each server as the OS account named like the person;
ours maps names first (`jupyter-<name>`, TLJH's convention), creates the account and a private
home (0700) on the person's first server start, and never starts anything as root. People who
never get a server (viewers) never get an account.

System accounts of the execution plane (`opshub-dashboards`, later the runner) are JupyterHub users
of their own whose OS account is their own name: people's accounts all start with `jupyter-`, so
the two can never collide.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from traitlets import List, Unicode

PERSON_PREFIX = "jupyter-"
MAX_ACCOUNT_NAME = 32  # useradd's limit on Debian
_VALID_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]*")


def account_name(username: str, system_accounts=(), prefix: str = "") -> str:
    """The OS account of a JupyterHub user: system accounts keep their name; a person's is
    `jupyter-<name>`, made safe for useradd, with a short hash when that changed or shortened it
    (so `Bob.Smith` and `bob-smith` never share an account). `prefix` (the deployment's
    `spawner.local.account_prefix`) comes before either."""
    if username in system_accounts:
        return prefix + username
    safe = re.sub(r"[^a-z0-9_-]", "-", username.lower())
    name = prefix + PERSON_PREFIX + safe
    if safe != username or len(name) > MAX_ACCOUNT_NAME:
        digest = hashlib.sha256(username.encode()).hexdigest()[:7]
        name = f"{name[: MAX_ACCOUNT_NAME - 8]}-{digest}"
    assert _VALID_ACCOUNT.fullmatch(name), name
    return name


def create_account(name: str, home: Path) -> None:
    """useradd: the account `name` and its group, no login password, bash, `home` recorded (not made)."""
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group", name],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ensure_account(name: str, home: Path) -> pwd.struct_passwd:
    """The OS account `name`, created when missing (no login password, bash), and its home:
    created when missing, owned by the account, readable by nobody else."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        create_account(name, home)
        account = pwd.getpwnam(name)
    home.mkdir(parents=True, exist_ok=True)
    if home.stat().st_uid != account.pw_uid:
        # a home made by someone else (an earlier install, an admin's mkdir): hand it over whole
        for path in [home, *home.rglob("*")]:
            os.lchown(path, account.pw_uid, account.pw_gid)
    home.chmod(0o700)
    return account


def unreadable_by_others(path: Path) -> Path | None:
    """The first folder on the way to `path` that other accounts cannot enter, or `path` itself if
    they cannot read it; None when they can."""
    path = Path(os.path.realpath(path))
    for folder in reversed(path.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return folder
    mode = path.stat().st_mode
    readable = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
    return None if mode & readable == readable else path


class PerPersonSpawner(LocalProcessSpawner):
    """A local process per server, under the person's own system account (created on first
    start), with its home in `homes_dir`."""

    homes_dir = Unicode(
        "/home", config=True, help="Folder of people's homes; each is <homes_dir>/<account>, mode 0700."
    )
    system_accounts = List(
        Unicode(),
        config=True,
        help="JupyterHub users that are system accounts of the execution plane (their OS account is their name).",
    )

    account_prefix = Unicode(
        "",
        config=True,
        help="Put before every account's name (the deployment's spawner.local.account_prefix): deployments apart.",
    )

    earlier_homes_dir = Unicode(
        "",
        config=True,
        help="Folder of homes from before per-person accounts (<folder>/<username>): moved to the new home on first start.",
    )

    _creating = asyncio.Lock()  # useradd takes /etc/passwd's lock: one at a time

    @property
    def account(self) -> str:
        return account_name(self.user.name, self.system_accounts, self.account_prefix)

    @property
    def home(self) -> Path:
        return Path(self.homes_dir) / self.account

    def make_preexec_fn(self, name):
        become = set_user_setuid(self.account, chdir=False)
        home = str(self.home)  # ours, not the passwd entry's (homes_dir can change)

        def preexec():
            become()
            os.chdir(home)

        return preexec

    def user_env(self, env):
        env["USER"] = self.account
        env["HOME"] = str(self.home)
        env["SHELL"] = "/bin/bash"
        return env

    def _move_earlier_home(self) -> None:
        """People's files from the single-account layout follow them into their own home, once."""
        earlier = Path(self.earlier_homes_dir) / self.user.name if self.earlier_homes_dir else None
        if earlier and earlier.is_dir() and not earlier.is_symlink() and not self.home.exists():
            self.home.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(earlier), str(self.home))
            self.log.info("moved %s's home from %s to %s", self.user.name, earlier, self.home)

    async def start(self):
        async with self._creating:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self._move_earlier_home)
            account = await loop.run_in_executor(None, ensure_account, self.account, self.home)
        if account.pw_uid == 0:
            raise RuntimeError(f"{self.account} is root: opshub never starts a server as root")
        return await super().start()

    async def move_certs(self, paths):  # internal TLS is not used by opshub
        return paths
