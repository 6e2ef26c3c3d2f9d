"""Live dashboards never start before their files are in place: a dashboards server that has a
published copy but not yet the repository's files starts no kernel for it (no preheat, and a page
asked for gets its 503 "waiting"), then serves it once the files are there.

The server here is a second one started by the test, as the hub's spawner starts it (the session
hub's API, an admin's token: the service's role), so the hub's own server, which has its files from
the start, is left alone."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile

import nbformat
import pytest
import requests
from opshub.dashboards_backend import NOTEBOOKS_PATH, POOLS_PATH, RUNBOOKS_PATH, SECRET_HEADER, SESSION_PATH, WAITING

from tests.livehub import wait_for

PREFIX = "/user/opshub-dashboards/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inventory_reader() -> bytes:
    code = "import os, pathlib\nprint((pathlib.Path(os.environ['OPSHUB_RUNBOOKS_DIR']) / 'inventory.txt').read_text())"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nbformat.writes(nb).encode()


def runbooks_tar(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def server(hub, tmp_path):
    """A dashboards server of our own, for the session hub's API; yields (base URL, headers)."""
    port = free_port()
    admin = hub.tokens(users=("alice",))["alice"]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}{PREFIX}",
        "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
        "JUPYTERHUB_USER": "opshub-dashboards",
        "JUPYTERHUB_API_URL": f"{hub.url}/hub/api",
        "JUPYTERHUB_API_TOKEN": admin,
        "OPSHUB_DASHBOARDS_BASE_URL": "/services/opshub/dashboards/-/",
        "OPSHUB_DASHBOARDS_POOL_SIZE": "1",
        "OPSHUB_SANDBOX": "none",  # what is tested is when kernels start, not their sandbox
    }
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "opshub.dashboards_backend"], env=env, cwd=tmp_path, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}{PREFIX}"
    try:

        def session():
            try:
                r = requests.post(base + SESSION_PATH, headers={"Authorization": f"token {admin}"}, timeout=5)
            except requests.ConnectionError:
                return None
            return r.json()["secret"] if r.status_code == 200 else None

        secret = wait_for(session, timeout=120, interval=0.5, what="the test's dashboards server")
        yield base, {SECRET_HEADER: secret}
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_no_kernel_starts_before_the_runbooks_files_are_there(server):
    base, headers = server
    render = base + "voila/render/inventory/inventory.ipynb"
    put = requests.put(base + NOTEBOOKS_PATH + "inventory.ipynb", data=inventory_reader(), headers=headers, timeout=30)
    assert put.status_code == 204, put.text
    preheat = requests.post(base + POOLS_PATH + "inventory.ipynb", headers=headers, timeout=30)
    assert preheat.status_code == 200 and preheat.json()["waiting"] == WAITING
    assert requests.get(base + POOLS_PATH, headers=headers, timeout=30).json()["pools"] == {}  # no kernel
    page = requests.get(render, headers=headers, timeout=30)
    assert page.status_code == 503 and page.text == WAITING
    kernels = requests.get(base + "api/kernels", headers=headers, timeout=30)
    assert kernels.status_code in (403, 404) or kernels.json() == []

    files = runbooks_tar({"inventory.txt": "INVENTORY-IS-HERE web01"})
    assert requests.put(base + RUNBOOKS_PATH, data=files, headers=headers, timeout=60).status_code == 204
    page = requests.get(render, headers=headers, timeout=180)
    assert page.status_code == 200, page.text[:500]
    assert "INVENTORY-IS-HERE web01" in page.text and "There was an error" not in page.text
    preheat = requests.post(base + POOLS_PATH + "inventory.ipynb", headers=headers, timeout=30)
    assert preheat.status_code == 200 and "waiting" not in preheat.json()
