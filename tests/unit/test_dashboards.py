"""Dashboards without servers: names, the kernel message filter, publishing rules, the registry in a
real SQLite store, publishing from a real git repository, who sees what, the shipped dashboard, and
the Voila backend's kernel client."""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
import zmq
import zmq.asyncio
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.session import Session
from nbclient import NotebookClient
from opshub.configure.roles import load_roles
from opshub.configure.services import apply_services
from opshub.configure.spawner import SERVER_TOKEN_SCOPES
from opshub.contract import PUBLISH_SCOPE
from opshub.dashboards_backend.__main__ import RepollingChannel, RepollingKernelClient, backend_config
from opshub.dashboards_backend.kernels import SandboxedKernelManager
from opshub.runbooks.catalog import RunbookCatalog
from opshub.service.dashboards import Dashboards, PublishError, check_name, refuse_live_if_it_changes_systems
from opshub.service.handlers.base import UnreadableNotebook, notebook_html
from opshub.service.store import RunStore
from opshub.service.voila import ALLOWED_MESSAGE_TYPES, MAX_BUFFERS, BadFrame, message_type
from opshub.settings import load_settings
from traitlets.config import Config
from voila.app import Voila

from tests.helpers import SHARED_NOTEBOOKS, git, make_work_tree

DASHBOARD = SHARED_NOTEBOOKS / "dashboards" / "patching-status.ipynb"


def notebook(title="Board", changes_systems=False, dashboard=None, code="print(1)") -> dict:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["opshub"] = {"title": title, "description": "d", "changes_systems": changes_systems}
    if dashboard is not None:
        nb.metadata["opshub"]["dashboard"] = dashboard
    return json.loads(nbformat.writes(nb))


@pytest.mark.parametrize("name", ["a", "patching-status", "web-01", "x" * 64, "0day"])
def test_slugs_are_accepted(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-a", "a-", "A", "a/b", "../a", "..", "a%2Fb", "a.b", "a b", "a_b", "x" * 65, "é", None, 1, ["a"]]
    + ["abc\n", "abc\r\n", "\nabc", "abc\x00"],  # `$` of re.match would let the first one through
)
def test_everything_else_is_refused_naming_the_problem(name):
    with pytest.raises(PublishError, match="invalid dashboard name"):
        check_name(name)


def test_message_filter_reads_both_framings():
    msg = {"header": {"msg_type": "execute_request"}, "content": {"code": "1"}}
    assert message_type(json.dumps(msg)) == "execute_request"
    # Jupyter's legacy binary framing: count, offsets, then the JSON message and its buffers
    body, buffer = json.dumps({**msg, "header": {"msg_type": "comm_msg"}}).encode(), b"\x00\x01"
    offsets = [4 + 4 * 2, 4 + 4 * 2 + len(body)]
    framed = struct.pack(">III", 2, *offsets) + body + buffer
    assert message_type(framed) == "comm_msg"
    for garbage in ("", "not json", "[]", '{"header": 1}', '{"header": {"msg_type": 3}}', "[" * 100_000):
        assert message_type(garbage) is None
    assert "execute_request" not in ALLOWED_MESSAGE_TYPES and "comm_msg" in ALLOWED_MESSAGE_TYPES


def test_binary_frames_that_lie_about_their_parts_are_refused_before_anything_is_allocated():
    body = json.dumps({"header": {"msg_type": "comm_msg"}}).encode()
    lies = {
        "no table": b"\x00",
        "more parts than bytes": b"\x00\x00\x00\x05abc\x00",
        "40,000,000 buffers in 12 bytes": struct.pack(">III", 40_000_000, 8, 8),
        "4 billion buffers": struct.pack(">III", 2**32 - 1, 8, 8),
        "no part": struct.pack(">II", 0, 8),
        "too many buffers": struct.pack(">I", MAX_BUFFERS + 2) + b"\x00" * (4 * (MAX_BUFFERS + 2)) + body,
        "offset beyond the end": struct.pack(">III", 2, 12, 10_000) + body,
        "offsets backwards": struct.pack(">III", 2, 12 + len(body), 12) + body,
        "offset into the table": struct.pack(">II", 1, 0) + body,
    }
    for what, frame in lies.items():
        started = time.perf_counter()
        with pytest.raises(BadFrame):
            message_type(frame)
        assert time.perf_counter() - started < 0.01, what  # it was 5.5 s for 40,000,000
    # the most a frame may carry still passes
    offsets = [4 + 4 * (MAX_BUFFERS + 1) + i * 0 for i in range(MAX_BUFFERS + 1)]
    offsets[1:] = [offsets[0] + len(body)] * MAX_BUFFERS
    assert message_type(struct.pack(f">{MAX_BUFFERS + 2}I", MAX_BUFFERS + 1, *offsets) + body) == "comm_msg"


