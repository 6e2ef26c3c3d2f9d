"""The run history store against a real SQLite database in tmp_path.

tests/integration/test_store_postgres.py runs these same tests against a real PostgreSQL server by
overriding the `database_url` fixture.
"""

from __future__ import annotations

import datetime
import json
import uuid

import nbformat
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from opshub.service.models import RUNNER_TRIGGERS, TRIGGERS, Base, Run
from opshub.service.notebook_cap import TRUNCATION_MARKER_ID
from opshub.service.store import (
    NotRunOwner,
    RunAlreadyFinished,
    RunNotFound,
    RunStore,
    alembic_config,
)
from opshub.service.visibility import RunVisibility
from sqlalchemy import event, insert, inspect
from sqlalchemy.orm.exc import DetachedInstanceError

UTC = datetime.timezone.utc
START = datetime.datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
OUTPUT_CAP = 20_000


class Clock:
    """A clock the test moves by hand, so nothing sleeps."""

    def __init__(self) -> None:
        self.current = START

    def __call__(self) -> datetime.datetime:
        return self.current

    def advance(self, **delta: float) -> datetime.datetime:
        self.current += datetime.timedelta(**delta)
        return self.current


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def database_url(tmp_path) -> str:
    """An empty database (tests/integration/test_store_postgres.py overrides this with PostgreSQL)."""
    return f"sqlite:///{tmp_path / 'runs.sqlite'}"


@pytest.fixture
def store(database_url, clock):
    the_store = RunStore(database_url, output_cap=OUTPUT_CAP, now=clock)
    the_store.upgrade()
    yield the_store
    the_store.close()


def start(store: RunStore, runbook="patch-server-stack.ipynb", user="bob", trigger="headless", **kwargs) -> Run:
    return store.start_run(runbook, user, trigger, kwargs.pop("parameters", {}), **kwargs)


def notebook_json(nb) -> str:
    """The notebook as the store serialises it (compact JSON), to measure sizes."""
    return json.dumps(nb, ensure_ascii=False, separators=(",", ":"))


# Migrations


def test_upgrade_creates_the_schema_in_an_empty_database_and_a_second_upgrade_changes_nothing(database_url, clock):
    store = RunStore(database_url, now=clock)
    try:
        assert "runs" not in inspect(store.engine).get_table_names()
        store.upgrade()
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        with store.engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == head
        assert {"runs", "alembic_version"} <= set(inspect(store.engine).get_table_names())
        run = start(store)

        store.upgrade()

        with store.engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == head
        assert store.get_run(run.id).status == "running"
    finally:
        store.close()


def test_the_migrated_schema_matches_the_models(store):
    """A model change without its alembic revision shows up here."""
    with store.engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    assert differences == []


# Starting runs


def test_start_run_records_a_running_run_with_its_heartbeat(store):
    parameters = {"stack": "web", "hosts": ["web1", "web2"], "dry_run": True, "batch": 2, "limits": {"cpu": 0.5}}
    run = start(store, parameters=parameters, runbook_commit="a" * 40, drift=True)

    assert uuid.UUID(run.id).version == 4
    stored = store.get_run(run.id)
    assert stored.runbook == "patch-server-stack.ipynb"
    assert stored.user == "bob"
    assert stored.trigger == "headless"
    assert stored.parameters == parameters
    assert stored.runbook_commit == "a" * 40
    assert stored.drift is True
    assert stored.status == "running"
    assert not stored.finished
    assert stored.started_at == START
    assert stored.started_at.tzinfo is not None and stored.started_at.utcoffset() == datetime.timedelta(0)
    assert stored.last_heartbeat_at == START
    assert stored.ended_at is None
    assert stored.failed_cell is None and stored.error_summary is None
    assert stored.output_notebook is None and stored.output_truncated is False


def test_start_run_defaults(store):
    run = store.start_run("host-health-check.ipynb", "alice", "headless", None)
    stored = store.get_run(run.id)
    assert stored.parameters == {}
    assert stored.runbook_commit is None
    assert stored.drift is False


