"""`opshub ci`: runbooks of the test's own run live (real kernels, papermill, `opshub run`'s code) from a
cases file, as a team's CI job runs them; no fleet and no hub needed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import nbformat
import pytest
from opshub.cli import main as opshub_main
from opshub.runbooks.masking import MASK

from tests.helpers import VENV_BIN

OPSHUB = str(VENV_BIN / "opshub")
# A credential whose name matches none of the secret patterns (*_TOKEN, *_KEY...): masked only because
# `--credential` names it, as the runner's credentials are.
CREDENTIAL = "s3cr3t-deploy-credential-91f4"
CREDENTIAL_LINE_2 = "second-line-of-the-credential-77ab"


def runbook(parameters: str, *sources: str, declaration: dict | None = None) -> str:
    """A runbook as JSON text: a title, a papermill parameters cell, then a cell per source (a source
    starting with `## ` is a markdown heading)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    if declaration is not None:
        nb.metadata["opshub"] = {"parameters": declaration}
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A test runbook"), params]
    for source in sources:
        new = nbformat.v4.new_markdown_cell if source.startswith("## ") else nbformat.v4.new_code_cell
        nb.cells.append(new(source))
    return nbformat.writes(nb)


RUNBOOKS = {
    "count.ipynb": runbook(
        "count = 1  # how many\nlabel = 'x'",
        # every case gets a fresh copy of the folder: a file left by another case would be found here
        "import os\nassert not os.path.exists('left-behind'), 'a previous case left a file'\nopen('left-behind', 'w')",
        "print(f'count is {count}, label is {label}')",
        declaration={
            "count": {"type": "integer", "min": 1, "max": 10, "description": "How many"},
            "label": {"type": "string"},
        },
    ),
    "net/threshold.ipynb": runbook(
        "threshold = 3",
        "print('before the check')",
        "## Check the threshold",
        "raise ValueError(f'threshold {threshold} exceeded')",
    ),
    "hangs.ipynb": runbook("seconds = 600", "import time\ntime.sleep(seconds)", "print('never reached')"),
    "credential.ipynb": runbook(
        "shown = True",
        "import os\nprint('the credential:', os.environ['DEPLOY_CREDENTIAL'])",
        "os.environ['DEPLOY_CREDENTIAL'].splitlines()",
    ),
}

CASES = """\
cases:
  - name: count-fine
    runbook: count.ipynb
    parameters: {count: 3, label: "${CI_TEST_LABEL}"}
    output_contains: ["count is 3, label is from-the-environment"]
  - name: count-fine-again
    runbook: count
    output_contains: [count is 1]
  - name: count-missing-text
    runbook: count.ipynb
    output_contains: ["count is 1", "no such text"]
  - name: count-too-high
    runbook: count.ipynb
    parameters: {count: 11}
  - name: count-undeclared
    runbook: count.ipynb
    parameters: {colour: blue}
  - name: count-unset-variable
    runbook: count.ipynb
    parameters: {label: "${CI_TEST_NOT_SET}"}
  - name: threshold-fails-as-expected
    runbook: net/threshold.ipynb
    expect: failed
    output_contains: [threshold 3 exceeded]
  - name: threshold-fails
    runbook: net/threshold.ipynb
    parameters: {threshold: 5}
  - name: count-expected-to-fail
    runbook: count.ipynb
    expect: failed
  - name: hangs
    runbook: hangs.ipynb
    timeout_seconds: 3
  - name: credential
    runbook: credential.ipynb
    output_contains: ["the credential:"]
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runbooks")
    for name, text in RUNBOOKS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / "runbooks-ci.yaml").write_text(CASES)
    return folder


@pytest.fixture(scope="module")
def credential_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("credential") / "deploy"
    path.write_text(f"{CREDENTIAL}\n{CREDENTIAL_LINE_2}\n")
    return path


def opshub_ci(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`opshub ci ...` as a person or a CI job types it."""
    import os

    return subprocess.run(
        [OPSHUB, "ci", *args], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def full_run(folder, credential_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ci-output")
    result = opshub_ci(
        "--folder",
        str(folder),
        "--credential",
        f"DEPLOY_CREDENTIAL={credential_file}",
        "--junit",
        str(out / "report" / "junit.xml"),
        "--output",
        str(out / "notebooks"),
        env={"CI_TEST_LABEL": "from-the-environment"},
    )
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))}
    return result, lines, out


