"""Unattended runs on a live hub (`make bench`): how soon schedules and alerts are on record, how soon a
requested run reaches its first cell, and a burst of alerts. Prints a report; never asserts timings.

One hub, `runner.max_concurrent` 2, runbooks committed to the team's repository before it starts
(schedules and alerts re-read every second). On a 2-core machine; other hubs may share it.

1. Schedule due -> run record: a `* * * * *` schedule, 3 fires (about 3 minutes): queued_at - due_at of
   each. Target: p99 (the max of 3) under 2 s.
2. Alert received -> run record: 20 Alertmanager webhooks sent one at a time (distinct fingerprints),
   through the proxy as Alertmanager sends them: the POST's round trip (the record is written before
   it answers) and queued_at - due_at (due_at: when the receiver got it). Target: p99 (the max of 20)
   under 1 s. The alerts then resolve, which cancels their runs still queued (only the record counts).
3. Request -> first cell on the runner: first_cell_at - queued_at of 5 requests of a one-cell
   runbook, one at a time, each on a quiet runner, against the wall time of `opshub run` of the same
   runbook typed in bob's running server (alternating, so drift in load hits both). The ratio of the
   medians is what starting a server of the runner per run costs beside a person's own server.
4. A burst: 60 webhooks in one second from 16 threads, 50 distinct fingerprints (10 alert names x 5
   instances, 10 of them sent twice), each starting a runbook that sleeps 1 s. Checked: at most one run
   per fingerprint (target: no duplicates), and, sampling GET api/runs?status=running every 0.2 s
   while they drain, at most max_concurrent runner runs at once (target: <= 2). Reported: the drain
   time (first run queued to the last run's end), runs per minute, and per run the time from its claim
   to its first cell (its runner server's start) beside its cells' own time.

2 and 3 are measured while the schedule's fires come due, between them (the runner idle, no fire due
for the next 20-30 s); the schedule is then removed (a commit), so the burst has the runner to itself.

5. The sandbox's cost (its own two hubs, once 1-4 are done and their hub stopped): one hub with
   `runner.sandbox: auto` (a bubblewrap sandbox per run) and one with `none`, both up at once on their
   own ports, the one-cell runbook requested on each in turn (auto, none, auto, none, ...), one at a
   time, each waited until it ends and its runner server is gone; one warm-up run per hub first,
   discarded. Reported: medians of request -> first cell and request -> end, and their ratio
   sandboxed/unsandboxed. Then bubblewrap's setup alone, as the runner's account: `bwrap ... /bin/true`
   with the command opshub.sandbox.bwrap_command builds for a job (the runner's keep list, home, work
   folder and --info-fd), and the runner's per-run check_bubblewrap() probe, each against plain
   `/bin/true`, 50 times each, interleaved: medians and the difference in ms.

`--only unattended` runs 1-4 alone, `--only sandbox` 5 alone; by default both.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pwd
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import requests
from nbformat.v4 import new_code_cell, new_notebook
from opshub.contract import RUNNER_ACCOUNT
from opshub.sandbox import bwrap_command

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers import VENV_BIN, git  # noqa: E402
from tests.livehub import Hub, wait_for  # noqa: E402

MAX_CONCURRENT = 2
FIRES = 3
LATENCY_ALERTS = 20
REQUESTS = 5
BURST_NAMES, BURST_INSTANCES, BURST_DUPLICATES = 10, 5, 10
BURST_THREADS = 16
SANDBOX_REQUESTS = 5
BWRAP_RUNS = 50
SAMPLE_SECONDS = 0.2
RUNNER_TRIGGERS = {"requested", "schedule", "alert"}
ENDED = {"succeeded", "failed", "interrupted", "cancelled", "missed"}

SCHEDULED = "bench-scheduled.ipynb"
ONE_CELL = "bench-one-cell.ipynb"
LATENCY = "bench-alert-latency.ipynb"
BURST = "bench-alert-burst.ipynb"


def runbook(title: str, code: str, parameters: str | None = None, **opshub) -> str:
    cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]})] if parameters else []
    nb = new_notebook(
        cells=[*cells, new_code_cell(code)],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "opshub": {"title": title, **opshub},
        },
    )
    return nbformat.writes(nb)


def scheduled_runbook(cron: str | None) -> str:
    return runbook("Bench: every minute", "print('scheduled')", **({"schedules": [{"cron": cron}]} if cron else {}))


RUNBOOKS = {
    SCHEDULED: scheduled_runbook("* * * * *"),
    ONE_CELL: runbook("Bench: one cell", "print('one cell')"),
    LATENCY: runbook(
        "Bench: alert latency",
        "print('alert on', host)",
        'host = "nowhere"',
        alerts=[{"alertname": "BenchLatency", "parameters": {"host": "{instance}"}}],
    ),
    BURST: runbook(
        "Bench: alert burst",
        "import time\ntime.sleep(1)\nprint('alert on', host)",
        'host = "nowhere"',
        alerts=[{"alertname": f"BenchBurst{i}", "parameters": {"host": "{instance}"}} for i in range(BURST_NAMES)],
    ),
}


def commit(hub: Hub, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (hub.upstream / name).write_text(text)
    git("add", "-A", cwd=hub.upstream)
    git("commit", "--quiet", "-m", message, cwd=hub.upstream)


def when(text: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(text) if text else None


def seconds(later: str | None, earlier: str | None) -> float | None:
    if not later or not earlier:
        return None
    return (when(later) - when(earlier)).total_seconds()


def alert(name: str, instance: str, status: str = "firing") -> dict:
    labels = {"alertname": name, "instance": instance}
    fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]  # as Alertmanager's: 16 hex
    return {"status": status, "labels": labels, "fingerprint": fingerprint}


def webhook(alerts: list[dict]) -> dict:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"version": "4", "status": status, "receiver": "opshub", "alerts": alerts}


def p99(values: list[float]) -> float:
    """The 99th percentile; with a few values, their max."""
    return max(values) if len(values) < 100 else statistics.quantiles(values, n=100)[98]


class Bench:
    def __init__(self, hub: Hub):
        self.hub = hub
        tokens = hub.tokens(users=["alice", "bob"])
        self.admin = {"Authorization": f"token {tokens['alice']}"}
        self.bob = {"Authorization": f"token {tokens['bob']}"}
        self.alerts = {"Authorization": f"Bearer {(hub.state / 'alerts-token').read_text().strip()}"}
        self.api = f"{hub.url}/services/opshub/api"
        self.other_hubs: set[int] = set()  # seen at some point of the benchmark: they share the 2 cores
        self.look_around()

    def look_around(self) -> None:
        self.other_hubs |= hubs_running() - {self.hub.proc.pid}

    def get(self, path: str, **params) -> dict:
        response = requests.get(f"{self.api}/{path}", params=params, headers=self.bob, timeout=30)
        if response.status_code != 200:
            raise AssertionError(f"GET {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def runs(self, **params) -> list[dict]:
        return self.get("runs", limit=1000, **params)["runs"]

    def post_alerts(self, session: requests.Session, alerts: list[dict]) -> tuple[float, dict]:
        began = time.perf_counter()
        response = session.post(f"{self.api}/alerts", json=webhook(alerts), headers=self.alerts, timeout=60)
        took = time.perf_counter() - began
        if response.status_code != 200 or response.json().get("problems"):
            raise AssertionError(f"POST api/alerts: {response.status_code} {response.text[:300]}")
        return took, response.json()

    def runner_servers(self) -> dict:
        response = requests.get(f"{self.hub.url}/hub/api/users/opshub-runner", headers=self.admin, timeout=30)
        if response.status_code == 404:  # the runner has not started a server yet
            return {}
        response.raise_for_status()
        return response.json()["servers"]

    def quiet(self, timeout: float = 180) -> None:
        """Nothing queued or running on the runner, and none of its servers left."""

        def idle():
            busy = [
                r for r in self.runs(status="running") + self.runs(status="queued") if r["trigger"] in RUNNER_TRIGGERS
            ]
            return not busy and not self.runner_servers()

        self.look_around()
        wait_for(idle, timeout=timeout, interval=0.5, what="the runner to be idle")

    def wait_ended(self, run_id: str, timeout: float = 180) -> dict:
        def ended():
            run = self.get(f"runs/{run_id}")
            return run if run["status"] in ENDED else None

        return wait_for(ended, timeout=timeout, interval=0.2, what=f"run {run_id} to end")

    # -- 1 -------------------------------------------------------------------------------------------------

    def fires(self) -> list[dict]:
        return sorted(self.runs(runbook=SCHEDULED, trigger="schedule"), key=lambda r: r["due_at"])

    def clear_of_fires(self, needed: float) -> None:
        """Wait until the next `needed` seconds see no schedule fire (due on the minute) and the last one's
        run has ended, so measurements 2 and 3 do not share the machine with a fire's runner server."""
        while True:
            second = datetime.datetime.now().second + datetime.datetime.now().microsecond / 1e6
            if 60 - second > needed:
                break
            time.sleep(60 - second + 1)
        self.quiet()

    def report_schedule(self) -> None:
        fires = wait_for(
            lambda: len(f := self.fires()) >= FIRES and f,
            timeout=FIRES * 60 + 120,
            interval=1,
            what=f"{FIRES} fires of the schedule",
        )[:FIRES]
        lags = [seconds(f["queued_at"], f["due_at"]) for f in fires]
        print(f"\n1. schedule due -> run record ('* * * * *', {FIRES} fires): queued_at - due_at")
        for fire, lag in zip(fires, lags, strict=True):
            shown = f"{lag:.3f} s" if lag is not None else f"not queued ({fire['status']}: {fire['error_summary']})"
            print(f"   due {fire['due_at']}: {shown}")
        measured = [lag for lag in lags if lag is not None]
        if measured:
            print(f"   p99 (max of {len(measured)}): {p99(measured):.3f} s (target: < 2 s)")

    # -- 2 -------------------------------------------------------------------------------------------------

    def alert_latency(self) -> None:
        session = requests.Session()
        self.post_alerts(session, [alert("BenchWarmup", "nowhere")])  # matches no runbook: warms the route only
        self.clear_of_fires(needed=20)
        round_trips, recorded, fired = [], [], []
        for i in range(LATENCY_ALERTS):
            sent = alert("BenchLatency", f"latency-{i}")
            took, answer = self.post_alerts(session, [sent])
            if len(answer["started"]) != 1:
                raise AssertionError(f"alert {i} started {len(answer['started'])} runs: {answer}")
            run = answer["started"][0]
            round_trips.append(took)
            recorded.append(seconds(run["queued_at"], run["due_at"]))
            fired.append(sent)
        resolved = [{**a, "status": "resolved"} for a in fired]
        _, answer = self.post_alerts(session, resolved)  # their runs still queued are cancelled
        ms = 1000
        print(f"\n2. alert received -> run record ({LATENCY_ALERTS} webhooks one at a time, through the proxy)")
        print(
            f"   POST round trip: median {statistics.median(round_trips) * ms:.1f} ms,"
            f" p99 (max of {LATENCY_ALERTS}) {p99(round_trips) * ms:.1f} ms (target: < 1 s)"
        )
        print(
            f"   queued_at - due_at: median {statistics.median(recorded) * ms:.1f} ms,"
            f" p99 (max of {LATENCY_ALERTS}) {p99(recorded) * ms:.1f} ms (target: < 1 s)"
        )
        print(f"   (then resolved: {len(answer['cancelled'])} of their runs cancelled before they started)")

    # -- 3 -------------------------------------------------------------------------------------------------

    def request_vs_opshub_run(self) -> None:
        env = self.hub.server_environment("bob")
        runbooks = self.hub.home("bob") / "runbooks"
        wait_for(lambda: (runbooks / ONE_CELL).exists(), timeout=60, what=f"{ONE_CELL} in bob's runbooks folder")
        out = Path(tempfile.mkdtemp(prefix="opshub-bench-unattended-"))
        opshub_run = [
            str(VENV_BIN / "opshub"),
            "run",
            ONE_CELL.removesuffix(".ipynb"),
            "--output",
            str(out / "o.ipynb"),
        ]

        def typed() -> float:
            began = time.perf_counter()
            subprocess.run(opshub_run, env=env, cwd=runbooks, check=True, capture_output=True)
            return time.perf_counter() - began

        typed()  # warm caches once
        to_first_cell, to_end, wall = [], [], []
        for _ in range(REQUESTS):
            self.clear_of_fires(needed=30)
            response = requests.post(
                f"{self.api}/requests", json={"runbook": ONE_CELL, "parameters": {}}, headers=self.bob, timeout=30
            )
            if response.status_code != 201:
                raise AssertionError(f"POST api/requests: {response.status_code} {response.text[:300]}")
            run = self.wait_ended(response.json()["id"])
            if run["status"] != "succeeded":
                raise AssertionError(f"the requested run ended {run['status']}: {run['error_summary']}")
            to_first_cell.append(seconds(run["first_cell_at"], run["queued_at"]))
            to_end.append(seconds(run["ended_at"], run["queued_at"]))
            self.quiet()
            wall.append(typed())
        first, ended, typed_median = (statistics.median(v) for v in (to_first_cell, to_end, wall))
        print(f"\n3. request -> first cell on the runner ({ONE_CELL}, {REQUESTS} requests, one at a time)")
        print(
            f"   first_cell_at - queued_at: median {first:.2f} s (each: {', '.join(f'{v:.2f}' for v in to_first_cell)})"
        )
        print(f"   ended_at - queued_at:      median {ended:.2f} s")
        print(f"   `opshub run` in bob's running server, wall time: median {typed_median:.2f} s")
        print(f"   ratio request-to-first-cell / opshub run: {first / typed_median:.2f}x")
        print(f"   ratio request-to-end / opshub run:        {ended / typed_median:.2f}x")

    # -- 4 -------------------------------------------------------------------------------------------------

    def burst(self) -> None:
        distinct = [alert(f"BenchBurst{n}", f"burst-{i}") for n in range(BURST_NAMES) for i in range(BURST_INSTANCES)]
        sends = distinct + distinct[::5][:BURST_DUPLICATES]
        random.Random(4).shuffle(sends)  # duplicates interleaved with the rest
        local = threading.local()
        answers: list[dict] = []
        stop = threading.Event()
        most_running = [0]
        samples = [0]

        def sample() -> None:
            while not stop.is_set():
                running = [r for r in self.runs(status="running") if r["trigger"] in RUNNER_TRIGGERS]
                most_running[0] = max(most_running[0], len(running))
                samples[0] += 1
                stop.wait(SAMPLE_SECONDS)

        def send(offset_and_alert) -> None:
            offset, sent = offset_and_alert
            if not hasattr(local, "session"):
                local.session = requests.Session()
            time.sleep(max(0.0, began + offset - time.perf_counter()))
            answers.append(self.post_alerts(local.session, [sent])[1])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        began = time.perf_counter()
        with ThreadPoolExecutor(BURST_THREADS) as pool:
            list(pool.map(send, [(i / len(sends), a) for i, a in enumerate(sends)]))
        sending = time.perf_counter() - began

        def drained():
            left = self.runs(runbook=BURST, status="queued") + self.runs(runbook=BURST, status="running")
            return not left

        self.look_around()
        wait_for(drained, timeout=900, interval=1, what="the burst's runs to drain")
        self.look_around()
        stop.set()
        sampler.join()

        runs = self.runs(runbook=BURST, trigger="alert")
        per_fingerprint: dict[str, int] = {}
        for run in runs:
            fingerprint = run["requested_by"].rsplit(" ", 1)[-1]  # "alert <alertname> <fingerprint>"
            per_fingerprint[fingerprint] = per_fingerprint.get(fingerprint, 0) + 1
        duplicated = {f: n for f, n in per_fingerprint.items() if n > 1}
        statuses: dict[str, int] = {}
        for run in runs:
            statuses[run["status"]] = statuses.get(run["status"], 0) + 1
        first_queued = min(when(r["queued_at"]) for r in runs)
        last_end = max(when(r["ended_at"]) for r in runs)
        drain = (last_end - first_queued).total_seconds()
        started = sum(len(a["started"]) for a in answers)
        already = sum(a["already_running"] for a in answers)
        print(
            f"\n4. burst: {len(sends)} webhooks ({len(distinct)} fingerprints, {len(sends) - len(distinct)} sent twice)"
            f" from {BURST_THREADS} threads, paced over 1 s: the last answered after {sending:.2f} s"
        )
        print(f"   answers: {started} runs started, {already} already running (duplicates refused)")
        slot = [seconds(r["first_cell_at"], r["started_at"]) for r in runs if r["first_cell_at"]]
        cells = [seconds(r["ended_at"], r["first_cell_at"]) for r in runs if r["first_cell_at"]]
        print(
            f"   runs recorded: {len(runs)} for {len(per_fingerprint)} of {len(distinct)} fingerprints;"
            f" fingerprints with more than one run: {len(duplicated)} (target: 0)"
        )
        print(f"   ended: {', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}")
        print(
            f"   most runner runs running at once: {most_running[0]} over {samples[0]} samples every"
            f" {SAMPLE_SECONDS} s (target: <= max_concurrent = {MAX_CONCURRENT})"
        )
        print(
            f"   drain (first run queued -> last run ended): {drain:.1f} s, {len(runs) / drain * 60:.1f} runs/minute"
            f" ({drain / len(runs) * MAX_CONCURRENT:.1f} s per run per slot, each runbook sleeping 1 s)"
        )
        print(
            f"   per run, median: claimed -> first cell {statistics.median(slot):.1f} s (the runner's server starts),"
            f" first cell -> end {statistics.median(cells):.1f} s"
        )


