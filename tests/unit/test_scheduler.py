"""Schedules (opshub.service.scheduler) and the preparation of unattended runs (opshub.service.unattended),
with a real RunbookCatalog over a real git repository and a real SQLite store.

Nothing sleeps for cron times: the store's clock is moved by hand and each tick is given the same `now`.
"""

from __future__ import annotations

import datetime
import json
import re
import threading

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from opshub.runbooks.catalog import RunbookCatalog
from opshub.service.events import RunEvents
from opshub.service.models import Run
from opshub.service.queue import RunQueue
from opshub.service.scheduler import Scheduler
from opshub.service.stats import RunStats
from opshub.service.store import RunStore
from opshub.service.unattended import RequestRefused, Unattended
from prometheus_client import CollectorRegistry

from tests.helpers import git, make_work_tree
from tests.unit.test_store import Clock, database_url, store  # noqa: F401 (the store suite's fixtures)

UTC = datetime.timezone.utc
DAY0 = datetime.datetime(2025, 3, 1, 9, 0, tzinfo=UTC)  # a Saturday
PARAMETERS_CELL = 'stack = "lab"  # the stack to patch\ndry_run = True'


def at(hour: int, minute: int = 0, second: int = 0, day: int = 1, month: int = 3) -> datetime.datetime:
    return datetime.datetime(2025, month, day, hour, minute, second, tzinfo=UTC)


def runbook(opshub: dict | None = None, parameters: str = PARAMETERS_CELL) -> str:
    """A runbook's notebook JSON: a papermill `parameters` cell and `opshub` metadata."""
    nb = new_notebook(
        cells=[new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell("print(stack)")]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    if opshub is not None:
        nb.metadata["opshub"] = opshub
    return nbformat.writes(nb)


def hourly(name: str | None = "hourly", parameters: dict | None = None, cron: str = "0 * * * *", **more) -> dict:
    schedule = {"cron": cron, **more}
    if name:
        schedule["name"] = name
    if parameters is not None:
        schedule["parameters"] = parameters
    return schedule


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.current = DAY0
    return clock


class Repository:
    """A runbooks repository (a real git work tree) and a catalog reading it, as the service has them."""

    def __init__(self, path, cache) -> None:
        self.path, self.cache = path, cache
        self.catalog: RunbookCatalog | None = None

    def create(self, files: dict[str, str]) -> RunbookCatalog:
        make_work_tree(self.path, files=files)
        return self.new_catalog()

    def new_catalog(self) -> RunbookCatalog:
        self.catalog = RunbookCatalog(str(self.path), "main", self.cache)
        self.catalog.refresh()
        return self.catalog

    def new_catalog_in(self, cache) -> RunbookCatalog:
        """A catalog with a cache of its own (a service started now), fetched once."""
        catalog = RunbookCatalog(str(self.path), "main", cache)
        catalog.refresh()
        return catalog

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, text in files.items():
            (self.path / name).write_text(text)
        git("add", "-A", cwd=self.path)
        git("commit", "--quiet", "-m", message, cwd=self.path)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.path)


@pytest.fixture
def repository(tmp_path) -> Repository:
    return Repository(tmp_path / "runbooks", tmp_path / "cache.git")


class Service:
    """What one service process has: its store connection, queue, events, unattended runs and scheduler."""

    def __init__(self, store: RunStore, catalog: RunbookCatalog, catch_up_minutes: float = 60) -> None:
        self.store = store
        self.queue = RunQueue(store)
        self.registry = CollectorRegistry()
        self.stats = RunStats()
        self.events = RunEvents(self.stats, self.registry, self.queue.queued_count)
        store.bus.subscribe(self.events.changed)  # as the service subscribes its metrics at start
        self.woken = 0
        self.unattended = Unattended(self.queue, catalog)
        # what wakes the runner in the service: a run queued, heard from the store's bus
        store.bus.subscribe(lambda change: change.after == "queued" and self.wake())
        self.scheduler = Scheduler(
            self.unattended, self.queue, self.events, datetime.timedelta(minutes=catch_up_minutes)
        )

    def wake(self) -> None:
        self.woken += 1

    def fires(self, result: str) -> float:
        return self.registry.get_sample_value("opshub_schedule_fires_total", {"result": result})


def tick(service: Service, clock: Clock, now: datetime.datetime) -> None:
    """The scheduler's tick at `now`, with the store's clock there too."""
    clock.current = now
    service.scheduler.tick(now)


