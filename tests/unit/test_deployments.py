"""Two deployments on one machine: the claim on the system accounts and the deployment's id
(opshub.deployments), with real processes and a temporary claims folder (never the machine's).

The live refusal of a second hub is tests/integration/test_two_deployments.py."""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from opshub.configure import Runtime
from opshub.configure.spawner import user_environment
from opshub.contract import DEPLOYMENT_ID_ENV
from opshub.deployments import (
    ACCOUNTS_CLAIM,
    DEPLOYMENT_ID_FILE,
    AccountsClaimed,
    AccountsLeftRunning,
    Claim,
    account_processes,
    accounts_claim,
    deployment_id,
    process_start,
    read_claim,
    release,
    take,
    this_process,
)
from opshub.settings import EMBEDDED_SETTINGS, SettingsError, load_settings
from opshub.startup import claim_accounts

ACCOUNTS = "jupyter-<name>, opshub-dashboards, opshub-runner"


def claim_of(process: subprocess.Popen, state_dir: str = "/srv/other/state", url: str = "http://127.0.0.1:9100/"):
    """The claim a hub in `process` would have written."""
    time.sleep(0.05)  # /proc/<pid>/stat is there from the fork on; the start time does not change with exec
    return Claim(state_dir, url, process.pid, process_start(process.pid), this_process(".", "").boot_id, time.time())