def hubs_running() -> set[int]:
    """The pids of the opshub hubs on the machine (`opshub hub` execs `python -m opshub.hubapp -f ...`;
    before, `python -m jupyterhub -f ...`)."""
    out = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True).stdout
    marks = (" -m opshub.hubapp -f ", " -m jupyterhub -f ")
    return {int(line.split()[0]) for line in out.splitlines() if any(m in line for m in marks)}


# -- 5 -----------------------------------------------------------------------------------------------------


def probe_hub(sandbox: str) -> Hub:
    """A hub whose runner runs with `runner.sandbox: <sandbox>`, with the one-cell runbook committed."""

    def configure(settings):
        settings["runner"] = {**settings.get("runner", {}), "max_concurrent": MAX_CONCURRENT, "sandbox": sandbox}

    hub = Hub(Path(tempfile.mkdtemp(prefix=f"opshub-bench-sandbox-{sandbox}-")), configure=configure)
    commit(hub, {ONE_CELL: RUNBOOKS[ONE_CELL]}, "the sandbox's probe runbook")
    return hub


def request_probe(bench: Bench) -> tuple[float, float]:
    """One request of the one-cell runbook, waited until it ends and the runner's server is gone:
    (first_cell_at - queued_at, ended_at - queued_at)."""

    def requested():
        response = requests.post(
            f"{bench.api}/requests", json={"runbook": ONE_CELL, "parameters": {}}, headers=bench.bob, timeout=30
        )
        if response.status_code in (404, 503):  # the service has not read the runbook yet
            return None
        if response.status_code != 201:
            raise AssertionError(f"POST api/requests: {response.status_code} {response.text[:300]}")
        return response.json()

    run = bench.wait_ended(wait_for(requested, timeout=60, interval=1, what=f"a request of {ONE_CELL}")["id"])
    if run["status"] != "succeeded":
        raise AssertionError(f"the requested run ended {run['status']}: {run['error_summary']}")
    bench.quiet()
    return seconds(run["first_cell_at"], run["queued_at"]), seconds(run["ended_at"], run["queued_at"])


