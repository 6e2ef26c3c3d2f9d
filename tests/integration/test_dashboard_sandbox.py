"""One live dashboard cannot touch another (issue 23, item 4), and viewers' websocket frames are
bounded (item 6), tried for real against a live hub as root, the way a hostile author and a hostile
viewer would:

- a live dashboard whose code goes for another dashboard's published copy (rewrite, unpublish,
  read), plants code wherever a later kernel or the dashboards server would import it (`~/tarfile.py`,
  an IPython startup file, `~/.local` site-packages, its own folder), and lists and signals the
  dashboards server and the other dashboard's kernels; then the other dashboard, and one published
  afterwards, show their own content and no planted code ran, and a restarted server imported none;
- the dashboards server killed (SIGKILL, then SIGTERM, as a dashboard's code once did): the service's
  watchdog has it back within its promised 10 s (measured);
- a 12-byte binary frame claiming 40,000,000 buffers, and an oversized frame, refused with a clear
  close while the service keeps answering at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import threading
import time
from html import unescape
from pathlib import Path

import pytest
import requests
import websocket

from tests.integration.test_dashboards import (
    DASHBOARDS_SERVER,
    api,
    backend_process,
    kernel_id,
    kernel_socket,
    live_notebook,
    live_page,
    message,
    receive_until,
)
from tests.livehub import Hub, wait_for

PREFIX = "/services/opshub/"
WATCHDOG_PROMISE = 10.0  # seconds: hub/docs/dashboards.md


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    def configure(settings):
        settings["dashboards"] = {"pool_size": 1}

    the_hub = Hub(tmp_path_factory.mktemp("dashboard-sandbox"), configure=configure)
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens()


@pytest.fixture(scope="module")
def carol(hub):
    return hub.login("carol")[0]


@pytest.fixture(scope="module")
def evidence(hub) -> Path:
    """A folder anyone may write: planted code that ran anywhere outside a sandbox leaves a file here."""
    folder = hub.shared / "evidence"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o1777)
    return folder


@pytest.fixture(scope="module")
def victim(hub, tokens) -> str:
    """A live dashboard of alice's that shows its own marker, and whether anything planted ran in its kernel."""
    publish(hub, tokens["alice"], "victim", f"MARKER = 'victim-original'\n{VICTIM}", "Victim")
    return "victim"


def printed(html: str, tag: str) -> dict:
    """The JSON a dashboard's cell printed after `tag`."""
    found = re.search(tag + r"(\{.*?\})\s*</pre>", html, re.S)
    assert found, html[html.find('<div cell-index="') :][:3000]
    return json.loads(unescape(found.group(1)))


def publish(hub, token, name, code, title="Board"):
    body = {"name": name, "mode": "live", "notebook": live_notebook(title, code=code)}
    answer = api(hub, token, "POST", "dashboards", json=body)
    assert answer.status_code == 201, answer.text


