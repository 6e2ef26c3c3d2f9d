"""Talking to the Docker Engine from the Docker tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

OPS_IMAGE = "opshub/ops:latest"
HUB_IMAGE = "opshub/hub:latest"
SOURCE_LABEL = "org.opshub.source"  # images/build.sh: the digest of the sources an image was built from


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr or result.stdout}")
    return result


def source_label(image: str) -> str:
    """The digest of the opshub sources the image was built from ("" when it has none)."""
    labels = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]["Labels"] or {}
    return labels.get(SOURCE_LABEL, "")


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def run_in_ops(*command: str, args: tuple[str, ...] = (), image: str = OPS_IMAGE, timeout: float = 300):
    """Run a command in a throw-away container of the ops image."""
    return docker("run", "--rm", *args, image, *command, check=False, timeout=timeout)


@contextlib.contextmanager
def running_engine(log_file: Path, timeout: float = 60):
    """The running Docker Engine, else a `dockerd` started for the block and stopped after it
    (only the one started here)."""
    if engine_answers():
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log:
        proc = subprocess.Popen(["/usr/sbin/dockerd"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not engine_answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"dockerd did not start; see {log_file}")
        time.sleep(0.5)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
