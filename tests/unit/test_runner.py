"""The runner's own pieces that need no hub: its credentials, the run's environment, parameters as
`opshub run` reads them back, and the privacy of its processes' memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from opshub.runner.__main__ import (
    credential_refusals,
    credential_specs,
    job_environment,
    read_credentials,
    remove_abandoned_folders,
)
from opshub.runner.credentials import granted  # the one rule: the runner's and the hub's spawner's

from tests.helpers import ROOT


def test_credentials_go_only_to_the_runbooks_granted_them_and_unreadable_ones_are_named(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN KEY-----\nsecret\n")
    specs = credential_specs(
        json.dumps(
            {
                "SSH_KEY": {"file": str(key), "runbooks": ["patch-server-stack.ipynb", "patching/*"]},
                "CLOUD_TOKEN": {"file": str(tmp_path / "missing"), "runbooks": ["*"]},
                "DB_PASSWORD": {"file": str(key), "runbooks": ["db/failover.ipynb"]},
            }
        )
    )
    assert granted(specs, "patch-server-stack.ipynb") == ["CLOUD_TOKEN", "SSH_KEY"]
    assert granted(specs, "patching/web/rolling.ipynb") == ["CLOUD_TOKEN", "SSH_KEY"]
    assert granted(specs, "host-health-check.ipynb") == ["CLOUD_TOKEN"]
    assert granted(specs, "PATCH-server-stack.ipynb") == ["CLOUD_TOKEN"]  # paths are case-sensitive
    found, problems = read_credentials(specs, ["CLOUD_TOKEN", "SSH_KEY"])
    assert found == {"SSH_KEY": "-----BEGIN KEY-----\nsecret"}
    assert problems == [f"credential CLOUD_TOKEN: cannot read {tmp_path / 'missing'}: No such file or directory"]
    assert credential_specs("") == {} and credential_specs("not json") == {} and credential_specs("[1]") == {}


def test_an_optional_credential_is_left_out_while_its_file_does_not_exist(tmp_path):
    """The practice fleet's key comes and goes (`optional: true`): runs start without it while it is
    absent; a file that exists but cannot be read (here a folder) still refuses the run, naming it."""
    (tmp_path / "a-folder").mkdir()
    specs = {
        "FLEET_KEY": {"file": str(tmp_path / "absent"), "runbooks": ["*"], "optional": True},
        "BROKEN": {"file": str(tmp_path / "a-folder"), "runbooks": ["*"], "optional": True},
    }
    found, problems = read_credentials(specs, ["FLEET_KEY", "BROKEN"])
    assert found == {}
    assert problems == [f"credential BROKEN: cannot read {tmp_path / 'a-folder'}: Is a directory"]
    (tmp_path / "absent").write_text("fleet key\n")
    assert read_credentials(specs, ["FLEET_KEY"]) == ({"FLEET_KEY": "fleet key"}, [])


def test_a_runbook_asking_for_a_credential_it_is_not_granted_is_refused_naming_it():
    specs = {"SSH_KEY": {"file": "/k", "runbooks": ["patch-*.ipynb"]}, "DB": {"file": "/d", "runbooks": ["db/*"]}}
    assert credential_refusals(specs, "patch-web.ipynb", ["SSH_KEY"]) == []
    assert credential_refusals(specs, "patch-web.ipynb", ["SSH_KEY", "DB", "AWS"]) == [
        "credential DB: not granted to patch-web.ipynb (runner.credentials.DB.runbooks)",
        "credential AWS: the runbook asks for it, and runner.credentials has no AWS",
    ]


def test_the_runs_environment_has_its_credentials_masked_and_nothing_of_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "the-servers-own")
    monkeypatch.setenv("OPSHUB_SECRET_NAMES", "DEPLOY_KEY")
    env = job_environment(tmp_path, {"SSH_KEY": "k"})
    assert not [name for name in env if name.startswith("JUPYTERHUB")]
    assert env["SSH_KEY"] == "k" and env["HOME"] == str(tmp_path)
    assert env["OPSHUB_SECRET_NAMES"].split(",") == ["DEPLOY_KEY", "SSH_KEY"]


def test_the_runners_processes_keep_their_memory_private():
    """After keep_memory_private the kernel says the process is not dumpable (PR_GET_DUMPABLE is 0): other
    processes of its account can read neither its /proc environment nor its memory. (The live attack is
    tests/integration/test_unattended_runs.py::test_a_runs_own_code_cannot_forge_its_record.)"""
    code = (
        "import ctypes; libc = ctypes.CDLL(None); before = libc.prctl(3, 0, 0, 0, 0);"
        "from opshub.hardening import keep_memory_private; keep_memory_private();"
        "print(before, libc.prctl(3, 0, 0, 0, 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "0"]


def test_folders_of_runs_whose_server_died_are_removed_and_held_ones_kept(tmp_path):
    """A runner's server killed before it cleaned up leaves its run's folder; the next run's server removes
    it, but never the folder of a server that still runs (it holds the lock), nor a young unlocked one."""
    runs = tmp_path / "runs"
    for name in ("held", "abandoned", "young"):
        (runs / name / "runbooks").mkdir(parents=True)
        (runs / f"{name}.lock").touch()
    old = time.time() - 3600
    for name in ("held", "abandoned"):
        os.utime(runs / f"{name}.lock", (old, old))
    holder = subprocess.Popen(  # another server's process, holding its folder
        [
            sys.executable,
            "-c",
            f"from opshub.runner.__main__ import hold_folder; import time; hold_folder({str(runs / 'held')!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        remove_abandoned_folders(runs)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in runs.iterdir()) == ["held", "held.lock", "young", "young.lock"]
    remove_abandoned_folders(runs)  # its server gone now
    assert sorted(p.name for p in runs.iterdir()) == ["young", "young.lock"]


def test_the_service_names_the_runs_runbook_when_it_asks_the_hub_for_its_server():
    """The service's start of a run's server sends `{"runbook": path}` as the spawner's user_options (the
    body of POST /hub/api/users/opshub-runner/servers/<name>): the hub's spawner mounts into the run's
    container only the credentials granted to that runbook (tests/unit/test_configure.py)."""
    import asyncio
    import concurrent.futures
    from types import SimpleNamespace

    from opshub.service.hub_api import HubApi
    from opshub.service.runner import Runner

    sent = []

    class Client:
        async def fetch(self, url, **kwargs):
            sent.append((kwargs["method"], url, kwargs["body"]))
            if kwargs["method"] == "GET":
                servers = {"run-0b0e": {"ready": True}}
                return SimpleNamespace(code=200, body=json.dumps({"servers": servers}).encode())
            return SimpleNamespace(code=202, body=b"")

    async def start():
        hub = HubApi("http://hub:8081/hub/api", "service-token", client=Client())
        runner = Runner(None, hub, "http://proxy:8000", "/", lambda commit: b"", max_concurrent=1)
        run = SimpleNamespace(id="0b0e", runbook="patching/web/rolling.ipynb", runner_server="run-0b0e")
        await runner._start_server(run)
        await hub.start_server("opshub-dashboards")  # a server with no options: an empty body, as before

    # in a thread of its own: an earlier test of the session may have left an event loop running here
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, start()).result(timeout=30)
    assert sent[0] == (
        "POST",
        "http://hub:8081/hub/api/users/opshub-runner/servers/run-0b0e",
        json.dumps({"runbook": "patching/web/rolling.ipynb"}),
    )
    assert sent[1][0] == "GET"
    assert sent[2] == ("POST", "http://hub:8081/hub/api/users/opshub-dashboards/server", "{}")


def test_a_credential_in_a_folder_the_runner_may_not_enter_does_not_break_its_sandbox(tmp_path):
    """The embedded default names the practice fleet's key in /etc/opshub/runner (root:opshub-runner,
    0750): another deployment's runner account may not even look in there. Its runs must still start
    (the key stays out of reach anyway), as that account sees it, not as root."""
    folder = tmp_path / "runner-credentials"
    folder.mkdir(mode=0o700)
    (folder / "fleet-ssh-key").write_text("key\n")
    code = (
        "from pathlib import Path; from opshub.sandbox import bwrap_command; "
        f"print(bwrap_command(['true'], home=Path('/tmp/h'), work=Path('/tmp/w'), hide=[Path('{folder}/fleet-ssh-key')]))"
    )
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(ROOT / "hub")},
    )
    assert result.returncode == 0, result.stderr
    assert "fleet-ssh-key" not in result.stdout  # it cannot see it: nothing to hide
