"""Two deployments on one machine stay apart (issue 23, item 7), live.

Started as root, opshub runs servers under system accounts of the machine (`jupyter-<name>`,
`opshub-runner`, `opshub-dashboards`, after `spawner.local.account_prefix`): a second deployment with
the same accounts refuses to start while another one's hub runs, naming it (every test hub has accounts
of its own, so the suite's hubs run side by side); and what people's servers keep for their deployment (the spool of
interactive runs) is in a folder of that deployment's id. The rules one by one:
tests/unit/test_deployments.py and tests/unit/test_recorder.py.
"""

from __future__ import annotations

import os
import signal

import pytest
import requests

from tests.livehub import Hub, wait_for

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="per-person accounts (and their claim) need root")


@as_root
def test_a_second_deployment_refuses_to_start_while_the_first_runs(tmp_path):
    def same_accounts(settings):  # (test hubs get accounts of their own otherwise: tests/livehub.py)
        settings["spawner"]["local"]["account_prefix"] = "twin-"

    first, second = Hub(tmp_path / "first", configure=same_accounts), Hub(tmp_path / "second", configure=same_accounts)
    first.start()
    try:
        with pytest.raises(RuntimeError, match="the hub exited with"):  # started, it would be Ctrl-C'd below
            second.start()
        said = second.log_file.read_text()
        assert f"state folder {first.state} at {first.url}/" in said, said
        assert "system accounts (twin-jupyter-<name>, twin-opshub-dashboards, twin-opshub-runner) are in use" in said
        assert "spawner.local.account_prefix" in said, said  # what to do
        assert "Stop that one first" in said, said
        assert requests.get(f"{first.url}/hub/api", timeout=10).status_code == 200  # the first goes on
    finally:
        second.stop()
        first.stop()
    second.start()  # the first released its claim when it stopped
    second.stop()


@as_root
def test_servers_left_running_by_a_restart_keep_another_deployment_out(tmp_path):
    """A restart (SIGTERM) ends the hub and leaves its servers running under the accounts: a second
    deployment with the same accounts still refuses to start, naming them; the first starts again."""

    def same_accounts(settings):
        settings["spawner"]["local"]["account_prefix"] = "twin2-"

    first, second = Hub(tmp_path / "first", configure=same_accounts), Hub(tmp_path / "second", configure=same_accounts)
    first.start()
    try:
        session, _ = first.login("bob")
        first.open_lab(session, "bob")
        first.kill(signal.SIGTERM)
        with pytest.raises(RuntimeError, match="the hub exited with"):
            second.start()
        said = second.log_file.read_text()
        assert "twin2-opshub-runner) still run processes (pids " in said, said
        assert f"state folder {first.state} at {first.url}/ (hub pid" in said and "Start that one again" in said, said
        first.start()  # the same deployment takes its servers over
        assert first.login("bob")[1].status_code == 200
    finally:
        second.stop()
        if first.proc.poll() is not None:  # stopped by SIGTERM above: its servers still run
            first.start()
        first.stop()  # Ctrl-C: its servers stop with it
    second.start()
    second.stop()


@as_root
def test_peoples_servers_spool_interactive_runs_in_their_deployments_folder(hub):
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")
    deployment = (hub.state / "deployment-id").read_text().strip()
    assert hub.server_environment("bob")["OPSHUB_DEPLOYMENT_ID"] == deployment
    spools = hub.home("bob") / ".local" / "share" / "opshub" / "interactive-runs"
    wait_for(lambda: (spools / deployment).is_dir(), timeout=30, what=f"{spools / deployment}")
    assert not [p for p in spools.iterdir() if p.is_file()]  # nothing spooled outside a deployment's folder
