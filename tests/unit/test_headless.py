"""`opshub run`'s pure parts and its refusals: resolving runbooks, parameters, git commit and drift,
failed cells, progress lines, masking of what is printed. Nothing here starts a kernel."""

from __future__ import annotations

import io
import json
import time

import nbformat
import pytest
from opshub.run_record import RunEnd, RunStart
from opshub.runbooks import execute, headless
from opshub.runbooks.client import ServiceClient, ServiceError
from opshub.runbooks.execute import Heartbeat
from opshub.runbooks.gitstate import git_state
from opshub.runbooks.headless import (
    heartbeat_interval,
    list_runbooks,
    make_recorder,
    resolve_runbook,
    run_runbook,
)
from opshub.runbooks.masking import MASK, secrets_for
from opshub.runbooks.params import (
    DeclaredParameter,
    UsageError,
    declared_parameters,
    parse_value,
    python_assignments,
)
from opshub.runbooks.pull import pull_runbooks
from opshub.runbooks.results import error_summary, failed_cell_index
from opshub.runbooks.terminal import Terminal, cell_label, format_duration, progress_line
from opshub.service.recorder import StoreRecorder
from opshub.service.store import RunStore

from tests.helpers import SHARED_NOTEBOOKS, git, make_work_tree


def notebook(*cells: nbformat.NotebookNode, parameters: str | None = 'stack = "lab"  # which stack') -> str:
    """A runbook as JSON text: an optional parameters cell, then `cells`."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(cells or [nbformat.v4.new_code_cell("print(stack)")])
    return nbformat.writes(nb)


@pytest.fixture
def runbooks(tmp_path):
    """A runbooks checkout: two runbooks at the top, one in a sub-folder, and things that are not runbooks."""
    folder = make_work_tree(
        tmp_path / "runbooks",
        {
            "patch.ipynb": notebook(),
            "health.ipynb": notebook(parameters='hosts = ["localhost"]\nretries = 3  # per host'),
            "net/check.ipynb": notebook(),
            "inventory/stacks.yaml": "lab: {}\n",
            ".ipynb_checkpoints/patch-checkpoint.ipynb": notebook(),
        },
    )
    return folder


class CallRecorder:
    """A recorder that remembers calls (for the refusals, where nothing may be recorded)."""

    def __init__(self):
        self.calls = []

    def start_run(self, *args, **kwargs):
        self.calls.append(("start_run", args, kwargs))
        return {"id": "run-1"}

    def heartbeat(self, run_id):
        self.calls.append(("heartbeat", run_id))

    def finish_run(self, *args, **kwargs):
        self.calls.append(("finish_run", args, kwargs))
        return {"id": "run-1"}


# Resolving runbooks


def test_list_runbooks_leaves_out_hidden_folders(runbooks):
    assert list_runbooks(runbooks) == ["health.ipynb", "net/check.ipynb", "patch.ipynb"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("patch", "patch.ipynb"),
        ("patch.ipynb", "patch.ipynb"),
        ("net/check.ipynb", "net/check.ipynb"),
        ("net/check", "net/check.ipynb"),
        ("net//check", "net/check.ipynb"),
    ],
)
def test_resolve_runbook_accepts_names_with_or_without_suffix_and_sub_paths(runbooks, name, expected):
    path, relative = resolve_runbook(runbooks, name)
    assert relative == expected
    assert path == (runbooks / expected).resolve()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("nope", "no such runbook"),
        ("net", "no such runbook"),  # a folder
        ("inventory/stacks.yaml", "no such runbook"),  # becomes stacks.yaml.ipynb
        ("../outside", "'..' is not allowed"),
        ("net/../../outside.ipynb", "'..' is not allowed"),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("~/runbooks/patch", "absolute paths are not allowed"),
        (".ipynb_checkpoints/patch-checkpoint", "hidden"),
        ("", "empty"),
    ],
)
def test_resolve_runbook_refuses_unknown_names_and_path_tricks_listing_the_runbooks(runbooks, name, reason):
    with pytest.raises(UsageError) as refused:
        resolve_runbook(runbooks, name)
    message = str(refused.value)
    assert reason in message
    for listed in ("health.ipynb", "net/check.ipynb", "patch.ipynb"):
        assert f"  {listed}" in message
    assert "checkpoint" not in message.split("\n", 1)[1]


def test_resolve_runbook_refuses_symlinks_leading_outside_but_follows_those_inside(runbooks, tmp_path):
    (tmp_path / "elsewhere.ipynb").write_text(notebook())
    (runbooks / "escape.ipynb").symlink_to(tmp_path / "elsewhere.ipynb")
    (runbooks / "linked").symlink_to(tmp_path)
    (runbooks / "alias.ipynb").symlink_to(runbooks / "patch.ipynb")
    for name in ("escape", "linked/elsewhere.ipynb"):
        with pytest.raises(UsageError, match="leads outside the runbooks folder"):
            resolve_runbook(runbooks, name)
    assert resolve_runbook(runbooks, "alias")[1] == "patch.ipynb"  # the history names the real file
    assert "escape.ipynb" not in list_runbooks(runbooks)


def test_resolve_runbook_says_when_the_folder_is_missing(tmp_path):
    with pytest.raises(UsageError, match="does not exist.*--runbooks-dir"):
        resolve_runbook(tmp_path / "runbooks", "patch")


def test_default_runbooks_dir_follows_home_and_target():
    assert headless.default_runbooks_dir({"HOME": "/home/bob"}) == headless.Path("/home/bob/runbooks")
    environ = {"HOME": "/home/bob", "OPSHUB_RUNBOOKS_TARGET": "team"}
    assert headless.default_runbooks_dir(environ) == headless.Path("/home/bob/team")


# Parameters


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("True", True),
        ("False", False),
        ("None", None),
        ("42", 42),
        ("-3", -3),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("web", "web"),
        ("true", "true"),  # as papermill: only Python's spelling is a boolean
        ("", ""),
        ("nan", "nan"),  # JSON has no NaN: kept as text
        ("inf", "inf"),
        ('["web1", "web2"]', ["web1", "web2"]),
        ('{"web": [1, 2], "db": null}', {"web": [1, 2], "db": None}),
        ("[]", []),
        ('"007"', "007"),  # a JSON string forces text
        ("-o BatchMode=yes", "-o BatchMode=yes"),
    ],
)
def test_parse_value_like_papermill_plus_json(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_parse_value_refuses_broken_json_instead_of_passing_text():
    with pytest.raises(UsageError, match="not valid JSON"):
        parse_value("[web1, web2]")


def test_declared_parameters_of_a_shipped_runbook_include_what_papermill_cannot_parse():
    declared = declared_parameters(SHARED_NOTEBOOKS / "patch-server-stack.ipynb")
    assert list(declared)[:6] == ["stack", "hosts", "inventory", "dry_run", "reboot", "wait_timeout"]
    assert declared["stack"] == DeclaredParameter("stack", '"lab"', "a stack from the inventory")
    # papermill skips this line (its value contains '='); Python's parser finds it
    assert declared["ssh_options"].default.startswith('"-o BatchMode=yes')


def test_python_assignments():
    source = "# comment\na = 1\nb: int = 2  # help\nc = d = [1,\n  2]\nif x:\n    e = 3\nf.g = 4\n"
    assert python_assignments(source) == [("a", "1"), ("b", "2"), ("c", "[1,\n  2]"), ("d", "[1,\n  2]")]
    assert python_assignments("this is not python") == []


def test_secrets_for_environment_names_patterns_and_secret_looking_parameters():
    environ = {
        "DEPLOY_TOKEN": "token-value-1",
        "VAULT_CREDS": "vault-value-2",
        "OPSHUB_SECRET_NAMES": "vault_creds, other",
        "HOME": "/home/bob",
        "SHORT_KEY": "abc",
    }
    secrets = secrets_for(environ, {"api_password": "param-secret-3", "stack": "web", "count_key": 5})
    assert sorted(secrets) == ["param-secret-3", "token-value-1", "vault-value-2"]


# Git commit and drift


def test_git_state_clean_edited_untracked_and_not_a_checkout(runbooks, tmp_path):
    head = git("rev-parse", "HEAD", cwd=runbooks)
    assert git_state(runbooks, "patch.ipynb") == (head, False)
    assert git_state(runbooks / "net", "check.ipynb") == (head, False)

    (runbooks / "patch.ipynb").write_text(notebook(nbformat.v4.new_code_cell("print('edited')")))
    assert git_state(runbooks, "patch.ipynb") == (head, True)
    git("add", "patch.ipynb", cwd=runbooks)  # staged is still not committed
    assert git_state(runbooks, "patch.ipynb") == (head, True)

    (runbooks / "new.ipynb").write_text(notebook())
    assert git_state(runbooks, "new.ipynb") == (head, True)

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.ipynb").write_text(notebook())
    assert git_state(plain, "x.ipynb") == (None, True)


def test_outputs_saved_after_running_a_runbook_are_not_drift(runbooks):
    head = git("rev-parse", "HEAD", cwd=runbooks)
    path = runbooks / "health.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count = 7
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran\n")]
    nb.metadata["widgets"] = {"state": {}}
    nbformat.write(nb, path)  # as JupyterLab saves it after a session
    assert git_state(runbooks, "health.ipynb") == (head, False)
    nb.cells[0].source += "\nretries = 5"
    nbformat.write(nb, path)
    assert git_state(runbooks, "health.ipynb") == (head, True)


def test_git_state_with_runbooks_in_a_sub_folder_of_the_repository(tmp_path):
    repo = make_work_tree(tmp_path / "repo", {"shared-notebooks/a.ipynb": notebook(), "README.md": "x\n"})
    head = git("rev-parse", "HEAD", cwd=repo)
    assert git_state(repo / "shared-notebooks", "a.ipynb") == (head, False)
    (repo / "README.md").write_text("changed\n")  # another file: not this runbook's drift
    assert git_state(repo / "shared-notebooks", "a.ipynb") == (head, False)


def test_git_state_sees_edits_that_nbgitpuller_committed_locally(tmp_path):
    """nbgitpuller commits local edits ("Automatic commit by nbgitpuller") at the next pull: the commit
    recorded must still be the team's, and the edited runbook must still show drift."""
    upstream = make_work_tree(tmp_path / "upstream", {"patch.ipynb": notebook(), "health.ipynb": notebook()})
    bare = tmp_path / "runbooks.git"
    git("clone", "--quiet", "--bare", str(upstream), str(bare), cwd=tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    target = home / "runbooks"
    assert pull_runbooks(bare.as_uri(), "main", target, home)
    team_commit = git("rev-parse", "main", cwd=bare)

    (target / "patch.ipynb").write_text(notebook(nbformat.v4.new_code_cell("print('my edit')")))
    assert pull_runbooks(bare.as_uri(), "main", target, home)
    assert "Automatic commit by nbgitpuller" in git("log", "-1", "--format=%s", cwd=target)
    assert git("rev-parse", "HEAD", cwd=target) != team_commit

    assert git_state(target, "patch.ipynb") == (team_commit, True)
    assert git_state(target, "health.ipynb") == (team_commit, False)


# Results and progress


def _error(ename, evalue):
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


def test_failed_cell_index_and_error_summary():
    ok = nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1\n")])
    exit0 = nbformat.v4.new_code_cell("sys.exit(0)", outputs=[_error("SystemExit", "0")])
    failing = nbformat.v4.new_code_cell("raise ValueError('boom')", outputs=[_error("ValueError", "boom")])
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), ok, exit0, failing])
    assert failed_cell_index(nb) == 3
    assert error_summary(nb, 3) == "ValueError: boom"
    assert error_summary(nb, None) is None

    nb.cells = [ok, exit0]
    assert failed_cell_index(nb) is None

    marked = nbformat.v4.new_code_cell("x")
    marked.metadata["papermill"] = {"exception": True, "status": "failed"}
    nb.cells = [ok, marked]
    assert failed_cell_index(nb) == 1 and error_summary(nb, 1) is None
    running = nbformat.v4.new_code_cell("y")
    running.metadata["papermill"] = {"exception": False, "status": "running"}
    nb.cells = [ok, running]
    assert failed_cell_index(nb) == 1


