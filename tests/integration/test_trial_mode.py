"""The embedded default started as a normal user: a single-person trial, in which everyone's server
shares the hub's own account. It cannot keep people apart, so it says so, plainly, where people
see it: the start banner and every hub page."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest
from opshub.configure.pages import TRIAL_WARNING

from tests.helpers import open_folder
from tests.livehub import Hub

TRIAL_ACCOUNT = "opshub-trial-test"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting the hub as another account needs root")


@pytest.fixture(scope="module")
def trial_hub():
    try:
        pwd.getpwnam(TRIAL_ACCOUNT)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", TRIAL_ACCOUNT], check=True)
    root = open_folder("opshub-trial-")
    hub = Hub(root, run_as=TRIAL_ACCOUNT)
    hub.start()
    yield hub
    hub.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_the_banner_and_every_hub_page_say_everyone_shares_one_account(trial_hub):
    assert "Single-account trial" in trial_hub.log_file.read_text()
    session, _ = trial_hub.login("carol")
    for page in ("/hub/home", "/hub/login", "/hub/token"):
        assert TRIAL_WARNING.split(":")[0] in session.get(f"{trial_hub.url}{page}", timeout=30).text, page


def test_servers_share_the_hubs_account_which_is_never_root(trial_hub):
    session, _ = trial_hub.login("bob")
    trial_hub.open_lab(session, "bob")
    env = trial_hub.server_environment("bob")
    assert env["HOME"] == str(trial_hub.home("bob"))
    pids = subprocess.run(["pgrep", "-f", "jupyterhub.singleuser"], capture_output=True, text=True).stdout.split()
    accounts = {
        pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name
        for pid in pids
        if f"HOME={trial_hub.home('bob')}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    }
    assert accounts == {TRIAL_ACCOUNT}  # the hub's own account: not root, not one of bob's own
