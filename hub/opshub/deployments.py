"""Two deployments on one machine stay apart.

Started as root, the embedded default runs servers under this machine's system accounts: people's
`jupyter-<name>`, `opshub-runner`, `opshub-dashboards`. Their names are the same for every opshub on
the machine, and so are their uids: two deployments running at once would share them (one's
dashboards server start wiping the other's published copies, one's people reading the other's
people's homes and server environments). So a hub with per-person accounts **claims** them for its
deployment at start, in a root-only folder (`CLAIMS_DIR`), and a second deployment refuses to start
while that claim is held, naming the deployment that holds it. A claim whose hub is gone (stopped
without releasing it, killed) is taken over, with a log line; the hub releases its claim when it ends.
A hub stopped for a restart (SIGTERM) leaves its servers and runs going, and its claim: another
deployment does not start while processes run under those accounts (the same deployment does: they are
its own), and takes the claim over once they are gone.

A hub's process is known by its pid and its start time (a pid reused by another process is not the
hub), on this boot: a claim from before a reboot is stale.

Each deployment also has an id, generated once into its state folder: people's servers keep what they
hand over to their deployment (the interactive-run spool) in a folder of that id (opshub.lab.spool).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import pwd
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .settings import SettingsError

CLAIMS_DIR = Path("/var/lib/opshub/claims")
ACCOUNTS_CLAIM = "system-accounts"  # one claim per account prefix: deployments with one prefix share accounts
DEPLOYMENT_ID_FILE = "deployment-id"
DEPLOYMENT_ID = re.compile(r"[0-9a-f]{16}")
_RELEASING: set[tuple[str, str, int]] = set()  # (claims folder, claim, pid) whose release at exit is registered
_KEEPING: list[bool] = []  # [True]: this hub leaves its servers running (a restart), and its claim with them


@dataclass(frozen=True)
class Claim:
    """Who uses the system accounts: a deployment (its state folder and URL) and its hub's process."""

    state_dir: str
    url: str
    pid: int
    process_start: int  # the process's start time (clock ticks since boot, /proc/<pid>/stat)
    boot_id: str
    since: float  # when the claim was taken (Unix time)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"the deployment with state folder {self.state_dir} at {self.url} (hub pid {self.pid}, since {when})"


class AccountsClaimed(SettingsError):
    """Another deployment's hub, still running, uses this machine's system accounts."""

    def __init__(self, source: str, holder: Claim, state_dir: Path, accounts: str):
        self.holder = holder
        if Path(holder.state_dir) == Path(state_dir):
            problem = (
                f"another hub of this deployment (state folder {state_dir}) is running: pid {holder.pid}, at"
                f" {holder.url}. Stop it first (Ctrl-C in its terminal, or kill {holder.pid})."
            )
        else:
            problem = (
                f"this machine's system accounts ({accounts}) are in use by {holder.describe()}."
                " Two deployments started as root would share those accounts and their homes (published"
                " dashboards, interactive runs, people's files and processes), so this one does not start."
                f" Stop that one first (Ctrl-C in its terminal, or kill {holder.pid}), give this one accounts"
                " of its own (spawner.local.account_prefix, such as `ops2-`), or run it in containers"
                " (spawner.kind: docker, `make up`) or as a normal user (a single-person trial)."
            )
        super().__init__(source, [f"spawner.local.account_prefix: {problem}"])

    def __str__(self) -> str:  # not "invalid settings": the settings are fine, the machine is taken
        return f"{self.source}: {self.problems[0]}"


class AccountsLeftRunning(AccountsClaimed):
    """Another deployment's hub stopped for a restart (SIGTERM) and left servers running under the accounts."""

    def __init__(self, source: str, holder: Claim, pids: list[int], accounts: str):
        self.holder = holder
        shown = ", ".join(str(pid) for pid in pids[:10]) + (", ..." if len(pids) > 10 else "")
        problem = (
            f"this machine's system accounts ({accounts}) still run processes (pids {shown}) of"
            f" {holder.describe()}, whose hub stopped for a restart and left its servers and runs going."
            " This deployment would share them, so it does not start. Start that one again, or stop it for"
            f" good (start it and Ctrl-C it, which stops its servers), or give this one accounts of its own"
            " (spawner.local.account_prefix, such as `ops2-`)."
        )
        SettingsError.__init__(self, source, [f"spawner.local.account_prefix: {problem}"])


