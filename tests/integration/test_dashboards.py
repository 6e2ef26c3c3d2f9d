"""Published dashboards, live behind the hub and proxy: publishing and its refusals, the list and
pages, live dashboards through standalone Voila (widgets work, code does not run), snapshots of the
latest run, publishing from git, and every way around the service's authentication we could think of,
each tried for real."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
import uuid
from html import unescape
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest
import requests
import websocket

from tests.helpers import git
from tests.livehub import Hub, wait_for
from tests.terminals import Terminal

PREFIX = "/services/opshub/"
LIVE = "patching-status"  # declared in shared-notebooks/dashboards/patching-status.ipynb
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def dash_hub(tmp_path_factory):
    """A hub of our own: it follows the repository every 2 s, and other tests' runbook edits stay out."""

    def configure(settings):
        settings["dashboards"] = {"git_sync_interval": 2, "pool_size": 1}

    the_hub = Hub(tmp_path_factory.mktemp("dashboards"), configure=configure)
    the_hub.start()
    yield the_hub
    the_hub.stop()
    assert not [p for p in the_hub.processes_of_this_hub() if "opshub.dashboards_backend" in p], (
        "Voila outlived the hub"
    )


@pytest.fixture(scope="module")
def tokens(dash_hub):
    return dash_hub.tokens()


@pytest.fixture(scope="module")
def sessions(dash_hub):
    return {user: dash_hub.login(user)[0] for user in ("alice", "bob", "carol")}


def api(hub, token, method, path, **kwargs):
    return hub.service_api(token, method, path, **kwargs)


def page(hub, session, name, timeout=120):
    return session.get(f"{hub.url}{PREFIX}dashboards/{name}/", timeout=timeout)


def live_page(hub, session, name=LIVE):
    """The live dashboard, once the service and its Voila backend are up."""

    def rendered():
        r = page(hub, session, name)
        return r if r.status_code == 200 and '"kernelId"' in r.text else None

    return wait_for(rendered, timeout=90, interval=1, what=f"the live dashboard {name}")


def kernel_id(html: str) -> str:
    return re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', html).group(1)


def widget_models(html: str) -> list[str]:
    outputs = re.findall(r'<script type="application/vnd.voila.cell-output\+json">\s*(.*?)\s*</script>', html, re.S)
    views = [json.loads(o).get("data", {}).get(WIDGET_VIEW) for o in outputs]
    return [v["model_id"] for v in views if v]


def kernel_socket(hub, session, kernel, **kwargs) -> websocket.WebSocket:
    url = hub.url.replace("http", "ws", 1) + f"{PREFIX}dashboards/-/api/kernels/{kernel}/channels"
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    return websocket.create_connection(url, cookie=cookie, **{"origin": hub.url, "timeout": 30, **kwargs})


