"""Steering schedules (opshub.service.schedule_control, the scheduler's pauses, cron in words) with a real
RunbookCatalog over a real git repository and a real store (SQLite here; PostgreSQL in
tests/integration/test_schedule_control_postgres.py, which collects these tests again).

Nothing sleeps for cron times: the store's clock is moved by hand, as in test_scheduler.py.
"""

# ruff: noqa: F811 (the fixtures of the scheduler's and the store's suites, imported below)
from __future__ import annotations

import threading

import pytest
from opshub.runbooks.triggers import Schedule
from opshub.service.audit import Audit
from opshub.service.cron_words import cron_in_words, in_zone, next_fires
from opshub.service.schedule_control import MAX_REASON, ScheduleControlError

from tests.unit.test_scheduler import (  # noqa: F401 (the scheduler suite's fixtures and helpers)
    Service,
    at,
    clock,
    fires_of,
    hourly,
    repository,
    runbook,
    tick,
)
from tests.unit.test_store import Clock, database_url, store  # noqa: F401 (the store suite's fixtures)

SID = "patch.ipynb#hourly"


@pytest.fixture
def service(repository, store, clock) -> Service:
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [hourly(parameters={"stack": "web"})]})})
    return Service(store, catalog)


def trail(store, run_id) -> list[tuple[str, str, str | None]]:
    return [(event.action, event.actor, event.note) for event in Audit(store).of_run(run_id)]


# Pausing and resuming: the record


def test_a_pause_records_who_when_and_why_and_a_resume_who_and_when(service, clock):
    control = service.scheduler.control
    clock.current = at(9, 15)
    paused = control.pause(SID, "patch.ipynb", "alice", "  change freeze\n until Monday ")
    assert (paused.paused_by, paused.paused_at, paused.reason) == ("alice", at(9, 15), "change freeze until Monday")
    assert control.open_pauses()[SID] == paused

    clock.current = at(10, 40)
    resumed = control.resume(SID, "bob")
    assert (resumed.resumed_by, resumed.resumed_at, resumed.paused_by) == ("bob", at(10, 40), "alice")
    assert control.open_pauses() == {}
    assert control.last_resumed([SID])[SID] == resumed  # kept: the page says who resumed it

    clock.current = at(11)
    control.pause(SID, "patch.ipynb", "bob", "again")  # a schedule may be paused again after a resume
    assert control.open_pauses()[SID].paused_by == "bob"


def test_pausing_twice_or_resuming_what_is_not_paused_is_refused_naming_why(service):
    control = service.scheduler.control
    with pytest.raises(ScheduleControlError) as refused:
        control.resume(SID, "bob")
    assert refused.value.status == 409 and "is not paused" in str(refused.value)

    control.pause(SID, "patch.ipynb", "alice", "change freeze")
    with pytest.raises(ScheduleControlError) as refused:
        control.pause(SID, "patch.ipynb", "bob", "me too")
    assert refused.value.status == 409
    assert "paused already (paused by alice at 2025-03-01T09:00+00:00: change freeze)" in str(refused.value)
    assert control.open_pauses()[SID].paused_by == "alice"  # the first pause stands


@pytest.mark.parametrize(
    ("reason", "problem"),
    [
        (None, "reason is required"),
        ("", "reason is required"),
        ("   \n ", "reason is required"),
        (42, "reason is required"),
        (["freeze"], "reason is required"),
        ("x" * (MAX_REASON + 1), f"at most {MAX_REASON}"),
    ],
)
def test_a_pause_needs_a_reason_of_a_sentence_or_two(service, reason, problem):
    with pytest.raises(ScheduleControlError) as refused:
        service.scheduler.control.pause(SID, "patch.ipynb", "alice", reason)
    assert refused.value.status == 400 and problem in str(refused.value)
    assert service.scheduler.control.open_pauses() == {}


