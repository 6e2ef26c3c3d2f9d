"""Unattended runs on a live hub: requested over the API and from a JupyterLab terminal (`opshub request`),
run by the runner (a named server of the `opshub-runner` account, started by the hub's spawner), with its
credentials, locks, cancelling, and the attacks on its records: forged reports, a viewer's request, a
run's own code going after the runner's tokens."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import nbformat
import pytest
import requests
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from opshub.service.queue import runner_server_name

from tests.helpers import VENV_BIN, git, open_folder
from tests.livehub import Hub, wait_for
from tests.terminals import Terminal

CREDENTIAL = "probe-credential-9f3a61"

PROBE_CODE = """
import getpass, os, pathlib, time
print("account:", getpass.getuser())
print("hub variables:", sorted(k for k in os.environ if k.startswith("JUPYTERHUB")))
print("credential:", os.environ.get("PROBE_TOKEN"))
print("message:", message)
time.sleep(seconds)
"""


def probe_notebook(code: str = PROBE_CODE, parameters: str = 'message = "hello"\nseconds = 0', **opshub) -> dict:
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Unattended probe"),
            new_code_cell(parameters, metadata={"tags": ["parameters"]}),
            new_code_cell(code),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "opshub": opshub,
        },
    )
    return nb


def commit_runbook(hub: Hub, name: str, notebook) -> str:
    """Commit a runbook to the team's repository (the hub mirrors it every second); its commit."""
    nbformat.write(notebook, hub.upstream / name)
    git("add", name, cwd=hub.upstream)
    git("commit", "-q", "-m", f"add {name}", cwd=hub.upstream)
    return git("rev-parse", "HEAD", cwd=hub.upstream).strip()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("unattended-hub")
    credential = open_folder("opshub-credential-") / "probe-token"  # a file the runner's account can read
    credential.write_text(CREDENTIAL + "\n")
    credential.chmod(0o644)

    def configure(settings):
        settings.setdefault("dashboards", {})["git_sync_interval"] = 1
        granted = {"file": str(credential), "runbooks": ["unattended-probe.ipynb"]}
        settings["runner"] = {"max_concurrent": 2, "credentials": {"PROBE_TOKEN": granted}}

    the_hub = Hub(root, configure=configure)
    commit_runbook(the_hub, "unattended-probe.ipynb", probe_notebook(locks=["probe:{message}"]))
    the_hub.start()
    yield the_hub
    the_hub.stop()
    shutil.rmtree(credential.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=["alice", "bob", "carol"])


@pytest.fixture(scope="module")
def bob_lab(hub):
    """bob's JupyterLab is running (for his terminals)."""
    session, _ = hub.login("bob")
    hub.open_lab(session, "bob")


def request(hub, token, runbook="unattended-probe.ipynb", **parameters) -> requests.Response:
    return hub.service_api(token, "POST", "requests", json={"runbook": runbook, "parameters": parameters})


def wait_for_status(hub, token, run_id, statuses=("succeeded", "failed", "interrupted", "cancelled"), timeout=120):
    def ended():
        run = hub.service_api(token, "GET", f"runs/{run_id}").json()
        return run if run["status"] in statuses else None

    return wait_for(ended, timeout=timeout, interval=0.5, what=f"run {run_id} to be {'/'.join(statuses)}")


def wait_for_first_cell(hub, token, run_id, timeout=90) -> dict:
    def begun():
        run = hub.service_api(token, "GET", f"runs/{run_id}").json()
        return run if run["first_cell_at"] else None

    return wait_for(begun, timeout=timeout, interval=0.5, what=f"run {run_id} to reach its first cell")


