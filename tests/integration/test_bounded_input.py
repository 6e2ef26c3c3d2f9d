"""Bounded input everywhere (issue 23, item 6; invariants 10 and 14 of the threat model): JSON nested
without end, bodies over the limit, malformed URL escapes and people's named servers, each sent through
the hub's proxy with a real token the way a person would, each a clear 4xx naming the problem, never a
500 or the proxy's 503, and the service answering throughout."""

from __future__ import annotations

import http.client
import json

import pytest
import requests
from nbformat.v4 import new_code_cell, new_notebook, new_output

from tests.livehub import Hub, wait_for

PREFIX = "/services/opshub/"
RUNBOOK = "host-health-check.ipynb"
MAX_DEPTH = 64  # handlers/base.py's MAX_JSON_DEPTH
MAX_BODY = 100 * 1024 * 1024  # handlers/base.py's MAX_BODY_BYTES (the embedded default's output cap is far below half)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    the_hub = Hub(tmp_path_factory.mktemp("bounded"))
    the_hub.start()
    yield the_hub
    the_hub.stop()


@pytest.fixture(scope="module")
def tokens(hub):
    return hub.tokens(users=("alice", "bob"))


def api(hub, token, method, path, headers=None, timeout=60, **kwargs) -> requests.Response:
    """A call to the service's API through the proxy, as the token's owner (hub.service_api, with headers)."""
    headers = {"Authorization": f"token {token}", **(headers or {})}
    return requests.request(method, f"{hub.url}{PREFIX}api/{path}", headers=headers, timeout=timeout, **kwargs)


def still_answering(hub, tokens) -> None:
    answer = api(hub, tokens["bob"], "GET", "runs", params={"limit": 1})
    assert answer.status_code == 200, answer.text