def test_progress_lines():
    code = nbformat.v4.new_code_cell("\n\nimport shlex\nimport socket")
    markdown = nbformat.v4.new_markdown_cell("Intro text\n## 3. Review pending updates\nmore")
    assert progress_line(3, 13, code) == "[ 4/13] ▶ cell 4: import shlex"
    assert progress_line(10, 13, markdown) == "[11/13]   cell 11: ## 3. Review pending updates"
    assert progress_line(0, 5, nbformat.v4.new_code_cell("")) == "[1/5] ▶ cell 1: (empty)"
    assert cell_label(nbformat.v4.new_markdown_cell("plain words")) == "plain words"
    long = cell_label(nbformat.v4.new_code_cell("x = '" + "a" * 200 + "'"))
    assert len(long) == 70 and long.endswith("…")
    assert [format_duration(s) for s in (0.04, 12.4, 185, 3725)] == ["0.0s", "12s", "3m05s", "1h02m"]


def test_terminal_masks_secrets_even_when_split_across_output_messages():
    out, err = io.StringIO(), io.StringIO()
    terminal = Terminal(out, err, ["s3cr3t-value", "-----BEGIN KEY-----\nline-two-of-the-key\n-----END KEY-----"])
    terminal.stdout.write("token is s3cr")
    terminal.stdout.write("3t-value and more\nlast line wit")
    terminal.stdout.write("hout newline s3cr3t-value")
    terminal.stderr.write("line-two-of-the-key\n")
    terminal._flush_streams()
    terminal.say("param s3cr3t-value")
    text = out.getvalue() + err.getvalue()
    assert "s3cr3t" not in text and "line-two" not in text
    assert out.getvalue().splitlines() == [
        f"token is {MASK} and more",
        f"last line without newline {MASK}",
        f"param {MASK}",
    ]


