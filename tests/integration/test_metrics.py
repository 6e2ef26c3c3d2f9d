"""Prometheus metrics of runbook runs: a real Prometheus (Debian package) scrapes the opshub
service of a live hub; PromQL returns exactly the runs recorded, also after the service is killed."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.helpers import ROOT, ensure_debian_package
from tests.livehub import Hub, free_port_block, start_server, wait_for
from tests.terminals import Terminal

MONITORING = ROOT / "hub" / "docs" / "monitoring"
METRIC_NAMES = {
    "opshub_runbook_runs_total",
    "opshub_runbook_run_duration_seconds",
    "opshub_runbook_runs_in_progress",
    "opshub_runbook_last_run_timestamp_seconds",
    "opshub_runbook_cell_failures_total",
}


@pytest.fixture(scope="module")
def metrics_hub(tmp_path_factory):
    """A hub of its own, so that the counts below are exactly the runs this module records."""

    def short_heartbeat(settings):
        settings["history"] = {"heartbeat_timeout": 30}

    hub = Hub(tmp_path_factory.mktemp("metrics-hub"), configure=short_heartbeat)
    hub.start()
    yield hub
    hub.stop()


class Prometheus:
    def __init__(self, root: Path, target_port: int, token_file: Path):
        self.port = free_port_block(1)
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(MONITORING / "opshub-alerts.yml")],
            "scrape_configs": [
                {
                    "job_name": "opshub",
                    "metrics_path": "/services/opshub/metrics",
                    "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = start_server(
            [
                "prometheus",
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            f"prometheus-{self.port}.log",
            f"{self.url}/-/ready",
        )

    def query(self, promql: str) -> dict[tuple, float]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        assert response["status"] == "success", response
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in response["data"]["result"]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def prometheus(metrics_hub, tmp_path_factory):
    ensure_debian_package("prometheus", "/usr/bin/prometheus")
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), metrics_hub.port, metrics_hub.state / "metrics-token")
    yield server
    server.stop()


def record(hub, token, runbook, status, failed_cell=None):
    run = hub.service_api(token, "POST", "runs", json={"runbook": runbook}).json()
    if status != "running":
        body = {
            "status": status,
            "failed_cell": failed_cell,
            "error_summary": "boom" if failed_cell is not None else None,
        }
        assert hub.service_api(token, "POST", f"runs/{run['id']}/finish", json=body).ok
    return run["id"]


def scrape(hub, token=None) -> requests.Response:
    token = token if token is not None else (hub.state / "metrics-token").read_text().strip()
    return requests.get(f"{hub.url}/services/opshub/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def wait_for_query(prom: Prometheus, promql: str, expected: dict) -> None:
    def matches():
        got = {dict(k).get("status") or dict(k).get("runbook"): v for k, v in prom.query(promql).items()}
        return got if got == expected else None

    try:
        wait_for(matches, timeout=30, interval=1, what=promql)
    except TimeoutError:
        raise AssertionError(f"{promql}: {prom.query(promql)} != {expected}") from None


def service_pid(hub) -> int:
    out = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "opshub.service" in line and str(hub.state) in line:
            return int(line.split()[0])
    raise AssertionError("the opshub service process was not found")


def test_metrics_need_the_bearer_token(metrics_hub):
    assert scrape(metrics_hub, token="wrong").status_code == 401
    assert requests.get(f"{metrics_hub.url}/services/opshub/metrics", timeout=10).status_code == 401
    assert scrape(metrics_hub).status_code == 200


def test_prometheus_counts_exactly_the_recorded_runs(metrics_hub, prometheus):
    tokens = metrics_hub.tokens(users=["alice", "bob"])
    bob, alice = tokens["bob"], tokens["alice"]
    for _ in range(3):
        record(metrics_hub, bob, "host-health-check.ipynb", "succeeded")
    record(metrics_hub, bob, "host-health-check.ipynb", "failed", failed_cell=4)
    record(metrics_hub, alice, "patch-server-stack.ipynb", "failed", failed_cell=7)
    record(metrics_hub, alice, "patch-server-stack.ipynb", "interrupted")
    record(metrics_hub, bob, "not-in-the-repository.ipynb", "succeeded")  # counted as `other`
    still_running = record(metrics_hub, bob, "tls-certificate-expiry.ipynb", "running")

    wait_for_query(
        prometheus,
        "sum by (status) (opshub_runbook_runs_total)",
        {"succeeded": 4.0, "failed": 2.0, "interrupted": 1.0},
    )
    wait_for_query(
        prometheus,
        'sum by (runbook) (opshub_runbook_runs_total{status="failed"})',
        {"host-health-check.ipynb": 1.0, "patch-server-stack.ipynb": 1.0},
    )
    wait_for_query(prometheus, 'sum by (runbook) (opshub_runbook_runs_total{runbook="other"})', {"other": 1.0})
    wait_for_query(
        prometheus,
        "sum by (runbook) (opshub_runbook_runs_in_progress)",
        {
            "host-health-check.ipynb": 0.0,
            "patch-server-stack.ipynb": 0.0,
            "tls-certificate-expiry.ipynb": 1.0,
            "dashboards/patching-status.ipynb": 0.0,  # every notebook of the repository has a series
        },
    )
    wait_for_query(prometheus, "sum(opshub_runbook_cell_failures_total)", {None: 2.0})
    wait_for_query(prometheus, "sum(opshub_runbook_run_duration_seconds_count)", {None: 7.0})

    # labels stay bounded: no user, run id or parameters anywhere
    text = scrape(metrics_hub).text
    assert "bob" not in text and "alice" not in text
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", text)
    # the same counts as the history
    history = metrics_hub.service_api(bob, "GET", "runs", params={"status": "failed"}).json()
    assert history["total"] == 2
    assert metrics_hub.service_api(bob, "POST", f"runs/{still_running}/finish", json={"status": "succeeded"}).ok


def test_exposition_passes_promtool_and_names_the_documented_metrics(metrics_hub):
    text = scrape(metrics_hub).text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    families = set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))
    assert families >= METRIC_NAMES


def test_killed_service_restarts_and_nothing_stays_running(metrics_hub, prometheus):
    bob = metrics_hub.tokens(users=["bob"])["bob"]
    alive = record(metrics_hub, bob, "host-health-check.ipynb", "running")  # its client keeps going
    abandoned = record(metrics_hub, bob, "patch-server-stack.ipynb", "running")  # its client died with it

    os.kill(service_pid(metrics_hub), signal.SIGKILL)
    # JupyterHub restarts its managed services; the history is all in the database
    wait_for(lambda: metrics_hub.service_api(bob, "GET", "runs").status_code == 200, timeout=60, what="restart")
    assert metrics_hub.service_api(bob, "POST", f"runs/{alive}/heartbeat").status_code == 200
    assert metrics_hub.service_api(bob, "POST", f"runs/{alive}/finish", json={"status": "succeeded"}).ok

    # the abandoned run sends no heartbeat: after the 30 s window the service ends it
    def ended():
        run = metrics_hub.service_api(bob, "GET", f"runs/{abandoned}").json()
        return run if run["status"] == "interrupted" else None

    run = wait_for(ended, timeout=90, interval=2, what="the abandoned run to be interrupted")
    assert "no heartbeat" in run["error_summary"]
    assert metrics_hub.service_api(bob, "GET", "runs", params={"status": "running"}).json()["total"] == 0
    # Prometheus agrees with the history after the restart
    totals = {}
    for status in ["succeeded", "failed", "interrupted"]:
        totals[status] = float(metrics_hub.service_api(bob, "GET", "runs", params={"status": status}).json()["total"])
    wait_for_query(prometheus, "sum by (status) (opshub_runbook_runs_total)", totals)


def test_shipped_monitoring_files_are_valid():
    rules = subprocess.run(["promtool", "check", "rules", str(MONITORING / "opshub-alerts.yml")], capture_output=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"opshub_[a-z_]+", exprs))
    known = METRIC_NAMES | {"opshub_runbook_run_duration_seconds_bucket"}
    assert used <= known, used - known
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "opshub")
    assert job["metrics_path"] == "/services/opshub/metrics" and job["authorization"]["type"] == "Bearer"


def alerts(prom: Prometheus, name: str, runbook: str) -> list[dict]:
    """The alerts `name` of `runbook` that Prometheus holds now (pending or firing)."""
    response = requests.get(f"{prom.url}/api/v1/alerts", timeout=10).json()
    assert response["status"] == "success", response
    return [
        a for a in response["data"]["alerts"] if a["labels"]["alertname"] == name and a["labels"]["runbook"] == runbook
    ]


def rules_evaluated(prom: Prometheus) -> float:
    """When Prometheus last evaluated opshub's alert rules (Unix time; 0 if never)."""
    response = requests.get(f"{prom.url}/api/v1/rules", timeout=10).json()
    group = next(g for g in response["data"]["groups"] if g["name"] == "opshub-runbooks")
    assert all(rule["health"] != "err" for rule in group["rules"]), group
    when = group["lastEvaluation"]
    if when.startswith("0001-"):
        return 0.0
    # RFC 3339 with nanoseconds: seconds are enough here
    return datetime.datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", when).replace("Z", "+00:00")).timestamp()


