"""`make up` / `make down` on a real Docker Engine: the hub in its container, one container of
the ops image per person on the deployment's private network, homes on named volumes.

The deployment gets its own names (OPSHUB_NAME) and port, so it never meets a `make up` of
someone on the same machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import nbformat
import pytest
import requests
import yaml
from dockerspawner import DockerSpawner
from nbformat.v4 import new_code_cell, new_notebook

from tests.docker.engine import OPS_IMAGE, docker
from tests.helpers import ARTIFACTS, ROOT, git
from tests.livehub import Hub, free_port_block, wait_for

pytestmark = pytest.mark.timeout(2700)

NAME = "opshub-dtest"
PASSWORD = "docker-demo-pw"
VOLUMES = [f"{NAME}-state", f"{NAME}-runbooks", f"{NAME}-home-alice", f"{NAME}-home-bob"]
VOLUMES += [f"{NAME}-home-opshub-2ddashboards"]  # the dashboards server's (DockerSpawner's escaped name)
HOME = "/home/ops"  # the ops image's user's home (spawner.docker.home_dir)

# A credential granted to the first sandbox runbook only (runner.credentials, docker_source): mounted
# read-only at CREDENTIAL_FILE in that run's container, and in no other.
CREDENTIAL = "PLANT_TOKEN"
CREDENTIAL_FILE = "/run/opshub-credentials/plant-token"
CREDENTIAL_VALUE = "docker-credential-for-the-plant-runbook-only-7f3a"
# Two runbooks for the runner's containers: the first leaves files in every place a run can write that
# could outlive it (its home, /tmp), the second looks for them. Each prints the credential and what it
# finds at its file, and sleeps so its container can be inspected while it runs.
LOOK_FOR_THE_CREDENTIAL = f"""
print("credential:", os.environ.get("{CREDENTIAL}"))
try:
    print("credential file:", open("{CREDENTIAL_FILE}").read())
except OSError as e:
    print("credential file: unreadable,", e.strerror)
"""
PLANT = (
    """
import os, pathlib, socket, time
for place in (pathlib.Path.home() / "planted", pathlib.Path("/tmp/planted")):
    place.write_text("left by the first run")
    print("planted:", place)
print("home:", pathlib.Path.home(), "uid:", os.getuid(), "host:", socket.gethostname())
"""
    + LOOK_FOR_THE_CREDENTIAL
    + """
time.sleep(seconds)
"""
)
LOOK = (
    """
import os, pathlib, socket, time
found = [str(p) for p in (pathlib.Path.home() / "planted", pathlib.Path("/tmp/planted")) if p.exists()]
print("found:", found)
print("home:", pathlib.Path.home(), "uid:", os.getuid(), "host:", socket.gethostname())
"""
    + LOOK_FOR_THE_CREDENTIAL
    + """