def owner(home: Path) -> dict:
    """Popen's arguments that run a process as the owner of `home` (the runner's account, whatever
    its name in this deployment), when that is another account than ours and we may switch to it."""
    if os.geteuid() != 0 or not home.exists() or home.stat().st_uid == os.geteuid():
        return {}
    found = home.stat()
    return {"user": found.st_uid, "group": found.st_gid, "extra_groups": []}


def bwrap_setup(home: Path) -> dict[str, list[float]]:
    """Seconds from start to exit of `/bin/true` alone, in the sandbox a job gets (bwrap_command with the
    runner's keep list and --info-fd, read as the runner reads it) and in check_bubblewrap()'s probe,
    which the runner also runs before each job; BWRAP_RUNS of each, interleaved, as the owner of the
    runner's `home` (its account)."""
    as_account = owner(home)
    # the runner's keep list: python_folders() in `python -I`, as the runner's server starts
    folders = subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-I",
            "-c",
            "import json; from opshub.sandbox import python_folders;"
            " print(json.dumps([str(p) for p in python_folders()]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    keep = [Path(p) for p in json.loads(folders)]
    work = Path(tempfile.mkdtemp(prefix="opshub-bench-bwrap-"))  # as a run's folder: its account's alone
    if as_account:
        os.chown(work, as_account["user"], as_account["group"])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    probe = bwrap_command(["/bin/true"], home=Path("/tmp/opshub-probe-home"), work=work)  # check_bubblewrap's

    def plain() -> float:
        began = time.perf_counter()
        process = subprocess.Popen(["/bin/true"], stdin=subprocess.PIPE, cwd=work, env=env, **as_account)
        process.communicate()
        return time.perf_counter() - began

    def job() -> float:
        info_read, info_write = os.pipe()
        command = bwrap_command(["/bin/true"], home=home, work=work, keep=keep, info_fd=info_write)
        began = time.perf_counter()
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, cwd=work, env=env, pass_fds=(info_write,), **as_account
            )
        finally:
            os.close(info_write)
        with os.fdopen(info_read) as info:
            text = info.read()
        process.communicate()
        took = time.perf_counter() - began
        if process.returncode != 0 or not text.strip():
            raise AssertionError(f"bwrap ... /bin/true: exit {process.returncode}, info {text!r}")
        return took

    def probed() -> float:
        began = time.perf_counter()
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30, cwd=work, env=env, **as_account)
        took = time.perf_counter() - began
        if result.returncode != 0:
            raise AssertionError(f"check_bubblewrap's probe: exit {result.returncode}: {result.stderr.strip()}")
        return took

    times: dict[str, list[float]] = {"plain": [], "job": [], "probe": []}
    try:
        for measure in (plain, job, probed):  # warm-up, discarded
            measure()
        for _ in range(BWRAP_RUNS):
            times["plain"].append(plain())
            times["job"].append(job())
            times["probe"].append(probed())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times


