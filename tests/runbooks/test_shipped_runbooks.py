"""Every runbook in shared-notebooks/ is well-formed and executes headless with safe parameters
(dry run, loopback targets), as docker-stacks does with its example notebooks."""

from __future__ import annotations

import datetime
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opshub.runbooks.metadata import read_runbook_metadata
from opshub.runbooks.params import declared_parameters
from opshub.runbooks.typed_parameters import ParameterError, RepositoryFiles, parameters_of, resolve

from tests.helpers import ARTIFACTS, SHARED_NOTEBOOKS

RUNBOOKS = sorted(SHARED_NOTEBOOKS.glob("*.ipynb"))


@pytest.fixture(scope="module")
def tls_endpoint(tmp_path_factory):
    """A real TLS server on loopback with a self-signed certificate valid for 200 days."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opshub-test.localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=200))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("opshub-test.localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def safe_parameters(name: str, tls_endpoint: str) -> dict:
    """Parameters that change nothing and reach only this machine."""
    return {
        "patch-server-stack": {"stack": "lab", "dry_run": True},
        "host-health-check": {"hosts": ["localhost"], "services": [], "disk_fail_percent": 100},
        "tls-certificate-expiry": {"endpoints": [tls_endpoint], "warn_days": 30, "critical_days": 7},
    }[name]


def test_there_are_at_least_three_runbooks():
    assert len(RUNBOOKS) >= 3


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
def test_runbook_is_well_formed(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    meta = notebook.metadata.get("opshub", {})
    assert meta.get("title") and meta.get("description"), "opshub metadata needs a title and a description"
    assert isinstance(meta.get("changes_systems"), bool), "say whether the runbook changes systems"
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells), "no papermill parameters cell"
    assert notebook.cells[0].cell_type == "markdown", "a runbook starts by explaining itself"
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit without outputs"


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
def test_runbook_executes_headless(path: Path, tls_endpoint):
    output = ARTIFACTS / "runbooks" / path.name
    output.parent.mkdir(parents=True, exist_ok=True)
    result = papermill.execute_notebook(
        str(path),
        str(output),
        parameters=safe_parameters(path.stem, tls_endpoint),
        cwd=str(SHARED_NOTEBOOKS),
        kernel_name="python3",
        progress_bar=False,
    )
    errors = [o for cell in result.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for cell in result.cells for o in cell.get("outputs", []))
    if path.stem == "patch-server-stack":
        assert (
            "[dry run] ssh root@localhost" in text and "yum update -y" not in text
        )  # lab stack uses apt, printed only
        assert "apt-get -y -o Dpkg::Options::=--force-confold upgrade" in text
        assert "no Prometheus checks" in text  # the lab stack names no prometheus: said, and skipped
        assert "Dry run: nothing was changed." in text
    if path.stem == "tls-certificate-expiry":
        table = "".join(
            str(o.get("data", {}).get("text/plain", "")) for cell in result.cells for o in cell.get("outputs", [])
        )
        assert "opshub-test.localhost" in table and "OK" in table


def test_patch_runbook_refuses_an_unknown_stack(tmp_path):
    path = SHARED_NOTEBOOKS / "patch-server-stack.ipynb"
    with pytest.raises(papermill.PapermillExecutionError, match="unknown stack 'nope'"):
        papermill.execute_notebook(
            str(path),
            str(tmp_path / "out.ipynb"),
            parameters={"stack": "nope"},
            cwd=str(SHARED_NOTEBOOKS),
            kernel_name="python3",
            progress_bar=False,
        )


PATCH_RUNBOOK = SHARED_NOTEBOOKS / "patch-server-stack.ipynb"


def run_patch_dry_run(folder: Path, stacks: str, **parameters) -> tuple[str, list[dict]]:
    """A dry run of the patching runbook on an inventory of its own; its printed text and the hosts table it
    published (the `hosts` artifact, or the summary cell's table)."""
    (folder / "inventory").mkdir(exist_ok=True)
    (folder / "inventory" / "stacks.yaml").write_text(stacks)
    result = papermill.execute_notebook(
        str(PATCH_RUNBOOK),
        str(folder / "out.ipynb"),
        parameters={"dry_run": True, **parameters},
        cwd=str(folder),
        kernel_name="python3",
        progress_bar=False,
    )
    outputs = [o for cell in result.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    artifacts = [
        o["data"]["application/vnd.opshub.artifact+json"]
        for o in outputs
        if "application/vnd.opshub.artifact+json" in o.get("data", {})
    ]
    hosts = [a["data"] for a in artifacts if a["name"] == "hosts"]
    return text, hosts[-1] if hosts else []


# loopback addresses where nothing listens on :22: ssh is refused at once, as by a host that is down
LOOPBACK_STACK = """stacks:
  five:
    hosts: [127.0.0.2, 127.0.0.3, 127.0.0.4, 127.0.0.5, 127.0.0.6]
    package_manager: apt
    services: [nginx]
    ssh_user: ops
    prometheus: http://127.0.0.1:9
"""


@pytest.mark.parametrize(
    "batch, sections",
    [
        ("1", [["127.0.0.2"], ["127.0.0.3"], ["127.0.0.4"], ["127.0.0.5"], ["127.0.0.6"]]),
        ("2", [["127.0.0.2", "127.0.0.3"], ["127.0.0.4", "127.0.0.5"], ["127.0.0.6"]]),
        ("40%", [["127.0.0.2", "127.0.0.3"], ["127.0.0.4", "127.0.0.5"], ["127.0.0.6"]]),
        ("50%", [["127.0.0.2", "127.0.0.3", "127.0.0.4"], ["127.0.0.5", "127.0.0.6"]]),
        ("100%", [["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]]),
    ],
)
def test_a_dry_run_shows_its_sections_and_what_it_would_run_in_each(tmp_path, batch, sections):
    text, hosts = run_patch_dry_run(tmp_path, LOOPBACK_STACK, stack="five", batch=batch)
    for number, section in enumerate(sections, 1):
        assert f"=== Section {number} of {len(sections)}: {', '.join(section)}\n" in text
    assert f"=== Section {len(sections) + 1} " not in text
    assert text.count("[dry run] ssh ops@") == 2 * 5  # update and reboot of each host, printed only
    assert "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get -y" in text and "sudo -n systemctl reboot" in text
    # the pending updates were asked for for real: every host refused ssh, and the table says so
    assert [row["host"] for row in hosts] == [host for section in sections for host in section]
    assert {row["status"] for row in hosts} == {"unreachable"}
    assert all("Connection refused" in row["note"] for row in hosts)
    assert [row["section"] for row in hosts] == [n for n, section in enumerate(sections, 1) for _ in section]


def test_a_dry_run_of_some_hosts_keeps_the_stacks_percentage(tmp_path):
    """50% of a stack of five is three hosts a section, even when only two of them are patched this time."""
    text, hosts = run_patch_dry_run(
        tmp_path, LOOPBACK_STACK, stack="five", batch="50%", hosts=["127.0.0.6", "127.0.0.3"]
    )
    assert "=== Section 1 of 1: 127.0.0.3, 127.0.0.6\n" in text  # in the inventory's order
    assert [row["host"] for row in hosts] == ["127.0.0.3", "127.0.0.6"]


def test_a_dry_run_without_prometheus_says_it_skips_those_checks(tmp_path):
    text, _ = run_patch_dry_run(
        tmp_path, LOOPBACK_STACK.replace("    prometheus: http://127.0.0.1:9\n", ""), stack="five"
    )
    assert "Stack five names no prometheus in the inventory: no Prometheus checks" in text
    assert "probe_success" not in text and "up{" not in text


def test_a_dry_run_names_the_prometheus_checks_of_the_gate(tmp_path):
    text, _ = run_patch_dry_run(tmp_path, LOOPBACK_STACK, stack="five")
    assert "Health gate: ssh, systemctl, and Prometheus at http://127.0.0.1:9" in text
    assert (
        'health gate for 127.0.0.2, up to 120 s: a new boot identity and ssh answering, systemctl is-active nginx, up{job="node",host="127.0.0.2"} == 1'
        in text
    )


@pytest.mark.parametrize(
    "batch, problem",
    [("0", "say how many hosts per section"), ("ten", "say how many hosts per section"), ("150%", "at most 100%")],
)
def test_a_wrong_batch_is_refused_naming_it(tmp_path, batch, problem):
    with pytest.raises(papermill.PapermillExecutionError, match=problem) as failed:
        run_patch_dry_run(tmp_path, LOOPBACK_STACK, stack="five", batch=batch)
    assert f"batch {batch!r}" in str(failed.value)


def test_a_live_run_does_not_start_while_a_host_cannot_be_read(tmp_path):
    """dry_run False on hosts that refuse ssh: nothing is run, the error names each host, none is touched."""
    with pytest.raises(
        papermill.PapermillExecutionError, match="Nothing was changed: 127.0.0.2: reading the pending"
    ) as failed:
        run_patch_dry_run(tmp_path, LOOPBACK_STACK, stack="five", batch="2", dry_run=False)
    assert "127.0.0.6: reading the pending updates failed" in str(failed.value)
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    text = "".join(o.get("text", "") for cell in executed.cells for o in cell.get("outputs", []))
    assert "=== Section" not in text and "rebooting" not in text


def test_the_patching_runbooks_metadata_declares_batch_and_checks_it():
    metadata = read_runbook_metadata(PATCH_RUNBOOK)  # raises naming the key when something is wrong
    parameters = parameters_of(metadata, declared_parameters(PATCH_RUNBOOK))
    assert parameters["batch"].type == "string" and parameters["batch"].default == "1"
    assert parameters["service_timeout"].type == "integer" and parameters["service_timeout"].default == 120
    files = RepositoryFiles(SHARED_NOTEBOOKS)
    values = resolve(parameters, {"stack": "fleet-web", "batch": "50%", "hosts": "web-2.fleet"}, files, text=True)
    assert values["batch"] == "50%" and values["hosts"] == ["web-2.fleet"] and values["dry_run"] is True
    for wrong in ("0", "2 hosts", "-1", "50 %"):
        with pytest.raises(ParameterError, match=f"parameter batch: '{re.escape(wrong)}' is not"):
            resolve(parameters, {"batch": wrong}, files, text=True)
    with pytest.raises(ParameterError, match="parameter hosts"):  # the hosts follow the stack
        resolve(parameters, {"stack": "fleet-db", "hosts": "web-1.fleet"}, files, text=True)


def test_the_inventory_has_the_practice_fleets_stacks():

    stacks = yaml.safe_load((SHARED_NOTEBOOKS / "inventory" / "stacks.yaml").read_text())["stacks"]
    assert stacks["fleet-web"]["hosts"] == ["web-1.fleet", "web-2.fleet", "web-3.fleet"]
    assert stacks["fleet-db"]["hosts"] == ["db-1.fleet", "db-2.fleet"]
    for name in ("fleet-web", "fleet-db"):
        assert stacks[name]["prometheus"] == "http://127.0.0.1:9390"
        assert stacks[name]["package_manager"] == "apt" and stacks[name]["ssh_user"] == "ops"
    assert {"web", "db", "monitoring", "lab"} <= set(stacks)  # the examples stay


def test_the_patching_status_dashboard_executes_headless(tmp_path):
    """Without a run history (no service here) it says so, lists every stack of the inventory, and starts the
    timer that follows the runs without failing."""
    folder = SHARED_NOTEBOOKS / "dashboards"
    result = papermill.execute_notebook(
        str(folder / "patching-status.ipynb"),
        str(tmp_path / "out.ipynb"),
        cwd=str(folder),
        kernel_name="python3",
        progress_bar=False,
    )
    outputs = [o for cell in result.cells for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "6 stacks in the inventory; 0 finished patching runs from no run history here." in text
    table = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "fleet-web" in table and "3 no run yet" in table
    # the host table that follows the runs, and the stack picker: widgets, the picker and its output last
    widgets = [
        o["data"]["text/plain"] for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widgets[0].startswith("VBox(") and "Refresh now" in widgets[0]
    assert widgets[-2].startswith("Dropdown(") and widgets[-1].startswith("Output(")