def message(msg_type: str, content: dict, channel: str = "shell") -> str:
    header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "", "session": uuid.uuid4().hex}
    header.update(version="5.3", date="")
    return json.dumps(
        {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": []}
    )


def execute(code: str) -> str:
    return message(
        "execute_request",
        {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False},
    )


def receive_until(ws, predicate, timeout=30) -> list[dict]:
    """Messages from the kernel until one satisfies `predicate` (which must happen)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(deadline - time.monotonic(), 0.1))
        seen.append(json.loads(ws.recv()))
        if predicate(seen[-1]):
            return seen
    raise AssertionError(f"no expected message within {timeout}s; got {[m['msg_type'] for m in seen]}")


DASHBOARDS_SERVER = "/user/opshub-dashboards/"


def backend_process(hub) -> tuple[int, str, int]:
    """pid, secret and port of the hub's dashboards server. The secret is asked for as the service
    does, with a token that may use that server (an admin's)."""
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "opshub.dashboards_backend" not in line:
            continue
        pid = int(line.split()[0])
        try:
            env = environment_of(pid)
        except OSError:  # another hub's server that ended since `ps` listed it
            continue
        if env.get("JUPYTERHUB_API_URL", "").startswith(f"http://127.0.0.1:{hub.port + 1}/"):
            port = urlparse(env["JUPYTERHUB_SERVICE_URL"]).port
            admin = hub.tokens(users=("alice",))["alice"]
            answer = requests.post(
                f"{hub.url}{DASHBOARDS_SERVER}opshub-backend/session", headers={"Authorization": f"token {admin}"}
            )
            assert answer.status_code == 200, answer.text
            return pid, answer.json()["secret"], port
    raise AssertionError("the dashboards server process was not found")


def environment_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def raw_get(hub, path: str, session=None) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side normalisation of `..` or `%2F`)."""
    url = urlparse(hub.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = {"Cookie": "; ".join(f"{c.name}={c.value}" for c in session.cookies)} if session else {}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def live_notebook(title="Scratch", changes_systems=False, code="print('hello from a dashboard')") -> dict:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["opshub"] = {"title": title, "description": "a test", "changes_systems": changes_systems}
    return json.loads(nbformat.writes(nb))


# -- the list and the live dashboard published from git ---------------------------------------------


def test_viewer_sees_the_list_and_the_live_dashboard_from_git(dash_hub, sessions):
    carol = sessions["carol"]
    r = live_page(dash_hub, carol)
    assert "stacks in the inventory" in r.text  # the notebook ran, in a preheated kernel
    assert "OPSHUB_HISTORY_TOKEN" not in r.text  # sources are stripped
    # self-contained: nothing fetched from another site (Voila's template links a CDN's stylesheet)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text), re.findall(r"(?:src|href)=\S+//\S+", r.text)
    listing = carol.get(f"{dash_hub.url}{PREFIX}dashboards/", timeout=30)
    assert listing.status_code == 200
    row = re.search(r'<tr data-dashboard="patching-status"[^>]*>(.*?)</tr>', listing.text, re.S).group(1)
    assert "Patching status" in row and "live" in row and "git" in row
    assert f'href="{PREFIX}dashboards/patching-status/"' in row
    home = carol.get(f"{dash_hub.url}/hub/home", timeout=30)
    assert f'href="{PREFIX}dashboards/"' in home.text


def test_widgets_work_but_execute_request_does_not_run(dash_hub, sessions, tmp_path):
    carol = sessions["carol"]
    html = live_page(dash_hub, carol).text
    picker, details = widget_models(html)[-2:]
    ws = kernel_socket(dash_hub, carol, kernel_id(html))
    try:
        # what the dropdown sends when carol picks the 6th stack (db, fleet-db, fleet-web, lab, monitoring, web)
        update = {"comm_id": picker, "data": {"method": "update", "state": {"index": 5}, "buffer_paths": []}}
        ws.send(message("comm_msg", update))
        # the kernel ran the dropdown's callback: it set the output widget to capture, then displayed web's hosts
        seen = receive_until(ws, lambda m: "web01.example.internal" in json.dumps(m["content"]))
        assert any(m["content"].get("comm_id") == details for m in seen if m["msg_type"] == "comm_msg")
        assert "Stack web" in json.dumps(seen)

        marker = tmp_path / "executed"
        ws.send(execute(f"open({str(marker)!r}, 'w').write('ran')"))
        ws.send(message("comm_info_request", {}))
        # the kernel answers what came after the execute_request, so it had its chance to run it
        seen = receive_until(ws, lambda m: m["msg_type"] == "comm_info_reply")
        assert not [m for m in seen if m["msg_type"] in ("execute_reply", "execute_input")]
        assert not marker.exists()
    finally:
        ws.close()


def test_voila_itself_drops_execute_requests(dash_hub, sessions, tmp_path):
    """Behind the service's filter, the backend refuses them too (for a caller holding its secret)."""
    _, secret, port = backend_process(dash_hub)
    html = live_page(dash_hub, sessions["carol"]).text
    url = f"ws://127.0.0.1:{port}{DASHBOARDS_SERVER}api/kernels/{kernel_id(html)}/channels"
    ws = websocket.create_connection(url, header=[f"X-Opshub-Voila-Secret: {secret}"], timeout=30)
    try:
        marker = tmp_path / "executed-directly"
        ws.send(execute(f"open({str(marker)!r}, 'w').write('ran')"))
        ws.send(message("comm_info_request", {}))
        seen = receive_until(ws, lambda m: m["msg_type"] == "comm_info_reply")
        assert not [m for m in seen if m["msg_type"] == "execute_reply"]
        assert not marker.exists()
    finally:
        ws.close()


def test_the_dashboards_server_is_useless_without_the_service(dash_hub, sessions, tokens):
    _, secret, port = backend_process(dash_hub)
    paths = ("voila/render/patching-status.ipynb", "voila/tree", "voila/static/voila.js", "opshub-backend/pools/")
    # straight to its port, and through the proxy's route to it, with a person's login or token
    for backend in (f"http://127.0.0.1:{port}{DASHBOARDS_SERVER}", f"{dash_hub.url}{DASHBOARDS_SERVER}"):
        for path in paths:
            assert requests.get(backend + path, timeout=30).status_code == 403, path
            wrong = requests.get(backend + path, headers={"X-Opshub-Voila-Secret": secret[:-1]}, timeout=30)
            assert wrong.status_code == 403, path
            assert sessions["carol"].get(backend + path, timeout=30).status_code == 403, path
    for user in ("bob", "carol"):  # only a token that may use that server gets a session
        for token in (tokens[user], "bogus"):
            answer = requests.post(
                f"{dash_hub.url}{DASHBOARDS_SERVER}opshub-backend/session",
                headers={"Authorization": f"token {token}"},
                timeout=30,
            )
            assert answer.status_code == 403 and secret not in answer.text, user
    put = requests.put(
        f"{dash_hub.url}{DASHBOARDS_SERVER}opshub-backend/notebooks/planted.ipynb", data=b"{}", timeout=30
    )
    assert put.status_code == 403
    html = live_page(dash_hub, sessions["carol"]).text
    url = f"ws://127.0.0.1:{port}{DASHBOARDS_SERVER}api/kernels/{kernel_id(html)}/channels"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=30)
    assert refused.value.status_code == 403
    assert secret not in html


def test_kernel_websocket_needs_login_a_handed_out_kernel_and_our_origin(dash_hub, sessions):
    html = live_page(dash_hub, sessions["carol"]).text
    url = dash_hub.url.replace("http", "ws", 1) + f"{PREFIX}dashboards/-/api/kernels/{kernel_id(html)}/channels"
    attempts = {
        "anonymous": lambda: websocket.create_connection(url, origin=dash_hub.url, timeout=30),
        "another site": lambda: kernel_socket(dash_hub, sessions["carol"], kernel_id(html), origin="http://evil.test"),
        "unknown kernel": lambda: kernel_socket(dash_hub, sessions["carol"], str(uuid.uuid4())),
    }
    for what, attempt in attempts.items():
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            attempt().close()
        assert refused.value.status_code == 403, what