def test_of_people_pausing_at_once_one_wins_and_the_others_are_told(service):
    control = service.scheduler.control
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def pause(name):
        barrier.wait()
        try:
            control.pause(SID, "patch.ipynb", name, f"{name}'s reason")
            outcomes.append("paused")
        except ScheduleControlError as e:
            outcomes.append(f"refused {e.status}")

    threads = [threading.Thread(target=pause, args=(name,)) for name in ("alice", "bob", "dave", "erin")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["paused"] + ["refused 409"] * 3
    assert len(control.open_pauses()) == 1


# The scheduler and a paused schedule


def test_a_paused_schedule_does_not_fire_its_fires_are_recorded_skipped_and_a_resume_fires_again(
    service,
    store,
    clock,
):
    tick(service, clock, at(9, 30))
    tick(service, clock, at(10))
    clock.current = at(10, 20)
    service.scheduler.control.pause(SID, "patch.ipynb", "alice", "change freeze until Monday")

    tick(service, clock, at(11))
    tick(service, clock, at(11, 0, 1))
    tick(service, clock, at(12, 0, 2))
    runs = fires_of(store)
    assert [(run.due_at, run.status) for run in runs] == [(at(10), "queued"), (at(11), "missed"), (at(12), "missed")]
    skipped = runs[1]
    assert skipped.error_summary == (
        "Skipped: due at 2025-03-01T11:00:00+00:00 while the schedule was paused by alice at"
        " 2025-03-01T10:20+00:00: change freeze until Monday"
    )
    assert skipped.parameters == {} and skipped.requested_by == "schedule hourly"
    # the reason is on the skipped fire's trail (its page, the feed, the export)
    assert trail(store, skipped.id) == [("skipped", "schedule hourly", skipped.error_summary)]
    assert service.fires("missed") == 2 and service.fires("fired") == 1
    assert service.woken == 1  # nothing was queued for the runner while paused

    clock.current = at(12, 30)
    service.scheduler.control.resume(SID, "bob")
    tick(service, clock, at(12, 30))
    tick(service, clock, at(13))
    assert [(run.due_at, run.status) for run in fires_of(store)][-1] == (at(13), "queued")
    assert len(fires_of(store)) == 4


def test_a_pause_of_one_schedule_leaves_the_others_firing(repository, store, clock):
    schedules = [hourly(name="web", parameters={"stack": "web"}), hourly(name="db", parameters={"stack": "db"})]
    service = Service(store, repository.create({"patch.ipynb": runbook({"schedules": schedules})}))
    tick(service, clock, at(9, 30))
    service.scheduler.control.pause("patch.ipynb#web", "patch.ipynb", "alice", "web is being migrated")

    tick(service, clock, at(10))

    by_schedule = {run.requested_by: run.status for run in fires_of(store)}
    assert by_schedule == {"schedule web": "missed", "schedule db": "queued"}


def test_a_restarted_service_keeps_a_schedule_paused(repository, store, clock):
    catalog = repository.create({"patch.ipynb": runbook({"schedules": [hourly()]})})
    before = Service(store, catalog)
    tick(before, clock, at(9, 30))
    before.scheduler.control.pause(SID, "patch.ipynb", "alice", "change freeze")

    after = Service(store, repository.new_catalog())  # a fresh process: nothing in memory
    tick(after, clock, at(10))
    assert [run.status for run in fires_of(store)] == ["missed"]


# What the Schedules page and API show


def test_the_overview_says_the_cron_in_words_the_next_fires_in_the_schedule_s_zone_and_the_pause(
    repository,
    store,
    clock,
):
    schedules = [{"name": "monthly", "cron": "0 3 * * 2#3", "timezone": "Europe/Berlin"}, hourly()]
    service = Service(store, repository.create({"patch.ipynb": runbook({"schedules": schedules})}))
    clock.current = at(9, 0)
    service.scheduler.control.pause(SID, "patch.ipynb", "alice", "change freeze")

    monthly, hourly_row = service.scheduler.overview(at(9, 0), steering=True)

    assert monthly["id"] == "patch.ipynb#monthly" and monthly["path"] == "patch.ipynb/monthly"
    assert monthly["cron_words"] == "At 03:00, on the third Tuesday of the month"
    # the third Tuesdays of March, April and May 2025; 03:00 in Berlin is 02:00 UTC in winter, 01:00 in summer
    assert [fire["at"] for fire in monthly["next_fires"]] == [
        "2025-03-18T02:00:00+00:00",
        "2025-04-15T01:00:00+00:00",
        "2025-05-20T01:00:00+00:00",
    ]
    assert [fire["local"] for fire in monthly["next_fires"]] == [
        "Tue 2025-03-18 03:00 CET",
        "Tue 2025-04-15 03:00 CEST",
        "Tue 2025-05-20 03:00 CEST",
    ]
    assert monthly["next_fire"] == "2025-03-18T02:00:00+00:00" and monthly["paused"] is None
    assert hourly_row["cron_words"] == "Every hour"
    assert hourly_row["paused"] == {
        "paused_by": "alice",
        "paused_at": "2025-03-01T09:00:00+00:00",
        "reason": "change freeze",
        "resumed_by": None,
        "resumed_at": None,
    }


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("0 3 * * *", "At 03:00"),
        ("*/15 * * * *", "Every 15 minutes"),
        ("30 2 * * 1-5", "At 02:30, Monday through Friday"),
        ("0 3 * * 1", "At 03:00, only on Monday"),
        ("0 0 1 * *", "At 00:00, on day 1 of the month"),
        ("not a cron", "not a cron"),  # what cannot be said is shown as written
    ],
)
def test_cron_in_words(cron, words):
    assert cron_in_words(cron) == words


def test_next_fires_of_a_schedule_never_due_again_are_none():
    leap_day = Schedule("patch.ipynb", "leap", "leap", "0 0 30 2 *")  # 30 February never comes
    assert next_fires(leap_day, at(9)) == []
    assert in_zone(at(23, 30), "Asia/Tokyo") == "Sun 2025-03-02 08:30 JST"


# Run now


def test_run_now_is_a_request_of_the_person_whose_trail_names_the_schedule(service, store, clock):
    schedule = service.scheduler.find("patch.ipynb", "hourly")
    run = service.unattended.request(schedule.runbook, schedule.parameters, "bob")
    service.scheduler.control.note_run_now(run, SID, "bob")

    assert (run.trigger, run.user, run.requested_by, run.status) == ("requested", "bob", "bob", "queued")
    assert run.parameters == {"stack": "web", "dry_run": True}
    assert trail(store, run.id) == [
        ("queued", "bob", None),
        (
            "run now",
            "bob",
            'requested with the parameters of schedule patch.ipynb#hourly ("Run now" on the Schedules page)',
        ),
    ]
    assert service.scheduler.find("patch.ipynb", "no-such") is None
