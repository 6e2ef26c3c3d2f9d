"""On Kubernetes, z2jh's chart starts configurable-http-proxy from its own image, so opshub cannot put a
guard before its command as the embedded and Docker modes do (hub/opshub/configure/hub.py). The chart's
values give the proxy pod NODE_OPTIONS that load the same patch first. There is no cluster here: this
starts the real proxy (the project's node_modules, configurable-http-proxy 5) with the NODE_OPTIONS
of helm/opshub/values.yaml, and sends it what z2jh's proxy answered with a 500."""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import requests
import yaml
from opshub.configure.hub import PROXY_NODE_OPTIONS

from tests.livehub import free_port_block, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"
MALFORMED = ["/services/opshub/%FF", "/hub/%", "/user/bob/%C3%28", "/%E0%A4%A"]


def chart_node_options() -> str:
    values = yaml.safe_load((ROOT / "helm" / "opshub" / "values.yaml").read_text())
    return values["jupyterhub"]["proxy"]["chp"]["extraEnv"]["NODE_OPTIONS"]


def test_the_charts_copy_of_the_proxy_patch_is_the_hubs():
    assert chart_node_options() == PROXY_NODE_OPTIONS, (
        "helm/opshub/values.yaml's jupyterhub.proxy.chp.extraEnv.NODE_OPTIONS is stale: "
        "set it to opshub.configure.hub.PROXY_NODE_OPTIONS"
    )


@contextlib.contextmanager
def proxy(environment: dict[str, str]):
    port = free_port_block(3)
    api_port, target_port = port + 1, port + 2
    command = [str(PROXY), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1"]
    command += ["--api-port", str(api_port), "--default-target", f"http://127.0.0.1:{target_port}"]
    process = subprocess.Popen(
        command, env={**os.environ, **environment}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            if process.poll() is not None:
                raise RuntimeError(f"the proxy exited: {process.stdout.read().decode()}")
            with contextlib.suppress(requests.ConnectionError):
                return requests.get(f"{url}/hub/", timeout=2).status_code
            return None

        wait_for(up, timeout=30, what="configurable-http-proxy")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def get_as_written(url: str, path: str) -> tuple[int, str]:
    """GET `path` exactly as written (requests would re-quote a lone %)."""
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


@pytest.mark.parametrize("path", MALFORMED)
def test_the_proxy_with_the_charts_node_options_answers_a_malformed_escape_400(path):
    with proxy({"NODE_OPTIONS": chart_node_options()}) as url:
        status, text = get_as_written(url, path)
        assert status == 400, text
        assert "malformed percent-escape" in text
        assert get_as_written(url, "/hub/api")[0] == 503  # routes as before: no hub here


def test_without_them_the_same_proxy_answers_500():
    """The red case: what z2jh's proxy pod does without opshub's values."""
    with proxy({"NODE_OPTIONS": ""}) as url:
        assert [get_as_written(url, path)[0] for path in MALFORMED] == [500] * len(MALFORMED)