def test_every_run_gets_its_own_id(store):
    assert len({start(store).id for _ in range(20)}) == 20


def test_times_in_other_time_zones_are_stored_as_utc(store, clock):
    clock.current = datetime.datetime(2025, 3, 1, 11, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    run = start(store)
    assert store.get_run(run.id).started_at == datetime.datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    assert store.get_run(run.id).started_at.tzinfo == UTC


@pytest.mark.parametrize("trigger", [t for t in TRIGGERS if t not in RUNNER_TRIGGERS])
def test_start_run_accepts_each_known_trigger_but_the_runners(store, trigger):
    # requested, schedule and alert runs are the queue's (tests/unit/test_queue.py)
    assert store.get_run(start(store, trigger=trigger).id).trigger == trigger


@pytest.mark.parametrize("trigger", ["cron", "", "HEADLESS", None])
def test_start_run_refuses_an_unknown_trigger(store, trigger):
    with pytest.raises(ValueError, match="trigger"):
        start(store, trigger=trigger)
    assert store.list_runs() == ([], 0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"runbook": ""}, "runbook"),
        ({"runbook": "x" * 513}, "runbook"),
        ({"user": " "}, "user"),
        ({"parameters": {"when": datetime.datetime.now()}}, "parameters"),
        ({"parameters": {"ratio": float("nan")}}, "parameters"),
        ({"runbook_commit": ""}, "runbook_commit"),
        ({"runbook": "a\x00b.ipynb"}, "NUL"),  # PostgreSQL cannot store it: refused on every database
        ({"reported_from": "x" * 256}, "reported_from"),
    ],
)
def test_start_run_refuses_bad_values(store, changes, message):
    with pytest.raises(ValueError, match=message):
        start(store, **changes)
    assert store.list_runs() == ([], 0)


def test_a_clock_without_time_zone_is_refused(database_url):
    store = RunStore(database_url, now=datetime.datetime.now)
    try:
        store.upgrade()
        with pytest.raises(ValueError, match="timezone-aware"):
            start(store)
    finally:
        store.close()


# Heartbeats


def test_heartbeat_moves_the_last_heartbeat_only(store, clock):
    run = start(store)
    later = clock.advance(seconds=30)

    assert store.heartbeat(run.id, "bob") == later

    stored = store.get_run(run.id)
    assert stored.last_heartbeat_at == later
    assert stored.started_at == START
    assert stored.status == "running"


def test_heartbeat_is_refused_for_another_user_an_unknown_run_and_a_finished_run(store, clock):
    run = start(store)
    clock.advance(seconds=30)
    with pytest.raises(NotRunOwner):
        store.heartbeat(run.id, "alice")
    with pytest.raises(RunNotFound):
        store.heartbeat(str(uuid.uuid4()), "bob")
    assert store.get_run(run.id).last_heartbeat_at == START

    store.finish_run(run.id, "bob", "succeeded")
    with pytest.raises(RunAlreadyFinished):
        store.heartbeat(run.id, "bob")


# Finishing runs


def test_finish_run_succeeded(store, clock):
    run = start(store)
    end = clock.advance(minutes=5)

    finished = store.finish_run(run.id, "bob", "succeeded")

    assert finished.id == run.id
    stored = store.get_run(run.id)
    assert stored.status == "succeeded"
    assert stored.finished
    assert stored.ended_at == end
    assert stored.failed_cell is None and stored.error_summary is None and stored.output_notebook is None


def test_finish_run_failed_records_the_cell_the_error_and_the_output(store, clock):
    run = start(store)
    nb = new_notebook(cells=[new_code_cell("1/0", outputs=[new_output("error", ename="ZeroDivisionError")])])
    clock.advance(minutes=1)

    store.finish_run(
        run.id, "bob", "failed", failed_cell=0, error_summary="ZeroDivisionError: division by zero", output_notebook=nb
    )

    stored = store.get_run(run.id)
    assert stored.status == "failed"
    assert stored.failed_cell == 0
    assert stored.error_summary == "ZeroDivisionError: division by zero"
    assert json.loads(stored.output_notebook) == nb
    assert stored.output_truncated is False