@pytest.fixture
def other_hub():
    """A process standing for another deployment's running hub."""
    process = subprocess.Popen(["sleep", "120"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def claims(tmp_path):
    return tmp_path / "claims"


def mine(tmp_path) -> Claim:
    return this_process(tmp_path / "state", "http://127.0.0.1:9200/")


def write(claims, claim: Claim) -> None:
    claims.mkdir(parents=True, exist_ok=True)
    (claims / f"{ACCOUNTS_CLAIM}.json").write_text(json.dumps(claim.__dict__))


def test_a_claim_is_taken_in_a_root_only_folder(tmp_path, claims):
    me = mine(tmp_path)
    assert take(claims, me, "opshub.yaml", ACCOUNTS) is None
    assert read_claim(claims) == me
    assert stat.S_IMODE(claims.stat().st_mode) == 0o700
    assert stat.S_IMODE((claims / f"{ACCOUNTS_CLAIM}.json").stat().st_mode) == 0o600
    # taking one's own claim again (`opshub hub`, then the JupyterHub it becomes) is no conflict
    assert take(claims, replace(me, since=me.since + 5), "opshub.yaml", ACCOUNTS) is None


def test_a_live_claim_of_another_deployment_refuses_naming_it(tmp_path, claims, other_hub):
    held = claim_of(other_hub)
    write(claims, held)
    with pytest.raises(AccountsClaimed) as refused:
        take(claims, mine(tmp_path), "/srv/this/opshub.yaml", ACCOUNTS)
    message = str(refused.value)
    assert isinstance(refused.value, SettingsError)  # what `opshub hub` and the hub's config print and exit on
    assert message.startswith("/srv/this/opshub.yaml: spawner.local.account_prefix: ")
    for part in (
        "state folder /srv/other/state",
        "at http://127.0.0.1:9100/",
        f"hub pid {other_hub.pid}",
        ACCOUNTS,
        "Stop that one first",
        f"kill {other_hub.pid}",
        "accounts of its own (spawner.local.account_prefix",
        "spawner.kind: docker",
        "as a normal user",
    ):
        assert part in message, (part, message)
    assert read_claim(claims) == held  # still theirs


def test_another_hub_of_the_same_state_folder_is_refused_too(tmp_path, claims, other_hub):
    write(claims, claim_of(other_hub, state_dir=str(tmp_path / "state")))
    with pytest.raises(AccountsClaimed, match=f"another hub of this deployment .* pid {other_hub.pid}"):
        take(claims, mine(tmp_path), "opshub.yaml", ACCOUNTS)


def test_a_stale_claim_is_taken_over_with_a_log_line(tmp_path, claims):
    gone = subprocess.Popen(["true"])
    held = claim_of(gone)
    gone.wait()
    write(claims, held)
    said = []
    assert take(claims, mine(tmp_path), "opshub.yaml", ACCOUNTS, log=said.append) == held
    assert read_claim(claims).pid == os.getpid()
    (line,) = said
    assert "taking over" in line and "/srv/other/state" in line and "no longer running" in line


def test_servers_left_running_by_another_deployments_restart_keep_this_one_out(tmp_path, claims, other_hub):
    """Its hub got SIGTERM (a restart) and released its claim's process, but its servers and runs go on
    under the accounts: another deployment does not start among them; the same deployment does."""
    gone = subprocess.Popen(["true"])
    held = claim_of(gone)
    gone.wait()
    write(claims, held)
    with pytest.raises(AccountsLeftRunning) as refused:
        take(claims, mine(tmp_path), "opshub.yaml", ACCOUNTS, still_running=lambda: [other_hub.pid])
    message = str(refused.value)
    assert f"still run processes (pids {other_hub.pid}) of the deployment with state folder /srv/other/state" in message
    assert "Start that one again" in message and "spawner.local.account_prefix" in message
    assert read_claim(claims) == held  # still theirs
    restarted = replace(mine(tmp_path), state_dir="/srv/other/state")
    assert take(claims, restarted, "opshub.yaml", ACCOUNTS, log=lambda _: None, still_running=lambda: [1]) == held
    write(claims, held)
    assert take(claims, mine(tmp_path), "opshub.yaml", ACCOUNTS, log=lambda _: None, still_running=list) == held


def test_account_processes_finds_the_processes_of_the_accounts_named():
    me = pwd.getpwuid(os.getuid()).pw_name
    assert os.getpid() in account_processes(lambda name: name == me)
    assert account_processes(lambda name: False) == []


def test_a_reused_pid_or_another_boot_is_not_the_hub(tmp_path, claims, other_hub):
    """The pid alone is not the hub: a process started later under that pid, or a claim from before a reboot."""
    live = claim_of(other_hub)
    for stale in (replace(live, process_start=live.process_start - 1), replace(live, boot_id="an-earlier-boot")):
        write(claims, stale)
        assert take(claims, mine(tmp_path), "opshub.yaml", ACCOUNTS, log=lambda _: None) == stale
    write(claims, live)  # and the positive control: the same process on this boot holds it
    with pytest.raises(AccountsClaimed):
        take(claims, mine(tmp_path), "opshub.yaml", ACCOUNTS)


def test_release_gives_up_only_ones_own_claim(tmp_path, claims, other_hub):
    me = mine(tmp_path)
    take(claims, me, "opshub.yaml", ACCOUNTS)
    theirs = claim_of(other_hub)
    assert not release(claims, theirs)  # a hub whose claim was taken over leaves the new holder's alone
    assert read_claim(claims) == me
    assert release(claims, me)
    assert read_claim(claims) is None


HUB = """
import os, signal, sys, time
from pathlib import Path
from opshub.deployments import claim_system_accounts
# Ctrl-C ends it, as it ends a hub in a terminal, even when the tests run where SIGINT is ignored (a
# background job of a shell: Python then installs no handler of its own, and the test waited in vain)
signal.signal(signal.SIGINT, signal.default_int_handler)
claims, state, stage = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
claim_system_accounts(state, "http://127.0.0.1:9300/", "hub.yaml", "the accounts", claims)
if stage == "exec":  # `opshub hub` claims, then becomes JupyterHub (exec: the same process), which claims again
    os.execv(sys.executable, [sys.executable, sys.argv[0], *sys.argv[1:3], "hub"])
print("claimed", flush=True)
time.sleep(float(os.environ.get("HOLD", "0")))
"""


def start_hub(claims, tmp_path, stage: str = "hub", hold: float = 0) -> subprocess.Popen:
    """A process that claims as a hub does, then holds the claim for `hold` seconds and ends."""
    script = tmp_path / "hub.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(HUB)
    return subprocess.Popen(
        [sys.executable, str(script), str(claims), str(tmp_path / "state"), stage],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HOLD": str(hold)},
    )


def test_a_hub_releases_its_claim_when_it_ends_even_after_exec(tmp_path, claims):
    hub = start_hub(claims, tmp_path, "exec", hold=30)
    assert hub.stdout.readline() == "claimed\n"  # after the exec, in the same process
    assert read_claim(claims).pid == hub.pid
    hub.send_signal(signal.SIGINT)  # Ctrl-C: Python ends, exit handlers run (as JupyterHub's stop)
    hub.wait(timeout=30)
    assert read_claim(claims) is None, hub.stderr.read()


def test_a_killed_hubs_claim_stays_until_the_next_start_takes_it_over(tmp_path, claims):
    hub = start_hub(claims, tmp_path, hold=30)
    assert hub.stdout.readline() == "claimed\n"
    hub.kill()
    hub.wait()
    assert read_claim(claims).pid == hub.pid  # SIGKILL: nothing ran
    said = []
    assert take(claims, mine(tmp_path), "opshub.yaml", ACCOUNTS, log=said.append).pid == hub.pid
    assert len(said) == 1 and "taking over" in said[0]


def test_hubs_starting_at_once_decide_one_at_a_time(tmp_path, claims):
    """Reading the claim and writing one's own happen under the claims folder's lock: two hubs starting
    at once cannot both find the accounts free."""
    claims.mkdir(mode=0o700)
    with open(claims / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a hub deciding
        hub = start_hub(claims, tmp_path / "a", hold=30)
        time.sleep(2)
        assert read_claim(claims) is None  # it waits for the lock
        fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        assert hub.stdout.readline() == "claimed\n"
        with pytest.raises(AccountsClaimed):  # and the second one is refused
            take(claims, mine(tmp_path), "opshub.yaml", ACCOUNTS)
    finally:
        hub.kill()
        hub.wait()


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.delenv("OPSHUB_DEMO_PASSWORD", raising=False)
    return load_settings(EMBEDDED_SETTINGS, cwd=tmp_path)


def runtime(as_root: bool) -> Runtime:
    return Runtime(python=sys.executable, proxy_command=["configurable-http-proxy"], as_root=as_root)


def test_hubs_with_per_person_accounts_claim_them_and_no_other(settings, claims, other_hub):
    write(claims, claim_of(other_hub))
    with pytest.raises(AccountsClaimed, match="jupyter-<name>, opshub-dashboards, opshub-runner"):
        claim_accounts(settings, runtime(as_root=True), claims)
    claim_accounts(settings, runtime(as_root=False), claims)  # the single-account trial: its own account
    settings["spawner"]["kind"] = "docker"  # containers: nothing of the machine's accounts
    claim_accounts(settings, runtime(as_root=True), claims)
    assert read_claim(claims).pid == other_hub.pid


def test_the_deployment_id_is_made_once_and_kept_private(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    first = deployment_id(state)
    assert len(first) == 16 and deployment_id(state) == first
    assert stat.S_IMODE((state / DEPLOYMENT_ID_FILE).stat().st_mode) == 0o600
    other = tmp_path / "other"
    other.mkdir()
    assert deployment_id(other) != first
    (other / DEPLOYMENT_ID_FILE).write_text("../../elsewhere\n")
    with pytest.raises(SettingsError, match="does not hold a deployment id"):
        deployment_id(other)


def test_peoples_servers_are_told_their_deployment(settings):
    assert user_environment(settings, "0123456789abcdef")[DEPLOYMENT_ID_ENV] == "0123456789abcdef"
    assert DEPLOYMENT_ID_ENV not in user_environment(settings)  # no id (a hub that has none): as before


def test_deployments_with_different_account_prefixes_claim_apart(tmp_path, claims, other_hub):
    """Accounts of their own (spawner.local.account_prefix) are claimed under a name of their own: a
    deployment with another prefix starts beside a live one; one with the same prefix is refused."""
    assert accounts_claim("") == ACCOUNTS_CLAIM and accounts_claim("ops2-") == f"{ACCOUNTS_CLAIM}-ops2"
    write(claims, claim_of(other_hub))  # the default accounts, held by a live hub
    this = mine(tmp_path)
    take(claims, this, "/srv/this/opshub.yaml", ACCOUNTS, accounts_claim("ops2-"))
    assert read_claim(claims, accounts_claim("ops2-")) == this
    with pytest.raises(AccountsClaimed):
        take(claims, this, "/srv/this/opshub.yaml", ACCOUNTS)
