"""The cost of recording interactive runs, per cell (`make bench`). Prints a report.

In bob's live server, the same small cells run in two kernels of the same server: one on a
runbook (recorded: the opshub server extension follows its IOPub messages, masks the outputs and
spools the run after each cell) and one on a scratch notebook outside the runbooks folder (not
recorded). Rounds alternate between the two. The figure is the difference of the medians of the
time from execute_request to the kernel being idle again, as the browser sees it through the proxy.
Target: under 5 ms per cell.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.kernels import KernelSession  # noqa: E402
from tests.livehub import Hub  # noqa: E402

ROUNDS = 4
CELLS_PER_ROUND = 50
CELL = "import os\nprint('load', os.getloadavg())\nlen(os.listdir('.'))"


def per_cell_times(kernel: KernelSession, n: int) -> list[float]:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        assert kernel.execute(CELL)["status"] == "ok"
        times.append(time.perf_counter() - began)
    return times


def main() -> None:
    hub = Hub(Path(tempfile.mkdtemp(prefix="opshub-bench-interactive-")))
    hub.start()
    try:
        session, _ = hub.login("bob")
        hub.open_lab(session, "bob")
        token = hub.tokens(users=["bob"])["bob"]
        home = hub.home("bob")
        notebook = new_notebook(cells=[new_code_cell(CELL)])
        nbformat.write(notebook, home / "runbooks" / "bench-recorded.ipynb")
        nbformat.write(notebook, home / "bench-scratch.ipynb")
        recorded, plain = [], []
        with (
            KernelSession(hub.url, "bob", token, "runbooks/bench-recorded.ipynb") as on_runbook,
            KernelSession(hub.url, "bob", token, "bench-scratch.ipynb") as on_scratch,
        ):
            per_cell_times(on_runbook, 5)  # warm up both kernels
            per_cell_times(on_scratch, 5)
            for _ in range(ROUNDS):
                recorded += per_cell_times(on_runbook, CELLS_PER_ROUND)
                plain += per_cell_times(on_scratch, CELLS_PER_ROUND)
    finally:
        hub.stop()
    ms = 1000
    med_recorded, med_plain = statistics.median(recorded) * ms, statistics.median(plain) * ms
    p95 = lambda values: statistics.quantiles(values, n=20)[18] * ms  # noqa: E731
    print("\n== interactive recording, per cell (execute_request to idle, through the proxy) ==")
    print(f"cells per kernel: {len(recorded)} (in {ROUNDS} alternating rounds)")
    print(f"not recorded (scratch notebook): median {med_plain:.2f} ms, p95 {p95(plain):.2f} ms")
    print(f"recorded (runbook):              median {med_recorded:.2f} ms, p95 {p95(recorded):.2f} ms")
    print(f"cost of recording: {med_recorded - med_plain:+.2f} ms per cell ({med_recorded / med_plain:.2f}x)")
    print("target: under 5 ms per cell")


if __name__ == "__main__":
    main()