def test_finish_run_accepts_the_notebook_as_json_text(store):
    run = start(store)
    nb = new_notebook(cells=[new_markdown_cell("# Patching")])
    store.finish_run(run.id, "bob", "succeeded", output_notebook=nbformat.writes(nb))
    assert nbformat.reads(store.get_run(run.id).output_notebook, as_version=4) == nb


def test_only_the_user_who_started_a_run_may_finish_it(store, clock):
    run = start(store, user="bob")
    clock.advance(minutes=1)

    with pytest.raises(NotRunOwner) as refused:
        store.finish_run(run.id, "alice", "succeeded")
    assert isinstance(refused.value, PermissionError)
    stored = store.get_run(run.id)
    assert stored.status == "running" and stored.ended_at is None

    store.finish_run(run.id, "bob", "succeeded")
    assert store.get_run(run.id).status == "succeeded"


def test_a_finished_run_cannot_be_finished_again(store, clock):
    run = start(store)
    end = clock.advance(minutes=1)
    store.finish_run(run.id, "bob", "succeeded")
    clock.advance(minutes=1)

    with pytest.raises(RunAlreadyFinished, match="succeeded"):
        store.finish_run(run.id, "bob", "failed", failed_cell=3, error_summary="late")

    stored = store.get_run(run.id)
    assert (stored.status, stored.ended_at, stored.failed_cell, stored.error_summary) == ("succeeded", end, None, None)


@pytest.mark.parametrize("status", ["running", "done", "", "SUCCEEDED"])
def test_finish_run_needs_an_end_state(store, status):
    run = start(store)
    with pytest.raises(ValueError, match="status"):
        store.finish_run(run.id, "bob", status)
    assert store.get_run(run.id).status == "running"


def test_finish_run_refuses_a_negative_cell_index(store):
    run = start(store)
    with pytest.raises(ValueError, match="failed_cell"):
        store.finish_run(run.id, "bob", "failed", failed_cell=-1)


def test_finish_run_of_an_unknown_run(store):
    with pytest.raises(RunNotFound):
        store.finish_run(str(uuid.uuid4()), "bob", "succeeded")


@pytest.mark.parametrize("output", ["not json", '{"no": "cells"}', "[1, 2]"])
def test_finish_run_refuses_an_output_that_is_not_a_notebook(store, output):
    run = start(store)
    with pytest.raises(ValueError, match="output_notebook"):
        store.finish_run(run.id, "bob", "succeeded", output_notebook=output)
    assert store.get_run(run.id).status == "running"


# Stale runs


def test_runs_silent_for_too_long_become_interrupted(store, clock):
    silent = start(store, runbook="a.ipynb")
    clock.advance(minutes=4)
    alive = start(store, runbook="b.ipynb")
    done = start(store, runbook="c.ipynb")
    store.finish_run(done.id, "bob", "succeeded")
    now = clock.advance(minutes=2)  # silent: 6 minutes without a heartbeat; alive: 2

    assert store.interrupt_stale_runs(datetime.timedelta(minutes=5)) == [silent.id]

    interrupted = store.get_run(silent.id)
    assert interrupted.status == "interrupted"
    assert interrupted.ended_at == now
    assert "no heartbeat" in interrupted.error_summary
    assert store.get_run(alive.id).status == "running"
    assert store.get_run(done.id).status == "succeeded"
    with pytest.raises(RunAlreadyFinished):
        store.heartbeat(silent.id, "bob")
    with pytest.raises(RunAlreadyFinished):
        store.finish_run(silent.id, "bob", "succeeded")

    assert store.interrupt_stale_runs(datetime.timedelta(minutes=5)) == []
    clock.advance(minutes=3)  # alive: exactly 5 minutes, not more
    assert store.interrupt_stale_runs(datetime.timedelta(minutes=5)) == []
    clock.advance(seconds=1)
    assert store.interrupt_stale_runs(datetime.timedelta(minutes=5)) == [alive.id]


