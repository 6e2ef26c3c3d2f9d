"""The notifier (opshub.service.notifier) against a real RunStore (SQLite in tmp_path), real runs driven
through the store and the queue (so lifecycle.py writes their events), real Apprise and a real HTTP
receiver on 127.0.0.1. Nothing sleeps: the store's clock is moved by hand, and the notifier is stepped
by hand instead of running on an event loop."""

from __future__ import annotations

import datetime
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opshub.service.audit import Audit
from opshub.service.models import Dashboard
from opshub.service.notifier import Notifier, scrub
from opshub.service.run_states import SKIPPED_ACTION
from prometheus_client import CollectorRegistry

from tests.unit import test_queue as queue_suite
from tests.unit import test_store as store_suite
from tests.unit.test_queue import claim_one, enqueue
from tests.unit.test_store import START, start

# the store and queue suites' fixtures: a real SQLite store with a clock moved by hand, and its queue
database_url, clock, store, queue = store_suite.database_url, store_suite.clock, store_suite.store, queue_suite.queue

PUBLIC_URL = "https://ops.example.com/ops/"
RUN_PAGE = "https://ops.example.com/ops/services/opshub/runs/"
ENV = "OPSHUB_NOTIFY_TEST"


class Receiver:
    """An HTTP server recording the JSON POSTs Apprise's `json://` sends; answers 500 to the first
    `failures` of them."""

    def __init__(self, port: int = 0) -> None:
        self.posts: list[dict] = []
        self.failures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                failing = receiver.failures > 0
                receiver.failures -= failing
                if not failing:
                    receiver.posts.append({"path": self.path, **body})
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.server.server_port}/{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    the_receiver = Receiver()
    yield the_receiver
    the_receiver.close()


@pytest.fixture
def registry():
    return CollectorRegistry()


def make_notifier(store, receiver, registry, rules=None, targets=None, **settings) -> Notifier:
    environ = {ENV: receiver.url(), "OPSHUB_NOTIFY_OTHER": receiver.url("other")}
    section = {
        "targets": targets or {"ops-chat": {"url_env": ENV}},
        "rules": rules if rules is not None else [{"to": ["ops-chat"]}],
        **settings,
    }
    return Notifier(store, section, PUBLIC_URL, registry=registry, environ=environ)


@pytest.fixture
def notifier(store, receiver, registry):
    return make_notifier(store, receiver, registry)


def results(registry) -> dict[str, float]:
    return {
        r: registry.get_sample_value("opshub_notifications_total", {"result": r}) for r in ("sent", "retried", "failed")
    }


def failed_scheduled_run(queue, runbook="patching/monthly.ipynb"):
    run = enqueue(
        queue, runbook=runbook, trigger="schedule", user="opshub-runner", requested_by="schedule monthly",
        parameters={"stack": "web", "hosts": ["a", "b"]}, locks=[],
    )  # fmt: skip
    token = claim_one(queue, run)
    queue.runner_begin(run.id, token)
    queue.runner_finish(run.id, token, "failed", failed_cell=3, error_summary="CalledProcessError: apt-get exited 100")
    return run


def test_a_failed_run_is_told_once_with_what_a_person_needs(notifier, queue, store, receiver, registry):
    run = failed_scheduled_run(queue)
    notifier.step()
    notifier.step()  # nothing twice

    (post,) = receiver.posts
    assert post["path"] == "/hook" and post["type"] == "failure"
    assert post["title"] == "opshub: patching/monthly.ipynb failed"
    body = post["message"]
    assert "Runbook: patching/monthly.ipynb" in body
    assert "Trigger: schedule" in body and "Who: schedule monthly" in body
    assert 'Parameters: hosts=["a", "b"], stack="web"' in body
    assert (
        "Failed in: cell 4" in body
    )  # counted from 1, as the run's page names it (no notebook recorded) and "Error: CalledProcessError: apt-get exited 100" in body
    assert f"Run: {RUN_PAGE}{run.id}" in body
    (sent,) = Audit(store).notifications_of(run.id)
    assert (sent.status, sent.attempts, sent.reason, sent.target) == ("sent", 1, "failed", "ops-chat")
    assert sent.sent_at == START and sent.last_error is None
    assert results(registry) == {"sent": 1, "retried": 0, "failed": 0}


def test_a_person_run_names_its_user(notifier, store, receiver):
    run = start(store, runbook="check.ipynb", user="bob", parameters={"host": "db1"})
    store.finish_run(run.id, "bob", "interrupted")
    notifier.step()
    (post,) = receiver.posts
    assert post["title"] == "opshub: check.ipynb was interrupted"
    assert "Trigger: headless" in post["message"] and "Who: bob" in post["message"]


def test_a_missed_fire_is_told(notifier, queue, receiver):
    key = "patch.ipynb#nightly@2025-03-01T03:00:00+00:00"
    run = queue.record_missed("patch.ipynb", "schedule nightly", key, START, "Missed: opshub was down at 03:00")
    notifier.step()
    (post,) = receiver.posts
    assert post["title"] == "opshub: patch.ipynb was missed" and post["type"] == "warning"
    assert "Who: schedule nightly" in post["message"] and "Missed: opshub was down at 03:00" in post["message"]
    assert f"{RUN_PAGE}{run.id}" in post["message"]


def test_a_paused_schedules_skipped_fire_is_told_to_nobody(notifier, queue, receiver):
    """Someone paused the schedule (a change freeze): its skipped fires are on record, not news."""
    key = "patch.ipynb#nightly@2025-03-02T03:00:00+00:00"
    reason = "Skipped: due at 03:00 while the schedule was paused by alice: change freeze"
    queue.record_missed("patch.ipynb", "schedule nightly", key, START, reason, action=SKIPPED_ACTION)
    notifier.step()
    assert receiver.posts == []


def test_a_run_that_never_started_is_told_to_rules_on_never_started_and_on_failed(store, queue, receiver, registry):
    rules = [
        {"to": ["ops-chat"], "on": ["never_started"]},
        {"to": ["other"], "on": ["failed"]},
        {"to": ["ops-chat", "other"], "on": ["interrupted", "succeeded"]},  # hears nothing of it
    ]
    targets = {"ops-chat": {"url_env": ENV}, "other": {"url_env": "OPSHUB_NOTIFY_OTHER"}}
    notifier = make_notifier(store, receiver, registry, rules=rules, targets=targets)
    run = enqueue(queue, parameters={"stack": "web"})
    claim_one(queue, run)
    queue.fail(run.id, "The runner's server did not start within 120 s.")
    notifier.step()

    assert sorted(post["path"] for post in receiver.posts) == ["/hook", "/other"]  # once per target
    assert {post["title"] for post in receiver.posts} == {"opshub: patch.ipynb never started"}
    assert "Status: failed (it never started)" in receiver.posts[0]["message"]
    assert "did not start within 120 s" in receiver.posts[0]["message"]
    assert [n.reason for n in Audit(store).notifications_of(run.id)] == ["never_started", "never_started"]


def test_a_run_waiting_behind_a_lock_too_long_is_told_once(store, queue, clock, receiver, registry):
    notifier = make_notifier(
        store, receiver, registry, rules=[{"to": ["ops-chat"], "on": ["waiting"], "waiting_minutes": 30}]
    )
    holder = enqueue(queue, locks=["stack:web"])
    claim_one(queue, holder)
    clock.advance(seconds=1)
    waiting = enqueue(queue, locks=["stack:web"], parameters={"stack": "web"})
    assert queue.claim(max_concurrent=5) == ([], {waiting.id: "stack:web"})
    capacity = enqueue(queue, locks=["stack:db"])  # waits for capacity, not for a lock: not told
    queue.claim(max_concurrent=1)

    clock.advance(minutes=29)
    notifier.step()
    assert receiver.posts == []
    clock.advance(minutes=2)
    notifier.step()
    clock.advance(minutes=30)
    notifier.step()

    (post,) = receiver.posts
    assert post["title"] == "opshub: patch.ipynb is waiting behind a lock" and post["type"] == "warning"
    assert f"queued for 31 minutes; the lock stack:web is held by run {RUN_PAGE}{holder.id}" in post["message"]
    assert f"Run: {RUN_PAGE}{waiting.id}" in post["message"] and "Status: queued" in post["message"]
    assert [n.key for n in Audit(store).notifications_of(waiting.id)] == [f"waiting/{waiting.id}/ops-chat"]
    assert Audit(store).notifications_of(capacity.id) == []


def test_rules_filter_by_runbook_and_by_what_happened(store, queue, receiver, registry):
    rules = [
        {"to": ["ops-chat"], "runbooks": ["patching/*"], "on": ["failed"]},
        {"to": ["ops-chat"], "runbooks": ["db-*.ipynb"], "on": ["succeeded"]},
    ]
    notifier = make_notifier(store, receiver, registry, rules=rules)
    failed_scheduled_run(queue, runbook="patching/monthly.ipynb")  # told
    failed_scheduled_run(queue, runbook="other/monthly.ipynb")  # another runbook
    for runbook, status in [
        ("db-failover.ipynb", "succeeded"),
        ("db-failover.ipynb", "failed"),
        ("web.ipynb", "succeeded"),
    ]:
        run = start(store, runbook=runbook)
        store.finish_run(run.id, "bob", status)
    notifier.step()
    assert sorted(post["title"] for post in receiver.posts) == [
        "opshub: db-failover.ipynb succeeded",
        "opshub: patching/monthly.ipynb failed",
    ]


def test_by_default_failures_are_told_and_successes_and_cancels_are_not(notifier, store, queue, receiver):
    ok = start(store)
    store.finish_run(ok.id, "bob", "succeeded")
    cancelled = enqueue(queue)
    queue.request_cancel(cancelled.id, "bob", may_cancel_any=False)
    failed = start(store)
    store.finish_run(failed.id, "bob", "failed", failed_cell=0, error_summary="boom")
    notifier.step()
    (post,) = receiver.posts
    assert f"{RUN_PAGE}{failed.id}" in post["message"]


def test_people_s_interactive_runs_are_told_only_to_rules_that_ask_for_them(store, queue, receiver, registry):
    rules = [{"to": ["ops-chat"]}, {"to": ["other"], "triggers": ["interactive"]}]
    targets = {"ops-chat": {"url_env": ENV}, "other": {"url_env": "OPSHUB_NOTIFY_OTHER"}}
    notifier = make_notifier(store, receiver, registry, rules=rules, targets=targets)
    for trigger in ("interactive", "headless"):
        run = start(store, runbook=f"{trigger}.ipynb", trigger=trigger)
        store.finish_run(run.id, "bob", "failed", failed_cell=1, error_summary="NameError: x")
    notifier.step()
    assert sorted((post["path"], post["title"]) for post in receiver.posts) == [
        ("/hook", "opshub: headless.ipynb failed"),
        ("/other", "opshub: interactive.ipynb failed"),
    ]


def test_a_receiver_failing_twice_gets_it_once_after_retries(notifier, queue, store, clock, receiver, registry):
    receiver.failures = 2
    run = failed_scheduled_run(queue)
    notifier.step()  # first attempt: 500
    notifier.step()  # not due yet
    (pending,) = Audit(store).notifications_of(run.id)
    assert (pending.status, pending.attempts) == ("pending", 1)
    assert "500" in pending.last_error
    assert pending.next_attempt_at == clock.current + notifier.retry_delay(1)
    clock.advance(seconds=5)
    notifier.step()  # second attempt: 500, then 10 s
    clock.advance(seconds=9)
    notifier.step()
    assert receiver.posts == [] and results(registry) == {"sent": 0, "retried": 2, "failed": 0}
    clock.advance(seconds=1)
    notifier.step()
    clock.advance(minutes=30)
    notifier.step()

    assert len(receiver.posts) == 1
    (sent,) = Audit(store).notifications_of(run.id)
    assert (sent.status, sent.attempts, sent.last_error) == ("sent", 3, None)
    assert results(registry) == {"sent": 1, "retried": 2, "failed": 0}


def test_retries_back_off_doubling_up_to_a_cap(notifier):
    delays = [notifier.retry_delay(n).total_seconds() for n in range(1, 11)]
    assert delays == [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]


def test_it_gives_up_after_max_attempts_and_keeps_the_last_error(store, queue, clock, receiver, registry):
    notifier = make_notifier(store, receiver, registry, max_attempts=2)
    receiver.failures = 100
    run = failed_scheduled_run(queue)
    for _ in range(4):
        notifier.step()
        clock.advance(minutes=10)
    (given_up,) = Audit(store).notifications_of(run.id)
    assert (given_up.status, given_up.attempts) == ("failed", 2)
    assert "500" in given_up.last_error
    assert results(registry) == {"sent": 0, "retried": 1, "failed": 1}


def test_a_target_whose_variable_is_unset_fails_saying_which(store, queue, receiver, registry):
    notifier = Notifier(store, {"targets": {"pager": {"url_env": "NOT_SET_ANYWHERE"}}, "rules": [{"to": ["pager"]}]},
                        PUBLIC_URL, registry=registry, environ={})  # fmt: skip
    run = failed_scheduled_run(queue)
    notifier.step()
    (pending,) = Audit(store).notifications_of(run.id)
    assert pending.last_error == "$NOT_SET_ANYWHERE is not set in the opshub service's environment"


def test_a_notifier_killed_before_delivery_leaves_it_to_the_next_which_sends_it_once(store, queue, receiver, registry):
    first = make_notifier(store, receiver, registry)
    told = failed_scheduled_run(queue)
    first.collect()  # stored, not sent: then the process is killed
    del first
    untold = failed_scheduled_run(queue, runbook="patching/weekly.ipynb")  # while no notifier ran

    second = make_notifier(store, receiver, CollectorRegistry())
    second.step()
    second.step()
    third = make_notifier(store, receiver, CollectorRegistry())  # one more restart
    third.step()

    runs = sorted(post["message"].rsplit("/", 1)[1] for post in receiver.posts)
    assert runs == sorted([told.id, untold.id])


def test_a_new_database_starts_after_the_events_already_there(store, queue, receiver, registry):
    failed_scheduled_run(queue)  # before any notifier ever ran: not told
    notifier = make_notifier(store, receiver, registry)
    notifier.step()
    assert receiver.posts == []
    failed_scheduled_run(queue)
    notifier.step()
    assert len(receiver.posts) == 1


def test_no_rules_send_nothing(store, queue, receiver, registry):
    notifier = Notifier(store, {}, PUBLIC_URL, registry=registry, environ={})
    failed_scheduled_run(queue)
    notifier.step()
    assert receiver.posts == [] and results(registry) == {"sent": 0, "retried": 0, "failed": 0}


def test_two_service_processes_stepping_at_once_send_each_notification_once(store, queue, receiver, database_url):
    """Two notifiers, each with its own store (its own connections), as two service processes would be:
    the feed position's row lock and the claim of each notification let only one of them send it.
    (tests/integration/test_store_postgres.py can collect this on PostgreSQL.)"""
    other = store_suite.RunStore(database_url, now=store.now)
    notifiers = [make_notifier(s, receiver, CollectorRegistry()) for s in (store, other)]
    runs = [failed_scheduled_run(queue, runbook=f"patching/{i}.ipynb") for i in range(5)]
    errors = []

    def step(notifier):
        try:
            for _ in range(3):
                notifier.step()
        except Exception as e:  # pragma: no cover (shown by the assertion)
            errors.append(e)

    threads = [threading.Thread(target=step, args=(n,)) for n in notifiers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.close()
    assert errors == []
    assert sorted(post["message"].rsplit("/", 1)[1] for post in receiver.posts) == sorted(run.id for run in runs)


def test_an_error_shown_on_the_run_page_holds_none_of_the_targets_secrets():
    urls = "slack://T0AAAAAAA/B0BBBBBBB/abcdefghijklmnop  json://ops:s3cr3t-pass@hooks.example.com/webhooks/9f8e7d6c?token=qwertyuiop"
    error = (
        "Failed to send to slack://T0AAAAAAA/B0BBBBBBB/abcdefghijklmnop: 403 (workspace T0AAAAAAA); "
        "JSON to hooks.example.com/webhooks/9f8e7d6c?token=qwertyuiop as ops:s3cr3t-pass"
    )
    scrubbed = scrub(error, urls)
    for secret in ("T0AAAAAAA", "B0BBBBBBB", "abcdefghijklmnop", "s3cr3t-pass", "9f8e7d6c", "qwertyuiop"):
        assert secret not in scrubbed, scrubbed
    assert "403" in scrubbed and "hooks.example.com" in scrubbed


def broken_dashboard(store, name="patch-status", runbook="patching/status.ipynb", since=START) -> None:
    """A live dashboard whose views found it broken (as dashboard_health.record_live_view records it)."""
    with store.transaction() as session:
        dashboard = session.get(Dashboard, name) or Dashboard(
            name=name, mode="live", title="Patching status", owner="alice", source="api", runbook=runbook,
            groups=[], created_at=START, updated_at=START,
        )  # fmt: skip
        dashboard.broken_since, dashboard.broken_detail = since, "NameError: inventory is not defined (cell 2)"
        session.add(dashboard)


def test_a_broken_live_dashboard_is_told_once_each_time_it_breaks(store, receiver, registry):
    rules = [{"to": ["ops-chat"], "runbooks": ["patching/*"]}, {"to": ["other"], "runbooks": ["net/*"]}]
    targets = {"ops-chat": {"url_env": ENV}, "other": {"url_env": "OPSHUB_NOTIFY_OTHER"}}
    notifier = make_notifier(store, receiver, registry, rules=rules, targets=targets)  # `on`: the default
    broken_dashboard(store)
    notifier.step()
    notifier.step()  # still broken: nothing twice
    (post,) = receiver.posts  # the rule about net/* is not about it
    assert post["title"] == "opshub: the dashboard patch-status is broken" and post["type"] == "failure"
    assert "Owner: alice" in post["message"] and "NameError: inventory is not defined" in post["message"]
    assert post["message"].endswith("/services/opshub/dashboards/patch-status/")
    # mended (its views render again), then broken again: told again
    broken_dashboard(store, since=START + datetime.timedelta(hours=2))
    notifier.step()
    assert len(receiver.posts) == 2


def test_a_rule_without_dashboard_broken_hears_nothing_of_dashboards(store, receiver, registry):
    notifier = make_notifier(store, receiver, registry, rules=[{"to": ["ops-chat"], "on": ["failed"]}])
    broken_dashboard(store)
    notifier.step()
    assert receiver.posts == []
