"""The runbooks' own CI on the practice fleet (issue 22, part 5): `opshub ci` as `make runbooks-ci` runs it
(and as a person types it) runs every shipped runbook live against the fleet, headless, with the
fleet's key as the credential SSH_PRIVATE_KEY, and every case of shared-notebooks/runbooks-ci.yaml
passes: the host checks of the fleet's hosts, the certificate check of its web hosts (web-1's
certificate expires soon: a WARN), the patching runbook as a dry run and the patching-status dashboard."""

from __future__ import annotations

import json
import os
import subprocess
from html.parser import HTMLParser
from xml.etree import ElementTree

import pytest
import yaml

from tests.fleet.conftest import FLEET_KEY, OPSHUB
from tests.helpers import ARTIFACTS, ROOT, SHARED_NOTEBOOKS

FLEET_CA = ROOT / "state" / "fleet" / "tls" / "ca.crt"


@pytest.fixture(scope="module")
def ci_run(fleet, tmp_path_factory):
    """`opshub ci` with the arguments of `make runbooks-ci` (Makefile), as a person types it; its report
    and executed notebooks in a folder of the test's own."""
    out = tmp_path_factory.mktemp("runbooks-ci")
    result = subprocess.run(
        [
            OPSHUB,
            "ci",
            "--folder",
            "shared-notebooks",
            "--junit",
            str(out / "runbooks-ci.xml"),
            "--output",
            str(out / "notebooks"),
            "--credential",
            f"SSH_PRIVATE_KEY={FLEET_KEY.relative_to(ROOT)}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OPSHUB_FLEET_CA": str(FLEET_CA)},
    )
    (ARTIFACTS / "runbooks-ci-on-fleet.log").write_text(result.stdout + result.stderr)
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))}
    return result, lines, out


class _Table(HTMLParser):
    """The cells of an HTML table, row by row (pandas' DataFrame HTML: the index is the first cell)."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None


def table(notebook: dict, column: str) -> list[dict[str, str]]:
    """The rows of the DataFrame the notebook showed with `column`, from its text/html output."""
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            html = "".join(output.get("data", {}).get("text/html", ""))
            if f"<th>{column}</th>" in html:
                parser = _Table()
                parser.feed(html)
                header, *rows = [row for row in parser.rows if row]
                return [dict(zip(header, row, strict=True)) for row in rows]
    raise AssertionError(f"no table with {column!r} in the executed notebook")


def cases_file() -> list[dict]:
    return yaml.safe_load((SHARED_NOTEBOOKS / "runbooks-ci.yaml").read_text())["cases"]


def test_every_shipped_runbook_has_a_case():
    shipped = {path.relative_to(SHARED_NOTEBOOKS).as_posix() for path in SHARED_NOTEBOOKS.rglob("*.ipynb")}
    assert {case["runbook"] for case in cases_file()} == shipped


def test_every_case_passes_on_the_fleet(ci_run):
    result, lines, out = ci_run
    expected = [case.get("name", case["runbook"]) for case in cases_file()]
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(lines) == expected, result.stdout
    assert all(line.startswith("PASS ") for line in lines.values()), result.stdout

    suite = ElementTree.parse(out / "runbooks-ci.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == (str(len(expected)), "0")
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == expected
    assert all(case.find("failure") is None for case in cases)
    # the fleet's key reached the runs, and is nowhere in what they printed
    body = [line for line in FLEET_KEY.read_text().splitlines() if len(line) >= 8 and not line.startswith("-----")]
    report = (out / "runbooks-ci.xml").read_text()
    assert "ssh: with the credential SSH_PRIVATE_KEY" in report
    assert body and not any(line in report for line in body)


def test_what_the_checks_saw_on_the_fleet(ci_run):
    _, _, out = ci_run
    notebooks = out / "notebooks"
    health = table(json.loads((notebooks / "host-health-check.ipynb").read_text()), "verdict")
    assert {row["host"] for row in health} == {"web-1.fleet", "web-2.fleet", "web-3.fleet", "db-1.fleet", "db-2.fleet"}
    services = [row for row in health if row["check"].startswith("service ")]
    assert len(services) == 10 and all(row["value"] == "active" for row in services), services

    certificates = table(json.loads((notebooks / "tls-certificate-expiry.ipynb").read_text()), "days left")
    by_endpoint = {row["endpoint"]: row for row in certificates}
    assert by_endpoint["web-1.fleet:443"]["status"] == "WARN"
    assert int(by_endpoint["web-1.fleet:443"]["days left"]) < 30
    assert by_endpoint["web-2.fleet:443"]["status"] == by_endpoint["web-3.fleet:443"]["status"] == "OK"
    # with the fleet's CA (ca_file), its certificates read as trusted
    assert {row["trusted"] for row in certificates} == {"yes"}