def test_a_heartbeat_keeps_a_run_from_being_interrupted(store, clock):
    run = start(store)
    clock.advance(minutes=4)
    store.heartbeat(run.id, "bob")
    clock.advance(minutes=4)
    assert store.interrupt_stale_runs(datetime.timedelta(minutes=5)) == []
    assert store.get_run(run.id).status == "running"


def test_at_service_start_nothing_is_left_running(store, clock):
    runs = [start(store, user=user) for user in ("alice", "bob", "bob")]
    clock.advance(seconds=1)

    assert sorted(store.interrupt_stale_runs(datetime.timedelta(0))) == sorted(run.id for run in runs)

    assert store.list_runs(status="running")[1] == 0
    assert store.list_runs(status="interrupted")[1] == 3


def test_interrupt_stale_runs_refuses_a_negative_window(store):
    with pytest.raises(ValueError):
        store.interrupt_stale_runs(datetime.timedelta(seconds=-1))


# Reading and deleting


def test_get_run_of_an_unknown_id_is_none(store):
    assert store.get_run(str(uuid.uuid4())) is None


def make_history(store: RunStore, clock: Clock) -> list[Run]:
    """12 runs a minute apart across runbooks, users, triggers and end states, oldest first."""
    runs = []
    for i in range(12):
        clock.advance(minutes=1)
        run = store.start_run(
            ["a.ipynb", "b.ipynb", "c.ipynb"][i % 3],
            ["bob", "alice"][i % 2],
            "interactive" if i % 4 == 0 else "headless",
            {"i": i},
        )
        if i % 3 == 0:
            run = store.finish_run(run.id, run.user, "succeeded")
        elif i % 5 == 0:
            run = store.finish_run(run.id, run.user, "failed", failed_cell=1)
        runs.append(run)
    return runs


def test_list_runs_newest_first_with_each_filter(store, clock):
    history = make_history(store, clock)
    newest_first = list(reversed(history))

    runs, total = store.list_runs()
    assert [run.id for run in runs] == [run.id for run in newest_first]
    assert total == 12

    filters = [
        {"runbook": "a.ipynb"},
        {"user": "alice"},
        {"status": "succeeded"},
        {"status": "running"},
        {"trigger": "interactive"},
        {"runbook": "b.ipynb", "user": "bob"},
        {"runbook": "a.ipynb", "status": "succeeded", "trigger": "headless"},
    ]
    for given in filters:
        expected = [run.id for run in newest_first if all(getattr(run, key) == value for key, value in given.items())]
        runs, total = store.list_runs(**given)
        assert [run.id for run in runs] == expected, given
        assert total == len(expected), given
    assert store.list_runs(runbook="missing.ipynb") == ([], 0)


def test_list_runs_by_a_parameter_value_and_part_of_a_user_name(store, clock):
    web = start(store, user="Alice", parameters={"stack": "web", "dry_run": False, "wait_timeout": 900, "r": 1.5})
    db = start(store, user="bob", parameters={"stack": "db", "dry_run": True, "wait_timeout": 60, "hosts": ["a"]})
    other = start(store, user="alfred", parameters={"name": 'web"x', "stack": "100%_"})

    def found(**filters):
        return [run.id for run in store.list_runs(**filters)[0]]

    assert found(parameter=("stack", "web")) == [web.id]
    assert found(parameter=("dry_run", "false")) == [web.id] and found(parameter=("dry_run", "True")) == [db.id]
    assert found(parameter=("wait_timeout", "900")) == [web.id] and found(parameter=("r", "1.5")) == [web.id]
    assert found(parameter=("name", 'web"x')) == [other.id] and found(parameter=("stack", "100%_")) == [other.id]
    assert found(parameter=("stack", "we")) == [] and found(parameter=("missing", "web")) == []
    assert set(found(user_contains="AL")) == {other.id, web.id} and found(user_contains="%") == []
    assert found(user_contains="b", parameter=("stack", "db")) == [db.id]
    with pytest.raises(ValueError, match="a parameter name"):
        store.list_runs(parameter=("1x; drop", "web"))


