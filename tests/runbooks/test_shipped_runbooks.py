"""Every runbook in shared-notebooks/ is well-formed and executes headless with safe parameters
(dry run, loopback targets), as docker-stacks does with its example notebooks."""

from __future__ import annotations

import datetime
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import nbformat
import papermill
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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
        assert "[dry run] ssh" in text and "yum update -y" not in text  # lab stack uses apt, printed only
        assert "apt-get -y upgrade" in text
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