def kernels_of(dashboard: str) -> list[int]:
    """The kernel processes (as the machine sees them) whose working folder is that dashboard's copy."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        kernel = b"ipykernel_launcher" in b" ".join(cmdline) and not cmdline[0].endswith(b"bwrap")
        if kernel and Path(cwd).name == dashboard:
            pids.append(int(entry.name))
    return pids


# What a victim dashboard shows: its own marker, and whether anything planted ran in its kernel.
VICTIM = r"""
import builtins, glob, json, os, sys
home = os.path.expanduser("~")
print("SEEN" + json.dumps({
    "marker": MARKER,
    "planted ran": getattr(builtins, "PLANTED_BY_HOSTILE", False),
    "tarfile from": getattr(sys.modules.get("tarfile"), "__file__", None),
    "planted files": sorted({
        path
        for folder in (home, "/tmp", "/dev/shm")
        for pattern in ("**/*planted*", "**/tarfile.py", "**/.ipython/profile_default/startup/[!R]*")
        for path in glob.glob(os.path.join(folder, pattern), recursive=True)
    }),
}))
"""

# The planted payload: wherever it runs, it says so (a builtin for the kernel that imports it, a file
# in the evidence folder for the server or anything outside a sandbox).
PAYLOAD = (
    "import builtins, os\n"
    "builtins.PLANTED_BY_HOSTILE = True\n"
    "try:\n"
    "    open(os.path.join(EVIDENCE, 'ran-%d' % os.getpid()), 'w').write(repr(__file__ if '__file__' in dir() else ''))\n"
    "except OSError:\n"
    "    pass\n"
)

HOSTILE = r"""
import glob, json, os, signal, sys, sysconfig
found = {"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd()}
payload = PAYLOAD.replace("EVIDENCE", repr(EVIDENCE))

def attempt(what, action):
    try:
        found[what] = action()
    except Exception as e:
        found[what] = type(e).__name__

def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return "WROTE"

# the other dashboard's copy: read, rewrite, remove (unpublish), wherever it may be
for layout, path in VICTIM_COPIES.items():
    attempt("read " + layout, lambda: "READ " + open(path).read()[:40])
    attempt("rewrite " + layout, lambda: open(path, "r+").write('{"cells": []}') and "REWROTE")
    attempt("remove " + layout, lambda: os.unlink(path) or "REMOVED")
attempt("list published", lambda: sorted(os.listdir(PUBLISHED)))
attempt("list server home", lambda: sorted(os.listdir(SERVER_HOME)))
attempt("write own copy", lambda: write(os.path.join(os.getcwd(), "tarfile.py"), payload))

# code for whatever starts next: the server (tarfile, json), later kernels (IPython, site-packages)
home = os.path.expanduser("~")
site = sysconfig.get_path("purelib", "posix_user", {"userbase": os.path.join(home, ".local")})
plants = {
    "~/tarfile.py": os.path.join(home, "tarfile.py"),
    "server home tarfile.py": os.path.join(SERVER_HOME, "tarfile.py"),
    "ipython startup": os.path.join(home, ".ipython/profile_default/startup/00-planted.py"),
    "user site-packages": os.path.join(site, "planted_hostile.py"),
    "user site .pth": os.path.join(site, "zz-planted.pth"),
    "user sitecustomize": os.path.join(site, "usercustomize.py"),
    "runbooks folder": os.path.join(os.environ.get("OPSHUB_RUNBOOKS_DIR", home), "tarfile.py"),
    "/tmp": "/tmp/tarfile.py",
    "/dev/shm": "/dev/shm/tarfile.py",
}
for what, path in plants.items():
    text = "import planted_hostile\n" if path.endswith(".pth") else payload
    attempt("plant " + what, lambda: write(path, text))

# processes: every one it can see, and the server and the other dashboard's kernels by their pids
found["visible processes"] = sorted(
    open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")[:80]
    for p in os.listdir("/proc") if p.isdigit()
)
for what, pid in {"server": SERVER_PID, **{f"kernel {p}": p for p in VICTIM_KERNELS}}.items():
    if pid in (1, os.getpid()):
        continue
    attempt("see " + what, lambda: os.kill(pid, 0) or "ALIVE")
    attempt("stop " + what, lambda: os.kill(pid, signal.SIGKILL if what.startswith("kernel") else signal.SIGTERM) or "SIGNALLED")
print("HOSTILE" + json.dumps(found))
"""


def test_a_dashboard_cannot_touch_another(hub, tokens, carol, evidence, victim):
    alice = tokens["alice"]
    server_home = hub.system_home("opshub-dashboards")
    published = server_home / "published"
    first = printed(live_page(hub, carol, "victim").text, "SEEN")
    assert first["marker"] == "victim-original" and not first["planted ran"]
    copy = published / "victim" / "victim.ipynb"
    assert copy.is_file(), sorted(str(p) for p in published.rglob("*"))
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    server_pid = backend_process(hub)[0]
    victim_kernels = wait_for(lambda: kernels_of("victim"), timeout=60, what="the victim's kernels")

    setup = (
        f"PAYLOAD = {PAYLOAD!r}\nEVIDENCE = {str(evidence)!r}\nSERVER_HOME = {str(server_home)!r}\n"
        f"PUBLISHED = {str(published)!r}\nSERVER_PID = {server_pid}\nVICTIM_KERNELS = {victim_kernels!r}\n"
        f"VICTIM_COPIES = {{'now': {str(copy)!r}, 'flat': {str(published / 'victim.ipynb')!r}}}\n"
    )
    publish(hub, alice, "hostile", setup + HOSTILE, "Hostile")
    found = printed(live_page(hub, carol, "hostile").text, "HOSTILE")

    # it found nothing of the other dashboard, and changed nothing
    for layout in ("now", "flat"):
        for action in ("read", "rewrite", "remove"):
            assert found[f"{action} {layout}"] in ("FileNotFoundError", "PermissionError", "OSError"), (
                action,
                layout,
                found[f"{action} {layout}"],
            )
    assert found["list published"] == ["hostile"], found["list published"]  # its own copy alone
    assert found["write own copy"] in ("OSError", "PermissionError"), found["write own copy"]  # read-only
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    assert api(hub, alice, "GET", "dashboards/victim").status_code == 200
    # nothing it planted is where anything else would import it: the server's home holds nothing new
    assert not (server_home / "tarfile.py").exists()
    assert not list(server_home.rglob("*planted*")) and not list(server_home.rglob("tarfile.py"))
    assert not [p for p in Path("/tmp").glob("tarfile.py")] and not Path("/dev/shm/tarfile.py").exists()
    # it saw itself alone, and signalled nobody: the server and the victim's kernels live on
    assert len(found["visible processes"]) == 1 and "ipykernel_launcher" in found["visible processes"][0], found
    for what in ["server", *(f"kernel {p}" for p in victim_kernels)]:
        assert found[f"see {what}"] in ("ProcessLookupError", "PermissionError"), (what, found[f"see {what}"])
        assert found[f"stop {what}"] in ("ProcessLookupError", "PermissionError"), (what, found[f"stop {what}"])
    os.kill(server_pid, 0)
    for pid in victim_kernels:
        os.kill(pid, 0)

    # the victim, opened afterwards (a fresh kernel), and a dashboard published afterwards: their own
    # content, and nothing planted ran in them
    later_victim = printed(live_page(hub, requests_session(hub), "victim").text, "SEEN")
    publish(hub, alice, "later", f"MARKER = 'later'\n{VICTIM}", "Later")
    later = printed(live_page(hub, carol, "later").text, "SEEN")
    for seen, marker in ((later_victim, "victim-original"), (later, "later")):
        assert seen["marker"] == marker
        assert not seen["planted ran"], seen
        assert seen["tarfile from"] is None or seen["tarfile from"].startswith(("/usr", str(Path(os.__file__).parent)))
        assert seen["planted files"] == [], seen["planted files"]  # a fresh home, /tmp and /dev/shm
    assert not list(evidence.iterdir()), sorted(p.name for p in evidence.iterdir())


def requests_session(hub):
    """Another viewer's fresh login (the page then gets a kernel of its own)."""
    return hub.login("carol")[0]


def server_pids(hub) -> list[int]:
    """The dashboards server processes of this hub (its port is in their command's environment)."""
    pids = []
    for line in subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout.splitlines():
        if "opshub.dashboards_backend" in line and "bwrap" not in line:
            pid = int(line.split()[0])
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub.port + 1}/".encode() in env:
                pids.append(pid)
    return pids