def fires_of(store: RunStore, runbook: str = "patch.ipynb") -> list[Run]:
    """The schedule's records of `runbook`, oldest due first."""
    runs = [run for run in store.list_runs(limit=1000, trigger="schedule")[0] if run.runbook == runbook]
    return sorted(runs, key=lambda run: run.due_at)


def end(service: Service, run: Run) -> None:
    """The runner runs it: claimed and finished."""
    claims, _ = service.queue.claim(max_concurrent=100)
    token = {claim.run.id: claim.token for claim in claims}[run.id]
    service.queue.runner_finish(run.id, token, "succeeded")


# Firing


def test_a_new_schedule_does_not_fire_for_its_past_and_each_due_time_fires_once(repository, store, clock):
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [hourly(parameters={"stack": "web"})]})})
    service = Service(store, catalog)

    tick(service, clock, at(9, 0, 30))  # 09:00 was due 30 s ago, before opshub knew the schedule
    tick(service, clock, at(9, 30))
    assert fires_of(store) == []

    tick(service, clock, at(10))
    tick(service, clock, at(10))
    tick(service, clock, at(10, 0, 1))
    tick(service, clock, at(10, 59, 59))
    assert [run.due_at for run in fires_of(store)] == [at(10)]

    tick(service, clock, at(11, 0, 2))
    assert [run.due_at for run in fires_of(store)] == [at(10), at(11)]
    assert [run.status for run in fires_of(store)] == ["queued", "queued"]
    assert service.fires("fired") == 2 and service.fires("missed") == 0
    assert service.woken == 2


def test_a_fire_s_run_says_what_fired_it_at_the_branch_s_commit(repository, store, clock):
    schedules = [
        hourly(name="web", parameters={"stack": "web", "dry_run": False}),
        hourly(name=None, parameters={}),  # unnamed: its key is a digest; the lock from the declared default
        {"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "parameters": {"stack": "db"}},
    ]
    catalog = repository.create({"patch.ipynb": runbook({"locks": ["stack:{stack}"], "schedules": schedules})})
    service = Service(store, catalog)
    tick(service, clock, at(9, 30))

    tick(service, clock, at(10))

    web, unnamed = sorted(fires_of(store), key=lambda run: run.requested_by != "schedule web")
    assert web.fire_key == "patch.ipynb#web@2025-03-01T10:00:00+00:00"
    assert (web.trigger, web.user, web.requested_by) == ("schedule", "opshub-runner", "schedule web")
    assert web.parameters == {"stack": "web", "dry_run": False}
    assert web.locks == ["stack:web"]
    assert web.runbook_commit == repository.head() and re.fullmatch("[0-9a-f]{40}", web.runbook_commit)
    assert (web.status, web.due_at, web.queued_at) == ("queued", at(10), at(10))
    key = re.fullmatch(r"schedule ([0-9a-f]{12})", unnamed.requested_by)[1]
    assert unnamed.fire_key == f"patch.ipynb#{key}@2025-03-01T10:00:00+00:00"
    assert unnamed.parameters == {"stack": "lab", "dry_run": True} and unnamed.locks == ["stack:lab"]

    # 03:00 in Berlin on 2 March is 02:00 UTC (CET); the key holds the UTC time
    tick(service, clock, at(2, 0, 5, day=2))
    (nightly,) = [run for run in fires_of(store) if run.requested_by == "schedule nightly"]
    assert nightly.fire_key == "patch.ipynb#nightly@2025-03-02T02:00:00+00:00"
    assert nightly.due_at == at(2, day=2) and nightly.locks == ["stack:db"]


def test_a_restarted_service_does_not_fire_again_what_was_fired(repository, store, clock):
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [hourly()]})})
    before = Service(store, catalog)
    tick(before, clock, at(9, 30))
    tick(before, clock, at(10))

    after = Service(store, repository.new_catalog())  # a fresh process: nothing in memory
    tick(after, clock, at(10, 0, 30))
    tick(after, clock, at(10, 30))
    assert [run.due_at for run in fires_of(store)] == [at(10)]

    tick(after, clock, at(11))
    tick(before, clock, at(11))  # the old process, had it lived on: nothing more either
    assert [run.due_at for run in fires_of(store)] == [at(10), at(11)]
    assert [run.status for run in fires_of(store)] == ["queued", "queued"]


