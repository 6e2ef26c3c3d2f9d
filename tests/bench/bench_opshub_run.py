"""`opshub run` against plain papermill on the same runbook (`make bench`). Prints a report.

Both run inside bob's live server environment: `opshub run` records through the live opshub
service (start, heartbeats, finish with the masked output); papermill only executes. The ratio
of the medians is the cost of recording. Target: at most 1.10x.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers import VENV_BIN  # noqa: E402
from tests.livehub import Hub  # noqa: E402

ROUNDS = 5
RUNBOOK = "host-health-check"
PARAMETERS = [("services", "[]"), ("disk_fail_percent", "100")]


def timed(argv, env, cwd) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - began


def main() -> None:
    hub = Hub(Path(tempfile.mkdtemp(prefix="opshub-bench-run-")))
    hub.start()
    try:
        session, _ = hub.login("bob")
        hub.open_lab(session, "bob")
        env = hub.server_environment("bob")
        runbooks = hub.home("bob") / "runbooks"
        out = Path(tempfile.mkdtemp())
        opshub = [str(VENV_BIN / "opshub"), "run", RUNBOOK, "--output", str(out / "o.ipynb")]
        papermill = [str(VENV_BIN / "papermill"), "--cwd", str(runbooks), f"{RUNBOOK}.ipynb", str(out / "p.ipynb")]
        for name, value in PARAMETERS:
            opshub += ["-p", name, value]
            papermill += ["-y", f"{name}: {value}"]
        plain, recorded = [], []
        timed(papermill, env, runbooks)  # warm caches once
        for _ in range(ROUNDS):  # alternate, so drift in machine load hits both alike
            plain.append(timed(papermill, env, runbooks))
            recorded.append(timed(opshub, env, runbooks))
        p, o = statistics.median(plain), statistics.median(recorded)
        print(f"{RUNBOOK}: papermill median {p:.2f} s, opshub run median {o:.2f} s over {ROUNDS} rounds")
        print(f"  ratio opshub run / papermill: {o / p:.2f}x (target: <= 1.10x)")
        shutil.rmtree(out)
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