def settle(prom: Prometheus, failed_series: str, failures: float) -> None:
    """Wait until Prometheus has scraped `failures` failed runs and evaluated the rules after that."""

    def scraped():
        return sum(prom.query(f"sum({failed_series})").values()) == failures  # no series yet: 0

    wait_for(scraped, timeout=30, interval=1, what=f"Prometheus to scrape {failures} failed runs")
    seen = time.time()
    wait_for(lambda: rules_evaluated(prom) > seen, timeout=30, interval=0.5, what="an evaluation of the rules")


def test_a_runbook_failing_repeatedly_fires_the_shipped_alert(metrics_hub, prometheus):
    """The shipped rule RunbookFailingRepeatedly, evaluated by Prometheus, fires at the third failed run of
    a runbook within the hour, and not before. The runs fail for real: `opshub run` typed in bob's
    terminal, the runbook raising at its end (nothing listens on port 1). Last in this module, which
    counts its runs exactly: no other test here fails this runbook."""
    runbook = "tls-certificate-expiry.ipynb"
    failed_series = f'opshub_runbook_runs_total{{runbook="{runbook}",status="failed"}}'
    session, _ = metrics_hub.login("bob")
    metrics_hub.open_lab(session, "bob")
    token = metrics_hub.tokens(users=["bob"])["bob"]

    settle(prometheus, failed_series, 0)
    assert alerts(prometheus, "RunbookFailingRepeatedly", runbook) == []
    with Terminal(metrics_hub.url, "bob", token) as terminal:
        for failures in (1, 2, 3):
            out, rc = terminal.run(
                "opshub run tls-certificate-expiry -p endpoints '[\"127.0.0.1:1\"]' -p timeout 5", timeout=300
            )
            assert rc != 0 and "certificates need attention now" in out, out
            if failures < 3:
                settle(prometheus, failed_series, failures)
                assert alerts(prometheus, "RunbookFailingRepeatedly", runbook) == [], f"after {failures} failures"

    def firing():
        found = alerts(prometheus, "RunbookFailingRepeatedly", runbook)
        return found if found and found[0]["state"] == "firing" else None

    try:
        (alert,) = wait_for(firing, timeout=60, interval=1, what="the alert to fire")
    except TimeoutError:
        values = prometheus.query(f"increase({failed_series}[1h])")
        raise AssertionError(f"not firing after 3 failed runs; increase over 1h: {values}") from None
    assert alert["labels"]["severity"] == "warning"
    assert f"Runbook {runbook} failed" in alert["annotations"]["summary"], alert