def test_after_three_hours_down_the_latest_fire_within_catch_up_runs_and_older_ones_are_missed(
    repository, store, clock
):
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [hourly()]})})
    before = Service(store, catalog)
    tick(before, clock, at(9, 30))
    tick(before, clock, at(10))
    # down from 10:05 to 13:30
    after = Service(store, repository.new_catalog(), catch_up_minutes=60)

    tick(after, clock, at(13, 30))

    runs = fires_of(store)
    assert [(run.due_at, run.status) for run in runs] == [
        (at(10), "queued"),
        (at(11), "missed"),
        (at(12), "missed"),
        (at(13), "queued"),
    ]
    missed = runs[1]
    assert missed.fire_key == "patch.ipynb#hourly@2025-03-01T11:00:00+00:00"
    assert missed.ended_at == at(13, 30) and missed.requested_by == "schedule hourly"
    assert missed.error_summary == (
        "Missed: due at 2025-03-01T11:00:00+00:00 while opshub was not running, and 150 minutes late when it"
        " was back (later fires of this schedule were due too). runner.catch_up_minutes is 60."
    )
    assert "90 minutes late" in runs[2].error_summary
    assert after.fires("missed") == 2 and after.fires("fired") == 1
    assert after.stats.finished[("patch.ipynb", "missed", "schedule")] == 2

    tick(after, clock, at(13, 30, 1))
    assert len(fires_of(store)) == 4


def test_a_latest_fire_beyond_catch_up_is_missed_too(repository, store, clock):
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [hourly()]})})
    service = Service(store, catalog, catch_up_minutes=30)
    tick(service, clock, at(9, 30))

    tick(service, clock, at(11, 31))

    assert [(run.due_at, run.status) for run in fires_of(store)] == [(at(10), "missed"), (at(11), "missed")]
    assert fires_of(store)[1].error_summary.endswith("31 minutes late when it was back. runner.catch_up_minutes is 30.")


def test_without_catch_up_a_fire_two_hours_late_is_missed_and_one_30_seconds_late_runs(repository, store, clock):
    daily = {"name": "daily", "cron": "0 3 * * *"}
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [daily]})})
    service = Service(store, catalog, catch_up_minutes=0)
    tick(service, clock, at(2, day=2))

    tick(service, clock, at(5, day=2))
    tick(service, clock, at(3, 0, 30, day=3))

    late, on_time = fires_of(store)
    assert (late.due_at, late.status) == (at(3, day=2), "missed")
    assert late.error_summary == (
        "Missed: due at 2025-03-02T03:00:00+00:00 while opshub was not running, and 120 minutes late when it"
        " was back. runner.catch_up_minutes is 0."
    )
    assert (on_time.due_at, on_time.status) == (at(3, day=3), "queued")


def test_two_service_processes_ticking_the_same_due_time_record_one_run(repository, store, database_url, clock):
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [hourly()]})})
    other_store = RunStore(database_url, now=clock)
    try:
        first, second = Service(store, catalog), Service(other_store, repository.new_catalog())
        for service in (first, second):
            tick(service, clock, at(9, 30))

        tick(first, clock, at(10))
        tick(second, clock, at(10))
        tick(second, clock, at(10, 0, 1))

        assert [run.due_at for run in fires_of(store)] == [at(10)]
        assert first.fires("fired") + second.fires("fired") == 1
    finally:
        other_store.close()


def test_two_service_processes_ticking_at_the_same_moment_record_one_run_per_fire(
    repository, store, database_url, clock
):
    repository.create({"patch.ipynb": runbook({"schedules": [hourly(), hourly("other", cron="*/30 * * * *")]})})
    stores = [RunStore(database_url, now=clock) for _ in range(4)]
    try:
        services = [Service(s, repository.new_catalog()) for s in stores]
        for service in services:
            tick(service, clock, at(9, 30))
        clock.current = at(13, 10)  # three hours of fires at once: missed ones and one run each
        barrier = threading.Barrier(len(services))
        errors = []

        def run(service: Service) -> None:
            barrier.wait()
            try:
                service.scheduler.tick(at(13, 10))
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(service,)) for service in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert errors == []
        keys = [run.fire_key for run in fires_of(store)]
        assert len(keys) == len(set(keys)) == 4 + 7  # hourly 10:00..13:00, half-hourly 10:00..13:00
        assert len([run for run in fires_of(store) if run.status == "queued"]) == 2
    finally:
        for s in stores:
            s.close()