def sandbox_cost() -> None:
    """5: two hubs up at once, `runner.sandbox` auto and none, requests alternating between them."""
    hubs = {"auto": probe_hub("auto"), "none": probe_hub("none")}
    began = time.monotonic()
    measured: dict[str, list[tuple[float, float]]] = {kind: [] for kind in hubs}
    others: set[int] = set()
    try:
        for hub in hubs.values():
            hub.start()
        ours = {hub.proc.pid for hub in hubs.values()}
        benches = {kind: Bench(hub) for kind, hub in hubs.items()}
        others |= hubs_running() - ours
        for bench in benches.values():
            request_probe(bench)  # warm-up, discarded
        for _ in range(SANDBOX_REQUESTS):
            for kind, bench in benches.items():
                measured[kind].append(request_probe(bench))
                others |= hubs_running() - ours
        hubs_took = time.monotonic() - began
    finally:
        for hub in hubs.values():
            hub.stop()
    home = hubs["auto"].system_home(RUNNER_ACCOUNT)  # the runner's home, as its sandboxes hide it
    setup = bwrap_setup(home)
    others |= hubs_running()

    first = {kind: statistics.median(v[0] for v in runs) for kind, runs in measured.items()}
    end = {kind: statistics.median(v[1] for v in runs) for kind, runs in measured.items()}
    print(
        f"\n5. the sandbox's cost: request -> first cell on the runner ({ONE_CELL}), two hubs up at once,"
        f" runner.sandbox auto (bubblewrap) and none; {SANDBOX_REQUESTS} requests each, one at a time,"
        f" alternating auto, none, ...; one warm-up run each discarded ({hubs_took:.0f} s)"
    )
    print(f"   {'median':<30} {'auto':>9} {'none':>9} {'auto/none':>10} {'auto-none':>10}")
    for label, values in (("first_cell_at - queued_at", first), ("ended_at - queued_at", end)):
        print(
            f"   {label:<30} {values['auto']:>7.2f} s {values['none']:>7.2f} s"
            f" {values['auto'] / values['none']:>10.2f} {(values['auto'] - values['none']) * 1000:>7.0f} ms"
        )
    for kind, runs in measured.items():
        print(
            f"   each, {kind}: first cell {', '.join(f'{v[0]:.2f}' for v in runs)};"
            f" end {', '.join(f'{v[1]:.2f}' for v in runs)} s"
        )
    ms = 1000
    plain, job, probe = (statistics.median(setup[k]) * ms for k in ("plain", "job", "probe"))
    who = pwd.getpwuid(owner(home).get("user", os.geteuid())).pw_name
    print(f"   bubblewrap's setup alone (as {who}, {BWRAP_RUNS} runs each, interleaved; start to exit, median):")
    print(f"   {'/bin/true':<52} {plain:>7.1f} ms")
    print(f"   {'bwrap <a job sandbox> /bin/true (bwrap_command)':<52} {job:>7.1f} ms  (+{job - plain:.1f} ms)")
    print(f"   {'bwrap <check_bubblewrap probe> /bin/true':<52} {probe:>7.1f} ms  (+{probe - plain:.1f} ms)")
    print(
        f"   (the runner starts both per run: about +{job + probe - 2 * plain:.0f} ms of bubblewrap per run,"
        f" beside the {(first['auto'] - first['none']) * ms:+.0f} ms measured between the medians above)"
    )
    print(
        f"   (other opshub hubs seen on the machine while it ran: {len(others)}; load average at the end"
        f" {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores: expect noise of seconds per run)"
    )