def wait_for_new_server(hub, old_pid: int, started: float) -> tuple[float, float]:
    """Seconds from `started` until a new dashboards server answers through the proxy, and until a
    live page is served again."""

    def answers():
        if not [pid for pid in server_pids(hub) if pid != old_pid]:
            return False
        r = requests.get(f"{hub.url}{DASHBOARDS_SERVER}opshub-backend/pools/", allow_redirects=False, timeout=5)
        return r.status_code == 403 and "only answers the opshub service" in r.text  # the server itself

    wait_for(answers, timeout=60, interval=0.2, what="a new dashboards server")
    back = time.monotonic() - started
    session = hub.login("bob")[0]

    def served():
        r = session.get(f"{hub.url}{PREFIX}dashboards/victim/", timeout=60)
        return r.status_code == 200 and '"kernelId"' in r.text and "victim-original" in r.text

    wait_for(served, timeout=60, interval=0.2, what="the live page again")
    return back, time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_watchdog_brings_a_killed_dashboards_server_back_within_10_s(hub, carol, evidence, victim, signum):
    live_page(hub, carol, "victim")
    pid = backend_process(hub)[0]
    started = time.monotonic()
    os.kill(pid, signum)
    back, page = wait_for_new_server(hub, pid, started)
    print(
        f"{signal.Signals(signum).name}: the dashboards server answered again after {back:.1f}s, a page after {page:.1f}s"
    )
    assert back <= WATCHDOG_PROMISE, f"the dashboards server came back after {back:.1f}s"
    assert page <= WATCHDOG_PROMISE + 10, f"a live page was served again after {page:.1f}s"
    # the restarted server imported nothing a dashboard planted (it starts with python -I, its home
    # untouched by kernels)
    assert not list(evidence.iterdir()), sorted(p.name for p in evidence.iterdir())