def test_a_schedule_with_parameters_the_runbook_does_not_allow_is_refused_before_it_fires(repository, store, clock):
    wrong = hourly(name="paint", parameters={"colour": "red"})
    worse = hourly(name="typo", parameters={"dry_run": "maybe"})
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [wrong, worse]})})
    service = Service(store, catalog)
    tick(service, clock, at(9, 30))
    tick(service, clock, at(10, 0, 1))

    assert fires_of(store) == [] and service.scheduler.overview(at(10, 0, 1)) == []
    problem = catalog.invalid()["patch.ipynb"]
    assert "opshub.schedules[0].parameters: parameter colour is not a parameter of this runbook" in problem
    assert "(the parameters that can be set: stack, dry_run)" in problem
    assert "opshub.schedules[1].parameters: parameter dry_run: 'maybe' is not true or false" in problem


def test_a_schedule_whose_lock_cannot_be_worked_out_is_recorded_failed(repository, store, clock):
    metadata = {"locks": ["host:{host}"], "schedules": [hourly()]}  # no parameter `host` anywhere
    catalog = repository.create({"patch.ipynb": runbook(metadata)})
    service = Service(store, catalog)
    tick(service, clock, at(9, 30))
    tick(service, clock, at(10))
    (failed,) = fires_of(store)
    assert failed.status == "failed" and "a lock cannot be worked out" in failed.error_summary


def test_the_overview_shows_each_schedule_s_next_and_last_fire(repository, store, clock):
    schedules = [
        hourly(parameters={"stack": "web"}),
        {"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin"},
    ]
    catalog = repository.create({"patch.ipynb": runbook({"schedules": schedules}), "status.ipynb": runbook()})
    service = Service(store, catalog)

    rows = {row["key"]: row for row in service.scheduler.overview(at(9, 30))}

    assert set(rows) == {"hourly", "nightly"}
    assert rows["hourly"] == {
        "runbook": "patch.ipynb",
        "key": "hourly",
        "name": "hourly",
        "cron": "0 * * * *",
        "timezone": "UTC",
        "parameters": {"stack": "web"},
        "user": "opshub-runner",
        "next_fire": "2025-03-01T10:00:00+00:00",
        "last_fire": None,
        "last_status": None,
        "last_run": None,
    }
    assert rows["nightly"]["next_fire"] == "2025-03-02T02:00:00+00:00"
    assert rows["nightly"]["timezone"] == "Europe/Berlin"

    tick(service, clock, at(9, 30))
    tick(service, clock, at(10))
    (fired,) = fires_of(store)
    row = {row["key"]: row for row in service.scheduler.overview(at(10, 20))}["hourly"]
    assert row["next_fire"] == "2025-03-01T11:00:00+00:00"
    assert (row["last_fire"], row["last_status"], row["last_run"]) == ("2025-03-01T10:00:00+00:00", "queued", fired.id)
    end(service, fired)
    row = {row["key"]: row for row in service.scheduler.overview(at(10, 20))}["hourly"]
    assert row["last_status"] == "succeeded"


def test_retention_of_old_fires_does_not_make_a_restarted_service_record_them_missed(repository, store, clock):
    """A weekly schedule and a 3-day retention: its fires' records are deleted between fires. A service
    restarted then must not take the schedule for never fired and record every past Monday as missed."""
    weekly = {"name": "weekly", "cron": "0 3 * * 1"}
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [weekly]})})
    service = Service(store, catalog)
    tick(service, clock, at(0, day=3))  # Monday 3 March: first seen
    for day in (3, 10, 17):  # it fires on three Mondays, and runs
        tick(service, clock, at(3, day=day))
        end(service, fires_of(store)[-1])
    clock.current = at(12, day=20)
    assert store.apply_retention(max_age=datetime.timedelta(days=3)) == 3

    restarted = Service(store, repository.new_catalog())
    tick(restarted, clock, at(10, day=21))

    assert [(run.due_at, run.status) for run in fires_of(store)] == []
    assert restarted.fires("missed") == 0


# Preparing unattended runs (Unattended)


@pytest.fixture
def patch_repository(repository) -> Repository:
    metadata = {"locks": ["stack:{stack}"], "title": "Patch"}
    repository.create({"patch.ipynb": runbook(metadata), "status.ipynb": runbook(parameters="verbose = False")})
    return repository


@pytest.fixture
def unattended(patch_repository, store) -> Unattended:
    return Unattended(RunQueue(store), patch_repository.catalog)


def refused(call) -> RequestRefused:
    with pytest.raises(RequestRefused) as refusal:
        call()
    return refusal.value


