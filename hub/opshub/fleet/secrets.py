"""The practice fleet's secrets: the ssh key its hosts accept, handed to unattended runs as the runner
credential SSH_PRIVATE_KEY, and the TLS certificates of its web hosts (one expires soon, on purpose)."""

from __future__ import annotations

import contextlib
import datetime
import grp
import os
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..accounts import create_account
from ..contract import RUNNER_ACCOUNT
from .definition import SOON_EXPIRING_DAYS, Host

# Where the embedded default's `runner.credentials.SSH_PRIVATE_KEY` reads it (hub/opshub/embedded.yaml)
RUNNER_KEY = Path("/etc/opshub/runner/fleet-ssh-key")


def ssh_key(folder: Path) -> Path:
    """The fleet's ed25519 key pair in `folder` (made once): returns the private key's path."""
    key = folder / "id_ed25519"
    if not key.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opshub practice fleet", "-f", str(key)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return key


def install_runner_credential(key: Path) -> Path:
    """Copy the private key where the runner reads it, readable by the runner's account only (the
    account created the way the hub creates it when it does not exist yet)."""
    try:
        grp.getgrnam(RUNNER_ACCOUNT)
    except KeyError:
        create_account(RUNNER_ACCOUNT, Path("/home") / RUNNER_ACCOUNT)
    gid = grp.getgrnam(RUNNER_ACCOUNT).gr_gid
    RUNNER_KEY.parent.mkdir(parents=True, exist_ok=True)
    os.chown(RUNNER_KEY.parent, 0, gid)
    RUNNER_KEY.parent.chmod(0o750)
    partial = RUNNER_KEY.with_suffix(".partial")
    partial.write_bytes(key.read_bytes())
    os.chown(partial, 0, gid)
    partial.chmod(0o440)
    partial.replace(RUNNER_KEY)
    return RUNNER_KEY


def remove_runner_credential() -> None:
    """Delete the copy, and its folder when nothing else is in it: a folder left behind that other
    runners' accounts may not enter would refuse their runs the (optional) key."""
    RUNNER_KEY.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: other credentials live there too
        RUNNER_KEY.parent.rmdir()


def _private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return key


def tls_certificates(folder: Path, web_hosts: list[Host]) -> dict[str, Path]:
    """A certificate authority of the fleet's own and, per web host, a folder with host.crt and
    host.key (renewed at every `fleet up`). The first host's expires in SOON_EXPIRING_DAYS days."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _private_key(folder / "ca.key")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opshub practice fleet CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    folders = {}
    for index, host in enumerate(web_hosts):
        days = SOON_EXPIRING_DAYS if index == 0 else 365
        host_folder = folder / host.short
        host_folder.mkdir(exist_ok=True)
        key = _private_key(host_folder / "host.key")
        host_folder.joinpath("host.key").chmod(0o644)  # read by nginx inside the host only
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host.name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host.name)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        (host_folder / "host.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        folders[host.name] = host_folder
    return folders