def runner_servers(hub, token) -> dict:
    response = requests.get(
        f"{hub.url}/hub/api/users/opshub-runner", headers={"Authorization": f"token {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["servers"]


def output_text(run: dict) -> str:
    return json.dumps(run["output_notebook"])


def printed(run: dict) -> str:
    """What the run's cells printed (their stream outputs), not their source."""
    cells = (run["output_notebook"] or {}).get("cells", [])
    return "".join(
        "".join(o.get("text", "")) for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )


def test_an_operator_requests_a_run_and_the_runner_runs_it_in_its_own_account(hub, tokens):
    response = request(hub, tokens["bob"], message="from the API")
    assert response.status_code == 201, response.text
    queued = response.json()
    assert queued["status"] == "queued" and queued["trigger"] == "requested"
    assert queued["user"] == "bob" and queued["requested_by"] == "bob"
    assert queued["runbook_commit"] == git("rev-parse", "main", cwd=hub.repository).strip()  # the mirror's
    assert queued["locks"] == ["probe:from the API"]

    run = wait_for_status(hub, tokens["carol"], queued["id"])  # a viewer follows it
    assert run["status"] == "succeeded", run["error_summary"]
    text = output_text(run)
    assert "message: from the API" in text
    assert "hub variables: []" in text  # no hub token, no hub URL in the run's environment
    if hub.per_person_accounts:
        assert f"account: {hub.account('opshub-runner')}" in text
    assert CREDENTIAL not in text and "credential: [masked]" in printed(run)  # the credential reached it, masked
    assert run["reported_by"] == "opshub service" and not run["drift"]
    assert run["first_cell_at"] >= run["queued_at"] and run["ended_at"] >= run["first_cell_at"]
    wait_for(lambda: runner_servers(hub, tokens["alice"]) == {}, timeout=30, what="the run's server to go")


def test_viewers_cannot_request_and_wrong_requests_name_the_problem(hub, tokens):
    refused = request(hub, tokens["carol"])
    assert refused.status_code == 403 and "custom:opshub:runs:request" in refused.json()["message"]
    unknown = request(hub, tokens["bob"], runbook="no-such-runbook.ipynb")
    assert unknown.status_code == 404 and "unattended-probe.ipynb" in unknown.json()["message"]
    tricks = request(hub, tokens["bob"], runbook="../state/opshub.sqlite")
    assert tricks.status_code == 404, tricks.text
    undeclared = request(hub, tokens["bob"], hostname="web1")
    assert undeclared.status_code == 400 and "hostname" in undeclared.json()["message"]
    assert "message" in undeclared.json()["message"]  # it lists what the runbook declares
    not_an_object = hub.service_api(tokens["bob"], "POST", "requests", json={"runbook": "x", "parameters": [1]})
    assert not_an_object.status_code in (400, 404)
    assert hub.service_api(tokens["bob"], "GET", "runs", params={"status": "queued"}).status_code == 200
    runs = hub.service_api(tokens["bob"], "GET", "runs", params={"user": "carol"}).json()
    assert runs["total"] == 0  # nothing was queued for the viewer


def test_opshub_request_typed_in_a_terminal_runs_on_the_runner(hub, tokens, bob_lab):
    with Terminal(hub.url, "bob", tokens["bob"]) as terminal:
        out, code = terminal.run("opshub request unattended-probe -p message 'from a terminal' --wait", timeout=180)
        assert code == 0, out
        assert "requested run" in out and "succeeded" in out
        out, code = terminal.run("opshub request unattended-probe -p nonsense 1", timeout=60)
        assert code == 2 and "parameter nonsense is not a parameter of this runbook" in out, out


def test_opshub_request_wait_prints_each_cell_as_it_ends(hub, tokens, bob_lab):
    """`--wait` follows the run cell by cell, as `opshub run` prints it: a cell's line comes when that cell
    ends, while the later cells still run; the run's link is one a terminal can open."""
    steps = [new_markdown_cell("# Three steps")] + [
        new_code_cell(f"import time\ntime.sleep({seconds})\nprint('step', {n}, 'ended')")
        for n, seconds in ((1, 1), (2, 1), (3, 12))
    ]
    commit_runbook(hub, "three-steps.ipynb", new_notebook(cells=steps, metadata=probe_notebook()["metadata"]))
    wait_for(
        lambda: hub.service_api(tokens["bob"], "GET", "runbooks/three-steps.ipynb").status_code == 200,
        timeout=60,
        what="the service to see the new runbook",
    )
    with Terminal(hub.url, "bob", tokens["bob"]) as terminal:
        mark = terminal.start("opshub request three-steps --wait")
        found = terminal.read_until(r"requested run ([0-9a-f-]{36}).*\n  (\S+)\n", timeout=60)
        run_id, link = found.group(1), found.group(2)
        assert re.fullmatch(rf"http://127\.0\.0\.1:\d+/services/opshub/runs/{run_id}", link), link
        terminal.read_until(r"\[3/4\] ▶ cell 3: import time ✓ \d+\.\ds\nstep 2 ended", timeout=120)
        # cell 3 (step 2) has ended and been printed; the run still runs its last cell
        assert hub.service_api(tokens["bob"], "GET", f"runs/{run_id}").json()["status"] == "running"
        out, code = terminal.finish(mark, timeout=120)
    assert code == 0, out
    lines = out.splitlines()
    assert "[1/4]   cell 1: # Three steps" in lines and "step 3 ended" in lines, out
    assert lines.index("[4/4] ▶ cell 4: import time ✓ 12s") < lines.index("succeeded"), out


def test_a_lock_makes_a_second_run_wait_also_one_typed_in_a_terminal(hub, tokens, bob_lab):
    first = request(hub, tokens["bob"], message="locked", seconds=15).json()
    wait_for_status(hub, tokens["bob"], first["id"], statuses=("running",), timeout=60)
    second = request(hub, tokens["bob"], message="locked").json()
    other = request(hub, tokens["bob"], message="unlocked").json()  # another lock: not held up
    assert wait_for_status(hub, tokens["bob"], other["id"], timeout=90)["status"] == "succeeded"
    assert hub.service_api(tokens["bob"], "GET", f"runs/{second['id']}").json()["status"] == "queued"
    with Terminal(hub.url, "bob", tokens["bob"]) as terminal:
        out, code = terminal.run("opshub run unattended-probe -p message locked", timeout=180)
    assert code == 0, out
    assert "waiting: lock held" in out and "probe:locked" in out
    done_first = wait_for_status(hub, tokens["bob"], first["id"])
    done_second = wait_for_status(hub, tokens["bob"], second["id"])
    assert done_first["status"] == done_second["status"] == "succeeded"
    assert done_second["first_cell_at"] > done_first["ended_at"]


def test_cancel_a_queued_and_a_running_run(hub, tokens, bob_lab):
    slow = [request(hub, tokens["bob"], message=f"slow {i}", seconds=60).json() for i in range(3)]
    running = [wait_for_first_cell(hub, tokens["bob"], run["id"]) for run in slow[:2]]
    queued = hub.service_api(tokens["bob"], "GET", f"runs/{slow[2]['id']}").json()
    assert queued["status"] == "queued"  # runner.max_concurrent is 2

    viewer = hub.service_api(tokens["carol"], "POST", f"runs/{queued['id']}/cancel")
    assert viewer.status_code == 403
    cancelled = hub.service_api(tokens["bob"], "POST", f"runs/{queued['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert "bob" in cancelled.json()["error_summary"]

    by_admin = hub.service_api(tokens["alice"], "POST", f"runs/{running[0]['id']}/cancel")
    assert by_admin.status_code == 200 and by_admin.json()["cancel_requested_by"] == "alice"
    with Terminal(hub.url, "bob", tokens["bob"]) as terminal:
        out, code = terminal.run(f"opshub cancel {running[1]['id']}", timeout=60)
    assert code == 0, out
    for run in running:
        ended = wait_for_status(hub, tokens["bob"], run["id"], timeout=60)
        assert ended["status"] == "cancelled", ended
        assert "Unattended probe" in output_text(ended)  # the cells it ran, as far as it got
    wait_for(lambda: runner_servers(hub, tokens["alice"]) == {}, timeout=45, what="the cancelled runs' servers to go")
    again = hub.service_api(tokens["bob"], "POST", f"runs/{queued['id']}/cancel")
    assert again.status_code == 409


def test_reports_for_a_run_need_its_own_token(hub, tokens):
    run = request(hub, tokens["bob"], message="forgery target", seconds=5).json()
    for headers in (
        {},
        {"Authorization": f"token {tokens['bob']}"},
        {"Authorization": f"Bearer {tokens['alice']}"},
        {"Authorization": "Bearer not-the-run-token"},
    ):
        response = requests.post(
            f"{hub.url}/services/opshub/api/runner/runs/{run['id']}/finish",
            json={"status": "failed", "error_summary": "forged"},
            headers=headers,
            timeout=10,
        )
        assert response.status_code in (401, 403), (headers, response.status_code, response.text)
    done = wait_for_status(hub, tokens["bob"], run["id"])
    assert done["status"] == "succeeded" and done["error_summary"] is None


ATTACK_CODE = r"""
import http.client, json, os, pathlib, re, subprocess, urllib.parse, urllib.request
control = subprocess.Popen(["sleep", "60"])  # a process of the run's own: its memory is readable
run_id = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", str(pathlib.Path.cwd())).group(0)
found, memory_read, candidates = {}, [], set()
# a run token (secrets.token_urlsafe(32)) as CPython keeps a str: 43 URL-safe characters, then a NUL
TOKEN = re.compile(rb"(?<![A-Za-z0-9_-])([A-Za-z0-9_-]{43})\x00")


def scan_memory(pid):
    # every readable mapping of the process: the job's JSON (with the run token) stays in the memory
    # of the process that read it unless the process is not dumpable
    tokens = set()
    try:
        maps = pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines()
        with open(f"/proc/{pid}/mem", "rb", 0) as mem:
            for line in maps:
                span, perms = line.split()[:2]
                start, end = (int(x, 16) for x in span.split("-"))
                if "r" not in perms or end - start > 256 << 20:
                    continue
                try:
                    mem.seek(start)
                    tokens.update(m.decode() for m in TOKEN.findall(mem.read(end - start)))
                except (OSError, ValueError, OverflowError):
                    continue
    except OSError:
        return None
    return tokens


for proc in pathlib.Path("/proc").iterdir():
    if not proc.name.isdigit() or int(proc.name) == os.getpid():
        continue
    try:
        env = (proc / "environ").read_bytes().decode(errors="replace")
    except OSError:
        env = ""
    for name in ("JUPYTERHUB_API_TOKEN", "OPSHUB_RUN_TOKEN", "JPY_API_TOKEN"):
        match = re.search(name + r"=([^\x00]+)", env)
        if match:
            found[name] = match.group(1)
    tokens = scan_memory(proc.name)
    if tokens is not None:
        memory_read.append(int(proc.name))
        candidates.update(tokens)
print("control's memory read:", control.pid in memory_read)
control.kill()
service = os.environ.get("OPSHUB_SERVICE_URL") or "__SERVICE__"
# which of the strings found in memory is this run's token: the one its heartbeat takes (a wrong one: 403)
url = urllib.parse.urlsplit(service)
connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
for candidate in sorted(candidates)[:20000]:
    connection.request("POST", url.path + f"api/runner/runs/{run_id}/heartbeat", body=b"{}",
                       headers={"Authorization": f"Bearer {candidate}", "Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    if response.status == 200:
        found[f"memory #{len(found)}"] = candidate
print("candidates:", len(candidates))
print("found:", sorted(found))
results = []
for name, token in found.items():
    for scheme in ("token", "Bearer"):
        request = urllib.request.Request(
            service + f"api/runner/runs/{run_id}/finish",
            data=json.dumps({"status": "failed", "error_summary": "forged by the run"}).encode(),
            headers={"Authorization": f"{scheme} {token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request, timeout=10)
            results.append(f"{name}/{scheme}: ACCEPTED")
        except urllib.error.HTTPError as e:
            results.append(f"{name}/{scheme}: {e.code}")
print("attempts:", results)
"""


def test_a_runs_own_code_cannot_forge_its_record(hub, tokens):
    service_url = f"http://127.0.0.1:{hub.port + 3}/services/opshub/"
    code = ATTACK_CODE.replace("__SERVICE__", service_url)
    commit_runbook(hub, "forger.ipynb", probe_notebook(code=code, parameters="unused = 0"))
    response = wait_for(
        lambda: (r := request(hub, tokens["bob"], runbook="forger.ipynb")).status_code == 201 and r,
        timeout=30,
        what="the new runbook to be requestable",
    )
    run = wait_for_status(hub, tokens["bob"], response.json()["id"])
    assert run["status"] == "succeeded", run
    said = printed(run)
    assert "attempts:" in said and "ACCEPTED" not in said, said
    # the run's kernel reads the memory of a process it started (a positive control: the scan works) but
    # not the job's, which is not dumpable: its environment and memory, with the run token, are closed to it
    assert "control's memory read: True" in said, said
    assert "found: []" in said, said
    assert "forged" not in (run["error_summary"] or "")


def test_the_runbook_page_offers_the_request_form_to_operators_not_viewers(hub):
    bob, _ = hub.login("bob")
    home = bob.get(f"{hub.url}/hub/home", timeout=30)  # named servers are the runner's, not people's
    assert home.status_code == 200 and "opshub-history-link" in home.text and "Named Servers" not in home.text
    page = bob.get(f"{hub.url}/services/opshub/runbooks/unattended-probe.ipynb", timeout=30)
    assert page.status_code == 200 and 'id="request-form"' in page.text and 'name="p-message"' in page.text
    xsrf = bob.cookies.get("_xsrf", path="/services/opshub/")
    posted = bob.post(
        f"{hub.url}/services/opshub/runbooks/unattended-probe.ipynb",
        data={"_xsrf": xsrf, "f-message": "1", "p-message": "from the page", "f-seconds": "1", "p-seconds": "0"},
        timeout=30,
    )
    assert posted.status_code == 200 and "/services/opshub/runs/" in posted.url, posted.text[:500]
    run_id = posted.url.rstrip("/").rsplit("/", 1)[1]
    token = hub.tokens(users=["carol"])["carol"]
    # every value that applied is recorded, typed (the form's text "0" is the integer 0)
    assert wait_for_status(hub, token, run_id)["parameters"] == {"message": "from the page", "seconds": 0}

    carol, _ = hub.login("carol")
    page = carol.get(f"{hub.url}/services/opshub/runbooks/unattended-probe.ipynb", timeout=30)
    assert page.status_code == 200 and 'id="request-form"' not in page.text and 'id="no-request"' in page.text
    xsrf = carol.cookies.get("_xsrf", path="/services/opshub/")
    refused = carol.post(f"{hub.url}/services/opshub/runbooks/unattended-probe.ipynb", data={"_xsrf": xsrf}, timeout=30)
    assert refused.status_code == 403 and "Traceback" not in refused.text


def default_server(hub, token, user) -> dict | None:
    """The user's default server as the hub's API shows it to an admin, when it runs."""
    response = requests.get(f"{hub.url}/hub/api/users/{user}", headers={"Authorization": f"token {token}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["servers"].get("")


def test_the_idle_culler_leaves_a_running_runner_alone(hub, tokens):
    """jupyterhub-idle-culler with a 25 s timeout, against a run of 45 s: the runner's server tells the hub it
    is active while its run goes on, so the culler does not stop it. Positive control, in the same culler's
    run: bob's idle JupyterLab (nobody uses it) is culled, and the culler's log shows it listed the runner's
    server and decided to keep it (a culler that fails every cycle, or never sees the runner, fails here)."""
    if not default_server(hub, tokens["alice"], "bob"):
        session, _ = hub.login("bob")
        hub.open_lab(session, "bob")  # an idle person's server, for the culler to cull
    run = request(hub, tokens["bob"], message="outlives the culler", seconds=45).json()
    wait_for_first_cell(hub, tokens["bob"], run["id"])
    culler = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "jupyterhub_idle_culler", "--timeout=25", "--cull-every=5",
         "--Application.log_level=DEBUG", f"--url=http://127.0.0.1:{hub.port + 1}/hub/api"],
        env={**os.environ, "JUPYTERHUB_API_TOKEN": tokens["alice"]},  # an admin's: it may stop anyone's server
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        done = wait_for_status(hub, tokens["bob"], run["id"], timeout=120)
        # the control: the same culler, while it ran, stops the idle server (at most 25 s + a cycle after it
        # was last used; usually already done while the run ran)
        bob_culled = wait_for(
            lambda: default_server(hub, tokens["alice"], "bob") is None, timeout=60, what="bob's idle server culled"
        )
    finally:
        culler.terminate()
        log = culler.communicate(timeout=30)[0]
    assert bob_culled and "Culling server bob " in log, log
    assert done["status"] == "succeeded", (done, log)
    assert "Culling server opshub-runner" not in log, log
    # it saw the runner's server, active, in its cycles, and kept it
    assert f"Not culling server opshub-runner/{runner_server_name(run['id'])} " in log, log
    assert "Error processing" not in log and "Traceback" not in log, log


def test_an_unreachable_repository_is_said_on_the_pages_and_in_refusals(hub, tokens):
    """The runbooks repository moved away: a request of a runbook the service has not seen is a 503 naming
    the repository (not "there is no runbook"), every page says what it cannot reach, and runbooks it
    had go on running from its copy; all back to normal once the repository is."""
    away = hub.repository.with_name(hub.repository.name + ".away")
    hub.repository.rename(away)
    hub.repository.write_text("moved away by the test\n")  # so that the mirror cannot make a new one
    bob, _ = hub.login("bob")
    try:
        (refused,) = wait_for(  # (a Response is falsy when not ok: wrapped in a tuple)
            lambda: (r := request(hub, tokens["bob"], runbook="pushed-while-away.ipynb")).status_code == 503 and (r,),
            timeout=30,
            what="a 503 naming the repository",
        )
        message = refused.json()["message"]
        assert "cannot be reached" in message and str(hub.repository) in message, message
        page = bob.get(f"{hub.url}/services/opshub/runbooks/", timeout=30)
        assert page.status_code == 200 and "cannot be reached" in page.text
        cached = request(hub, tokens["bob"], message="from the service's copy")
        assert cached.status_code == 201, cached.text
    finally:
        hub.repository.unlink()
        away.rename(hub.repository)
    assert wait_for_status(hub, tokens["bob"], cached.json()["id"])["status"] == "succeeded"
    wait_for(
        lambda: "cannot be reached" not in bob.get(f"{hub.url}/services/opshub/runbooks/", timeout=30).text,
        timeout=30,
        what="the pages to stop warning",
    )


def test_the_runners_metrics(hub, tokens):
    token = (hub.state / "metrics-token").read_text().strip()
    text = requests.get(
        f"{hub.url}/services/opshub/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).text
    assert "opshub_runner_queue_length 0.0" in text
    lock_waits = float(re.search(r"^opshub_runner_lock_waits_total (\S+)$", text, re.M).group(1))
    assert lock_waits >= 1  # the lock test's second run waited
    delays = float(
        re.search(r'^opshub_unattended_start_delay_seconds_count\{trigger="requested"\} (\S+)$', text, re.M)[1]
    )
    assert delays >= 5
    assert re.search(
        r'opshub_runbook_runs_total\{runbook="unattended-probe.ipynb",status="succeeded",trigger="requested"\}', text
    )
    assert re.search(
        r'opshub_runbook_runs_total\{runbook="unattended-probe.ipynb",status="cancelled",trigger="requested"\}', text
    )
    assert 'opshub_schedule_fires_total{result="missed"} 0.0' in text


def test_no_runner_server_is_left_behind(hub, tokens):
    wait_for(lambda: runner_servers(hub, tokens["alice"]) == {}, timeout=60, what="no runner servers")
    running = hub.service_api(tokens["alice"], "GET", "runs", params={"status": "running"}).json()
    queued = hub.service_api(tokens["alice"], "GET", "runs", params={"status": "queued"}).json()
    assert running["total"] == 0 and queued["total"] == 0
    # the runner's home keeps nothing of the runs (their records hold the output)
    if hub.per_person_accounts:
        runs_folder = hub.system_home("opshub-runner") / "runs"
        assert not runs_folder.exists() or not os.listdir(runs_folder)