time.sleep(seconds)
"""
)


def runbook(code: str) -> str:
    cells = [new_code_cell("seconds = 20", metadata={"tags": ["parameters"]}), new_code_cell(code)]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nbformat.writes(new_notebook(cells=cells, metadata={"kernelspec": kernelspec, "opshub": {}}))


def runbooks_source(folder) -> str:
    """What the deployment's runbooks mirror publishes (OPSHUB_SOURCE): this repository's shared-notebooks/
    and the two sandbox runbooks, committed in a work tree of their own."""
    shutil.copytree(ROOT / "shared-notebooks", folder / "shared-notebooks")
    (folder / "shared-notebooks" / "sandbox-plant.ipynb").write_text(runbook(PLANT))
    (folder / "shared-notebooks" / "sandbox-look.ipynb").write_text(runbook(LOOK))
    git("init", "--quiet", "--initial-branch=main", cwd=folder)
    git("add", "-A", cwd=folder)
    git("commit", "--quiet", "-m", "runbooks and the sandbox runbooks", cwd=folder)
    return str(folder)


class ComposeHub(Hub):
    """The hub `make up` started, driven over HTTP like any other (login, spawn, tokens)."""

    def __init__(self, url: str, env: dict[str, str], banner: str):
        self.url = url
        self.env = env
        self.banner = banner

    def login(self, user: str, password: str = PASSWORD):
        return super().login(user, password)

    def make(self, target: str) -> subprocess.CompletedProcess:
        ARTIFACTS.mkdir(exist_ok=True)
        if target == "down" and self.exists(f"{NAME}-hub"):
            logs = docker("logs", f"{NAME}-hub", check=False)  # the container is removed by `make down`
            (ARTIFACTS / f"{NAME}-hub.log").write_text(logs.stdout + logs.stderr)
        result = subprocess.run(
            ["make", target], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=600, check=False
        )
        with open(ARTIFACTS / f"make-{target}-{NAME}.log", "a") as log:
            log.write(result.stdout + result.stderr)
        return result

    def container(self, user: str) -> str:
        return f"{NAME}-user-{DockerSpawner._escape(user)}"  # DockerSpawner's name: `-` in a name is escaped

    def exists(self, container: str) -> bool:
        names = docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        return container in names

    def exec(self, container: str, *command: str) -> subprocess.CompletedProcess:
        return docker("exec", container, *command, check=False, timeout=600)


def names_of_this_deployment() -> list[str]:
    return [n for n in docker("ps", "-a", "--format", "{{.Names}}").stdout.split() if n.startswith(f"{NAME}-")]


@pytest.fixture(scope="module")
def deployment(images, compose, tmp_path_factory):
    port = free_port_block(1)
    settings = yaml.safe_load((ROOT / "images" / "opshub-docker.yaml").read_text())
    settings["spawner"]["docker"].update(
        network=NAME,
        hub_host=f"{NAME}-hub",
        home_volume=f"{NAME}-home-{{username}}",
        runbooks_volume=f"{NAME}-runbooks",
    )
    folder = tmp_path_factory.mktemp("compose")
    credential = folder / "plant-token"  # on the Docker host: this machine
    credential.write_text(CREDENTIAL_VALUE + "\n")
    credential.chmod(0o444)  # the ops image's user (1000) reads it through the mount
    settings["runner"] = {
        **settings.get("runner", {}),
        "credentials": {
            CREDENTIAL: {"file": CREDENTIAL_FILE, "runbooks": ["sandbox-plant.ipynb"], "docker_source": str(credential)}
        },
    }
    settings_file = folder / "opshub.yaml"
    settings_file.write_text(yaml.safe_dump(settings))
    env = {
        **os.environ,
        "OPSHUB_NAME": NAME,
        "OPSHUB_PORT": str(port),
        "OPSHUB_SETTINGS_FILE": str(settings_file),
        "OPSHUB_DEMO_PASSWORD": PASSWORD,
        "OPSHUB_SOURCE": runbooks_source(folder / "source"),
    }
    hub = ComposeHub(f"http://127.0.0.1:{port}", env, "")
    hub.make("down")  # what a failed earlier run may have left
    docker("volume", "rm", "-f", *VOLUMES, check=False)
    up = hub.make("up")
    hub.banner = up.stdout
    try:
        assert up.returncode == 0, f"make up failed: {up.stdout[-3000:]}{up.stderr[-3000:]}"
        yield hub
    finally:
        hub.make("down")
        docker("volume", "rm", "-f", *VOLUMES, check=False)


def login(hub, user):
    session, response = hub.login(user, PASSWORD)
    assert response.status_code == 200 and "/hub/login" not in response.url, response.url
    return session


def test_make_up_says_where_to_log_in(deployment):
    assert f"opshub is up: {deployment.url}/" in deployment.banner
    assert "alice" in deployment.banner and "$OPSHUB_DEMO_PASSWORD" in deployment.banner


def test_login_through_the_proxy_gives_a_container_with_the_runbooks(deployment):
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)
    info = json.loads(docker("inspect", deployment.container("bob")).stdout)[0]
    assert info["State"]["Running"] and info["Config"]["Image"] == OPS_IMAGE
    assert info["Config"]["User"] == "1000"
    assert list(info["NetworkSettings"]["Networks"]) == [NAME]
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/home/ops"]["Name"] == f"{NAME}-home-bob"
    assert mounts["/srv/opshub/runbooks"]["RW"] is False
    assert info["HostConfig"]["Memory"] == 2 * 1024**3
    assert info["HostConfig"]["CpuQuota"] == info["HostConfig"]["CpuPeriod"]  # one core
    assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    listing = deployment.contents(session, "bob", "runbooks").json()
    names = {item["name"] for item in listing["content"]}
    assert {"patch-server-stack.ipynb", "host-health-check.ipynb", "tls-certificate-expiry.ipynb"} <= names


def test_headless_run_in_the_container_shows_in_history_and_metrics(deployment):
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)
    result = deployment.exec(
        deployment.container("bob"),
        "opshub",
        "run",
        "patch-server-stack",
        "-p",
        "stack",
        "lab",
        "-p",
        "dry_run",
        "True",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[dry run] ssh" in result.stdout
    tokens = deployment.tokens(users=["carol"])
    runs = deployment.service_api(
        tokens["carol"], "GET", "runs", params={"runbook": "patch-server-stack.ipynb", "user": "bob"}
    ).json()["runs"]
    assert runs and runs[0]["status"] == "succeeded" and runs[0]["trigger"] == "headless"
    metrics_token = deployment.exec(f"{NAME}-hub", "cat", "/srv/opshub/state/metrics-token").stdout.strip()
    metrics = requests.get(
        f"{deployment.url}/services/opshub/metrics", headers={"Authorization": f"Bearer {metrics_token}"}, timeout=30
    )
    assert metrics.status_code == 200
    assert 'opshub_runbook_runs_total{runbook="patch-server-stack.ipynb",status="succeeded",trigger="headless"}' in (
        metrics.text
    )


def test_live_dashboards_render_in_a_container_of_their_own(deployment):
    """The dashboards server is a container of the ops image like a person's, started by DockerSpawner
    for the opshub-dashboards account: no Docker socket and no hub state in it, nor in bob's."""
    carol = login(deployment, "carol")
    url = f"{deployment.url}/services/opshub/dashboards/patching-status/"

    def rendered():
        page = carol.get(url, timeout=180)
        return page if page.status_code == 200 and '"kernelId"' in page.text else None

    page = wait_for(rendered, timeout=300, interval=3, what="the live dashboard")
    assert "stacks in the inventory" in page.text  # it read the run history with its data token
    container = deployment.container("opshub-dashboards")
    info = json.loads(docker("inspect", container).stdout)[0]
    assert info["Config"]["Image"] == OPS_IMAGE and info["Config"]["User"] == "1000"
    assert list(info["NetworkSettings"]["Networks"]) == [NAME]
    assert not [m for m in info["Mounts"] if "docker.sock" in (m.get("Source") or "")]
    hub_mounts = {m["Destination"] for m in json.loads(docker("inspect", f"{NAME}-hub").stdout)[0]["Mounts"]}
    assert "/var/run/docker.sock" in hub_mounts  # only the hub's container holds it
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)
    for name in (container, deployment.container("bob")):
        probe = deployment.exec(name, "sh", "-c", "id -u; ls /var/run/docker.sock /srv/opshub/state 2>&1")
        uid = probe.stdout.split()[0]
        assert uid != "0", name
        assert probe.stdout.count("No such file or directory") == 2, (name, probe.stdout)
        # the image's HEALTHCHECK passes in both: the dashboards server answers its /api 403 by design
        # (only the opshub service may use it), which is a live server, not an unhealthy one
        health = healthcheck(deployment, name)
        assert health.returncode == 0, (name, health.stdout + health.stderr)


