"""A live opshub for integration tests: the real `opshub hub` command, JupyterHub,
configurable-http-proxy, spawned JupyterLab servers and a real git remote, all on loopback.

The hub runs the embedded default's settings, with its state, its runbooks working tree
(mirrored into the hub's git remote, as `make run` does with shared-notebooks/) and its port
moved into the test's temporary folder.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests
import yaml
from opshub.accounts import account_name
from opshub.contract import SYSTEM_ACCOUNTS
from opshub.settings import EMBEDDED_SETTINGS

from tests.helpers import ARTIFACTS, SHARED_NOTEBOOKS, VENV_BIN, ensure_debian_package, make_work_tree, open_folder

DEMO_PASSWORD = "integration-demo-pw"


def free_port_block(count: int = 4) -> int:
    """A port p such that p .. p+count-1 are all free (public, hub API, proxy API, opshub service).

    Chosen below Linux's ephemeral range (32768-60999), where the OS hands out ports to whatever
    binds port 0 (Voila backends, kernels, outgoing connections): a block checked free there could
    be taken a moment later, before the hub binds it.
    """
    for _ in range(200):
        base = random.randrange(20000, 32768 - count)
        try:
            sockets = []
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no block of free ports found")


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def start_server(argv: list[str], log_name: str, ready_url: str, timeout: float = 60) -> subprocess.Popen:
    """Start a server on loopback, its output in test-artifacts/<log_name>, and wait until
    `ready_url` answers 2xx."""
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / log_name, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}; see {ARTIFACTS / log_name}")
        try:
            return requests.get(ready_url, timeout=2).ok
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy dying
            return False

    wait_for(ready, timeout=timeout, what=f"{argv[0]} at {ready_url}")
    return proc


class Hub:
    """One opshub, started and stopped like a person would: `opshub hub`, then Ctrl-C (SIGINT)."""

    def __init__(self, root: Path, configure=None, env: dict[str, str] | None = None, run_as: str | None = None):
        """`configure(settings)` may change the embedded default's settings dict; `env` is
        added to the hub's environment; `run_as` starts it as that system account instead of
        the tests' own (which owns `root` then)."""
        self.root = root
        self.run_as = run_as
        self.env = env or {}
        self.state = root / "state"
        # What people's accounts must reach (as root, each person's server runs as their own
        # account): outside pytest's root-only temporary folder, removed when the tests end.
        self.shared = open_folder("opshub-hub-")
        atexit.register(shutil.rmtree, self.shared, True)
        self.upstream = make_work_tree(root / "upstream", copy_from=SHARED_NOTEBOOKS)
        self.port = free_port_block()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = yaml.safe_load(EMBEDDED_SETTINGS.read_text())
        settings["hub"].update(state_dir=str(self.state), port=self.port)
        settings["runbooks"].update(
            repository=str(self.shared / "runbooks.git"), mirror_from=str(self.upstream), mirror_interval=1
        )
        local = settings.setdefault("spawner", {}).setdefault("local", {})
        local["homes_dir"] = str(self.shared / "homes")
        # system accounts of its own: hubs of a test session run side by side (a session hub, module
        # hubs), and a deployment refuses to start while another one's hub uses the same accounts
        local["account_prefix"] = f"t{self.port}-"
        # the embedded default's practice-fleet key is this machine's (make fleet): a test hub's runner
        # account may not read it, so test hubs go without it unless they set it (tests/fleet/conftest.py)
        settings["runner"]["credentials"].pop("SSH_PRIVATE_KEY", None)
        if configure:
            configure(settings)
        self.settings_file = root / "opshub.yaml"
        self.settings_file.write_text(yaml.safe_dump(settings))
        self.log_file = ARTIFACTS / f"hub-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def repository(self) -> Path:
        return self.shared / "runbooks.git"

    @property
    def per_person_accounts(self) -> bool:
        return os.geteuid() == 0 and not self.run_as  # `auto`, as in the embedded default

    def account(self, user: str) -> str:
        """The OS account of a hub user's servers (a person's, or a system account's such as opshub-runner)."""
        if not self.per_person_accounts:
            return pwd.getpwuid(os.geteuid()).pw_name if not self.run_as else self.run_as
        settings = yaml.safe_load(self.settings_file.read_text())
        return account_name(user, SYSTEM_ACCOUNTS, settings["spawner"]["local"].get("account_prefix", ""))

    def system_home(self, account: str) -> Path:
        """The home of a system account's server (the dashboards server, the runner)."""
        return self.shared / "homes" / (self.account(account) if self.per_person_accounts else account)

    def home(self, user: str) -> Path:
        if self.per_person_accounts:
            return self.shared / "homes" / self.account(user)
        return self.shared / "homes" / user

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        ensure_debian_package("bubblewrap", "/usr/bin/bwrap")  # the runner's sandbox of every unattended run
        env = {**os.environ, "OPSHUB_DEMO_PASSWORD": DEMO_PASSWORD, **self.env}
        env.pop("OPSHUB_SETTINGS", None)
        log = open(self.log_file, "a")  # noqa: SIM115 (the hub writes to it until stopped)
        if self.run_as:
            account = pwd.getpwnam(self.run_as)
            env.update(HOME=account.pw_dir, USER=self.run_as)
            for folder in (self.root, self.shared):
                subprocess.run(["chown", "-R", f"{self.run_as}:", str(folder)], check=True)
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "opshub"), "hub", "--settings", str(self.settings_file)],
            cwd=self.root,
            env=env,
            user=self.run_as,
            group=pwd.getpwnam(self.run_as).pw_gid if self.run_as else None,
            extra_groups=[] if self.run_as else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a failed test can end all of it
        )
        log.close()
        try:
            wait_for(self._is_up, timeout=60, what=f"the hub at {self.url} (log: {self.log_file})")
        except BaseException:
            self._kill_after_failed_start()
            raise

    def _kill_after_failed_start(self) -> None:
        """End the hub's process group, and its proxy, which JupyterHub starts in a session of its own."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        pid_file = self.state / "proxy.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)

    def _is_up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the hub exited with {self.proc.returncode}; see {self.log_file}")
        try:
            return requests.get(f"{self.url}/hub/api", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy dying
            return False

    def stop(self) -> None:
        """Ctrl-C, as in `make run`; the hub stops the proxy, services and servers it started."""
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError("the hub did not stop within 60 s of SIGINT") from None

    def kill(self, signum: int) -> None:
        """Signal the hub's own process alone (SIGTERM: a restart, an upgrade; SIGKILL: a crash) and wait
        for it to end; what it leaves running is what a supervisor's restart would find."""
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"the hub did not stop within 60 s of {signal.Signals(signum).name}") from None

    def processes_of_this_hub(self) -> list[str]:
        """Command lines of every process still using this hub's state folder or ports."""
        out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        marks = [str(self.state), f"--port {self.port}", f":{self.port + 1}"]
        return [line for line in out.splitlines() if any(m in line for m in marks) and "ps -eww" not in line]

    # -- what a person does in a browser, over HTTP ------------------------------------------

    def login(self, user: str, password: str = DEMO_PASSWORD) -> tuple[requests.Session, requests.Response]:
        """Log in through the login form (with its XSRF token), following redirects."""
        session = requests.Session()
        form = session.get(f"{self.url}/hub/login")
        assert form.status_code == 200
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text).group(1)
        response = session.post(
            f"{self.url}/hub/login", data={"username": user, "password": password, "_xsrf": xsrf}, timeout=60
        )
        return session, response

    def open_lab(self, session: requests.Session, user: str, timeout: float = 90) -> requests.Response:
        """Start the user's server if needed, as the home page's button does, and wait until
        JupyterLab loads (spawn, then the server's OAuth with the hub)."""
        session.get(f"{self.url}/hub/spawn/{user}", timeout=30)

        def lab():
            r = session.get(f"{self.url}/user/{user}/lab", timeout=30)
            return r if r.status_code == 200 and r.url.endswith(f"/user/{user}/lab") else None

        return wait_for(lab, timeout=timeout, interval=1, what=f"{user}'s JupyterLab")

    def tokens(self, users=("alice", "bob", "carol"), admin="alice") -> dict[str, str]:
        """A JupyterHub API token per user, made by an admin as any admin could."""
        session, _ = self.login(admin)
        xsrf = {"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")}
        made = {}
        for user in users:
            response = session.post(
                f"{self.url}/hub/api/users/{user}/tokens", json={"note": "opshub tests"}, headers=xsrf, timeout=30
            )
            assert response.status_code == 201, response.text
            made[user] = response.json()["token"]
        return made

    def service_api(self, token: str | None, method: str, path: str, **kwargs) -> requests.Response:
        """A call to the opshub service's API through the proxy, as the token's owner."""
        headers = {"Authorization": f"token {token}"} if token else {}
        url = f"{self.url}/services/opshub/api/{path}"
        return requests.request(method, url, headers=headers, timeout=30, **kwargs)

    def server_environment(self, user: str) -> dict[str, str]:
        """The environment of the user's running single-user server (token, service URL, home)."""
        out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            if "jupyterhub.singleuser" not in args:
                continue
            try:
                raw = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
            if env.get("JUPYTERHUB_USER") == user and env.get("HOME") == str(self.home(user)):
                return env
        raise AssertionError(f"{user}'s server process was not found")

    def server_xsrf(self, session: requests.Session, user: str) -> dict[str, str]:
        return {"X-XSRFToken": session.cookies.get("_xsrf", path=f"/user/{user}/")}

    def contents(self, session: requests.Session, user: str, path: str) -> requests.Response:
        return session.get(f"{self.url}/user/{user}/api/contents/{path}", timeout=30)
