"""Benchmarks of the run history, against a live hub (`make bench`). Prints a report; stops at any failed answer.

- Record API: runs recorded per second (start + finish) at the service, 4 clients at once. Beside it,
  the same work at both servers: one authenticated read (the service's GET api/runs?limit=1 and the
  hub's GET /hub/api/user), on the route a user's server takes to each (straight to the service at
  OPSHUB_SERVICE_URL, straight to the hub at JUPYTERHUB_API_URL, no proxy), both warmed up first.
  Every answer is checked: a refused or failed request stops the benchmark instead of counting.
- /metrics with 100,000 runs in the store: median scrape time, against the baseline of a scrape
  with a few hundred runs. Target: under 50 ms.
"""

from __future__ import annotations

import datetime
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from sqlalchemy import create_engine, insert

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from opshub.service.models import Run  # noqa: E402

from tests.livehub import Hub  # noqa: E402

CLIENTS = 4
RECORDS = 400
SCRAPES = 30


def timed_requests(count: int, call) -> float:
    """Seconds for `count` calls spread over CLIENTS threads, each with its own keep-alive session."""

    def worker(n):
        session = requests.Session()
        for _ in range(n):
            call(session)

    began = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(worker, [count // CLIENTS] * CLIENTS))
    return time.perf_counter() - began


def scrape_ms(hub: Hub, token: str) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    times = []
    for _ in range(SCRAPES):
        began = time.perf_counter()
        response = requests.get(f"{hub.url}/services/opshub/metrics", headers=headers, timeout=30)
        times.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    return statistics.median(times)


def fill_store(hub: Hub, count: int) -> None:
    engine = create_engine(f"sqlite:///{hub.state / 'opshub.sqlite'}")
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    statuses = ["succeeded", "failed", "interrupted", "succeeded"]
    rows = []
    for i in range(count):
        began = start + datetime.timedelta(minutes=i)
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "runbook": f"runbook-{i % 20}.ipynb",
                "user": f"user{i % 30}",
                "trigger": "headless",
                "parameters": {},
                "status": statuses[i % 4],
                "started_at": began,
                "ended_at": began + datetime.timedelta(seconds=i % 3600),
                "last_heartbeat_at": began,
                "failed_cell": 3 if statuses[i % 4] == "failed" else None,
                "drift": False,
                "output_truncated": False,
            }
        )
    with engine.begin() as connection:
        connection.execute(insert(Run), rows)
    engine.dispose()


def main() -> None:
    hub = Hub(Path(tempfile.mkdtemp(prefix="opshub-bench-")))
    hub.start()
    try:
        token = hub.tokens(users=["bob"])["bob"]
        metrics_token = (hub.state / "metrics-token").read_text().strip()
        auth = {"Authorization": f"token {token}"}

        # the routes a user's server takes: OPSHUB_SERVICE_URL and JUPYTERHUB_API_URL, no proxy
        service = f"http://127.0.0.1:{hub.port + 3}/services/opshub/api"
        hub_api = f"http://127.0.0.1:{hub.port + 1}/hub/api"

        def expect(response: requests.Response, status: int) -> requests.Response:
            if response.status_code != status:
                raise AssertionError(
                    f"{response.request.method} {response.url}: {response.status_code} {response.text}"
                )
            return response

        def hub_read(session):
            expect(session.get(f"{hub_api}/user", headers=auth, timeout=30), 200)

        def service_read(session):
            expect(session.get(f"{service}/runs", params={"limit": 1}, headers=auth, timeout=30), 200)

        def record(session):
            started = session.post(f"{service}/runs", json={"runbook": "bench.ipynb"}, headers=auth, timeout=30)
            run_id = expect(started, 201).json()["id"]
            finish = {"status": "succeeded"}
            expect(session.post(f"{service}/runs/{run_id}/finish", json=finish, headers=auth, timeout=30), 200)

        def start_only(session):
            expect(session.post(f"{service}/runs", json={"runbook": "bench.ipynb"}, headers=auth, timeout=30), 201)

        for call in (hub_read, service_read, record):  # warm up every route and token cache alike
            timed_requests(40, call)
        hub_reading = timed_requests(RECORDS * 2, hub_read)
        service_reading = timed_requests(RECORDS * 2, service_read)
        recording = timed_requests(RECORDS, record)
        creating = timed_requests(RECORDS, start_only)
        print(f"record API, {CLIENTS} clients (target: >= 200 run records/s):")
        print(f"  new run records: {RECORDS / creating:.0f}/s (POST api/runs)")
        print(
            f"  complete runs: {RECORDS / recording:.0f}/s (start + finish: {RECORDS * 2 / recording:.0f} requests/s)"
        )
        print(
            f"  one authenticated read, {RECORDS * 2} times: service {RECORDS * 2 / service_reading:.0f}/s,"
            f" hub {RECORDS * 2 / hub_reading:.0f}/s (service takes {service_reading / hub_reading:.2f}x the hub's time)"
        )
        small = scrape_ms(hub, metrics_token)

        # The service builds its aggregates from the store at start: fill it, then restart the hub.
        hub.stop()
        fill_store(hub, 100_000)
        began = time.perf_counter()
        hub.start()
        print(f"hub + service start with 100,000 runs in the store: {time.perf_counter() - began:.1f} s")
        scraped = requests.get(
            f"{hub.url}/services/opshub/metrics", headers={"Authorization": f"Bearer {metrics_token}"}, timeout=30
        )
        scraped.raise_for_status()
        text = scraped.text
        counted = sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("opshub_runbook_runs_total")
        )
        assert counted >= 100_000, f"the metrics count {counted} runs, not the 100,000 in the store"
        full = scrape_ms(hub, metrics_token)
        print(f"/metrics with 100,000 runs: median {full:.1f} ms over {SCRAPES} scrapes (target: < 50 ms)")
        print(f"  ratio to a scrape with {RECORDS * 2 + 40} runs: {full / small:.2f}x ({small:.1f} ms)")
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