def healthcheck(deployment, container: str) -> subprocess.CompletedProcess:
    """The container's HEALTHCHECK command, run in it now (Docker runs it only every 30 s)."""
    test = json.loads(docker("inspect", container).stdout)[0]["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD-SHELL", test
    return deployment.exec(container, "/bin/bash", "-o", "pipefail", "-c", test[1])


# The kernels of a live dashboard and the dashboards server, as its container sees them (the pids a
# dashboard's code would aim at when its kernels share that container), and the pid namespaces.
PROCESSES_IN_THE_DASHBOARDS_CONTAINER = r"""
import json, os, sys
found = {"server": [], "kernels": [], "pid ns": os.readlink("/proc/self/ns/pid"), "kernels' pid ns": []}
for pid in (p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    if argv[0].endswith(b"bwrap"):
        continue
    if argv[1:4] == [b"-I", b"-m", b"opshub.dashboards_backend"]:
        found["server"].append(int(pid))
    elif b"ipykernel_launcher" in argv:
        try:
            cwd, ns = os.readlink(f"/proc/{pid}/cwd"), os.readlink(f"/proc/{pid}/ns/pid")
        except OSError as e:
            cwd, ns = "", repr(e)
        if os.path.basename(cwd) == sys.argv[1]:
            found["kernels"].append(int(pid))
            found["kernels' pid ns"].append(ns)
print(json.dumps(found))
"""


# The hostile kernel's own threads, as its pid namespace numbers them (then an HTML output, so that what
# HOSTILE prints is an output of its own; Voila shows no stderr).
OWN_THREADS = (
    "import json as _json, os as _os\nfrom IPython.display import HTML as _HTML, display as _display\n"
    "print('THREADS' + _json.dumps({'threads': sorted(int(t) for t in _os.listdir('/proc/self/task'))}))\n"
    "_display(_HTML('<hr>'))\n"
)


def test_a_live_dashboard_cannot_touch_another_in_the_dashboards_container(deployment):
    """Security invariant 1a in Docker: tests/integration/test_dashboard_sandbox.py's attack, by a
    dashboard whose kernel runs in the dashboards server's container. It goes for another dashboard's
    copy (read, rewrite, remove), plants code for the server and later kernels, and lists and signals
    the server and the other dashboard's kernels by their pids in the container; it must find and change
    nothing. The container gets the seccomp profile and unmasked /proc that bubblewrap needs (no
    capability, no-new-privileges), and the server says its kernels are sealed."""
    from tests.integration.test_dashboard_sandbox import HOSTILE, PAYLOAD, VICTIM, printed, publish
    from tests.integration.test_dashboards import page

    container = deployment.container("opshub-dashboards")
    tokens = deployment.tokens(users=["alice"])
    carol = login(deployment, "carol")

    def live(name, session=carol):
        def rendered():
            answer = page(deployment, session, name, timeout=180)
            return answer if answer.status_code == 200 and '"kernelId"' in answer.text else None

        return wait_for(rendered, timeout=300, interval=2, what=f"the live dashboard {name}").text

    def inside(*command):
        result = deployment.exec(container, *command)
        assert result.returncode == 0, (command, result.stdout + result.stderr)
        return result.stdout

    def processes(dashboard):
        return json.loads(inside("python", "-c", PROCESSES_IN_THE_DASHBOARDS_CONTAINER, dashboard))

    publish(deployment, tokens["alice"], "victim", f"MARKER = 'victim-original'\n{VICTIM}", "Victim")
    first = printed(live("victim"), "SEEN")
    assert first["marker"] == "victim-original" and not first["planted ran"]

    info = json.loads(docker("inspect", container).stdout)[0]
    options = info["HostConfig"]["SecurityOpt"] or []
    assert "no-new-privileges" in options and [o for o in options if o.startswith("seccomp=")], options
    # its /proc without Docker's masks and read-only mounts (a sandbox's own /proc needs it); /sys masked
    assert info["HostConfig"]["ReadonlyPaths"] == [], info["HostConfig"]["ReadonlyPaths"]
    masked = info["HostConfig"]["MaskedPaths"]
    assert "/sys/firmware" in masked and not [path for path in masked if path.startswith("/proc")], masked
    assert not info["HostConfig"]["Privileged"] and not info["HostConfig"]["CapAdd"]
    assert info["Config"]["User"] == "1000"
    log = docker("logs", container).stderr
    assert "each live dashboard's kernels run in a bubblewrap sandbox of their own" in log, log[-3000:]

    published = f"{HOME}/published"
    copy = f"{published}/victim/victim.ipynb"
    before = inside("sha256sum", copy)
    seen = wait_for(lambda: (lambda f: f if f["kernels"] and f["server"] else None)(processes("victim")), timeout=60)
    server_pid, victim_kernels = seen["server"][0], seen["kernels"]
    # each kernel in a pid namespace of its own, not the container's
    assert seen["kernels' pid ns"] and all(ns.startswith("pid:[") for ns in seen["kernels' pid ns"]), seen
    assert seen["pid ns"] not in seen["kernels' pid ns"], seen
    evidence = "/tmp/opshub-evidence"  # anything planted that ran outside a sandbox writes here
    inside("sh", "-c", f"mkdir -p {evidence} && chmod 1777 {evidence}")

    setup = (
        f"PAYLOAD = {PAYLOAD!r}\nEVIDENCE = {evidence!r}\nSERVER_HOME = {HOME!r}\n"
        f"PUBLISHED = {published!r}\nSERVER_PID = {server_pid}\nVICTIM_KERNELS = {victim_kernels!r}\n"
        f"VICTIM_COPIES = {{'now': {copy!r}, 'flat': {published + '/victim.ipynb'!r}}}\n"
    )
    publish(deployment, tokens["alice"], "hostile", setup + OWN_THREADS + HOSTILE, "Hostile")
    html = live("hostile")
    found, own = printed(html, "HOSTILE"), set(printed(html, "THREADS")["threads"])
    print("what the hostile dashboard got:", json.dumps({k: v for k, v in found.items() if k != "visible processes"}))

    problems = []
    for layout in ("now", "flat"):
        for action in ("read", "rewrite", "remove"):
            if found[f"{action} {layout}"] not in ("FileNotFoundError", "PermissionError", "OSError"):
                problems.append(f"{action} {layout}: {found[f'{action} {layout}']}")
    if found["list published"] != ["hostile"]:
        problems.append(f"it listed {found['list published']} in the published folder")
    if found["write own copy"] not in ("OSError", "PermissionError"):
        problems.append(f"it wrote into its own copy: {found['write own copy']}")
    if inside("sha256sum", copy) != before:
        problems.append("the victim's copy changed")
    planted = deployment.exec(container, "sh", "-c", f"ls -d {HOME}/tarfile.py /tmp/tarfile.py /dev/shm/tarfile.py")
    if planted.stdout.strip():
        problems.append(f"planted in the server's home or the container's /tmp: {planted.stdout}")
    if len(found["visible processes"]) != 1 or "ipykernel_launcher" not in found["visible processes"][0]:
        problems.append(f"it saw other processes: {found['visible processes']}")
    for what, pid in {"server": server_pid, **{f"kernel {p}": p for p in victim_kernels}}.items():
        # a pid the container gives a process may be one of the hostile kernel's own threads in its pid
        # namespace: its kill reaches itself then (the target's survival is checked below)
        for action in ("see", "stop") if pid not in own else ():
            if found[f"{action} {what}"] not in ("ProcessLookupError", "PermissionError"):
                problems.append(f"{action} {what}: {found[f'{action} {what}']}")
    after = processes("victim")
    # The server survives. A victim kernel may end meanwhile by the dashboards server's own doing (a
    # page's kernel shut down, its pool refilled): the hostile's own report, checked above, says it could
    # neither see nor signal any of them, and the victim keeps kernels of its own.
    if server_pid not in after["server"] or not after["kernels"]:
        problems.append(f"the server {server_pid} or every kernel of the victim is gone: {after}")
    assert problems == [], "\n".join(problems)

    # the victim opened afterwards (a fresh kernel) and a dashboard published afterwards: their own
    # content, and nothing planted ran in them nor in the server
    later_victim = printed(live("victim", login(deployment, "carol")), "SEEN")
    publish(deployment, tokens["alice"], "later", f"MARKER = 'later'\n{VICTIM}", "Later")
    later = printed(live("later"), "SEEN")
    for seen_by, marker in ((later_victim, "victim-original"), (later, "later")):
        assert seen_by["marker"] == marker
        assert not seen_by["planted ran"] and seen_by["planted files"] == [], seen_by
        assert seen_by["tarfile from"] in (None, "/usr/lib/python3.11/tarfile.py"), seen_by
    assert inside("ls", "-A", evidence).strip() == ""


def run_in_a_runner_container(deployment, tokens, runbook: str) -> tuple[dict, dict, str]:
    """bob requests the runbook; the run's container, inspected while the run runs (and a look inside it),
    then the run's record once it has ended and its container has gone."""
    requested = deployment.service_api(tokens["bob"], "POST", "requests", json={"runbook": runbook})
    assert requested.status_code == 201, requested.text
    run_id = requested.json()["id"]

    def runner_container():
        return next((n for n in names_of_this_deployment() if "runner" in n), None)

    container = wait_for(runner_container, timeout=300, interval=0.3, what=f"the container of run {run_id}")

    def inspected():
        answer = docker("inspect", container, check=False)
        info = json.loads(answer.stdout or "[]")
        return info[0] if info and info[0]["State"]["Running"] else None

    # the runbook sleeps 20 s after it starts: its container runs long enough to be looked at
    info = wait_for(inspected, timeout=60, interval=0.3, what=f"the running container {container} to inspect")
    look = f"id -u; ls -d /var/run/docker.sock /srv/opshub/state 2>&1; cat {CREDENTIAL_FILE} 2>&1"
    inside = deployment.exec(container, "sh", "-c", look)
    assert inside.stdout.strip(), f"cannot look inside {container}: {inside.stderr}"

    def ended():
        run = deployment.service_api(tokens["carol"], "GET", f"runs/{run_id}").json()
        return run if run["status"] not in ("queued", "running") else None

    run = wait_for(ended, timeout=300, interval=2, what=f"run {run_id} to end")
    wait_for(lambda: runner_container() is None, timeout=120, what=f"the container of run {run_id} to be removed")
    return run, info, inside.stdout


def test_each_requested_run_runs_in_a_fresh_runner_container_that_keeps_nothing(deployment):
    """Unattended runs in Docker: the service asks the hub for a named server of opshub-runner, and
    DockerSpawner starts a container of the ops image for it, removed once the run ended. Each container is
    looked at while its run runs: the image's user (not root), no-new-privileges, the deployment's network,
    no Docker socket, no hub state, and no home volume (none mounted at the home, none of the people's home
    volumes, not the runbooks volume). Two runs in a row get two containers, and the second finds nothing of
    what the first left in its home or /tmp. The credential granted to the first runbook only is mounted
    read-only in the first run's container (the run gets it, masked in its record), and is nowhere in the
    second's: neither mounted nor given."""
    tokens = deployment.tokens(users=["bob", "carol"])
    first, first_info, first_inside = run_in_a_runner_container(deployment, tokens, "sandbox-plant.ipynb")
    second, second_info, second_inside = run_in_a_runner_container(deployment, tokens, "sandbox-look.ipynb")

    for run in (first, second):
        assert run["status"] == "succeeded", run["error_summary"]
        assert run["trigger"] == "requested" and run["requested_by"] == "bob"
    planted = json.dumps(first["output_notebook"])
    assert f"planted: {HOME}/planted" in planted and "planted: /tmp/planted" in planted  # the first run wrote
    looked = json.dumps(second["output_notebook"])
    assert f"home: {HOME} " in looked, looked  # the second run looked in the same places
    found = re.search(r"found: \[[^\]]*\]", looked)
    problems = [] if found and found[0] == "found: []" else [f"the second run found what the first left: {found}"]
    # the credential: the granted run read it from its variable and its file, both masked in the record
    if CREDENTIAL_VALUE in planted or CREDENTIAL_VALUE in looked:
        problems.append("the credential's value is in a run's record")
    if "credential: [masked]" not in planted or "credential file: [masked]" not in planted:
        problems.append(f"the granted run did not get the credential: {planted[-1500:]}")
    if "credential: None" not in looked or "credential file: unreadable, No such file" not in looked:
        problems.append(f"the other run found the credential: {looked[-1500:]}")
    if CREDENTIAL_VALUE not in first_inside:
        problems.append(f"the granted run's container has no credential at {CREDENTIAL_FILE}: {first_inside!r}")
    if CREDENTIAL_VALUE in second_inside or "No such file" not in second_inside.splitlines()[-1]:
        problems.append(f"the other run's container has something at {CREDENTIAL_FILE}: {second_inside!r}")
    if first_info["Id"] == second_info["Id"]:
        problems.append("the second run got the first run's container")
    for info, inside in ((first_info, first_inside), (second_info, second_inside)):
        name, mounts = info["Name"], info["Mounts"]
        checks = {
            "the ops image, as its user 1000": info["Config"]["Image"] == OPS_IMAGE
            and info["Config"]["User"] == "1000",
            "its processes run as 1000": inside.split()[:1] == ["1000"],
            "no-new-privileges": any(
                o.startswith("no-new-privileges") for o in info["HostConfig"]["SecurityOpt"] or []
            ),
            "not privileged": not info["HostConfig"]["Privileged"],
            "only the deployment's network": list(info["NetworkSettings"]["Networks"]) == [NAME],
            "no Docker socket, no hub state inside": "\n".join(inside.splitlines()[1:3]).count("No such file") == 2,
            "no Docker socket mounted": not [
                m for m in mounts if "docker.sock" in (m.get("Source") or "") + m["Destination"]
            ],
            "nothing mounted at or under the home": not [
                m for m in mounts if m["Destination"] == HOME or m["Destination"].startswith(HOME + "/")
            ],
            "no people's home volume": not [m for m in mounts if (m.get("Name") or "").startswith(f"{NAME}-home-")],
            "not the runbooks volume": not [m for m in mounts if m.get("Name") == f"{NAME}-runbooks"],
        }
        problems += [f"{name}: {check} ({inside.strip()!r}, {mounts})" for check, ok in checks.items() if not ok]
    # this deployment has no extra volumes (spawner.docker.volumes): the granted run's container mounts its
    # credential alone, read-only, and the other run's container mounts nothing at all
    granted_mount = {"Type": "bind", "Destination": CREDENTIAL_FILE, "RW": False}
    first_mounts = [{k: m.get(k) for k in granted_mount} for m in first_info["Mounts"]]
    if first_mounts != [granted_mount] or not first_info["Mounts"][0]["Source"].endswith("/plant-token"):
        problems.append(f"the granted run's container mounts {first_info['Mounts']}, not its credential alone")
    if second_info["Mounts"] != []:
        problems.append(f"the other run's container mounts {second_info['Mounts']}")
    assert problems == [], "\n".join(problems)


def test_home_survives_stop_and_start_and_the_container_is_removed(deployment):
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)
    xsrf = deployment.server_xsrf(session, "bob")
    put = session.put(
        f"{deployment.url}/user/bob/api/contents/keep-me.txt",
        json={"type": "file", "format": "text", "content": "still here"},
        headers=xsrf,
        timeout=30,
    )
    assert put.status_code in (200, 201), put.text
    hub_xsrf = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}
    stop = session.delete(f"{deployment.url}/hub/api/users/bob/server", headers=hub_xsrf, timeout=60)
    assert stop.status_code in (202, 204), stop.text
    wait_for(lambda: not deployment.exists(deployment.container("bob")), timeout=120, what="bob's container removed")
    deployment.open_lab(session, "bob", timeout=240)
    assert deployment.contents(session, "bob", "keep-me.txt").json()["content"] == "still here"


