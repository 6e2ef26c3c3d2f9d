"""Watching a run live (`make bench`): from a cell's end to the run's page showing it, in Chromium.

Each cell of the runbook prints the time it ends (`time.time()`, the same clock as this process) as its
last line. Two pages watch the same run: the run page as it is (it follows the run in place, live.js),
and the baseline, the same page reloading itself every 3 s (the run page before it updated in place:
its `<meta refresh>`, live.js kept out). For each cell, the time it became visible on each page is
polled every 20 ms. Both kinds of run: a requested run on the runner, and a headless `opshub run` as a
terminal in bob's server runs it. Every run must succeed and every cell be seen on both pages, or the
benchmark stops. Target: p50 and p95 under 1 s on the live page.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.helpers import VENV_BIN, ensure_debian_package, git  # noqa: E402
from tests.livehub import DEMO_PASSWORD, Hub, wait_for  # noqa: E402

CELLS = 10
CELL_SECONDS = 1.5  # each cell's work before it prints its end
RELOAD_SECONDS = 3  # the baseline: the old page's refresh
POLL_SECONDS = 0.02
RUNBOOK = "bench-live.ipynb"
PREFIX = "/services/opshub/"
FRAME = "iframe.notebook"  # the notebook shown (a newer one loads hidden, and is not .notebook until shown)


def runbook() -> dict:
    cells = [new_markdown_cell("# Live bench")]
    for n in range(CELLS):
        cells.append(new_code_cell(f"import time\ntime.sleep({CELL_SECONDS})\nprint('cell {n} ended at', time.time())"))
    kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return new_notebook(cells=cells, metadata={"kernelspec": kernel})


def ended_at(text: str) -> dict[int, float]:
    """{cell: the time it printed} of every cell a page shows."""
    seen = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 5 and words[0] == "cell" and words[2:4] == ["ended", "at"]:
            seen[int(words[1])] = float(words[4])
    return seen


def frame_text(page) -> str:
    try:
        return page.frame_locator(FRAME).locator("body").inner_text(timeout=200)
    except Exception:  # reloading, or no output yet
        return ""


def watch(pages: dict, run_is_over, timeout: float = 300) -> dict[str, list[float]]:
    """Poll every page until each shows every cell: {page: [seconds from each cell's end to seen]}."""
    seen: dict[str, dict[int, float]] = {name: {} for name in pages}
    deadline = time.monotonic() + timeout
    while any(len(cells) < CELLS for cells in seen.values()):
        if time.monotonic() > deadline:
            raise SystemExit(f"not every cell was seen in {timeout} s: { ({k: sorted(v) for k, v in seen.items()}) }")
        for name, page in pages.items():
            now = time.time()
            for cell, at in ended_at(frame_text(page)).items():
                seen[name].setdefault(cell, now - at)
        time.sleep(POLL_SECONDS)
    if not run_is_over():
        raise SystemExit("every cell was seen but the run did not succeed")
    return {name: [cells[n] for n in range(CELLS)] for name, cells in seen.items()}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(kind: str, latencies: dict[str, list[float]]) -> None:
    live, old = latencies["live"], latencies["reloading"]
    print(f"{kind}: cell end to visible on the run page, {CELLS} cells")
    print(f"  live page: p50 {statistics.median(live):.2f} s, p95 {percentile(live, 95):.2f} s (target: < 1 s)")
    print(
        f"  baseline, the page reloading every {RELOAD_SECONDS} s: p50 {statistics.median(old):.2f} s,"
        f" p95 {percentile(old, 95):.2f} s"
    )
    print(f"  ratio live / baseline: p50 {statistics.median(live) / statistics.median(old):.2f}x")


def main() -> None:
    ensure_debian_package("chromium", CHROMIUM)
    from playwright.sync_api import sync_playwright

    hub = Hub(Path(tempfile.mkdtemp(prefix="opshub-bench-live-")))
    nbformat.write(runbook(), hub.upstream / RUNBOOK)
    git("add", RUNBOOK, cwd=hub.upstream)
    git("commit", "-q", "-m", "add the bench runbook", cwd=hub.upstream)
    hub.start()
    try:
        token = hub.tokens(users=["bob"])["bob"]
        session, _ = hub.login("bob")
        hub.open_lab(session, "bob")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            pages = {"live": context.new_page(), "reloading": context.new_page()}
            log_in(pages["live"], hub)
            # the baseline: no live.js, a reload every RELOAD_SECONDS, as the run page's meta refresh did
            pages["reloading"].route("**/static/live.js", lambda route: route.abort())
            reload = f"if (window === window.top) setTimeout(() => location.reload(), {RELOAD_SECONDS * 1000})"
            pages["reloading"].add_init_script(reload)  # the page only, not its notebook frame

            def open_run(run_id: str) -> None:
                for page in pages.values():
                    page.goto(f"{hub.url}{PREFIX}runs/{run_id}")

            # a requested run, on the runner
            answer = hub.service_api(token, "POST", "requests", json={"runbook": RUNBOOK, "parameters": {}})
            assert answer.status_code == 201, answer.text
            run_id = answer.json()["id"]
            open_run(run_id)
            report("requested run (runner)", watch(pages, lambda: succeeded(hub, token, run_id)))

            # a headless run, `opshub run` as a terminal in bob's server runs it
            runbooks = hub.home("bob") / "runbooks"
            env = {**os.environ, **hub.server_environment("bob")}
            command = subprocess.Popen(
                [str(VENV_BIN / "opshub"), "run", RUNBOOK.removesuffix(".ipynb"), "--events", "json"],
                env=env,
                cwd=runbooks,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            started = command.stdout.readline()  # {"event": "started", "run_id": ...}
            run_id = json.loads(started)["run_id"]
            open_run(run_id)
            report("headless run (opshub run)", watch(pages, lambda: succeeded(hub, token, run_id)))
            if command.wait(timeout=120) != 0:
                raise SystemExit("opshub run did not succeed")
            browser.close()
    finally:
        hub.stop()


def log_in(page, hub: Hub) -> None:
    page.goto(f"{hub.url}/hub/login?next=/hub/home")
    page.fill("#username_input", "bob")
    page.fill("#password_input", DEMO_PASSWORD)
    page.click("#login_submit")
    page.wait_for_url(f"{hub.url}/hub/home")


def succeeded(hub: Hub, token: str, run_id: str) -> bool:
    return wait_for(
        lambda: hub.service_api(token, "GET", f"runs/{run_id}").json()["status"] == "succeeded",
        timeout=60,
        what="the run to succeed",
    )


if __name__ == "__main__":
    main()