def test_live_is_refused_only_for_runbooks_that_change_systems():
    with pytest.raises(PublishError, match=r"changes_systems: true.*snapshot"):
        refuse_live_if_it_changes_systems(notebook(changes_systems=True), "runbook patch.ipynb")
    refuse_live_if_it_changes_systems(notebook(changes_systems=False), "x")
    refuse_live_if_it_changes_systems({"metadata": {}}, "x")


@pytest.fixture
def repo(tmp_path):
    files = {
        "patch.ipynb": json.dumps(notebook("Patch", changes_systems=True)),
        "status.ipynb": json.dumps(notebook("Status", dashboard={"mode": "live", "groups": ["managers"]})),
        "report.ipynb": json.dumps(notebook("Report", dashboard=True)),
        "inventory/stacks.yaml": "stacks: {}\n",
    }
    return make_work_tree(tmp_path / "runbooks", files=files)


@pytest.fixture
def dashboards(tmp_path, repo):
    store = RunStore(f"sqlite:///{tmp_path / 'history.sqlite'}")
    store.upgrade()
    catalog = RunbookCatalog(str(repo), "main", tmp_path / "cache.git")
    catalog.refresh()
    yield Dashboards(store, tmp_path / "dashboards", "/services/opshub/", catalog=catalog)
    store.close()


def test_publishing_live_and_snapshot(dashboards):
    live = dashboards.publish({"name": "board", "mode": "live", "notebook": notebook("Board")}, owner="alice")
    assert (live.owner, live.title, live.groups, live.source) == ("alice", "Board", [], "api")
    copy = dashboards.published / "board.ipynb"
    assert json.loads(copy.read_text())["metadata"]["opshub"]["title"] == "Board"
    snap = dashboards.publish({"name": "patching", "runbook": "patch.ipynb"}, owner="alice")
    assert snap.mode == "snapshot" and snap.notebook is None and not (dashboards.published / "patching.ipynb").exists()
    assert [d.name for d in dashboards.all()] == ["board", "patching"]
    # a copy of a repository runbook is taken from the branch, with its commit
    from_repo = dashboards.publish({"name": "report", "mode": "live", "runbook": "report.ipynb"}, owner="bob")
    assert from_repo.commit == dashboards.repository.commit() and from_repo.title == "Report"
    dashboards.unpublish("board", user="alice")
    assert not copy.exists() and dashboards.get("board") is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"name": "x", "mode": "live", "runbook": "patch.ipynb"}, "changes_systems: true"),
        ({"name": "x", "runbook": "missing.ipynb"}, "unknown runbook 'missing.ipynb'"),
        ({"name": "x", "mode": "snapshot"}, "give `runbook`"),
        ({"name": "x", "mode": "live"}, "needs the notebook"),
        ({"name": "x", "mode": "live", "notebook": {"cells": []}}, "not an nbformat v4 notebook"),
        (
            {"name": "x", "mode": "live", "notebook": {**notebook(), "cells": [{"cell_type": "shell"}]}},
            "not a valid notebook",
        ),
        ({"name": "x", "mode": "live", "notebook": "{"}, "not JSON"),
        ({"name": "x", "mode": "both", "runbook": "patch.ipynb"}, "mode must be one of live, snapshot"),
        ({"name": "x", "runbook": "patch.ipynb", "groups": "admins"}, "groups must be a list"),
        ({"name": "x", "runbook": "patch.ipynb", "groups": ["a/b"]}, "groups must be a list"),
        ({"name": "x", "runbook": "patch.py"}, "runbook must be the path of a notebook"),
        ({"name": "x", "runbook": "patch.ipynb", "owner": "carol"}, "unknown field(s) owner"),
        ({"name": "../x", "runbook": "patch.ipynb"}, "invalid dashboard name"),
    ],
)
def test_publications_are_refused_with_the_reason(dashboards, body, problem):
    with pytest.raises(PublishError) as refused:
        dashboards.publish(body, owner="alice")
    assert problem in str(refused.value)
    assert dashboards.all() == []