# Heartbeat and recorders


def test_heartbeat_keeps_going_after_a_failure():
    class Flaky:
        calls = 0

        def heartbeat(self, run_id):
            self.calls += 1
            if self.calls == 1:
                raise ServiceError(0, "cannot reach the service")

    recorder, reports = Flaky(), []
    beat = Heartbeat(recorder, "run-1", 0.02, reports.append)
    beat.start()
    deadline = time.monotonic() + 5
    while recorder.calls < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    beat.stop()
    assert recorder.calls >= 3
    assert reports == ["heartbeat failed (the run goes on): opshub service: cannot reach the service"]


def test_store_recorder_and_make_recorder(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'runs.sqlite'}"
    monkeypatch.setenv("JUPYTERHUB_USER", "bob")
    recorder = make_recorder({"OPSHUB_RECORDER": f"store:{url}"}, open_store=StoreRecorder)
    assert isinstance(recorder, StoreRecorder)
    run = recorder.start_run(RunStart("patch.ipynb", "headless", {"stack": "web"}, None, True))
    recorder.heartbeat(run["id"])
    recorder.finish_run(run["id"], RunEnd("succeeded"))
    stored = RunStore(url).get_run(run["id"])
    assert (stored.user, stored.status, stored.parameters, stored.drift) == ("bob", "succeeded", {"stack": "web"}, True)
    with pytest.raises(ServiceError, match="already ended"):
        recorder.finish_run(run["id"], RunEnd("failed"))

    with pytest.raises(UsageError, match="OPSHUB_RECORDER"):
        make_recorder({"OPSHUB_RECORDER": "http://x"})
    monkeypatch.delenv("OPSHUB_SERVICE_URL", raising=False)
    with pytest.raises(ServiceError, match="no service URL"):
        make_recorder({})


