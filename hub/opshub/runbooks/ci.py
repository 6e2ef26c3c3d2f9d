"""`opshub ci`: run runbooks live and headless from a file of cases, as a team's CI job would, and say
which passed.

    opshub ci --folder shared-notebooks --credential SSH_PRIVATE_KEY=state/fleet/ssh/id_ed25519 --junit ci.xml

The cases file (default `runbooks-ci.yaml` at the top of the runbooks folder):

    cases:
      - runbook: host-health-check.ipynb
        parameters: {hosts: [web-1.fleet], ssh_user: ops}
        expect: succeeded            # or failed
        output_contains: ["OK"]      # strings the executed notebook's outputs must contain

Each case runs with `opshub run`'s own code (`headless.run_runbook`: the same parameter checks against the
runbook's typed declaration, the same kernel, papermill and masking) in a fresh copy of the runbooks folder,
with a recorder that records nowhere: CI machines have no hub. A case passes when the run ended as it
expects and its outputs contain every `output_contains` string; a parameter the runbook refuses is a failed
case naming it. A parameter's text may name environment variables as `${NAME}` (a path that differs per
machine: `ca_file: ${FLEET_CA}`); one that is not set fails its case.

Exit codes: 0 every case passed, 1 a case failed, 2 usage error (a malformed cases file, an unreadable
credential: nothing ran), 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import itertools
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from xml.etree import ElementTree

from ..run_record import RunEnd
from .ci_cases import DEFAULT_TIMEOUT_SECONDS, Case, CasesError, expand_variables, load_cases, select
from .headless import EXIT_SIGNAL_BASE, EXIT_USAGE, default_runbooks_dir, run_runbook
from .masking import SECRET_NAMES_ENV, mask_text, secrets_for
from .results import cell_name, failed_cell_index, source_text
from .terminal import format_duration

DEFAULT_CASES_FILE = "runbooks-ci.yaml"
# After the timeout's interrupt, how long the run gets to stop (the kernel is killed after 10 s) before
# `opshub ci` gives up on it: it reports what it has and exits.
STOP_GRACE_SECONDS = 60
# Characters XML 1.0 cannot carry (a traceback's ANSI colours, NULs): JUnit readers reject the whole file.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

EXIT_PASSED = 0
EXIT_FAILED = 1


@dataclass
class Outcome:
    case: Case
    passed: bool
    seconds: float
    why: str = ""  # for a failed case: what went wrong
    note: str = ""  # for a passed one: anything worth saying (failed as expected, where)
    log: str = ""  # what `opshub run` printed, masked
    notebook: Path | None = None  # the executed notebook, masked
    exit_code: int = 0  # run_runbook's


# Credentials


def read_credentials(specs: Sequence[str]) -> dict[str, str]:
    """`NAME=FILE` pairs as variables: each file's content without its trailing newline, as the runner
    reads `runner.credentials`. CasesError (a usage error) naming the one that cannot be read."""
    found = {}
    for spec in specs:
        name, equals, file = spec.partition("=")
        if not equals or not VARIABLE_NAME.fullmatch(name) or not file:
            raise CasesError(f"--credential {spec!r}: write NAME=FILE (NAME: letters, digits and _)")
        try:
            found[name] = Path(file).expanduser().read_text().rstrip("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise CasesError(f"--credential {name}: cannot read {file}: {getattr(e, 'strerror', None) or e}") from None
    return found


def credential_secrets(credentials: Mapping[str, str]) -> list[str]:
    """The values masked in what `opshub ci` itself prints and writes: each credential, and each line of a
    multi-line one (a PEM key), as `opshub run`'s terminal masks them."""
    values = secrets_for({**credentials, SECRET_NAMES_ENV: ",".join(credentials)})
    lines = [line.strip() for value in values for line in value.splitlines() if len(line.strip()) >= 8]
    return sorted({*values, *lines}, key=lambda value: (-len(value), value))


@contextmanager
def credentials_in_environment(credentials: Mapping[str, str]) -> Iterator[None]:
    """The credentials in this process's environment, which the kernels inherit, and their names among
    the secrets masked (as the runner does), for as long as the cases run."""
    saved = {name: os.environ.get(name) for name in [*credentials, SECRET_NAMES_ENV]}
    names = [n for n in os.environ.get(SECRET_NAMES_ENV, "").split(",") if n] + sorted(credentials)
    os.environ.update(credentials)
    if credentials:
        os.environ[SECRET_NAMES_ENV] = ",".join(dict.fromkeys(names))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Running the cases