def test_one_line_per_case_and_exit_1_when_one_failed(full_run):
    result, lines, _ = full_run
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(lines) == 11, result.stdout
    passed = {name for name, line in lines.items() if line.startswith("PASS ")}
    assert passed == {"count-fine", "count-fine-again", "threshold-fails-as-expected", "credential"}, result.stdout
    assert "4 passed, 7 failed" in result.stdout


def test_why_each_case_failed(full_run):
    _, lines, _ = full_run
    assert "the outputs do not contain 'no such text'" in lines["count-missing-text"]
    # the runbook's typed declaration checks the file's parameters, as `opshub run` checks -p
    assert "parameter count: 11 is not at most 10" in lines["count-too-high"]
    assert "parameter colour is not a parameter of this runbook" in lines["count-undeclared"]
    assert "CI_TEST_NOT_SET" in lines["count-unset-variable"] and "not set" in lines["count-unset-variable"]
    # the failing cell named as `opshub run` and the run's page name it: number (papermill's injected
    # parameters cell counts) and heading
    assert "failed in cell 6 (Check the threshold): ValueError: threshold 5 exceeded" in lines["threshold-fails"]
    assert "succeeded, expected to fail" in lines["count-expected-to-fail"]
    assert ": as expected, failed in cell 5" in lines["threshold-fails-as-expected"]
    assert "cell 5 (Check the threshold)" in lines["threshold-fails-as-expected"]
    # a hung runbook is interrupted at its timeout, and the cases after it still run
    assert "timed out after 3 s (timeout_seconds) in cell 3 (A test runbook)" in lines["hangs"]
    assert lines["credential"].startswith("PASS ")


def test_junit_report(full_run):
    _, _, out = full_run
    root = ElementTree.parse(out / "report" / "junit.xml").getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("11", "7", "0")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert len(cases) == 11
    assert cases["threshold-fails"].get("file") == "net/threshold.ipynb"
    assert float(cases["count-fine"].get("time")) > 0
    assert cases["count-fine"].find("failure") is None
    failure = cases["threshold-fails"].find("failure")
    assert "ValueError: threshold 5 exceeded" in failure.get("message")
    assert "parameter count: 11" in cases["count-too-high"].find("failure").get("message")
    # what the run printed, without the terminal colours of the traceback (not XML)
    output = cases["threshold-fails"].find("system-out").text
    assert "before the check" in output and "\x1b" not in output


def test_executed_notebooks_and_logs_are_saved(full_run):
    _, _, out = full_run
    executed = json.loads((out / "notebooks" / "count-fine.ipynb").read_text())
    texts = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "count is 3, label is from-the-environment" in texts
    assert "count is 3" in (out / "notebooks" / "count-fine.log").read_text()
    assert "parameter count: 11" in (out / "notebooks" / "count-too-high.log").read_text()


def test_runs_in_a_copy_of_the_folder(full_run, folder):
    _, lines, _ = full_run
    assert lines["count-fine-again"].startswith("PASS ")  # count-fine's file is not in its copy
    assert not (folder / "left-behind").exists()


def test_a_credential_is_masked_everywhere(full_run):
    result, lines, out = full_run
    assert lines["credential"].startswith("PASS ")
    saved = [
        result.stdout,
        result.stderr,
        (out / "report" / "junit.xml").read_text(),
        (out / "notebooks" / "credential.ipynb").read_text(),
        (out / "notebooks" / "credential.log").read_text(),
    ]
    for text in saved:
        assert CREDENTIAL not in text and CREDENTIAL_LINE_2 not in text
    executed = (out / "notebooks" / "credential.ipynb").read_text()
    assert f"the credential: {MASK}" in executed
    # the credential reached the kernel: its two lines were there to be masked
    assert executed.count(MASK) >= 3


