"""A run record on the wire, declared once: what a run's start, heartbeat and end carry, the events
`opshub run --events json` prints, and the paths of the service's API that takes the records.

Every side imports this module (a person's server, the runner, the lab's spool, the service), so it
imports nothing of opshub. Each record is a frozen dataclass whose annotations are its field table:
`to_json()` gives the body a client sends, `from_json(body)` is what the API accepts, exactly: an
unknown field or a value of the wrong JSON type raises `RecordError` naming the field (a 400). What a
value means (a known trigger, a status a run may end in, a UUID) is checked by whoever stores it.

The JSON field names are those clients have always sent: servers of an older version keep working.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from types import NoneType, UnionType
from typing import Any, ClassVar

# The service's run API, under its prefix. `{run_id}` is a run's id: filled in by clients (`path`),
# a captured path segment in the route tables (`route`).
RUNS = "api/runs"  # POST a RunStart (a person's server)
RUN = "api/runs/{run_id}"  # GET the run; DELETE (admins)
RUN_HEARTBEAT = "api/runs/{run_id}/heartbeat"  # POST a Heartbeat
RUN_FINISH = "api/runs/{run_id}/finish"  # POST a RunEnd
# The runner's reports on its run, with the run's own token (`Authorization: Bearer <token>`).
RUNNER_BEGIN = "api/runner/runs/{run_id}/begin"  # POST a FirstCell: the run reached its first cell
RUNNER_HEARTBEAT = "api/runner/runs/{run_id}/heartbeat"  # POST a Heartbeat
RUNNER_FINISH = "api/runner/runs/{run_id}/finish"  # POST a RunEnd


def path(template: str, run_id: str) -> str:
    """The path a client posts to: `template` with the run's id."""
    return template.format(run_id=run_id)


def route(template: str) -> str:
    """The route pattern of `template` for Tornado: the run's id is the handler's argument."""
    return template.replace("{run_id}", "([^/]+)")


class RecordError(ValueError):
    """A body that is not the record it should be. `field` names the field (None: the body itself)."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        super().__init__(message)


# What a refusal calls each JSON type.
_TYPE_NAMES = {str: "text", bool: "true or false", int: "a whole number", float: "a number", dict: "a JSON object"}


class Record:
    """The shared part of every record: the field table is the dataclass's annotations."""

    unknown_hint: ClassVar[str] = ""  # said after "unknown field(s) ...": why a field people try is not one

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    def to_json(self) -> dict[str, Any]:
        """The body as sent: every field, by its wire name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, body: Any):
        """The record in `body`, checked: RecordError naming the field for an unknown one, a missing
        required one, or a value of the wrong type."""
        if not isinstance(body, Mapping):
            raise RecordError(None, "the request body must be a JSON object")
        types = cls.field_types()
        unknown = sorted(set(body) - set(types))
        if unknown:
            raise RecordError(unknown[0], f"unknown field(s) {', '.join(unknown)}{cls.unknown_hint}")
        missing = [f.name for f in dataclasses.fields(cls) if _is_required(f) and f.name not in body]
        if missing:
            raise RecordError(missing[0], f"{missing[0]} is required")
        for name, value in body.items():
            if not _accepts(types[name], value):
                raise RecordError(name, f"{name} must be {_describe(types[name])}, not {_shown(value)}")
        return cls(**body)


@dataclasses.dataclass(frozen=True)
class RunStart(Record):
    """POST api/runs: a person's server records a run about to start. The user is the token's owner."""

    runbook: str
    trigger: str = "headless"  # headless or interactive: other runs are the service's own
    parameters: dict = dataclasses.field(default_factory=dict)
    runbook_commit: str | None = None  # None: not a git checkout
    drift: bool = False  # the runbook differs from its commit
    id: str | None = None  # chosen by a client that spools runs: a start sent again is recognised

    unknown_hint: ClassVar[str] = " (the user comes from the token)"


@dataclasses.dataclass(frozen=True)
class Heartbeat(Record):
    """POST .../heartbeat: the run is alive; an interactive run also sends its cells so far."""

    output_notebook: dict | str | None = None  # a notebook, or its JSON text
    drift: bool = False  # True: drift found while the run goes on (an edited cell)


@dataclasses.dataclass(frozen=True)
class FirstCell(Record):
    """POST api/runner/runs/<id>/begin: the runner's run reached its first cell (its delay ends). No fields."""


@dataclasses.dataclass(frozen=True)
class RunEnd(Record):
    """POST .../finish: how the run ended."""

    status: str  # succeeded, failed, interrupted
    failed_cell: int | None = None  # 0-based index into output_notebook's cells
    error_summary: str | None = None
    output_notebook: dict | str | None = None  # the executed notebook (masked), or its JSON text
    drift: bool = False  # True: drift found during the run


# `opshub run --events json`: one JSON object per line on stdout, `{"event": <name>, **fields}`.


@dataclasses.dataclass(frozen=True)
class RunStarted(Record):
    """The run is recorded and about to run: its id and page."""

    event: ClassVar[str] = "started"
    run_id: str
    url: str | None
    runbook: str
    runbook_commit: str | None
    drift: bool
    parameters: dict  # every value that applies, secrets masked


@dataclasses.dataclass(frozen=True)
class CellProgress(Record):
    """A code cell ran."""

    event: ClassVar[str] = "cell"
    index: int  # its place in the runbook as it runs, from 0 (the progress line's `cell N` is N - 1)
    status: str  # succeeded or failed
    seconds: float


@dataclasses.dataclass(frozen=True)
class RunEnded(Record):
    """The run ended: what was recorded (exit_code 3: the end could not be recorded)."""

    event: ClassVar[str] = "ended"
    run_id: str
    status: str  # succeeded, failed, interrupted
    # in the recorded notebook, as the history has it (papermill adds its error cells there: not `index`)
    failed_cell: int | None
    error_summary: str | None
    url: str | None
    exit_code: int
    notebook: str | None  # where the executed notebook was saved


EVENTS: dict[str, type[Record]] = {kind.event: kind for kind in (RunStarted, CellProgress, RunEnded)}


def event_line(record: Record) -> str:
    """One line of `--events json`."""
    return json.dumps({"event": record.event, **record.to_json()})


def parse_event(line: str) -> Record:
    """The event in one line of `--events json`; RecordError when it is not one."""
    try:
        body = json.loads(line)
    except ValueError:
        raise RecordError(None, f"not a JSON line: {line[:80]!r}") from None
    if not isinstance(body, dict) or body.get("event") not in EVENTS:
        raise RecordError("event", f"event must be one of {', '.join(EVENTS)}: {line[:80]!r}")
    fields = dict(body)
    return EVENTS[fields.pop("event")].from_json(fields)


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _members(hint: Any) -> tuple:
    """The JSON types a field's annotation allows (`str | None` -> (str, NoneType))."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (typing.get_origin(hint) or hint,)


def _accepts(hint: Any, value: Any) -> bool:
    for kind in _members(hint):
        if kind is NoneType and value is None:
            return True
        if kind in (int, float) and isinstance(value, bool):
            continue  # JSON's true is not a number
        if kind is float and isinstance(value, int | float):
            return True
        if kind is not NoneType and isinstance(value, kind):
            return True
    return False


def _describe(hint: Any) -> str:
    return " or ".join("null" if kind is NoneType else _TYPE_NAMES[kind] for kind in _members(hint))


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):  # not repeated back: it may be a whole notebook
        return "a JSON object" if isinstance(value, dict) else "a JSON list"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:79] + "…"