class NowhereRecorder:
    """A recorder (`headless.run_runbook`'s) that records nowhere and keeps the run's end for the case."""

    def __init__(self):
        self.end: RunEnd | None = None
        self._ids = itertools.count(1)

    def start_run(self, start) -> dict:
        return {"id": f"ci-{next(self._ids)}", "url": None}

    def heartbeat(self, run_id, beat=None) -> None:
        pass

    def finish_run(self, run_id, end: RunEnd) -> dict:
        self.end = end
        return {}


class Watchdog:
    """A case's timeout: after `seconds`, interrupt the run as Ctrl-C does (`execute.Stopper` interrupts
    the kernel, then kills it); if the run has still not ended `STOP_GRACE_SECONDS` later, write where
    every thread is to `log_file` and call `give_up` (which reports and exits)."""

    def __init__(self, seconds: float, log_file: Path, give_up):
        self.seconds, self.log_file, self.give_up = seconds, log_file, give_up
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="opshub-ci-watchdog", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.fired = True
        os.kill(os.getpid(), signal.SIGINT)
        if self._done.wait(STOP_GRACE_SECONDS):
            return
        with open(self.log_file, "a") as log:
            log.write(f"\nopshub ci: the run did not stop {STOP_GRACE_SECONDS} s after its timeout; its threads:\n")
            log.flush()
            faulthandler.dump_traceback(log, all_threads=True)
        self.give_up()


def run_case(case: Case, folder: Path, output_dir: Path, give_up=lambda: os._exit(EXIT_FAILED)) -> Outcome:
    """Run `case` in a fresh copy of the runbooks `folder`; the executed notebook and the run's log go to
    `output_dir`, named after the case. `give_up()` when the run does not stop after its timeout."""
    notebook, log_file = output_dir / f"{case.stem}.ipynb", output_dir / f"{case.stem}.log"
    log = io.StringIO()
    recorder = NowhereRecorder()
    started = time.monotonic()
    try:
        parameters = expand_variables(case.parameters, os.environ)
    except CasesError as e:
        log_file.write_text(f"{e}\n")
        return Outcome(case, False, time.monotonic() - started, why=str(e), log=f"{e}\n", exit_code=EXIT_USAGE)
    with tempfile.TemporaryDirectory(prefix="opshub-ci-") as scratch:
        copy = Path(scratch) / folder.name
        shutil.copytree(folder, copy, symlinks=True, ignore=shutil.ignore_patterns(".git", ".ipynb_checkpoints"))
        with Watchdog(case.timeout_seconds, log_file, give_up) as watchdog:
            try:
                exit_code = run_runbook(
                    case.runbook,
                    values=parameters,
                    output=notebook,
                    runbooks_dir=copy,
                    recorder=recorder,
                    out=log,
                    err=log,
                )
            except KeyboardInterrupt:  # the interrupt came before the run's own handlers were in place
                if not watchdog.fired:
                    raise
                exit_code = EXIT_SIGNAL_BASE + signal.SIGINT
    seconds = time.monotonic() - started
    text = log.getvalue()
    log_file.write_text(text)  # masked, as `opshub run` prints
    outcome = Outcome(case, False, seconds, log=text, exit_code=exit_code)
    end = recorder.end
    if watchdog.fired:  # not a Ctrl-C: the next cases run
        outcome.exit_code = EXIT_FAILED
        nb = end.output_notebook if end and isinstance(end.output_notebook, dict) else {}
        stopped = failed_cell_index(nb) if nb else None
        where = f" in {cell_name(nb, stopped)}" if stopped is not None else ""
        outcome.why = f"timed out after {case.timeout_seconds:g} s (timeout_seconds){where}"
        return outcome
    if end is None:  # nothing ran: the runbook or a parameter was refused (run_runbook said why)
        said = [line.removeprefix("opshub run: ") for line in text.splitlines() if line.strip()]
        outcome.why = said[0] if said else f"did not run (exit code {exit_code})"
        return outcome
    outcome.notebook = notebook if notebook.exists() else None
    nb = end.output_notebook if isinstance(end.output_notebook, dict) else {}
    where = cell_name(nb, end.failed_cell) if end.failed_cell is not None else None
    if end.status == "failed":
        failure = f"failed in {where}" if where else "failed"
        failure += f": {end.error_summary}" if end.error_summary else ""
    else:
        failure = end.status
    if end.status != case.expect:
        outcome.why = failure if case.expect == "succeeded" else f"{end.status}, expected to fail"
        return outcome
    missing = [wanted for wanted in case.output_contains if wanted not in outputs_text(nb)]
    if missing:
        outcome.why = "the outputs do not contain " + ", ".join(repr(text) for text in missing)
        return outcome
    outcome.passed = True
    outcome.note = f"as expected, {failure}" if case.expect == "failed" else ""
    return outcome


