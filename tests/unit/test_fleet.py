"""The practice fleet's definition (hub/opshub/fleet/): the inventory the runbooks read lists exactly
its stacks, Prometheus accepts its configuration (promtool, from Debian's package), and its names in
/etc/hosts come and go without touching anything else there. The fleet running is tests/fleet/."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import yaml
from opshub.fleet import machines, monitoring
from opshub.fleet.definition import STACKS, hosts, inventory

from tests.helpers import ROOT, ensure_debian_package

INVENTORY = ROOT / "shared-notebooks" / "inventory" / "stacks.yaml"


def test_the_shipped_inventory_lists_the_fleet_as_it_is():
    shipped = yaml.safe_load(INVENTORY.read_text())["stacks"]
    for name, stack in inventory().items():
        assert name in shipped, f"{INVENTORY} lacks the fleet's stack {name}"
        for key, value in stack.items():
            if key != "description":
                assert shipped[name][key] == value, (
                    f"stack {name}: {key} is {shipped[name][key]!r}, the fleet has {value!r}"
                )


def test_every_host_has_a_loopback_address_and_a_container_of_its_own():
    fleet = hosts()
    assert len(fleet) == sum(stack.host_count for stack in STACKS) >= 5
    assert (
        len({h.address for h in fleet})
        == len({h.container for h in fleet})
        == len({h.name for h in fleet})
        == len(fleet)
    )
    assert all(ipaddress.ip_address(h.address).is_loopback for h in fleet)


def test_prometheus_accepts_the_fleet_s_configuration(tmp_path):
    ensure_debian_package("prometheus", "/usr/bin/prometheus")
    token = tmp_path / "metrics-token"
    token.write_text("x")
    config = monitoring.prometheus_config(hosts(), 8000, token)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    probes = [c for c in config["scrape_configs"] if c["job_name"] == "blackbox"][0]["static_configs"]
    assert {(p["labels"]["host"], p["labels"]["service"]) for p in probes} == {
        (h.name, s.unit) for h in hosts() for s in h.stack.services
    }


def test_the_hosts_block_comes_and_goes_leaving_the_rest_alone(tmp_path, monkeypatch):
    hosts_file = tmp_path / "hosts"
    original = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n10.0.0.5 mine.example\n"
    hosts_file.write_text(original)
    monkeypatch.setattr(machines, "HOSTS_FILE", hosts_file)
    machines.write_hosts_block(hosts())
    machines.write_hosts_block(hosts())  # again: replaced, not added twice
    text = hosts_file.read_text()
    assert text.startswith(original) and text.count(machines.HOSTS_BEGIN) == 1
    assert all(f"{h.address} {h.name}\n" in text for h in hosts())
    machines.remove_hosts_block()
    assert hosts_file.read_text() == original


def test_the_fleet_s_image_has_what_it_needs_in_the_repository():
    fleet = ROOT / "images" / "fleet"
    assert (fleet / "Dockerfile").exists() and (fleet / "packages" / "build.sh").stat().st_mode & 0o111
    assert Path(fleet / "rootfs" / "usr" / "local" / "sbin" / "fleet-boot").stat().st_mode & 0o111