def account_processes(is_account: Callable[[str], bool]) -> list[int]:
    """The processes running as an account whose name `is_account` accepts (their real uid)."""
    names: dict[int, str | None] = {}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            uid = next(
                int(line.split()[1]) for line in (entry / "status").read_text().splitlines() if line.startswith("Uid:")
            )
        except (OSError, StopIteration, ValueError, IndexError):
            continue  # gone meanwhile
        if uid not in names:
            try:
                names[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                names[uid] = None
        if names[uid] is not None and is_account(names[uid]):
            found.append(int(entry.name))
    return sorted(found)


def boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after its last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of proc(5); fields[0] is field 3


def this_process(state_dir: Path, url: str) -> Claim:
    pid = os.getpid()
    return Claim(str(state_dir), url, pid, process_start(pid) or 0, boot_id(), time.time())


def is_alive(claim: Claim) -> bool:
    """The claim's hub is still running: the same process (pid and start time) on this boot."""
    return claim.boot_id == boot_id() and process_start(claim.pid) == claim.process_start


def is_ours(claim: Claim, mine: Claim) -> bool:
    return (claim.pid, claim.process_start, claim.boot_id) == (mine.pid, mine.process_start, mine.boot_id)


@contextlib.contextmanager
def _locked(claims_dir: Path):
    claims_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    claims_dir.chmod(0o700)  # who runs where is the hubs' business (and root's)
    with open(claims_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two hubs starting at once: one decides at a time
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_claim(claims_dir: Path, name: str = ACCOUNTS_CLAIM) -> Claim | None:
    try:
        return Claim(**json.loads((claims_dir / f"{name}.json").read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        print(
            f"opshub: warning: the claim {claims_dir / name}.json cannot be read ({e}); taking it over", file=sys.stderr
        )
        return None


def take(
    claims_dir: Path,
    mine: Claim,
    source: str,
    accounts: str,
    name: str = ACCOUNTS_CLAIM,
    log=None,
    still_running: Callable[[], list[int]] = list,
) -> Claim | None:
    """Claim `name` for `mine`. AccountsClaimed when another live hub holds it, or when another
    deployment's hub is gone but `still_running()` names processes of the accounts (its servers and runs,
    left going by a restart); returns the stale claim taken over (said in the log), or None. Taking one's
    own claim again is a no-op: `opshub hub` claims before it becomes JupyterHub (the same process),
    which claims again. The same deployment takes its stale claim over: its servers are its own."""
    log = log or (lambda message: print(f"opshub: {message}", file=sys.stderr, flush=True))
    with _locked(claims_dir):
        held = read_claim(claims_dir, name)
        if held is not None and not is_ours(held, mine):
            if is_alive(held):
                raise AccountsClaimed(source, held, Path(mine.state_dir), accounts)
            if Path(held.state_dir) != Path(mine.state_dir) and (pids := still_running()):
                raise AccountsLeftRunning(source, held, pids, accounts)
            log(
                f"taking over this machine's system accounts ({accounts}) from {held.describe()}:"
                " that hub is no longer running"
            )
        file = claims_dir / f"{name}.json"
        temporary = file.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(mine), f)
        os.replace(temporary, file)
    return None if held is None or is_ours(held, mine) else held


def keep_claim_at_exit() -> None:
    """This hub ends leaving its servers and runs going (SIGTERM, a restart): its claim stays, so that
    another deployment does not start among them while they run (`take`'s `still_running`)."""
    _KEEPING.append(True)


def release(claims_dir: Path, mine: Claim, name: str = ACCOUNTS_CLAIM) -> bool:
    """Give the claim up, if it is still `mine` (a hub that took over a stale claim keeps it) and this
    hub does not leave its servers running."""
    if _KEEPING:
        return False
    with _locked(claims_dir):
        held = read_claim(claims_dir, name)
        if held is None or not is_ours(held, mine):
            return False
        (claims_dir / f"{name}.json").unlink(missing_ok=True)
        return True


def accounts_claim(prefix: str) -> str:
    """The claim's name for the accounts of `spawner.local.account_prefix` `prefix`: deployments with
    different prefixes use different accounts, and claim them apart."""
    return f"{ACCOUNTS_CLAIM}-{prefix.rstrip('-')}" if prefix else ACCOUNTS_CLAIM


def claim_system_accounts(
    state_dir: Path,
    url: str,
    source: str,
    accounts: str,
    claims_dir: Path = CLAIMS_DIR,
    name: str = ACCOUNTS_CLAIM,
    still_running: Callable[[], list[int]] = list,
) -> Claim:
    """The start-up step: claim the system accounts for this hub's process, released when it ends (a hub
    stopped by SIGTERM releases it too: `still_running` then keeps other deployments out)."""
    mine = this_process(state_dir, url)
    take(claims_dir, mine, source, accounts, name, still_running=still_running)
    if (str(claims_dir), name, mine.pid) not in _RELEASING:
        # once per process: prepare() runs in `opshub hub`, then again in the JupyterHub it becomes (the
        # same process: atexit handlers do not survive exec, so it is JupyterHub's exit that releases it)
        _RELEASING.add((str(claims_dir), name, mine.pid))
        atexit.register(release, claims_dir, mine, name)
    return mine


def deployment_id(state_dir: Path) -> str:
    """This deployment's id: random, generated once into its state folder (and moving with it)."""
    file = state_dir / DEPLOYMENT_ID_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(8) + "\n")
    value = file.read_text().strip()
    if not DEPLOYMENT_ID.fullmatch(value):
        raise SettingsError(
            str(file), [f"hub.state_dir: {file} does not hold a deployment id (16 hex digits); remove it for a new one"]
        )
    return value