def unattended() -> None:
    """1-4, on one hub."""

    def configure(settings):
        settings.setdefault("dashboards", {})["git_sync_interval"] = 1
        settings["runner"] = {**settings.get("runner", {}), "max_concurrent": MAX_CONCURRENT}

    hub = Hub(Path(tempfile.mkdtemp(prefix="opshub-bench-unattended-")), configure=configure)
    commit(hub, RUNBOOKS, "bench runbooks")
    began = time.monotonic()
    hub.start()
    try:
        session, _ = hub.login("bob")
        hub.open_lab(session, "bob")
        bench = Bench(hub)
        wait_for(
            lambda: any(s["runbook"] == SCHEDULED for s in bench.get("schedules")["schedules"]),
            timeout=60,
            what="the service to read the schedule",
        )
        print(
            f"\n== unattended runs (max_concurrent {MAX_CONCURRENT}, {len(bench.other_hubs)} other opshub hub(s) running at the start) =="
        )
        # 2 and 3 run while the schedule's fires come due, between them
        print("(measured in the order 2, 3, 1, 4: 2 and 3 between the schedule's fires, 4 once it is removed)")
        bench.alert_latency()
        bench.request_vs_opshub_run()
        bench.report_schedule()
        commit(hub, {SCHEDULED: scheduled_runbook(None)}, "no more fires")  # the burst has the runner to itself
        wait_for(
            lambda: not any(s["runbook"] == SCHEDULED for s in bench.get("schedules")["schedules"]),
            timeout=60,
            what="the schedule to go",
        )
        bench.quiet()
        bench.burst()
        print(
            f"\n(other opshub hubs seen on the machine while it ran: {len(bench.other_hubs)};"
            f" the whole benchmark took {time.monotonic() - began:.0f} s)"
        )
    finally:
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--only", choices=("unattended", "sandbox"), help="unattended: 1-4 alone; sandbox: 5 alone (default: both)"
    )
    only = parser.parse_args().only
    if only != "sandbox":
        unattended()
    if only != "unattended":
        sandbox_cost()


if __name__ == "__main__":
    main()
