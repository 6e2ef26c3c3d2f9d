"""Invariant 2 of the trust model, attacked from a person's JupyterLab terminal in the embedded
default started as root (as `make run` is on a fresh server, and in CI): servers never run as
root, and one person's server cannot read another's home, the hub's state or secrets, or the
environment of any process that is not its own."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.livehub import Hub
from tests.terminals import Terminal

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true", reason="per-person accounts need the hub to run as root"
)


@pytest.fixture(scope="module")
def servers(hub: Hub):
    """alice's and bob's servers running, and a token of each."""
    tokens = hub.tokens(users=("alice", "bob"))
    for user in ("alice", "bob"):
        session, _ = hub.login(user)
        hub.open_lab(session, user)
    return tokens


@pytest.fixture(scope="module")
def bobs_terminal(hub: Hub, servers):
    with Terminal(hub.url, "bob", servers["bob"]) as terminal:
        yield terminal


def pid_of_server(hub: Hub, user: str) -> int:
    out = subprocess.run(["ps", "-eww", "-o", "pid=,user:32=,args="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, account, args = line.split(None, 2)
        if account == hub.account(user) and "jupyterhub.singleuser" in args:
            return int(pid)
    raise AssertionError(f"no server process of {user}")


def test_a_persons_server_runs_under_their_own_account_never_root(hub, bobs_terminal):
    out, rc = bobs_terminal.run("id -u; id -un; echo $HOME")
    uid, name, home = out.split()
    assert rc == 0 and uid != "0" and name == hub.account("bob") and name.endswith("jupyter-bob")
    assert home == str(hub.home("bob"))
    assert oct(hub.home("bob").stat().st_mode & 0o777) == "0o700"
    assert hub.home("bob").stat().st_uid == int(uid)


@pytest.mark.parametrize(
    "target",
    [
        "state",
        "state/jupyterhub_cookie_secret",
        "state/jupyterhub.sqlite",
        "state/opshub.sqlite",
        "state/metrics-token",
    ],
)
def test_the_hubs_state_and_secrets_are_out_of_reach(hub, bobs_terminal, target):
    path = hub.root / target
    assert path.exists()
    out, rc = bobs_terminal.run(f"cat {path} || ls {path}")
    assert rc != 0 and "Permission denied" in out, out


def test_another_persons_home_is_out_of_reach(hub, bobs_terminal):
    alice = hub.home("alice")
    assert (alice / "runbooks").is_dir()  # her server pulled them: there is something to steal
    for command in (f"ls {alice}", f"cat {alice}/runbooks/patch-server-stack.ipynb", f"touch {alice}/planted"):
        out, rc = bobs_terminal.run(command)
        assert rc != 0 and "Permission denied" in out, (command, out)
    assert not (alice / "planted").exists()


def test_other_processes_environments_are_out_of_reach(hub, bobs_terminal):
    """The hub's (OAuth and cookie secrets), the service's (metrics token), alice's server's (her token)."""
    targets = {"hub": hub.proc.pid, "alice's server": pid_of_server(hub, "alice")}
    service = subprocess.run(["pgrep", "-f", f"opshub.service .*{hub.state}"], capture_output=True, text=True)
    targets["opshub service"] = int(service.stdout.split()[0])
    for what, pid in targets.items():
        out, rc = bobs_terminal.run(f"cat /proc/{pid}/environ")
        assert rc != 0 and "Permission denied" in out, (what, out)
    # and his own, for contrast: the check can fail
    out, rc = bobs_terminal.run(
        f"tr '\\0' '\\n' < /proc/{pid_of_server(hub, 'bob')}/environ | grep -c JUPYTERHUB_API_TOKEN"
    )
    assert rc == 0 and out.strip() == "1"


def test_opshub_is_on_the_path_in_a_terminal(bobs_terminal):
    out, rc = bobs_terminal.run("opshub --help")
    assert rc == 0 and "usage: opshub" in out, out


def test_homes_of_the_single_account_layout_move_to_their_owners(tmp_path):
    """An install from before per-person accounts, started again as root: bob finds his files."""
    earlier = Hub(tmp_path / "earlier")
    (earlier.state / "homes" / "bob").mkdir(parents=True)
    (earlier.state / "homes" / "bob" / "notes.md").write_text("my patching notes\n")
    earlier.start()
    try:
        session, _ = earlier.login("bob")
        earlier.open_lab(session, "bob")
        notes = earlier.home("bob") / "notes.md"
        assert notes.read_text() == "my patching notes\n"
        assert notes.stat().st_uid == earlier.home("bob").stat().st_uid != 0
        assert not (earlier.state / "homes" / "bob").exists()
    finally:
        earlier.stop()