def test_a_subset_of_the_cases(folder, tmp_path):
    result = opshub_ci(
        "--folder",
        str(folder),
        "-k",
        "count-fine",
        "--junit",
        str(tmp_path / "junit.xml"),
        "--output",
        str(tmp_path / "out"),
        env={"CI_TEST_LABEL": "from-the-environment"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))] == [
        ["PASS", "count-fine"],
        ["PASS", "count-fine-again"],
    ]
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert [case.get("name") for case in suite.findall("testcase")] == ["count-fine", "count-fine-again"]
    assert sorted(path.name for path in (tmp_path / "out").glob("*.ipynb")) == [
        "count-fine-again.ipynb",
        "count-fine.ipynb",
    ]


def test_help_says_runs_are_not_recorded():
    result = opshub_ci("--help")
    assert result.returncode == 0
    assert "NOT recorded in any hub" in " ".join(result.stdout.split())


BAD_FILES = [
    ("cases:\n  - runbook: a.ipynb\n    expect: succeeded\n   bad: indent\n", "line 4: not YAML"),
    ("- runbook: a.ipynb\n", "line 1: the file must be a mapping with a `cases:` list"),
    ("cases: []\n", "line 1: `cases:` lists no case"),
    ("cases:\n  - runbook: a.ipynb\nextra: 1\n", "line 3: unknown key 'extra'"),
    (
        "cases:\n  - runbook: a.ipynb\n  - runbook: b.ipynb\n    expects: failed\n",
        "line 4: cases[1].expects: unknown key",
    ),
    ("cases:\n  - parameters: {}\n", "line 2: cases[0]: `runbook:` must name a runbook"),
    ("cases:\n  - runbook: a.ipynb\n\n    expect: passed\n", "line 4: cases[0].expect: must be succeeded or failed"),
    ("cases:\n  - runbook: a.ipynb\n    parameters: [1, 2]\n", "line 3: cases[0].parameters: must be a mapping"),
    ("cases:\n  - runbook: a.ipynb\n    output_contains: [1]\n", "line 3: cases[0].output_contains: must be a list"),
    ("cases:\n  - runbook: a.ipynb\n  - runbook: a.ipynb\n", "line 3: a second case named 'a.ipynb'"),
    ("cases:\n  - just text\n", "line 2: cases[0]: a case is a mapping"),
    ("cases:\n  - runbook: a\n    timeout_seconds: 0\n", "line 3: cases[0].timeout_seconds: must be a number"),
    ("cases:\n  - runbook: a.ipynb\n  - runbook: a\n", "line 3: a second case named 'a'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_a_malformed_cases_file_is_a_usage_error_naming_line_and_key(tmp_path, capsys, text, message):
    (tmp_path / "cases.yaml").write_text(text)
    code = opshub_main(["ci", "--folder", str(tmp_path), "--file", str(tmp_path / "cases.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"opshub ci: {tmp_path / 'cases.yaml'}, {message}" in err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--case", "nothing-like-it"], "--case nothing-like-it: no case's name contains it"),
        (["--credential", "NO_FILE"], "--credential 'NO_FILE': write NAME=FILE"),
        (["--credential", "A=/nonexistent/key"], "--credential A: cannot read /nonexistent/key"),
        (["--file", "/nonexistent/cases.yaml"], "/nonexistent/cases.yaml: cannot read it"),
    ],
)
def test_usage_errors_run_nothing(folder, tmp_path, capsys, arguments, message):
    code = opshub_main(["ci", "--folder", str(folder), "--output", str(tmp_path / "out"), *arguments])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err
    assert not list(tmp_path.glob("out/*.ipynb"))  # nothing ran


def test_a_malformed_file_from_the_command_line_is_no_traceback(tmp_path):
    (tmp_path / "runbooks-ci.yaml").write_text("cases:\n  - runbook: a.ipynb\n    expect: maybe\n")
    result = opshub_ci("--folder", str(tmp_path))
    assert result.returncode == 2
    assert "line 3: cases[0].expect: must be succeeded or failed, not 'maybe'" in result.stderr
    assert "Traceback" not in result.stderr