def test_who_sees_a_dashboard(dashboards):
    everyone = dashboards.publish({"name": "all", "runbook": "patch.ipynb"}, owner="alice")
    managers = dashboards.publish({"name": "mgmt", "runbook": "patch.ipynb", "groups": ["managers"]}, owner="alice")
    carol = {"kind": "user", "name": "carol", "groups": ["viewers"], "scopes": ["access:services!service=opshub"]}
    boss = {**carol, "name": "dana", "groups": ["managers"]}
    bob = {**carol, "name": "bob", "groups": ["operators"], "scopes": [f"{PUBLISH_SCOPE}!user=bob"]}
    alice = {**carol, "name": "alice", "groups": []}
    service = {"kind": "service", "name": "opshub", "scopes": []}
    assert dashboards.may_view(carol, everyone) and not dashboards.may_view(carol, managers)
    assert dashboards.may_view(boss, managers) and dashboards.may_view(alice, managers)  # a member, the owner
    assert dashboards.may_view(bob, managers)  # publishers see what they could publish over
    assert not dashboards.may_view(service, everyone) and not dashboards.may_view(None, everyone)


def test_only_the_owner_or_an_admin_republishes_or_unpublishes(dashboards):
    dashboards.publish({"name": "board", "runbook": "patch.ipynb", "title": "Alice's"}, owner="alice")
    for change in (
        lambda: dashboards.publish({"name": "board", "runbook": "report.ipynb"}, owner="dave"),
        lambda: dashboards.unpublish("board", user="dave"),
    ):
        with pytest.raises(PublishError, match="belongs to alice: only they or an admin") as refused:
            change()
        assert refused.value.status == 403
    assert (dashboards.get("board").title, dashboards.get("board").owner) == ("Alice's", "alice")
    # the owner republishes; an admin takes it over, then unpublishes it
    assert dashboards.publish({"name": "board", "runbook": "report.ipynb"}, owner="alice").runbook == "report.ipynb"
    assert dashboards.publish({"name": "board", "runbook": "patch.ipynb"}, owner="root", admin=True).owner == "root"
    dashboards.unpublish("board", user="erin", admin=True)
    assert dashboards.get("board") is None


def test_a_restricted_dashboard_hides_its_runbooks_runs_from_those_outside_its_groups(dashboards):
    dashboards.publish({"name": "open", "runbook": "report.ipynb"}, owner="alice")
    dashboards.publish({"name": "mgmt", "runbook": "patch.ipynb", "groups": ["managers"]}, owner="alice")
    dashboards.publish({"name": "patch-for-all", "runbook": "patch.ipynb"}, owner="alice")  # cannot undo it
    carol = {"kind": "user", "name": "carol", "groups": ["viewers"], "scopes": []}
    dana = {**carol, "name": "dana", "groups": ["managers"]}
    admin = {**carol, "name": "root", "admin": True}
    opshub_admin = {**carol, "name": "lead", "scopes": ["custom:opshub:runs:delete"]}
    assert dashboards.hidden_runbooks(carol) == {"patch.ipynb"}
    assert dashboards.hidden_runbooks(None) == {"patch.ipynb"}
    assert dashboards.hidden_runbooks(dana) == set()
    assert dashboards.hidden_runbooks(admin) == set() and dashboards.hidden_runbooks(opshub_admin) == set()
    # deleting runs for oneself only is no admin's scope
    assert dashboards.hidden_runbooks({**carol, "scopes": ["custom:opshub:runs:delete!user=carol"]}) == {"patch.ipynb"}