def test_no_files_apis_or_sources_through_dashboard_urls(dash_hub, sessions):
    carol = sessions["carol"]
    live_page(dash_hub, carol)
    base = f"{PREFIX}dashboards/"
    probes = [
        "-/voila/files/patching-status.ipynb",
        "-/voila/files/../published/patching-status.ipynb",
        "-/voila/render/patching-status.ipynb",
        "-/voila/tree",
        "-/voila/tree/",
        "-/voila/api/contents",
        "-/voila/api/contents/patching-status.ipynb",
        "-/api/contents",
        "-/api/contents/patching-status.ipynb",
        "-/api/kernels",
        "-/api/sessions",
        "-/api/terminals",
        "-/terminals/websocket/1",
        "-/api/kernelspecs",
        "-/static/../../../../etc/passwd",
        "-/voila/static/../../../../etc/passwd",
        "-/voila/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "-/voila/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "-/voila/templates/lab/../../../../../etc/passwd",
        "-/opshub-backend/pools/",
        "-/login",
        "patching-status/../../../../etc/passwd",
        "patching-status/notebook",  # a live dashboard has no snapshot
        "patching-status.ipynb/",
    ]
    for probe in probes:
        status, body = raw_get(dash_hub, base + probe, session=carol)
        # refused, or (for raw `..`) normalised by the proxy into a hub URL that redirects elsewhere
        assert status in (302, 400, 403, 404, 405), f"{probe}: {status}"
        assert b"root:x:" not in body and b"OPSHUB_HISTORY_TOKEN" not in body and b'"cells"' not in body, probe
    # what the page does need is served
    assert raw_get(dash_hub, base + "-/voila/static/voila.js", session=carol)[0] == 200


# What a hostile author's live dashboard tries from its kernel; it prints what it found as JSON.
BREAK_OUT = r"""
import json, os, socket, urllib.error, urllib.request
found = {"uid": os.getuid()}
for name, path in PATHS.items():
    try:
        with open(path, "rb") as f:
            found[name] = "READ " + f.read(40).hex()
    except OSError as e:
        found[name] = type(e).__name__
try:
    found["state listing"] = os.listdir(STATE)
except OSError as e:
    found["state listing"] = type(e).__name__
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("/var/run/docker.sock")
    found["docker socket"] = "CONNECTED"
except OSError as e:
    found["docker socket"] = type(e).__name__
# the one token that was within reach: the dashboards server's own, in its starting environment (its
# process is not dumpable now, so not even that); tried anyway against the hub if it is found
try:
    env = open(f"/proc/{os.getppid()}/environ", "rb").read().split(b"\0")
except OSError as e:
    env = []
    found["server environment"] = type(e).__name__
token = next((v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"JUPYTERHUB_API_TOKEN=")), "")
found["server token found"] = bool(token)
for what, url in {"hub users": HUB + "users", "alice's tokens": HUB + "users/alice/tokens"}.items():
    request = urllib.request.Request(url, headers={"Authorization": "token " + token})
    try:
        found[what] = urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as e:
        found[what] = e.code
found["secrets in env"] = sorted(k for k in os.environ if any(w in k for w in ("JUPYTERHUB", "SECRET", "PASSWORD")))
print("BREAKOUT" + json.dumps(found))
"""


