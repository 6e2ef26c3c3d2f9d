"""The patching story on the practice fleet (issue 22), requested on the runner as a person does
(`opshub request`, the Request page): a dry run reads the real pending updates and changes nothing; a
live run patches a stack of three hosts in sections of one, each host updated, rebooted, back and
seen up again by Prometheus, with its per-host table recorded; a host whose service does not come
back stops the run before the next section, the others untouched."""

from __future__ import annotations

import time

import requests
from opshub.fleet.definition import hosts

from tests.fleet.conftest import (
    boot_identity,
    on_host,
    outputs_text,
    package_version,
    prometheus_range,
    request_patch,
    wait_for_end,
)

WEB = [host.name for host in hosts() if host.stack.name == "fleet-web"]
DB = [host.name for host in hosts() if host.stack.name == "fleet-db"]


def state_of(names: list[str]) -> dict[str, tuple[str, str]]:
    return {name: (boot_identity(name), package_version(name, "fleet-base")) for name in names}


def rows_by_host(run: dict) -> dict[str, dict]:
    table = (run.get("artifacts") or {}).get("hosts")
    assert table, f"the run published no per-host table: {run.get('artifacts')}"
    return {row["host"]: row for row in table}


def down_interval(host: str, start: float, end: float) -> tuple[float, float]:
    """When Prometheus first saw the host's node_exporter down, and first up again after that."""
    samples = prometheus_range(f'up{{job="node",host="{host}"}}', start, end)
    down = [t for t, value in samples if value == 0]
    assert down, f"Prometheus never saw {host} down between {start:.0f} and {end:.0f}: {samples}"
    back = [t for t, value in samples if value == 1 and t > down[0]]
    assert back, f"Prometheus never saw {host} up again after {down[0]:.0f}"
    return down[0], back[0]


def test_a_dry_run_lists_the_real_pending_updates_and_changes_nothing(fleet, fleet_hub, fleet_tokens):
    before = state_of(WEB)
    run = wait_for_end(fleet_hub, fleet_tokens["bob"], request_patch(fleet_hub, fleet_tokens["bob"], stack="fleet-web"))
    text = outputs_text(run)
    assert run["status"] == "succeeded", run["error_summary"] or text[-3000:]
    assert run["parameters"]["dry_run"] is True
    for host in WEB:
        assert host in text
    # apt's own words, read on the hosts: what an approver reads before saying yes
    assert text.count("fleet-base") >= len(WEB) and "1.1" in text and "upgradable from: 1.0" in text
    assert state_of(WEB) == before


def test_a_live_run_patches_the_stack_one_host_at_a_time_and_monitoring_saw_each_go_and_come_back(
    fleet, fleet_hub, fleet_tokens
):
    before = state_of(WEB)
    started = time.time()
    run_id = request_patch(fleet_hub, fleet_tokens["bob"], stack="fleet-web", dry_run=False, batch="1")
    run = wait_for_end(fleet_hub, fleet_tokens["bob"], run_id)
    ended = time.time()
    assert run["status"] == "succeeded", run["error_summary"] or outputs_text(run)[-3000:]

    rows = rows_by_host(run)
    intervals = []
    for host in WEB:
        assert package_version(host, "fleet-base") == "1.1" and package_version(host, "fleet-web") == "1.1"
        assert boot_identity(host) != before[host][0], f"{host} did not reboot"
        assert "fleet-web 1.1" in requests.get(f"http://{host}/", timeout=10).text  # its service answers
        assert on_host(host, "systemctl", "is-active", "nginx") == "active"
        intervals.append(down_interval(host, started, ended + 10))
        row = rows[host]
        assert row["status"] == "patched" and row["rebooted"] in (True, "yes"), row
        assert "fleet-base" in str(row["packages"]) and "1.1" in str(row["packages"]), row
    # sections of one: each host went down only once the one before it was back
    for (_, back), (next_down, _) in zip(intervals, intervals[1:], strict=False):
        assert back <= next_down, f"hosts were down at the same time: {intervals}"


def test_a_host_whose_service_does_not_come_back_stops_the_run_before_the_next_section(fleet, fleet_hub, fleet_tokens):
    first, second = DB
    # someone left redis disabled on the first host: it runs now, and will not start at the next boot
    on_host(first, "systemctl", "disable", "redis-server")
    untouched = state_of([second])
    try:
        run = wait_for_end(
            fleet_hub,
            fleet_tokens["bob"],
            request_patch(fleet_hub, fleet_tokens["bob"], stack="fleet-db", dry_run=False, batch="1"),
        )
    finally:  # the fleet as it was for the tests after this one
        on_host(first, "systemctl", "enable", "--now", "redis-server")
    assert run["status"] == "failed"
    assert first in run["error_summary"] and "redis" in run["error_summary"], run["error_summary"]
    assert state_of([second]) == untouched, f"{second} was touched after {first} failed"
    rows = rows_by_host(run)
    assert rows[first]["status"] == "failed", rows[first]
    assert rows[second]["status"] != "patched", rows[second]
