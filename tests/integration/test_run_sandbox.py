"""Every unattended run in a sandbox of its own (threat model invariants 11 and 12), attacked for real on a
live hub: a run plants code in every writable place it can find and a later run of another person must find
none of it; a run looks for a concurrent run's processes, files and credentials and finds nothing; a
credential goes only to the runbooks granted it, and a runbook asking for one it is not granted is refused
on record, naming it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess

import pytest

from tests.helpers import open_folder
from tests.integration.test_unattended_runs import (
    commit_runbook,
    printed,
    probe_notebook,
    request,
    runner_servers,
    wait_for_status,
)
from tests.livehub import Hub, wait_for

GRANTED = "granted-secret-5d21"
NOT_GRANTED = "db-secret-77a0"

# Written by the first run (bob's) wherever it can: Python and IPython look in the home (`uuid.py` on the
# path of a server started in it, IPython's startup folder, the user site-packages), in the shared temporary
# folders, beside its own run folder, and in every folder of the machine its account may write to.
PLANTER = r"""
import os, pathlib, site, stat, sys
home = pathlib.Path.home()
payload = f"import builtins\nbuiltins.PLANTED = {marker!r}\n"
targets = [
    home / "uuid.py", home / "tarfile.py",
    home / ".ipython/profile_default/startup/00-plant.py",
    pathlib.Path(site.getusersitepackages()) / f"plant_{marker}.pth",
    home / ".jupyter/jupyter_server_config.py",
    pathlib.Path.cwd().parent / "uuid.py", pathlib.Path.cwd().parent.parent / "uuid.py",
    pathlib.Path(f"/tmp/plant_{marker}.py"), pathlib.Path(f"/var/tmp/plant_{marker}.py"),
    pathlib.Path(f"/dev/shm/plant_{marker}.py"), pathlib.Path(f"/run/plant_{marker}.py"),
]
for top in ("/etc", "/home", "/opt", "/srv", "/usr", "/var", "/work", "/tmp"):  # any folder it may write to
    for folder, dirs, _ in os.walk(top):
        if folder.count("/") > 4:
            dirs[:] = []
        if os.access(folder, os.W_OK) and not folder.startswith(str(pathlib.Path.cwd())):
            targets.append(pathlib.Path(folder) / f"plant_{marker}.py")
written = []
for path in dict.fromkeys(targets):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(payload if path.suffix != ".pth" else f"import builtins; builtins.PLANTED = {marker!r}\n")
        written.append(str(path))
    except OSError:
        pass
print("home:", repr(str(home)))
print("written:", written)
"""

# The second run (alice's) looks for all of it, and for the first run's folder.
FINDER = r"""
import builtins, os, pathlib, sys, uuid
home = pathlib.Path.home()
found = []
for top in ("/etc", "/home", "/opt", "/srv", "/usr", "/var", "/work", "/tmp", "/dev/shm", "/run", str(home)):
    for folder, dirs, names in os.walk(top):
        found += [os.path.join(folder, n) for n in names if n.startswith("plant_")]
found += [str(p) for p in home.glob("**/*") if p.suffix in (".py", ".pth")]
if getattr(builtins, "PLANTED", None):
    found.append("builtins.PLANTED")
if not uuid.__file__.startswith(sys.base_prefix):
    found.append("uuid: " + uuid.__file__)
found += [str(p) for p in pathlib.Path("/home").glob("*/runs/*")] + [str(p) for p in pathlib.Path("/home").glob("*/uuid.py")]
print("found:", found)
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox-hub")
    folder = open_folder("opshub-sandbox-credentials-")
    granted, other = folder / "probe-token", folder / "db-password"
    granted.write_text(GRANTED + "\n")
    other.write_text(NOT_GRANTED + "\n")
    for path in (granted, other):
        path.chmod(0o644)  # the runner's account reads them; the runs must not

    def configure(settings):
        settings["runner"] = {
            "max_concurrent": 2,
            "credentials": {
                "PROBE_TOKEN": {"file": str(granted), "runbooks": ["sandbox/holder.ipynb"]},
                "DB_PASSWORD": {"file": str(other), "runbooks": ["db/*"]},
            },
        }

    the_hub = Hub(root, configure=configure)
    (the_hub.upstream / "sandbox").mkdir()
    commit_runbook(the_hub, "sandbox/planter.ipynb", probe_notebook(PLANTER, 'marker = "x"'))
    commit_runbook(the_hub, "sandbox/finder.ipynb", probe_notebook(FINDER, "unused = 0"))
    commit_runbook(the_hub, "sandbox/holder.ipynb", probe_notebook(HOLDER, 'marker = "x"'))
    commit_runbook(the_hub, "sandbox/looker.ipynb", probe_notebook(LOOKER, 'marker = "x"\nfiles = []'))
    greedy = probe_notebook("print('it ran')", "unused = 0", credentials=["PROBE_TOKEN", "DB_PASSWORD"])
    commit_runbook(the_hub, "sandbox/greedy.ipynb", greedy)
    the_hub.start()
    the_hub.credential_files = [str(granted), str(other)]
    yield the_hub
    the_hub.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=["alice", "bob", "carol"])


def run(hub, token, runbook, **parameters) -> dict:
    response = request(hub, token, runbook=runbook, **parameters)
    assert response.status_code == 201, response.text
    return response.json()