def time_service(hub, token) -> float:
    started = time.monotonic()
    r = requests.get(f"{hub.url}{PREFIX}api/dashboards", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200
    return time.monotonic() - started


def oversized_frame_start(length: int) -> bytes:
    """The header of a binary frame that announces `length` bytes (a client's frame: masked), and
    a few of them. (Sending more after the server closed would have it answer with a reset, which
    drops its close frame on the way.)"""
    header = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", length) + b"\x00\x00\x00\x00"  # mask 0: clear text
    return header + b"\x00" * 16


def send_while_timing(hub, token, ws, frame: bytes, raw: bool = False) -> tuple[int | None, str, float]:
    """Send `frame` (`raw`: bytes as they are, a frame of our own making); meanwhile time requests
    to the service. The close code and reason, and the slowest request."""
    slowest = [0.0]
    done = threading.Event()

    def probe():
        while not done.is_set():
            slowest[0] = max(slowest[0], time_service(hub, token))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        if raw:
            ws.sock.sendall(frame)
        else:
            ws.send_binary(frame)
        code, reason = None, ""
        ws.settimeout(30)
        try:
            while True:
                opcode, data = ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else None
                    reason = data[2:].decode(errors="replace")
                    break
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            pass
        time.sleep(0.5)  # the service keeps answering after it, too
    finally:
        done.set()
        prober.join()
    return code, reason, slowest[0]


def test_bad_frames_are_refused_while_the_service_answers(hub, tokens, carol, victim):
    bob = tokens["bob"]
    html = live_page(hub, carol, "victim").text

    # 12 bytes claiming 40,000,000 buffers (it blocked the service for 5.5 s)
    ws = kernel_socket(hub, carol, kernel_id(html))
    code, reason, slowest = send_while_timing(hub, bob, ws, struct.pack(">III", 40_000_000, 8, 8))
    print(f"40,000,000 buffers: closed {code} {reason!r}; slowest service answer meanwhile {slowest * 1000:.0f} ms")
    assert code == 1008 and "40000000 parts" in reason, (code, reason)
    assert slowest < 1.0, slowest

    # frames over the 8 MiB limit: closed unread, from their header (1009: message too big)
    for length in (9 * 1024 * 1024, 2**40):
        ws = kernel_socket(hub, carol, kernel_id(html))
        code, reason, slowest = send_while_timing(hub, bob, ws, oversized_frame_start(length), raw=True)
        print(f"a {length}-byte frame: closed {code} {reason!r}; slowest service answer {slowest * 1000:.0f} ms")
        assert code == 1009, (code, reason)
        assert slowest < 1.0, slowest

    # positive control: a well-formed widget message on the same kind of socket is answered
    ws = kernel_socket(hub, carol, kernel_id(live_page(hub, carol, "victim").text))
    try:
        ws.send(message("comm_info_request", {}))
        receive_until(ws, lambda m: m["msg_type"] == "comm_info_reply")
    finally:
        ws.close()


def test_dashboards_kernels_run_in_namespaces_of_their_own_on_unix_sockets(hub, carol, victim):
    """What the attacks above rest on: each kernel in a process namespace of its own, its channels on
    Unix sockets in a folder only it sees (no TCP port another dashboard's code could subscribe to).
    ipykernel's one TCP port, its IOPub pipe for forked subprocesses, only receives, and only messages
    carrying a random key of the kernel's."""
    live_page(hub, carol, "victim")
    server = backend_process(hub)[0]
    server_ns = os.readlink(f"/proc/{server}/ns/pid")
    kernels = kernels_of("victim")
    assert kernels
    for pid in kernels:
        assert os.readlink(f"/proc/{pid}/ns/pid") != server_ns
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        connection = json.loads(Path(argv[argv.index(b"-f") + 1].decode()).read_text())
        assert connection["transport"] == "ipc", connection