def test_a_live_dashboards_code_finds_nothing_of_the_hubs(dash_hub, tokens, sessions):
    """An author publishes a live dashboard whose code goes for the hub's state, secrets, processes
    and the Docker socket; a viewer opens it. It runs under the dashboards server's own account."""
    service = subprocess.run(["pgrep", "-f", f"opshub.service .*{dash_hub.state}"], capture_output=True, text=True)
    paths = {
        "cookie secret": str(dash_hub.state / "jupyterhub_cookie_secret"),
        "hub database": str(dash_hub.state / "jupyterhub.sqlite"),
        "run history": str(dash_hub.state / "opshub.sqlite"),
        "metrics token": str(dash_hub.state / "metrics-token"),
        "hub environment": f"/proc/{dash_hub.proc.pid}/environ",
        "service environment": f"/proc/{service.stdout.split()[0]}/environ",
        "alice's runbook": str(dash_hub.home("alice") / "runbooks" / "patch-server-stack.ipynb"),
    }
    setup = f"PATHS = {paths!r}\nSTATE = {str(dash_hub.state)!r}\nHUB = {dash_hub.url + '/hub/api/'!r}\n"
    body = {"name": "innocent", "mode": "live", "notebook": live_notebook("Innocent", code=setup + BREAK_OUT)}
    assert api(dash_hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
    try:
        html = live_page(dash_hub, sessions["carol"], "innocent").text
        printed = re.search(r"BREAKOUT(\{.*?\})\s*</pre>", html, re.S)
        assert printed, html[html.find('<div cell-index="1">') :][:3000]
        found = json.loads(unescape(printed.group(1)))
    finally:
        api(dash_hub, tokens["alice"], "DELETE", "dashboards/innocent")
    assert found["uid"] != 0
    for name in paths:
        assert found[name] in ("PermissionError", "FileNotFoundError"), (name, found[name])
    assert found["state listing"] in ("PermissionError", "FileNotFoundError")  # (its /tmp is its own)
    assert found["docker socket"] in ("PermissionError", "FileNotFoundError", "ConnectionRefusedError")
    # its server's token is out of its reach, and would open nothing of the hub anyway
    # (its parent is outside its sandbox's process namespace: not even there to be named)
    assert found["server environment"] in ("PermissionError", "FileNotFoundError")
    assert not found["server token found"]
    assert found["hub users"] == 403 and found["alice's tokens"] == 403
    assert found["secrets in env"] == []


KERNEL_ENV = {
    "PATH",
    "HOME",
    "LANG",
    "OPSHUB_DASHBOARD",
    "OPSHUB_RUNBOOKS_DIR",
    "OPSHUB_HISTORY_URL",
    "OPSHUB_HISTORY_TOKEN",
}
# set by jupyter_client and Voila for each kernel: its parent, and the request (CGI-like variables)
ADDED_BY_JUPYTER = re.compile(
    r"^(JPY_PARENT_PID|JPY_SESSION_NAME|PYDEVD_\w+|VOILA_\w+|SCRIPT_NAME|PATH_INFO|QUERY_STRING|SERVER_\w+)$"
)


def test_kernels_get_a_minimal_environment(dash_hub, sessions):
    live_page(dash_hub, sessions["carol"])
    voila_pid, secret, _ = backend_process(dash_hub)
    children = subprocess.run(["pgrep", "-P", str(voila_pid)], capture_output=True, text=True).stdout.split()
    kernels = [int(pid) for pid in children if "ipykernel" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert kernels, "no kernel process found under the Voila backend"
    for pid in kernels:
        env = environment_of(pid)
        unexpected = [k for k in env if k not in KERNEL_ENV and not ADDED_BY_JUPYTER.match(k)]
        assert not unexpected, unexpected  # no JUPYTERHUB_*, no user's or service's token, no backend secret
        assert set(env) >= KERNEL_ENV
        assert secret not in "".join(env.values())
        assert env["HOME"] == str(dash_hub.system_home("opshub-dashboards"))
        # the one credential: read-only run summaries, refused without it
        history = env["OPSHUB_HISTORY_URL"] + "runs"
        assert requests.get(history, timeout=30).status_code == 401
        ok = requests.get(history, headers={"Authorization": f"Bearer {env['OPSHUB_HISTORY_TOKEN']}"}, timeout=30)
        assert ok.status_code == 200 and "runs" in ok.json()
        # ... and it opens nothing else of the service
        for path in ("api/runs", "api/dashboards"):
            refused = requests.post(
                env["OPSHUB_HISTORY_URL"].replace("api/dashboard-data/", path),
                headers={"Authorization": f"Bearer {env['OPSHUB_HISTORY_TOKEN']}"},
                json={},
                timeout=30,
            )
            assert refused.status_code in (401, 403), path


# -- publishing ---------------------------------------------------------------------------------------


def test_only_authors_and_admins_publish_and_the_owner_comes_from_the_token(dash_hub, tokens):
    body = {"name": "scratch", "mode": "live", "notebook": live_notebook()}
    for user in ("bob", "carol"):
        r = api(dash_hub, tokens[user], "POST", "dashboards", json=body)
        assert r.status_code == 403 and "custom:opshub:dashboards:publish" in r.json()["error"], user
    assert api(dash_hub, None, "POST", "dashboards", json=body).status_code == 403
    r = api(dash_hub, tokens["alice"], "POST", "dashboards", json={**body, "owner": "bob"})
    assert r.status_code == 400 and "owner" in r.json()["error"]
    r = api(dash_hub, tokens["alice"], "POST", "dashboards", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["owner"] == "alice" and r.json()["url"] == f"{PREFIX}dashboards/scratch/"
    assert api(dash_hub, tokens["bob"], "DELETE", "dashboards/scratch").status_code == 403
    assert api(dash_hub, tokens["alice"], "DELETE", "dashboards/scratch").status_code == 204
    assert api(dash_hub, tokens["alice"], "GET", "dashboards/scratch").status_code == 404


@pytest.mark.parametrize(
    "name",
    ["../hub", "a/b", "a%2Fb", "..", ".", "Upper", "", "-x", "x-", "a b", "a\\b", "x" * 65, "é", "a.b", None, 3],
)
def test_names_that_are_not_slugs_are_refused(dash_hub, tokens, name):
    r = api(
        dash_hub,
        tokens["alice"],
        "POST",
        "dashboards",
        json={"name": name, "mode": "live", "notebook": live_notebook()},
    )
    assert r.status_code == 400 and "invalid dashboard name" in r.json()["error"]


def test_tricky_names_in_urls_find_nothing(dash_hub, sessions):
    # (a plain or %2e-encoded `..` is resolved by the proxy before it reaches the service)
    for path in ("..%2F..%2Fhub%2Fhome/", "patching-status%2F..%2F/", "%2E%2E%2Fruns/", "PATCHING-STATUS/", "-/"):
        status, body = raw_get(dash_hub, f"{PREFIX}dashboards/{path}", session=sessions["carol"])
        assert status in (400, 403, 404), f"{path}: {status}"
    r = api(dash_hub, None, "GET", "dashboards/..%2Fruns")
    assert r.status_code in (403, 404)


def test_live_is_refused_for_runbooks_that_change_systems(dash_hub, tokens):
    for body in (
        {"name": "patching", "mode": "live", "runbook": "patch-server-stack.ipynb"},
        {"name": "patching", "mode": "live", "notebook": live_notebook(changes_systems=True)},
    ):
        r = api(dash_hub, tokens["alice"], "POST", "dashboards", json=body)
        assert r.status_code == 400 and "changes_systems: true" in r.json()["error"], r.text
        assert "snapshot" in r.json()["error"]
    r = api(
        dash_hub, tokens["alice"], "POST", "dashboards", json={"name": "x", "mode": "snapshot", "runbook": "no.ipynb"}
    )
    assert r.status_code == 404 and "unknown runbook" in r.json()["error"]
    r = api(
        dash_hub, tokens["alice"], "POST", "dashboards", json={"name": "x", "mode": "live", "notebook": {"cells": 1}}
    )
    assert r.status_code == 400 and "notebook" in r.json()["error"]
    r = api(dash_hub, tokens["alice"], "POST", "dashboards", json={"name": "x", "mode": "dashboard"})
    assert r.status_code == 400 and "mode" in r.json()["error"]
    r = api(
        dash_hub,
        tokens["alice"],
        "POST",
        "dashboards",
        json={"name": LIVE, "mode": "snapshot", "runbook": "patch-server-stack.ipynb"},
    )
    assert r.status_code == 403 and "repository" in r.json()["error"]


def test_groups_decide_who_sees_a_dashboard(dash_hub, tokens, sessions):
    body = {"name": "managers-only", "mode": "live", "groups": ["managers"], "notebook": live_notebook("For managers")}
    assert api(dash_hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
    try:
        r = page(dash_hub, sessions["carol"], "managers-only")
        assert r.status_code == 403 and "not in the groups" in r.text
        assert "managers-only" not in sessions["carol"].get(f"{dash_hub.url}{PREFIX}dashboards/", timeout=30).text
        names = [d["name"] for d in api(dash_hub, tokens["carol"], "GET", "dashboards").json()["dashboards"]]
        assert "managers-only" not in names and LIVE in names
        assert api(dash_hub, tokens["carol"], "GET", "dashboards/managers-only").status_code == 403
        owner_view = wait_for(
            lambda: (r := page(dash_hub, sessions["alice"], "managers-only")).status_code == 200 and r,
            timeout=60,
            what="alice's dashboard",
        )
        assert "hello from a dashboard" in owner_view.text
        # anonymous people are sent to log in at the hub
        anonymous = requests.get(f"{dash_hub.url}{PREFIX}dashboards/{LIVE}/", timeout=30)
        assert anonymous.url.startswith(f"{dash_hub.url}/hub/login")
    finally:
        api(dash_hub, tokens["alice"], "DELETE", "dashboards/managers-only")


def test_a_republished_live_dashboard_serves_the_new_copy(dash_hub, tokens, sessions):
    alice = sessions["alice"]
    for version in ("first", "second"):
        body = {"name": "versions", "mode": "live", "notebook": live_notebook(code=f"print('version {version}')")}
        assert api(dash_hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
        assert f"version {version}" in live_page(dash_hub, alice, "versions").text
    api(dash_hub, tokens["alice"], "DELETE", "dashboards/versions")
    assert page(dash_hub, alice, "versions").status_code == 404


def runs_of(hub, token, runbook) -> dict[str, str]:
    """Every run of `runbook` in the history, whatever its status: id -> status."""
    answer = api(hub, token, "GET", "runs", params={"runbook": runbook, "limit": 1000})
    assert answer.status_code == 200, answer.text
    assert answer.json()["total"] == len(answer.json()["runs"])
    return {r["id"]: r["status"] for r in answer.json()["runs"]}


def test_snapshot_shows_the_latest_finished_run_and_runs_nothing(dash_hub, tokens, sessions):
    body = {"name": "patching-last-run", "runbook": "patch-server-stack.ipynb"}  # snapshot: the default
    r = api(dash_hub, tokens["alice"], "POST", "dashboards", json=body)
    assert r.status_code == 201 and r.json()["mode"] == "snapshot", r.text
    carol = sessions["carol"]
    assert "No finished run" in page(dash_hub, carol, "patching-last-run").text

    output = live_notebook(code="print('patched')")
    output["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "SNAPSHOT-MARKER web01\n"}]
    run = api(dash_hub, tokens["bob"], "POST", "runs", json={"runbook": "patch-server-stack.ipynb"}).json()
    finish = {"status": "succeeded", "output_notebook": output}
    assert api(dash_hub, tokens["bob"], "POST", f"runs/{run['id']}/finish", json=finish).status_code == 200
    before = runs_of(dash_hub, tokens["carol"], "patch-server-stack.ipynb")

    view = page(dash_hub, carol, "patching-last-run")
    assert view.status_code == 200 and "succeeded" in view.text and run["id"] in view.text and "bob" in view.text
    notebook = carol.get(f"{dash_hub.url}{PREFIX}dashboards/patching-last-run/notebook", timeout=30)
    assert notebook.status_code == 200 and "SNAPSHOT-MARKER web01" in notebook.text
    assert notebook.headers["Content-Security-Policy"].startswith("sandbox")
    # looking executed nothing: the same runs as before, of any status
    assert runs_of(dash_hub, tokens["carol"], "patch-server-stack.ipynb") == before
    # and a running one is not shown
    running = api(dash_hub, tokens["bob"], "POST", "runs", json={"runbook": "patch-server-stack.ipynb"}).json()
    shown = page(dash_hub, carol, "patching-last-run").text
    assert run["id"] in shown and running["id"] not in shown
    listing = carol.get(f"{dash_hub.url}{PREFIX}dashboards/", timeout=30).text
    row = re.search(r'<tr data-dashboard="patching-last-run"[^>]*>(.*?)</tr>', listing, re.S).group(1)
    assert "snapshot" in row and "succeeded" in row and "alice" in row
    api(dash_hub, tokens["alice"], "DELETE", "dashboards/patching-last-run")


def test_dashboards_follow_the_repository_branch(dash_hub, tokens, sessions):
    upstream = dash_hub.upstream
    declared = live_notebook("From git", code="print('declared in git')")
    declared["metadata"]["opshub"]["dashboard"] = {"name": "from-git", "mode": "live"}
    (upstream / "dashboards" / "from-git.ipynb").write_text(json.dumps(declared))
    git("add", "-A", cwd=upstream)
    git("commit", "--quiet", "-m", "a dashboard declared in git", cwd=upstream)

    def listed():
        found = api(dash_hub, tokens["carol"], "GET", "dashboards/from-git")
        return found.json() if found.status_code == 200 else None

    dashboard = wait_for(listed, timeout=60, interval=1, what="the dashboard declared in git")
    assert dashboard["source"] == "git" and dashboard["commit"] == git("rev-parse", "main", cwd=dash_hub.repository)
    assert "declared in git" in live_page(dash_hub, sessions["carol"], "from-git").text
    # an author cannot remove what the repository declares ...
    assert api(dash_hub, tokens["alice"], "DELETE", "dashboards/from-git").status_code == 403
    # ... the repository does
    git("rm", "--quiet", "dashboards/from-git.ipynb", cwd=upstream)
    git("commit", "--quiet", "-m", "no more", cwd=upstream)
    wait_for(lambda: api(dash_hub, tokens["carol"], "GET", "dashboards/from-git").status_code == 404, timeout=60)


def save(hub, token, user, path, notebook) -> None:
    """Save a notebook in the person's server through the contents API, as JupyterLab does."""
    answer = requests.put(
        f"{hub.url}/user/{user}/api/contents/{path}",
        json={"type": "notebook", "format": "json", "content": notebook},
        headers={"Authorization": f"token {token}"},
        timeout=60,
    )
    assert answer.status_code in (200, 201), answer.text


def test_opshub_publish_and_unpublish_typed_in_a_terminal(dash_hub, tokens):
    """As an author does it: `opshub publish` typed in a JupyterLab terminal of her own server."""
    for user in ("alice", "bob"):
        dash_hub.open_lab(dash_hub.login(user)[0], user)
    notebook = live_notebook("Status board", code="print('from the command')")
    save(dash_hub, tokens["alice"], "alice", "runbooks/status.ipynb", notebook)  # as JupyterLab saves it
    with Terminal(dash_hub.url, "alice", tokens["alice"]) as alice:
        out, rc = alice.run("opshub publish runbooks/status.ipynb --name status-board --mode live --group operators")
        assert rc == 0, out
        assert "Published status-board (live) for operators" in out and "/dashboards/status-board/" in out
        shown = api(dash_hub, tokens["alice"], "GET", "dashboards/status-board").json()
        assert (shown["runbook"], shown["groups"], shown["title"]) == ("status.ipynb", ["operators"], "Status board")
        assert shown["owner"] == "alice"  # from her server's token
        # the copy was taken at publish time: editing the file changes nothing
        save(dash_hub, tokens["alice"], "alice", "runbooks/status.ipynb", live_notebook("Edited", code="print(1)"))
        assert api(dash_hub, tokens["alice"], "GET", "dashboards/status-board").json()["title"] == "Status board"

        out, rc = alice.run("opshub publish runbooks/status.ipynb --name Bad/Name --mode live")
        assert rc == 1 and "invalid dashboard name" in out, out
        out, rc = alice.run("opshub publish runbooks/missing.ipynb --name x")
        assert rc == 2 and "cannot publish" in out, out
        # only one's own notebooks: nothing outside the home, not even through a link
        alice.run(f"cp ~/runbooks/status.ipynb /tmp/elsewhere-{dash_hub.port}.ipynb; ln -sf /etc/passwd ~/passwd.ipynb")
        for outside in (f"/tmp/elsewhere-{dash_hub.port}.ipynb", "~/passwd.ipynb"):
            out, rc = alice.run(f"opshub publish {outside} --name outside --mode live")
            assert rc == 2 and "is not in your home" in out, (outside, out)
    with Terminal(dash_hub.url, "bob", tokens["bob"]) as bob:
        save(dash_hub, tokens["bob"], "bob", "by-bob.ipynb", notebook)
        out, rc = bob.run("opshub publish ~/by-bob.ipynb --name by-bob")
        assert rc == 1 and "publish" in out, out  # an operator does not publish
    with Terminal(dash_hub.url, "alice", tokens["alice"]) as alice:
        out, rc = alice.run("opshub unpublish status-board")
        assert rc == 0, out
        assert api(dash_hub, tokens["alice"], "GET", "dashboards/status-board").status_code == 404
        assert alice.run("opshub unpublish status-board")[1] == 1


# -- what viewers see: outputs only, health, the page of a broken dashboard, the opshub header ---------


def form_xsrf(html: str) -> str:
    return re.search(r'name="_xsrf" value="([^"]+)"', html).group(1)


def service_xsrf(hub, session) -> str:
    """The service's XSRF token of a person's session (the cookie its pages set), for forms they lack."""
    page(hub, session, LIVE, timeout=120)
    return next(c.value for c in session.cookies if c.name == "_xsrf" and "services" in (c.path or ""))


def list_row(hub, session, name) -> str | None:
    listing = session.get(f"{hub.url}{PREFIX}dashboards/", timeout=30)
    assert listing.status_code == 200, listing.text
    found = re.search(rf'<tr data-dashboard="{name}"[^>]*>(.*?)</tr>', listing.text, re.S)
    return found.group(1) if found else None


def executed_runbook(marker: str) -> dict:
    """An executed notebook as papermill leaves it: its parameters injected, a markdown cell, a cell's output."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("## Patching report"),
            nbformat.v4.new_code_cell("stack = 'db'", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("stack = 'web'  # INJECTED-SOURCE", metadata={"tags": ["injected-parameters"]}),
            nbformat.v4.new_code_cell(
                "print('SECRET-SOURCE', stack)",
                execution_count=3,
                outputs=[nbformat.v4.new_output("stream", name="stdout", text=f"{marker} web01\n")],
            ),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return json.loads(nbformat.writes(nb))


def failed_runbook() -> dict:
    nb = executed_runbook("NEVER-SHOWN")
    banner = '<span id="papermill-error-cell" style="color:red">An Exception was encountered at In [3]</span>'
    nb["cells"].insert(0, nbformat.v4.new_markdown_cell(banner, metadata={"tags": ["papermill-error-cell-tag"]}))
    nb["cells"][-1]["outputs"] = [
        nbformat.v4.new_output("error", ename="RuntimeError", evalue="TRACE-DETAIL", traceback=["TRACE-DETAIL"])
    ]
    return json.loads(json.dumps(nb))


def record_run(hub, token, status, notebook) -> str:
    run = api(hub, token, "POST", "runs", json={"runbook": "host-health-check.ipynb"}).json()
    finish = {"status": status, "output_notebook": notebook}
    if status == "failed":
        finish["failed_cell"] = len(notebook["cells"]) - 1
    answer = api(hub, token, "POST", f"runs/{run['id']}/finish", json=finish)
    assert answer.status_code == 200, answer.text
    return run["id"]


def test_a_snapshot_shows_outputs_only_and_its_health(dash_hub, tokens, sessions):
    body = {"name": "health-report", "runbook": "host-health-check.ipynb"}
    assert api(dash_hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
    carol, alice = sessions["carol"], sessions["alice"]
    try:
        assert "never built" in list_row(dash_hub, carol, "health-report")
        nothing = carol.get(f"{dash_hub.url}{PREFIX}dashboards/health-report/notebook", timeout=30)
        assert nothing.status_code == 404 and "no good snapshot yet" in nothing.text
        good = record_run(dash_hub, tokens["bob"], "succeeded", executed_runbook("GOOD-OUTPUT"))
        notebook = carol.get(f"{dash_hub.url}{PREFIX}dashboards/health-report/notebook", timeout=30)
        assert notebook.status_code == 200 and "GOOD-OUTPUT web01" in notebook.text
        assert "Patching report" in notebook.text  # markdown kept
        for code in ("SECRET-SOURCE", "INJECTED-SOURCE", "stack = ", "In&nbsp;[", 'jp-InputPrompt"'):
            assert code not in notebook.text, code
        assert notebook.headers["Content-Security-Policy"].startswith("sandbox")  # sandboxed as before
        assert ">ok<" in list_row(dash_hub, carol, "health-report")

        # then a run fails: the list says broken since when, the page keeps the last good snapshot
        failed = record_run(dash_hub, tokens["bob"], "failed", failed_runbook())
        row = list_row(dash_hub, carol, "health-report")
        assert "broken" in row and "since" in row and 'data-health="broken"' in row
        view = page(dash_hub, carol, "health-report")
        assert view.status_code == 200 and "This dashboard is broken" in view.text
        assert "last good snapshot" in view.text and f"runs/{good}" in view.text
        assert f"runs/{failed}" not in view.text  # the error's details are for its author and admins
        notebook = carol.get(f"{dash_hub.url}{PREFIX}dashboards/health-report/notebook", timeout=30).text
        assert "GOOD-OUTPUT" in notebook and "TRACE-DETAIL" not in notebook and "An Exception" not in notebook
        assert f"runs/{failed}" in page(dash_hub, alice, "health-report").text  # alice published it

        # a good run again: ok
        record_run(dash_hub, tokens["bob"], "succeeded", executed_runbook("GOOD-AGAIN"))
        assert ">ok<" in list_row(dash_hub, carol, "health-report")
        assert "This dashboard is broken" not in page(dash_hub, carol, "health-report").text
    finally:
        api(dash_hub, tokens["alice"], "DELETE", "dashboards/health-report")


def test_a_broken_live_dashboard_shows_a_page_for_viewers(dash_hub, tokens, sessions):
    code = "import os\nraise RuntimeError('BROKEN-DETAIL ' + os.environ['OPSHUB_DASHBOARD'])"
    body = {"name": "broken-live", "mode": "live", "notebook": live_notebook(title="Broken", code=code)}
    assert api(dash_hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
    carol, alice = sessions["carol"], sessions["alice"]
    try:
        assert "not opened yet" in list_row(dash_hub, carol, "broken-live")
        # (a 503 Response is falsy: the page's text is what is waited for)
        view = wait_for(
            lambda: (r := page(dash_hub, carol, "broken-live")).status_code == 503 and "is broken" in r.text and r.text,
            timeout=90,
            interval=1,
            what="the broken dashboard's page",
        )
        assert "There was an error when executing" not in view and "show_tracebacks" not in view
        assert "BROKEN-DETAIL" not in view and 'id="broken-details"' not in view
        assert "Its author, alice" in view and 'id="nav-dashboards"' in view
        row = list_row(dash_hub, carol, "broken-live")
        assert 'data-health="broken"' in row and "since" in row
        # its author reads which cell broke
        mine = page(dash_hub, alice, "broken-live")
        assert mine.status_code == 503 and 'id="broken-details"' in mine.text and "BROKEN-DETAIL" in mine.text
        # fixed and published again: a page, healthy
        body["notebook"] = live_notebook(title="Broken", code="print('FIXED-NOW')")
        assert api(dash_hub, tokens["alice"], "POST", "dashboards", json=body).status_code == 201
        assert "FIXED-NOW" in live_page(dash_hub, carol, "broken-live").text
        assert 'data-health="ok"' in list_row(dash_hub, carol, "broken-live")
    finally:
        api(dash_hub, tokens["alice"], "DELETE", "dashboards/broken-live")


def test_a_live_page_has_the_opshub_header(dash_hub, sessions):
    html = live_page(dash_hub, sessions["carol"]).text
    header = re.search(r'<body\b[^>]*>\s*(<nav id="opshub-header".*?</nav>)', html, re.S).group(1)
    for link in ("/hub/home", f'"{PREFIX}"', f"{PREFIX}runbooks/", f"{PREFIX}schedules", f"{PREFIX}dashboards/"):
        assert link in header, link
    assert "Patching status" in header and ">live<" in header and "carol" in header


# -- publishing and unpublishing from the Dashboards page --------------------------------------------


def test_authors_publish_and_unpublish_from_the_dashboards_page(dash_hub, tokens, sessions):
    alice, carol = sessions["alice"], sessions["carol"]
    listing = alice.get(f"{dash_hub.url}{PREFIX}dashboards/", timeout=30).text
    assert 'id="publish-form"' in listing and "Publish as dashboard" in listing
    form = {"_xsrf": form_xsrf(listing), "runbook": "host-health-check.ipynb", "name": "from-the-page"}
    form.update(mode="snapshot", groups="")
    answer = alice.post(f"{dash_hub.url}{PREFIX}dashboards/", data=form, allow_redirects=False, timeout=60)
    assert answer.status_code == 303, answer.text
    try:
        assert api(dash_hub, tokens["alice"], "GET", "dashboards/from-the-page").json()["owner"] == "alice"
        # bad input names the problem
        bad = alice.post(f"{dash_hub.url}{PREFIX}dashboards/", data={**form, "name": "Not A Slug"}, timeout=60)
        assert bad.status_code == 400 and "invalid dashboard name" in bad.text
        live = alice.post(
            f"{dash_hub.url}{PREFIX}dashboards/",
            data={**form, "name": "patching-live", "mode": "live", "runbook": "patch-server-stack.ipynb"},
            timeout=60,
        )
        assert live.status_code == 400 and "changes_systems" in live.text

        # carol (a viewer) sees no controls, and posting the forms anyway is refused
        theirs = carol.get(f"{dash_hub.url}{PREFIX}dashboards/", timeout=30).text
        assert 'id="publish-form"' not in theirs and "/unpublish" not in theirs
        xsrf = service_xsrf(dash_hub, carol)
        attempt = carol.post(
            f"{dash_hub.url}{PREFIX}dashboards/", data={**form, "_xsrf": xsrf, "name": "carols"}, timeout=60
        )
        assert attempt.status_code == 403 and "dashboards:publish" in attempt.text
        assert api(dash_hub, tokens["alice"], "GET", "dashboards/carols").status_code == 404
        unpublish = f"{dash_hub.url}{PREFIX}dashboards/from-the-page/unpublish"
        assert carol.get(unpublish, timeout=30).status_code == 403
        refused = carol.post(unpublish, data={"_xsrf": xsrf, "confirm": "yes"}, timeout=30)
        assert refused.status_code == 403
        # bob, an operator, may not either; and nobody without the form's token
        bob = sessions["bob"]
        assert bob.post(unpublish, data={"_xsrf": xsrf, "confirm": "yes"}, timeout=30).status_code == 403
        assert alice.post(unpublish, data={"confirm": "yes"}, timeout=30).status_code == 403
        assert api(dash_hub, tokens["alice"], "GET", "dashboards/from-the-page").status_code == 200

        # alice: the confirm step, then unpublished
        confirm = alice.get(unpublish, timeout=30)
        assert confirm.status_code == 200 and 'id="confirm-unpublish"' in confirm.text
        xsrf = form_xsrf(confirm.text)
        assert alice.post(unpublish, data={"_xsrf": xsrf}, timeout=30).status_code == 400  # no confirm
        done = alice.post(unpublish, data={"_xsrf": xsrf, "confirm": "yes"}, allow_redirects=False, timeout=30)
        assert done.status_code == 303, done.text
        assert api(dash_hub, tokens["alice"], "GET", "dashboards/from-the-page").status_code == 404
        # the repository's own dashboards have no unpublish button, and their form is refused
        assert "patching-status/unpublish" not in alice.get(f"{dash_hub.url}{PREFIX}dashboards/", timeout=30).text
        git_owned = alice.post(
            f"{dash_hub.url}{PREFIX}dashboards/{LIVE}/unpublish", data={"_xsrf": xsrf, "confirm": "yes"}, timeout=30
        )
        assert git_owned.status_code == 403 and "runbooks repository" in git_owned.text
    finally:
        api(dash_hub, tokens["alice"], "DELETE", "dashboards/from-the-page")