def test_a_request_is_queued_at_the_branch_s_commit_with_its_locks(unattended, patch_repository, store, clock):
    woken = []
    store.bus.subscribe(lambda change: change.after == "queued" and woken.append(True))  # as the runner is told

    run = unattended.request("patch.ipynb", {"stack": "web", "dry_run": False}, "bob")

    stored = store.get_run(run.id)
    assert (stored.status, stored.trigger, stored.user, stored.requested_by) == ("queued", "requested", "bob", "bob")
    assert stored.parameters == {"stack": "web", "dry_run": False}
    assert stored.runbook_commit == patch_repository.head()
    assert stored.locks == ["stack:web"]
    assert stored.due_at is None and stored.queued_at == clock.current  # a request is due when queued
    assert woken == [True]


def test_locks_come_from_the_declared_defaults_when_the_parameter_is_not_given(unattended, store):
    run = unattended.request("patch.ipynb", {}, "bob")
    assert store.get_run(run.id).locks == ["stack:lab"]
    assert store.get_run(run.id).parameters == {"stack": "lab", "dry_run": True}  # every value that applies
    assert unattended.request("status.ipynb", {}, "bob").locks == []


def test_a_request_for_an_unknown_runbook_is_refused_with_the_runbooks_there_are(unattended, store):
    refusal = refused(lambda: unattended.request("pach.ipynb", {}, "bob"))
    assert refusal.status == 404
    assert "there is no runbook 'pach.ipynb'" in str(refusal) and "patch.ipynb, status.ipynb" in str(refusal)
    for name in ("", None, 3):
        assert refused(lambda name=name: unattended.request(name, {}, "bob")).status in (400, 404)
    assert store.list_runs() == ([], 0)


def test_a_request_with_an_undeclared_parameter_is_refused_with_the_declared_ones(unattended, store):
    refusal = refused(lambda: unattended.request("patch.ipynb", {"stack": "web", "stak": "db"}, "bob"))
    assert refusal.status == 400
    message = str(refusal)
    assert "patch.ipynb: parameter stak is not a parameter of this runbook" in message
    assert "(the parameters that can be set: stack, dry_run)" in message
    for parameters in (["stack"], "stack=web", None):
        assert refused(lambda p=parameters: unattended.request("patch.ipynb", p, "bob")).status == 400
    assert store.list_runs() == ([], 0)


@pytest.mark.parametrize("commit", ["XYZ", "abc12", "A" * 40, "g" * 40, "a" * 65, "HEAD", "main", "abc1234~1", 7])
def test_a_request_at_a_commit_that_is_no_commit_hash_is_refused(unattended, store, commit):
    refusal = refused(lambda: unattended.request("patch.ipynb", {}, "bob", commit=commit))
    assert refusal.status == 400 and "commit must be 7 to 64 lowercase hex digits" in str(refusal)
    assert store.list_runs() == ([], 0)


def test_a_request_at_a_commit_the_repository_does_not_have_is_404(unattended, patch_repository, store):
    refusal = refused(lambda: unattended.request("patch.ipynb", {}, "bob", commit="0" * 40))
    assert refusal.status == 404 and "has no commit" in str(refusal)
    refusal = refused(lambda: unattended.request("gone.ipynb", {}, "bob", commit=patch_repository.head()))
    assert refusal.status == 404 and "there is no runbook 'gone.ipynb' at commit" in str(refusal)
    assert store.list_runs() == ([], 0)


def test_a_request_at_an_older_commit_uses_that_commit_s_runbook(unattended, patch_repository, store):
    old = patch_repository.head()
    newer = runbook({"locks": ["host:{host}"]}, parameters='host = "web1"\nstack = "lab"')
    new = patch_repository.commit({"patch.ipynb": newer})
    # a service started now: its copy of the repository has the branch's latest commit only
    unattended = Unattended(unattended.queue, patch_repository.new_catalog_in(patch_repository.path.parent / "c2"))
    assert unattended.catalog.commit() == new
    with pytest.raises(AssertionError):  # not in its copy: the request makes it fetch the commit
        git("cat-file", "-e", f"{old}^{{commit}}", cwd=patch_repository.path.parent / "c2")

    run = unattended.request("patch.ipynb", {"stack": "web"}, "bob", commit=old)

    assert run.runbook_commit == old and run.locks == ["stack:web"]  # the old commit's locks
    refusal = refused(lambda: unattended.request("patch.ipynb", {"host": "web2"}, "bob", commit=old))
    assert refusal.status == 400 and "parameter host is not a parameter of this runbook" in str(refusal)
    latest = unattended.request("patch.ipynb", {"host": "web2"}, "bob")
    assert latest.runbook_commit == new and latest.locks == ["host:web2"]