def said(ended: dict, prefix: str):
    """The value a cell printed as `prefix: <python literal>`."""
    import ast

    for line in printed(ended).splitlines():
        if line.startswith(prefix + ": "):
            return ast.literal_eval(line[len(prefix) + 2 :])
    raise AssertionError(f"the run printed no {prefix!r}: {printed(ended)[:2000]}")


def test_a_run_plants_code_everywhere_it_can_and_the_next_run_finds_none_of_it(hub, tokens):
    marker = "m" + secrets.token_hex(6)
    planted = wait_for_status(hub, tokens["bob"], run(hub, tokens["bob"], "sandbox/planter.ipynb", marker=marker)["id"])
    assert planted["status"] == "succeeded", planted["error_summary"]
    written = said(planted, "written")
    assert any(path.endswith("uuid.py") for path in written), written  # it could write in its own home...
    wait_for(lambda: runner_servers(hub, tokens["alice"]) == {}, timeout=60, what="the run's server to go")
    for path in written:  # ...and nothing of it outlives the run on this machine
        assert not os.path.exists(path), f"{path} outlived the run that wrote it"
    assert not [
        p
        for p in written
        if not p.startswith((said(planted, "home"), "/home/", "/tmp/", "/var/tmp/", "/dev/shm/", "/run/"))
    ]

    found = wait_for_status(hub, tokens["alice"], run(hub, tokens["alice"], "sandbox/finder.ipynb")["id"])
    assert found["status"] == "succeeded", found["error_summary"]
    assert said(found, "found") == []
    assert found["user"] == "alice" and found["reported_by"] == "opshub service" and not found["error_summary"]


# The first of two concurrent runs holds a file, a process and a credential...
HOLDER = r"""
import os, pathlib, subprocess, time
pathlib.Path(f"held-{marker}").write_text("held")
holder = subprocess.Popen(["sh", "-c", f"sleep 40; : {marker}"])
print("credential:", repr(os.environ.get("PROBE_TOKEN")))
print("db:", repr(os.environ.get("DB_PASSWORD")))
deadline = time.time() + 40
while time.time() < deadline and not pathlib.Path(f"done-{marker}").exists():
    time.sleep(0.5)
holder.kill()
"""

# ...and the second looks for them, by name and by process, and reads the credential files directly.
LOOKER = r"""
import glob, os, pathlib
processes, seen = 0, []
for proc in pathlib.Path("/proc").iterdir():
    if proc.name.isdigit():
        processes += 1
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                seen.append(proc.name)
        except OSError:
            pass
print("processes:", processes)
print("seen:", seen)
held = [os.path.join(folder, n) for top in ("/home", "/tmp", "/var", "/run", "/srv", "/opt")
        for folder, _, names in os.walk(top) for n in names if n == f"held-{marker}"]
print("files:", held + glob.glob("/home/*/runs/*"))
contents = []
for path in files:
    try:
        contents.append(pathlib.Path(path).read_text())
    except OSError as e:
        contents.append(type(e).__name__)
print("credential files:", contents)
print("environment:", sorted(k for k in os.environ if k in ("PROBE_TOKEN", "DB_PASSWORD")))
"""


def test_concurrent_runs_see_nothing_of_each_other_and_credentials_go_only_where_granted(hub, tokens):
    marker = "h" + secrets.token_hex(6)
    holder = run(hub, tokens["bob"], "sandbox/holder.ipynb", marker=marker)
    running = wait_for_status(hub, tokens["bob"], holder["id"], statuses=("running",), timeout=90)
    wait_for(
        lambda: hub.service_api(tokens["bob"], "GET", f"runs/{running['id']}").json()["first_cell_at"],
        timeout=90,
        what="the holder's first cell",
    )
    if hub.per_person_accounts:  # the holder's processes run on this machine, as the runner's account
        wait_for(lambda: marker in processes_of(hub.account("opshub-runner")), timeout=60, what="the holder's process")
    looker = run(hub, tokens["alice"], "sandbox/looker.ipynb", marker=marker, files=hub.credential_files)
    looked = wait_for_status(hub, tokens["alice"], looker["id"], timeout=120)
    assert looked["status"] == "succeeded", looked["error_summary"]
    assert said(looked, "seen") == [] and said(looked, "files") == []
    assert said(looked, "processes") <= 5  # its own job, kernel and their helpers: nothing of the machine
    assert said(looked, "credential files") in (["", ""], ["PermissionError", "PermissionError"])
    assert said(looked, "environment") == []  # looker.ipynb is granted neither credential

    held = wait_for_status(hub, tokens["bob"], holder["id"], timeout=90)
    assert held["status"] == "succeeded", held["error_summary"]
    assert said(held, "credential") == "[masked]"  # granted to holder.ipynb, and masked in its record
    assert said(held, "db") is None  # granted to db/* only
    assert GRANTED not in json.dumps(held["output_notebook"])


def test_a_runbook_asking_for_a_credential_it_is_not_granted_is_refused_on_record(hub, tokens):
    refused = wait_for_status(hub, tokens["bob"], run(hub, tokens["bob"], "sandbox/greedy.ipynb")["id"], timeout=90)
    assert refused["status"] == "failed"
    assert "credential PROBE_TOKEN: not granted to sandbox/greedy.ipynb" in refused["error_summary"]
    assert "credential DB_PASSWORD: not granted" in refused["error_summary"]
    assert "it ran" not in printed(refused)


def processes_of(account: str) -> str:
    return subprocess.run(["ps", "-u", account, "-o", "args="], capture_output=True, text=True, check=False).stdout