def test_a_spawn_asking_for_an_image_outside_the_allow_list_is_refused(deployment):
    session = login(deployment, "alice")
    xsrf = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}
    # logging in started alice's server with the default image: stop it first
    session.delete(f"{deployment.url}/hub/api/users/alice/server", headers=xsrf, timeout=60)
    wait_for(lambda: not deployment.exists(deployment.container("alice")), timeout=120, what="alice's server stopped")
    answer = session.post(
        f"{deployment.url}/hub/api/users/alice/server", json={"image": "busybox:latest"}, headers=xsrf, timeout=60
    )
    assert answer.status_code == 400 and "image" in answer.text.lower(), answer.text
    assert not deployment.exists(deployment.container("alice"))


def test_make_down_leaves_no_containers(deployment):
    session = login(deployment, "bob")
    deployment.open_lab(session, "bob", timeout=240)  # a server running when the deployment stops
    down = deployment.make("down")
    assert down.returncode == 0, down.stdout + down.stderr
    # the hub got Ctrl-C (SIGINT, passed on by tini) and stopped (and so removed) the users' containers
    # itself, before down.sh's safety net; SIGTERM would have left them running for its next start
    assert "Received signal SIGINT" in down.stderr and "Cleaning up single-user servers" in down.stderr, down.stderr
    assert "removing containers left" not in down.stdout + down.stderr
    assert names_of_this_deployment() == []
    assert docker("network", "inspect", NAME, check=False).returncode != 0
    # the volumes stay: people's homes and the hub's state survive `make down`
    volumes = docker("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert f"{NAME}-home-bob" in volumes and f"{NAME}-state" in volumes