def test_heartbeat_interval_from_environment():
    assert heartbeat_interval({}) == 15
    assert heartbeat_interval({"OPSHUB_HEARTBEAT_SECONDS": "0.5"}) == 0.5
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(UsageError, match="positive number"):
            heartbeat_interval({"OPSHUB_HEARTBEAT_SECONDS": bad})


# Refusals of the whole command: nothing recorded, nothing run


def _run(runbooks, *args, recorder=None, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    runbook, *pairs = args
    code = run_runbook(
        runbook,
        [tuple(pair.split("=", 1)) for pair in pairs],
        runbooks_dir=runbooks,
        recorder=recorder,
        out=out,
        err=err,
        **kwargs,
    )
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", ["nope", "../runbooks/patch", "/etc/passwd", "net/../patch"])
def test_run_refuses_unknown_runbooks_with_exit_2_and_records_nothing(runbooks, name):
    recorder = CallRecorder()
    code, out, err = _run(runbooks, name, recorder=recorder)
    assert code == 2 and recorder.calls == [] and out == ""
    assert "patch.ipynb" in err and "net/check.ipynb" in err


def test_run_refuses_undeclared_parameters_with_exit_2_listing_the_declared_ones(runbooks):
    recorder = CallRecorder()
    code, out, err = _run(runbooks, "health", 'hosts=["a"]', "host=b", recorder=recorder)
    assert code == 2 and recorder.calls == [] and out == ""
    assert "health.ipynb: parameter host is not a parameter of this runbook" in err
    assert 'hosts (list of string; default ["localhost"])' in err and "retries (integer; default 3): per host" in err

    code, _, err = _run(runbooks, "health", "hosts=[a, b]", recorder=recorder)
    assert code == 2 and recorder.calls == [] and "parameter hosts: '[a, b]' is not a JSON list" in err
    code, _, err = _run(runbooks, "health", "retries=three", recorder=recorder)
    assert code == 2 and recorder.calls == [] and "parameter retries: 'three' is not a whole number" in err


def test_run_refuses_a_runbook_whose_kernel_is_not_installed(runbooks):
    nb = json.loads(notebook())
    nb["metadata"]["kernelspec"]["name"] = "no-such-kernel"
    (runbooks / "odd.ipynb").write_text(json.dumps(nb))
    recorder = CallRecorder()
    code, _, err = _run(runbooks, "odd", recorder=recorder)
    assert code == 2 and recorder.calls == [] and "no-such-kernel" in err


def test_run_does_not_start_when_the_service_cannot_be_reached(runbooks, tmp_path):
    marker = tmp_path / "executed"
    cell = nbformat.v4.new_code_cell(f"open({str(marker)!r}, 'w').write('ran')")
    (runbooks / "marker.ipynb").write_text(notebook(cell))
    client = ServiceClient("http://127.0.0.1:9/services/opshub/", "some-token")
    started = time.monotonic()
    code, out, err = _run(runbooks, "marker", recorder=client)
    assert code == 3
    assert "cannot record the run, so it was not started" in err and "cannot reach" in err
    assert not marker.exists()
    assert "▶" not in out
    assert time.monotonic() - started < 30


def test_run_without_service_settings_exits_3(runbooks, monkeypatch):
    monkeypatch.delenv("OPSHUB_RECORDER", raising=False)
    monkeypatch.delenv("OPSHUB_SERVICE_URL", raising=False)
    code, _, err = _run(runbooks, "patch")
    assert code == 3 and "OPSHUB_SERVICE_URL" in err


def test_cli_run_usage_errors_exit_2(runbooks, capsys):
    from opshub.cli import main

    assert main(["run", "--runbooks-dir", str(runbooks), "nope"]) == 2
    assert "net/check.ipynb" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["run", "patch", "-p", "only-a-name"])
    assert exited.value.code == 2


def test_cli_run_events_json_refusals_print_no_event(runbooks, capsys):
    """Nothing ran, so no `started` event: stdout stays empty for the program, stderr says why."""
    from opshub.cli import main

    assert main(["run", "--runbooks-dir", str(runbooks), "nope", "--events", "json"]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and "net/check.ipynb" in printed.err
    with pytest.raises(SystemExit) as exited:
        main(["run", "patch", "--events", "xml"])
    assert exited.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err
    main(["run", "--help"])
    assert "--events {json}" in capsys.readouterr().out


def test_signal_handlers_are_restored():
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stopper = execute.Stopper()
    stopper.install()
    assert signal.getsignal(signal.SIGINT) != before[0]
    stopper.uninstall()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