def test_list_runs_between_two_times(store, clock):
    history = make_history(store, clock)
    runs, total = store.list_runs(since=history[3].started_at, until=history[8].started_at)
    assert [run.id for run in runs] == [run.id for run in reversed(history[3:8])]
    assert total == 5
    assert store.list_runs(since=history[11].started_at)[1] == 1
    assert store.list_runs(until=history[0].started_at)[1] == 0


def test_list_runs_pages_with_a_constant_total(store, clock):
    history = make_history(store, clock)
    pages = [store.list_runs(limit=5, offset=offset) for offset in (0, 5, 10, 15)]
    assert [len(runs) for runs, _ in pages] == [5, 5, 2, 0]
    assert {total for _, total in pages} == {12}
    assert [run.id for runs, _ in pages for run in runs] == [run.id for run in reversed(history)]
    runs, total = store.list_runs(user="bob", limit=2, offset=1)
    assert [run.id for run in runs] == [run.id for run in reversed(history) if run.user == "bob"][1:3]
    assert total == 6


def test_list_runs_leaves_the_output_notebook_out(store):
    run = start(store)
    store.finish_run(run.id, "bob", "succeeded", output_notebook=new_notebook())
    (listed,), _ = store.list_runs()
    with pytest.raises(DetachedInstanceError):
        listed.output_notebook  # noqa: B018 (reading it is the test)
    assert store.get_run(run.id).output_notebook is not None


@pytest.mark.parametrize(
    "arguments",
    [
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
        {"offset": 2**63},  # beyond the databases' 64-bit integers
        {"runbook": "a\x00"},
        {"status": "done"},
        {"trigger": "cron"},
        {"since": datetime.datetime(2025, 1, 1)},
    ],
)
def test_list_runs_refuses_bad_arguments(store, arguments):
    with pytest.raises(ValueError):
        store.list_runs(**arguments)


def test_a_run_records_who_reported_it_and_from_where(store):
    run = start(store, reported_by="bob", reported_from="API token from 10.0.0.7")
    again = store.get_run(run.id)
    assert (again.reported_by, again.reported_from) == ("bob", "API token from 10.0.0.7")
    assert store.list_runs()[0][0].reported_from == "API token from 10.0.0.7"
    assert store.get_run(start(store).id).reported_by is None  # not known: nothing is made up


def test_list_runs_hides_runbooks_except_from_whoever_ran_them(store, clock):
    open_run = start(store, runbook="open.ipynb", user="bob")
    clock.advance(seconds=1)
    bobs = start(store, runbook="secret.ipynb", user="bob")
    clock.advance(seconds=1)
    alices = start(store, runbook="secret.ipynb", user="alice")

    def ids(viewer, **filters):
        runs, total = store.list_runs(visible_to=RunVisibility.of(viewer, ["secret.ipynb"]), **filters)
        return [r.id for r in runs], total

    assert ids("carol") == ([open_run.id], 1)
    assert ids("bob") == ([bobs.id, open_run.id], 2)
    assert ids("alice", runbook="secret.ipynb") == ([alices.id], 1)
    assert store.list_runs()[1] == 3


def test_ids_and_values_no_database_can_store_are_refused_not_crashed_on(store):
    assert store.get_run("a\x00b") is None and store.delete_run("a\x00b", by="admin") is False
    run = start(store)
    for bad in ({"error_summary": "x\x00"}, {"error_summary": {"no": "text"}}, {"failed_cell": "3"}):
        with pytest.raises(ValueError):
            store.finish_run(run.id, "bob", "failed", **bad)
    with pytest.raises(ValueError, match="failed_cell"):
        store.finish_run(run.id, "bob", "failed", failed_cell=2**63)
    assert store.get_run(run.id).status == "running"