def nested(depth: int) -> list:
    """`depth` arrays, one inside the other (depth 1: [])."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_text(depth: int) -> str:
    return "[" * depth + "]" * depth  # what json.dumps of nested(depth) gives, without its recursion


def a_run(hub, tokens) -> str:
    started = api(hub, tokens["bob"], "POST", "runs", json={"runbook": RUNBOOK})
    assert started.status_code == 201, started.text
    return started.json()["id"]


# JSON nesting


@pytest.mark.parametrize("depth", [100_000, MAX_DEPTH + 1])
@pytest.mark.parametrize("where", ["requests", "runs", "runs parameters", "heartbeat", "finish", "dashboards"])
def test_json_nested_deeper_than_the_limit_is_a_400_naming_it(hub, tokens, where, depth):
    run_id = a_run(hub, tokens) if where in ("heartbeat", "finish") else None
    deep = nested_text(depth)
    user, path, body = {
        "requests": ("bob", "requests", f'{{"runbook": "{RUNBOOK}", "parameters": {{"x": {deep}}}}}'),
        "runs": ("bob", "runs", f'{{"runbook": "{RUNBOOK}", "x": {deep}}}'),
        "runs parameters": ("bob", "runs", f'{{"runbook": "{RUNBOOK}", "parameters": {{"x": {deep}}}}}'),
        # the notebook as JSON text inside the body: parsed under the same bound
        "heartbeat": ("bob", f"runs/{run_id}/heartbeat", json.dumps({"output_notebook": deep})),
        "finish": ("bob", f"runs/{run_id}/finish", json.dumps({"status": "succeeded", "output_notebook": deep})),
        "dashboards": ("alice", "dashboards", f'{{"name": "deep", "runbook": "{RUNBOOK}", "groups": {deep}}}'),
    }[where]
    answer = api(hub, tokens[user], "POST", path, data=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, (where, depth, answer.status_code, answer.text[:300])
    assert f"more than {MAX_DEPTH} levels deep" in answer.json()["message"], answer.text
    if run_id:
        assert api(hub, tokens["bob"], "GET", f"runs/{run_id}").json()["status"] == "running"
    still_answering(hub, tokens)


def test_json_text_nested_without_end_inside_any_field_is_a_400(hub, tokens):
    """A notebook sent as JSON text to a route that parses it on its own (publishing a dashboard): what
    the body's bound cannot see, the service's handlers answer 400 too (a RecursionError is never a 500)."""
    body = {"name": "deep-text", "runbook": RUNBOOK, "notebook": nested_text(100_000)}
    answer = api(hub, tokens["alice"], "POST", "dashboards", json=body)
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert f"more than {MAX_DEPTH} levels deep" in answer.json()["message"], answer.text
    assert api(hub, tokens["alice"], "GET", "dashboards/deep-text").status_code == 404
    still_answering(hub, tokens)


def test_json_nested_up_to_the_limit_and_a_real_notebook_are_accepted(hub, tokens):
    """The positive control: the limit refuses nothing a run record or a notebook needs."""
    started = api(hub, tokens["bob"], "POST", "runs", json={"runbook": RUNBOOK, "parameters": {"x": nested(62)}})
    assert started.status_code == 201, started.text  # the body: {"parameters": {"x": 62 levels}} = 64
    # a figure's spec nests deep in an output (notebook, cells, cell, outputs, output, data, spec...)
    figure = {"data": [{"marker": {"colorbar": {"title": {"font": {"family": ["sans"]}}}}}], "layout": {}}
    output = new_output("display_data", data={"application/vnd.plotly.v1+json": figure, "text/plain": "fig"})
    notebook = new_notebook(cells=[new_code_cell("fig", outputs=[output])])
    finished = api(
        hub, tokens["bob"], "POST", f"runs/{started.json()['id']}/finish",
        json={"status": "succeeded", "output_notebook": notebook},
    )  # fmt: skip
    assert finished.status_code == 200, finished.text
    assert api(hub, tokens["bob"], "GET", f"runs/{started.json()['id']}").json()["output_notebook"] == notebook


# Body size


def test_a_body_over_the_limit_is_a_413_naming_it(hub, tokens):
    run_id = a_run(hub, tokens)
    big = b"x" * (110 * 1024 * 1024)
    for method, path in (("POST", "runs"), ("POST", f"runs/{run_id}/finish"), ("POST", "requests")):
        answer = api(hub, tokens["bob"], method, path, data=big, headers={"Content-Type": "application/json"})
        assert answer.status_code == 413, (path, answer.status_code, answer.text[:300])
        message = answer.json()["message"]
        assert f"{len(big):,} bytes" in message and f"at most {MAX_BODY:,} bytes (100 MiB)" in message, message
        still_answering(hub, tokens)
    assert api(hub, tokens["bob"], "GET", f"runs/{run_id}").json()["status"] == "running"

    # sent in chunks, with no Content-Length: cut off at the limit, the same answer
    def chunks():
        for _ in range(110):
            yield b"y" * (1024 * 1024)

    answer = api(hub, tokens["bob"], "POST", f"runs/{run_id}/heartbeat", data=chunks())
    assert answer.status_code == 413, (answer.status_code, answer.text[:300])
    assert f"more than {MAX_BODY:,} bytes" in answer.json()["message"]
    # a page's form, anonymous: the same limit, as a page
    page = requests.post(f"{hub.url}{PREFIX}runs/{run_id}/cancel", data=big, timeout=60)
    assert page.status_code == 413 and "at most 104,857,600 bytes" in page.text, page.status_code
    still_answering(hub, tokens)

    # the positive control: a body just under the limit reaches the handler (and its notebook is capped)
    text = "z" * (MAX_BODY - 10_000)
    notebook = new_notebook(cells=[new_code_cell("print()", outputs=[new_output("stream", name="stdout", text=text)])])
    body = json.dumps({"status": "succeeded", "output_notebook": notebook}).encode()
    assert len(body) <= MAX_BODY
    finished = api(hub, tokens["bob"], "POST", f"runs/{run_id}/finish", data=body)
    assert finished.status_code == 200, finished.text[:300]
    assert finished.json()["output_truncated"] is True


# Malformed URL escapes


def raw_request(hub, method: str, path: str, headers: dict | None = None) -> tuple[int, str]:
    """A request with the path exactly as given (requests would re-escape a lone %)."""
    host, port = hub.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


@pytest.mark.parametrize(
    "path",
    [
        f"{PREFIX}%FF",
        f"{PREFIX}%",
        f"{PREFIX}api/runs/%FF",
        f"{PREFIX}api/runs/%E0%A4%A",
        f"{PREFIX}runs/%C3%28/notebook",
        f"{PREFIX}dashboards/%FF/",
        "/hub/%FF",
        "/user/bob/%",
    ],
)
def test_a_malformed_url_escape_is_a_400_naming_it(hub, tokens, path):
    status, text = raw_request(hub, "GET", path, {"Authorization": f"token {tokens['bob']}"})
    assert status == 400, (path, status, text[:300])
    assert "malformed percent-escape" in text, text[:300]
    socket = {
        "Authorization": f"token {tokens['bob']}",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    status, text = raw_request(hub, "GET", path, socket)
    assert status == 400 and "malformed percent-escape" in text, (path, status, text[:300])
    still_answering(hub, tokens)
    # the same paths, well escaped, still reach the service (a 404, not the proxy's 400)
    status, _ = raw_request(hub, "GET", f"{PREFIX}api/runs/%25FF", {"Authorization": f"token {tokens['bob']}"})
    assert status == 404


# Named servers are the runner's


def test_people_get_no_named_server_and_the_runner_still_does(hub, tokens):
    hub_api = f"{hub.url}/hub/api"
    for user, method in (("bob", "POST"), ("bob", "PUT"), ("alice", "POST")):  # his own token; an admin's
        headers = {"Authorization": f"token {tokens[user]}"}
        answer = requests.request(method, f"{hub_api}/users/bob/servers/second", headers=headers, timeout=30)
        assert answer.status_code == 403, (user, method, answer.status_code, answer.text[:300])
        assert "bob cannot have named servers" in answer.json()["message"], answer.text
    mine = requests.post(f"{hub_api}/users/alice/servers/mine", headers={"Authorization": f"token {tokens['alice']}"})
    assert mine.status_code == 403 and "alice cannot have named servers" in mine.json()["message"], mine.text
    # the spawn page, from bob's browser session
    session, _ = hub.login("bob")
    page = session.get(f"{hub.url}/hub/spawn/bob/second", timeout=30)
    assert page.status_code == 403 and "cannot have named servers" in page.text, page.status_code
    bob = requests.get(f"{hub_api}/users/bob", headers={"Authorization": f"token {tokens['alice']}"}, timeout=30)
    assert set(bob.json()["servers"]) <= {""}, bob.json()["servers"]  # nothing recorded, nothing started

    # the runner's named servers start as before: a requested run runs to its end
    requested = api(hub, tokens["bob"], "POST", "requests", json={"runbook": RUNBOOK})
    assert requested.status_code == 201, requested.text
    run_id = requested.json()["id"]

    def ended():
        run = api(hub, tokens["bob"], "GET", f"runs/{run_id}").json()
        return run["ended_at"] and run

    run = wait_for(ended, timeout=240, interval=1, what=f"requested run {run_id} to end")
    assert run["status"] == "succeeded", (run["status"], run["error_summary"])