def test_a_request_at_an_abbreviated_older_commit_finds_it(unattended, patch_repository):
    """The API takes 7 to 64 hex digits: an abbreviated hash of an older commit names it as well as the full one."""
    old = patch_repository.head()
    patch_repository.commit({"patch.ipynb": runbook({"locks": ["stack:{stack}"], "title": "Patch 2"})})
    unattended = Unattended(unattended.queue, patch_repository.new_catalog_in(patch_repository.path.parent / "c2"))

    run = unattended.request("patch.ipynb", {}, "bob", commit=old[:12])

    assert run.runbook_commit == old


def test_an_abbreviated_commit_the_service_has_is_recorded_in_full(unattended, patch_repository):
    head = patch_repository.head()
    assert unattended.request("patch.ipynb", {}, "bob", commit=head[:7]).runbook_commit == head


def test_a_runbook_pushed_after_the_last_refresh_can_be_requested(unattended, patch_repository):
    new = patch_repository.commit({"new.ipynb": runbook()})
    run = unattended.request("new.ipynb", {"stack": "web"}, "bob")
    assert run.runbook_commit == new


def test_a_runbook_with_wrong_metadata_is_refused_with_the_problem(unattended, patch_repository):
    patch_repository.commit({"broken.ipynb": runbook({"changes_systems": "true"})})
    patch_repository.catalog.refresh()
    refusal = refused(lambda: unattended.request("broken.ipynb", {}, "bob"))
    assert refusal.status == 400 and "opshub.changes_systems must be true or false" in str(refusal)


def test_an_alert_queues_one_run_while_it_has_one(unattended, store, clock):
    run = unattended.alert("patch.ipynb", "HostDown", "fp1", {"stack": "web"}, clock.current)
    assert (run.trigger, run.user, run.requested_by) == ("alert", "opshub-runner", "alert HostDown fp1")
    assert run.alert_fingerprint == "fp1" and run.locks == ["stack:web"] and run.due_at == clock.current
    assert unattended.alert("patch.ipynb", "HostDown", "fp1", {"stack": "web"}, clock.current) is None
    assert json.loads(json.dumps(store.get_run(run.id).parameters)) == {"stack": "web", "dry_run": True}


def test_the_choices_of_a_request_come_from_the_inventory_at_the_runs_commit(repository, store):
    """`hosts` follows `stack` in the inventory file of the repository, as it is at the commit a run is
    requested at: a host added later is refused at the older commit, and one removed since is refused now."""
    declaration = {
        "stack": {"type": "string", "choices_from": {"file": "stacks.yaml", "path": ["stacks"]}},
        "hosts": {"type": "list", "choices_from": {"file": "stacks.yaml", "path": ["stacks", "{stack}", "hosts"]}},
    }
    patch = runbook({"parameters": declaration}, parameters='stack = "lab"\nhosts = []')
    repository.create({"patch.ipynb": patch, "stacks.yaml": "stacks: {lab: {hosts: [localhost]}, web: {hosts: [w1]}}"})
    old = repository.head()
    new = repository.commit({"stacks.yaml": "stacks: {lab: {hosts: [localhost]}, web: {hosts: [w2]}, db: {}}"})
    unattended = Unattended(RunQueue(store), repository.new_catalog())

    assert unattended.request("patch.ipynb", {"stack": "web", "hosts": ["w1"]}, "bob", commit=old).runbook_commit == old
    refusal = refused(lambda: unattended.request("patch.ipynb", {"stack": "web", "hosts": ["w2"]}, "bob", commit=old))
    assert refusal.status == 400 and "parameter hosts: 'w2' is not one of w1 (from stacks.yaml)" in str(refusal)
    assert unattended.request("patch.ipynb", {"stack": "web", "hosts": "w2"}, "bob", text=True).runbook_commit == new
    refusal = refused(lambda: unattended.request("patch.ipynb", {"stack": "db", "hosts": ["w2"]}, "bob"))
    assert "stacks.yaml has no stacks.db.hosts to take its choices from" in str(refusal)
    assert unattended.request("patch.ipynb", {"stack": "db"}, "bob").parameters == {"stack": "db", "hosts": []}
    refusal = refused(lambda: unattended.request("patch.ipynb", {"stack": "db"}, "bob", commit=old))
    assert "parameter stack: 'db' is not one of lab, web (from stacks.yaml)" in str(refusal)