def test_delete_run(store):
    kept, deleted = start(store), start(store)
    assert store.delete_run(deleted.id, by="admin") is True
    assert store.get_run(deleted.id) is None
    assert store.get_run(kept.id) is not None
    assert store.delete_run(deleted.id, by="admin") is False


# Retention


def test_retention_by_age_deletes_old_finished_runs_only(store, clock):
    old_finished = start(store)
    store.finish_run(old_finished.id, "bob", "failed")
    old_running = start(store)
    clock.advance(days=40)
    recent_finished = start(store)
    store.finish_run(recent_finished.id, "bob", "succeeded")

    assert store.apply_retention(max_age=datetime.timedelta(days=30)) == 1

    remaining = {run.id for run in store.list_runs()[0]}
    assert remaining == {old_running.id, recent_finished.id}


def test_retention_by_count_keeps_the_newest_finished_runs_and_every_running_one(store, clock):
    running = start(store)
    finished = []
    for _ in range(5):
        clock.advance(minutes=1)
        run = start(store)
        store.finish_run(run.id, "bob", "succeeded")
        finished.append(run)

    assert store.apply_retention() == 0
    assert store.apply_retention(max_runs=2) == 3
    assert {run.id for run in store.list_runs()[0]} == {running.id, finished[3].id, finished[4].id}
    assert store.apply_retention(max_runs=2) == 0
    assert store.apply_retention(max_runs=0) == 2
    assert [run.id for run in store.list_runs()[0]] == [running.id]


def test_retention_by_age_and_count_together(store, clock):
    runs = []
    for _ in range(4):
        run = start(store)
        store.finish_run(run.id, "bob", "succeeded")
        runs.append(run)
        clock.advance(days=10)
    # ages now 40, 30, 20 and 10 days
    assert store.apply_retention(max_age=datetime.timedelta(days=25), max_runs=1) == 3
    assert [run.id for run in store.list_runs()[0]] == [runs[3].id]


# Output size cap


def big_notebook(cells: int = 10, output_size: int = 3000):
    return new_notebook(
        cells=[
            new_code_cell(
                f"print('host {i}')",
                execution_count=i + 1,
                outputs=[new_output("stream", name="stdout", text=f"host {i}: " + "x" * output_size)],
            )
            for i in range(cells)
        ],
        metadata={"papermill": {"parameters": {"stack": "web"}}},
    )


def test_a_small_output_notebook_is_stored_whole(store):
    run = start(store)
    nb = big_notebook(cells=3)
    store.finish_run(run.id, "bob", "succeeded", output_notebook=nb)
    stored = store.get_run(run.id)
    assert stored.output_truncated is False
    assert json.loads(stored.output_notebook) == nb


def test_a_big_output_notebook_loses_outputs_from_the_end_and_says_so(store):
    run = start(store)
    nb = big_notebook()
    original_size = len(notebook_json(nb).encode())
    assert original_size > OUTPUT_CAP

    store.finish_run(run.id, "bob", "failed", failed_cell=9, output_notebook=nb)

    stored = store.get_run(run.id)
    assert stored.output_truncated is True
    assert len(stored.output_notebook.encode()) <= OUTPUT_CAP
    kept = nbformat.reads(stored.output_notebook, as_version=4)
    nbformat.validate(kept)
    # Every cell is still there, in place (failed_cell still points at the right one), marker last.
    assert [cell.source for cell in kept.cells[:-1]] == [cell.source for cell in nb.cells]
    with_outputs = [bool(cell.outputs) for cell in kept.cells[:-1]]
    kept_count = with_outputs.count(True)
    assert with_outputs == [True] * kept_count + [False] * (10 - kept_count)
    assert 0 < kept_count < 10
    assert kept.cells[:kept_count] == nb.cells[:kept_count]
    # No more was dropped than needed: one more cell's outputs would not fit.
    kept.cells[kept_count].outputs = nb.cells[kept_count].outputs
    assert len(notebook_json(kept).encode()) > OUTPUT_CAP

    marker = kept.cells[-1]
    assert marker.cell_type == "markdown"
    assert TRUNCATION_MARKER_ID in marker.metadata.tags
    assert "truncated" in marker.source
    assert f"{original_size:,} bytes" in marker.source
    assert kept.metadata.opshub.output_truncated == {"original_size": original_size, "cap": OUTPUT_CAP}
    assert kept.metadata.papermill.parameters == {"stack": "web"}


