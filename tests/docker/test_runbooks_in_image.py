"""Every runbook in shared-notebooks/ executes inside the ops image, headless with papermill,
with the same safe parameters as tests/runbooks (dry run, loopback targets only)."""

from __future__ import annotations

import json

import nbformat
import pytest

from tests.docker.engine import run_in_ops
from tests.helpers import ARTIFACTS, SHARED_NOTEBOOKS
from tests.runbooks.test_shipped_runbooks import RUNBOOKS, safe_parameters, tls_endpoint  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(2700)


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.stem)
def test_runbook_executes_in_the_ops_image(images, path, tls_endpoint):  # noqa: F811 (fixture)
    out = ARTIFACTS / "docker-runbooks"
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o777)  # the image's user (uid 1000) writes the executed notebook here
    result = run_in_ops(
        "papermill", f"/home/ops/runbooks/{path.name}", f"/out/{path.name}",
        "--cwd", "/home/ops/runbooks", "--kernel", "python3", "--no-progress-bar",
        "--parameters_yaml", json.dumps(safe_parameters(path.stem, tls_endpoint)),
        # the host's network, for the loopback TLS endpoint of the certificate runbook
        args=("--network", "host", "-v", f"{SHARED_NOTEBOOKS}:/home/ops/runbooks:ro", "-v", f"{out}:/out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    executed = nbformat.read(out / path.name, as_version=4)
    errors = [o for cell in executed.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert executed.metadata["papermill"]["parameters"] == safe_parameters(path.stem, tls_endpoint)
    if path.stem == "patch-server-stack":
        text = "".join(o.get("text", "") for cell in executed.cells for o in cell.get("outputs", []))
        assert "[dry run] ssh" in text