def test_default_groups_from_the_settings(tmp_path, dashboards):
    dashboards.settings["default_groups"] = ["ops"]
    assert dashboards.publish({"name": "d", "runbook": "patch.ipynb"}, owner="alice").groups == ["ops"]
    assert dashboards.publish({"name": "e", "runbook": "patch.ipynb", "groups": []}, owner="alice").groups == []


def test_the_repository_declares_dashboards_and_they_follow_the_branch(dashboards, repo):
    dashboards.publish({"name": "status", "runbook": "patch.ipynb"}, owner="alice")  # git's declaration wins
    changed = dashboards.sync_from_git()
    status, report = dashboards.get("status"), dashboards.get("report")
    assert (status.mode, status.groups, status.source, status.owner) == ("live", ["managers"], "git", "git")
    assert (report.mode, report.runbook) == ("snapshot", "report.ipynb")  # `true`: a snapshot named after the file
    assert changed == ["status.ipynb"] and (dashboards.published / "status.ipynb").exists()
    with tarfile.open(fileobj=io.BytesIO(dashboards.runbooks_archive)) as files:  # for the kernels
        assert "inventory/stacks.yaml" in files.getnames()
    assert dashboards.sync_from_git() == []  # nothing moved
    for change in (
        lambda: dashboards.unpublish("status", user="alice", admin=True),
        lambda: dashboards.publish({"name": "status", "runbook": "report.ipynb"}, owner="alice", admin=True),
    ):
        with pytest.raises(PublishError, match="belongs to the runbooks repository") as refused:
            change()
        assert refused.value.status == 403 and "status.ipynb" in str(refused.value)

    # the branch moves: a live declaration on a runbook that changes systems is refused, one is removed
    (repo / "patch.ipynb").write_text(json.dumps(notebook("Patch", True, dashboard={"name": "p", "mode": "live"})))
    (repo / "status.ipynb").write_text(json.dumps(notebook("Status v2", dashboard={"mode": "live"})))
    git("rm", "--quiet", "report.ipynb", cwd=repo)
    git("commit", "--quiet", "-am", "move", cwd=repo)
    dashboards.repository.catalog.refresh()
    dashboards.sync_from_git()
    assert dashboards.get("p") is None and dashboards.get("report") is None
    assert dashboards.get("status").title == "Status v2" and dashboards.get("status").groups == []
    assert dashboards.get("status").commit == git("rev-parse", "HEAD", cwd=repo)


def test_roles_scopes_and_service_arguments():
    settings = load_settings(None)
    roles = {role["name"]: role.get("scopes", []) for role in load_roles(settings)}
    assert f"{PUBLISH_SCOPE}!user" in roles["opshub-author"] and PUBLISH_SCOPE in roles["opshub-admin"]
    assert not [s for s in roles["opshub-viewer"] + roles["opshub-operator"] if PUBLISH_SCOPE in s]
    assert f"{PUBLISH_SCOPE}!user" in SERVER_TOKEN_SCOPES  # the hub grants it only to whoever holds it
    c = Config()

    class Runtime:
        python, metrics_token, database_password, alerts_token = "/usr/bin/python3", "t", "", "a"

    apply_services(c, settings, Runtime())
    service = c.JupyterHub.services[0]
    assert PUBLISH_SCOPE in c.JupyterHub.custom_scopes and PUBLISH_SCOPE in service["oauth_client_allowed_scopes"]
    args = service["command"]
    document = json.loads(args[args.index("--settings") + 1])
    assert document["service"]["dashboards_dir"] == str(settings.state_dir / "dashboards")
    assert document["dashboards"]["pool_size"] == 2