def outputs_text(nb: Mapping[str, Any]) -> str:
    """Everything the executed notebook's cells output, as text (streams, results, tables, errors)."""
    pieces = []
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            pieces.append(source_text(output.get("text", "")))
            for mime, value in (output.get("data") or {}).items():
                if mime.startswith("text/") or mime == "application/json":
                    pieces.append(source_text(value) if not isinstance(value, dict) else str(value))
            if output.get("output_type") == "error":
                pieces += [str(output.get("ename", "")), str(output.get("evalue", ""))]
    return "\n".join(pieces)


def junit_xml(outcomes: Sequence[Outcome], suite: str, secrets: Sequence[str]) -> bytes:
    """The JUnit XML report (as GitLab, Jenkins and GitHub read it): one testcase per case, a failure
    with its reason, what the run printed as system-out; secrets masked."""

    def clean(text: str) -> str:
        return NOT_XML.sub("", ANSI.sub("", mask_text(text, secrets)))

    failures = sum(not outcome.passed for outcome in outcomes)
    total = sum(outcome.seconds for outcome in outcomes)
    root = ElementTree.Element("testsuites", name="opshub ci", tests=str(len(outcomes)), failures=str(failures))
    root.set("time", f"{total:.3f}")
    testsuite = ElementTree.SubElement(
        root,
        "testsuite",
        name=clean(suite),
        tests=str(len(outcomes)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{total:.3f}",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        hostname=socket.gethostname(),
    )
    for outcome in outcomes:
        testcase = ElementTree.SubElement(
            testsuite,
            "testcase",
            name=clean(outcome.case.name),
            classname="runbooks",
            file=clean(outcome.case.runbook),
            time=f"{outcome.seconds:.3f}",
        )
        if not outcome.passed:
            failure = ElementTree.SubElement(testcase, "failure", message=clean(outcome.why), type="RunbookFailed")
            failure.text = clean(outcome.why)
        if outcome.log:
            ElementTree.SubElement(testcase, "system-out").text = clean(outcome.log)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def result_line(outcome: Outcome) -> str:
    """`PASS NAME (12.3 s)` or `FAIL NAME (1.2 s): why`, on one line (the JUnit report has the rest)."""
    seconds = f"{outcome.seconds:.1f} s"
    if outcome.passed:
        return f"PASS {outcome.case.name} ({seconds})" + (f": {first_line(outcome.note)}" if outcome.note else "")
    return f"FAIL {outcome.case.name} ({seconds}): {first_line(outcome.why)}"


def first_line(text: str) -> str:
    lines = text.strip().splitlines() or [""]
    return lines[0] + (" …" if len(lines) > 1 else "")


# The command


DESCRIPTION = (
    "Run runbooks live and headless from a file of cases, as a team's CI job would, and say which passed: one"
    " PASS/FAIL line per case, the executed notebooks, a JUnit XML report. Each case runs as `opshub run` runs"
    " it (its parameters checked against the runbook's declaration, secrets masked) in a fresh copy of the"
    " runbooks folder. Runs are NOT recorded in any hub's run history (CI machines have none). Exit codes:"
    " 0 every case passed, 1 a case failed, 2 usage error (a malformed cases file: nothing ran), 130/143"
    " interrupted by SIGINT/SIGTERM."
)
EPILOG = (
    f"The cases file (default FOLDER/{DEFAULT_CASES_FILE}): `cases:`, a list of {{runbook, parameters (typed, as"
    " YAML), expect: succeeded|failed, output_contains: [text], name (optional: for --case and the report),"
    f" timeout_seconds (default {DEFAULT_TIMEOUT_SECONDS})}};"
    " ${NAME} in a parameter's text is the environment variable NAME."
    " hub/docs/runbooks.md has an example and a GitLab CI job."
)


def add_arguments(command: argparse.ArgumentParser) -> None:
    """`opshub ci`'s options (cli.py's subparser, and `main` here)."""
    command.add_argument(
        "--folder", help="the runbooks folder (default $HOME/$OPSHUB_RUNBOOKS_TARGET, else ~/runbooks)"
    )
    command.add_argument("--file", help=f"the cases file (default FOLDER/{DEFAULT_CASES_FILE})")
    command.add_argument(
        "--case",
        "-k",
        action="append",
        default=[],
        metavar="NAME",
        help="run only the cases whose name contains NAME (repeat for more)",
    )
    command.add_argument(
        "--credential",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="put FILE's content in the kernels' environment as NAME, masked in what is printed and saved (repeat)",
    )
    command.add_argument("--junit", metavar="FILE", help="write a JUnit XML report there")
    command.add_argument(
        "--output", metavar="DIR", help="where to save the executed notebooks (default: a temp folder)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`opshub ci` without the rest of the `opshub` command."""
    command = argparse.ArgumentParser(prog="opshub ci", description=DESCRIPTION, epilog=EPILOG)
    add_arguments(command)
    return run_command(command.parse_args(argv))


def run_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the cases `args` select; the exit code (see the module docstring)."""
    out, err = out or sys.stdout, err or sys.stderr
    folder = Path(args.folder).expanduser() if args.folder else default_runbooks_dir()
    cases_file = Path(args.file).expanduser() if args.file else folder / DEFAULT_CASES_FILE
    try:
        if not folder.is_dir():
            raise CasesError(f"the runbooks folder {folder} does not exist (--folder)")
        cases = select(load_cases(cases_file), args.case)
        credentials = read_credentials(args.credential)
        output_dir = Path(args.output).expanduser() if args.output else Path(tempfile.mkdtemp(prefix="opshub-ci-"))
        output_dir.mkdir(parents=True, exist_ok=True)
    except (CasesError, OSError) as e:
        print(f"opshub ci: {e}", file=err)
        return EXIT_USAGE
    secrets = credential_secrets(credentials)
    print(
        f"opshub ci: {len(cases)} case(s) from {cases_file}; executed notebooks in {output_dir}", file=out, flush=True
    )
    outcomes: list[Outcome] = []
    with credentials_in_environment(credentials):
        for case in cases:

            def give_up(case=case) -> None:
                """The run hangs even after its interrupt: report what there is, and exit."""
                why = f"timed out after {case.timeout_seconds:g} s, and did not stop: see {case.stem}.log"
                outcomes.append(Outcome(case, False, case.timeout_seconds + STOP_GRACE_SECONDS, why=why))
                print(mask_text(result_line(outcomes[-1]), secrets), file=out, flush=True)
                if args.junit:
                    with contextlib.suppress(OSError):
                        Path(args.junit).expanduser().write_bytes(
                            junit_xml(outcomes, f"opshub ci: {cases_file}", secrets)
                        )
                os._exit(EXIT_FAILED)

            try:
                outcome = run_case(case, folder, output_dir, give_up)
            except KeyboardInterrupt:  # Ctrl-C between two runs
                print("opshub ci: interrupted", file=err)
                return EXIT_SIGNAL_BASE + signal.SIGINT
            outcomes.append(outcome)
            print(mask_text(result_line(outcome), secrets), file=out, flush=True)
            if outcome.exit_code >= EXIT_SIGNAL_BASE:  # Ctrl-C or SIGTERM: no more cases
                break
    failed = sum(not outcome.passed for outcome in outcomes)
    if args.junit:
        junit = Path(args.junit).expanduser()
        try:
            junit.parent.mkdir(parents=True, exist_ok=True)
            junit.write_bytes(junit_xml(outcomes, f"opshub ci: {cases_file}", secrets))
        except OSError as e:
            print(f"opshub ci: cannot write the JUnit report to {junit}: {e.strerror or e}", file=err)
            return EXIT_USAGE
    total = format_duration(sum(outcome.seconds for outcome in outcomes))
    print(f"{len(outcomes) - failed} passed, {failed} failed in {total}", file=out)
    interrupted = next((o.exit_code for o in outcomes if o.exit_code >= EXIT_SIGNAL_BASE), None)
    if interrupted is not None:
        return interrupted
    return EXIT_FAILED if failed else EXIT_PASSED