def test_an_output_notebook_too_big_even_without_outputs_loses_its_last_cells(store):
    run = start(store)
    nb = new_notebook(cells=[new_code_cell(f"# step {i}\n" + "y" * 5000) for i in range(10)])

    store.finish_run(run.id, "bob", "succeeded", output_notebook=nb)

    stored = store.get_run(run.id)
    assert stored.output_truncated is True
    assert len(stored.output_notebook.encode()) <= OUTPUT_CAP
    kept = nbformat.reads(stored.output_notebook, as_version=4)
    nbformat.validate(kept)
    assert 0 < len(kept.cells) - 1 < 10
    assert kept.cells[:-1] == nb.cells[: len(kept.cells) - 1]
    assert kept.cells[-1].id == TRUNCATION_MARKER_ID


def test_the_cap_counts_bytes_not_characters(store):
    run = start(store)
    nb = big_notebook(cells=4, output_size=0)
    for cell in nb.cells:
        cell.outputs[0].text = "é" * 3000  # 2 bytes each in UTF-8: 24,000 bytes, 12,000 characters
    store.finish_run(run.id, "bob", "succeeded", output_notebook=nb)
    stored = store.get_run(run.id)
    assert stored.output_truncated is True
    assert len(stored.output_notebook.encode()) <= OUTPUT_CAP


def test_the_output_cap_has_a_floor(database_url):
    with pytest.raises(ValueError, match="output_cap"):
        RunStore(database_url, output_cap=100)


# Aggregates for metrics


def test_counts_by_runbook_status_and_trigger_and_last_run_times(store, clock):
    history = make_history(store, clock)
    expected_counts: dict[tuple[str, str, str], int] = {}
    expected_last: dict[tuple[str, str], datetime.datetime] = {}
    for run in history:
        key = (run.runbook, run.status, run.trigger)
        expected_counts[key] = expected_counts.get(key, 0) + 1
        expected_last[(run.runbook, run.status)] = max(
            run.started_at, expected_last.get((run.runbook, run.status), START)
        )

    assert store.count_runs() == expected_counts
    last = store.last_run_times()
    assert last == expected_last
    assert all(value.tzinfo is not None and value.utcoffset() == datetime.timedelta(0) for value in last.values())


def test_counts_of_an_empty_store(store):
    assert store.count_runs() == {}
    assert store.last_run_times() == {}


def test_counts_are_one_grouped_query_each_with_100000_runs(store):
    runbooks = [f"runbook-{i}.ipynb" for i in range(5)]
    statuses = ["succeeded", "failed", "interrupted", "running"]
    rows = [
        {
            "id": str(uuid.uuid4()),
            "runbook": runbooks[i % 5],
            "user": f"user{i % 7}",
            "trigger": TRIGGERS[i % 2],
            "parameters": {},
            "status": statuses[i % 4],
            "started_at": START + datetime.timedelta(seconds=i),
            "last_heartbeat_at": START + datetime.timedelta(seconds=i),
            "drift": False,
            "output_truncated": False,
        }
        for i in range(100_000)
    ]
    with store.engine.begin() as connection:
        connection.execute(insert(Run), rows)

    statements = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    counts = store.count_runs()
    last = store.last_run_times()

    assert len(statements) == 2
    assert all("GROUP BY" in statement for statement in statements)
    assert sum(counts.values()) == 100_000
    assert len(counts) == 20  # runbook i % 5 and status i % 4 fix i % 20, hence the trigger
    assert last[("runbook-4.ipynb", "running")] == START + datetime.timedelta(seconds=99_999)