def test_the_shipped_dashboard_is_a_read_only_live_dashboard_that_runs_anywhere():
    nb = nbformat.read(DASHBOARD, as_version=4)
    meta = nb.metadata["opshub"]
    assert meta["changes_systems"] is False and meta["dashboard"] == {"name": "patching-status", "mode": "live"}
    source = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    for forbidden in ("subprocess", r"\bssh\b", 'method="POST"', r"os\.system", r"requests\.post"):
        assert not re.search(forbidden, source), forbidden  # (down_ssh_seconds is a column it reads)
    # outside a dashboard (no run history at hand) it still shows the inventory
    NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(DASHBOARD.parent)}}).execute()
    outputs = json.dumps([cell.get("outputs", []) for cell in nb.cells])
    assert "6 stacks in the inventory; 0 finished patching runs from no run history here" in outputs
    assert "Stack db" in json.dumps(nb.metadata["widgets"])  # the dropdown's first stack, in its output widget


def _lost_wakeup_then_reply(channel_class, wait_for: float):
    """A kernel client channel waits for a reply; the socket's wake-up is lost (its reader is gone
    from the event loop, as we saw in a loaded Voila backend); then the kernel answers. Returns the
    message the channel got within `wait_for` seconds, or raises TimeoutError."""

    async def scenario():
        context = zmq.asyncio.Context()
        kernel = context.socket(zmq.ROUTER)
        port = kernel.bind_to_random_port("tcp://127.0.0.1")
        client = context.socket(zmq.DEALER)
        client.setsockopt(zmq.IDENTITY, b"voila")
        client.connect(f"tcp://127.0.0.1:{port}")
        session = Session(key=b"secret")
        channel = channel_class(client, session)
        try:
            channel.send(session.msg("execute_request", {"code": "1"}))
            request = session.deserialize(session.feed_identities(await kernel.recv_multipart())[1])
            waiting = asyncio.ensure_future(channel.get_msg(timeout=60))
            await asyncio.sleep(0.2)  # the channel is polling now
            asyncio.get_running_loop().remove_reader(client.FD)  # the wake-up is lost
            session.send(kernel, "execute_reply", {"status": "ok"}, parent=request, ident=b"voila")
            return await asyncio.wait_for(waiting, wait_for)
        finally:
            client.close(linger=0)
            kernel.close(linger=0)
            context.term()

    # in a thread of its own: in the full suite Playwright keeps an event loop running in this one
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(lambda: asyncio.run(scenario())).result()


def test_the_dashboard_kernel_client_reads_a_reply_whose_wakeup_was_lost():
    reply = _lost_wakeup_then_reply(RepollingChannel, wait_for=10)
    assert reply["msg_type"] == "execute_reply"
    # the scenario is real: jupyter_client's own channel would wait out its whole timeout
    with pytest.raises(TimeoutError):
        _lost_wakeup_then_reply(AsyncZMQSocketChannel, wait_for=3)


def test_the_voila_backend_gives_its_executor_the_repolling_client(tmp_path):
    voila = Voila(config=backend_config(True, tmp_path, tmp_path, tmp_path))
    voila.initialize([str(tmp_path), "--no-browser", "--VoilaConfiguration.preheat_kernel=True"])
    voila.init_settings()  # makes the kernel manager, as OpshubVoila.start does
    kernels = voila.kernel_manager
    one_kernel = kernels.kernel_manager_factory(parent=kernels, log=kernels.log)
    assert isinstance(one_kernel.client(), RepollingKernelClient)
    assert isinstance(one_kernel, SandboxedKernelManager) and one_kernel.sealed and one_kernel.transport == "ipc"


def test_a_notebook_the_recorder_tagged_already_renders_and_a_broken_one_is_named():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("1 / 0")])
    nb.cells[1].metadata["tags"] = ["opshub-failed-cell", "x", "x"]  # tagged by the recorder, and a repeat
    recorded = json.dumps(nb)
    html = notebook_html(recorded, 1)
    assert html.count('class="jp-Cell jp-CodeCell') == 2 and "celltag_opshub-failed-cell" in html
    for broken in ("{}", '{"cells": 3}', "not json"):
        with pytest.raises(UnreadableNotebook):
            notebook_html(broken, None)
