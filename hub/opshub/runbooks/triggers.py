"""What starts a runbook unattended (its `opshub` metadata's `schedules` and `alerts`) and the `locks` a run holds.

metadata.py, whose docstring shows these keys, checks their shapes with its JSON Schema; `check_triggers`
checks what a schema cannot see (a cron expression, a time zone, a matcher and its regex, a template's
placeholders), so a runbook that could never fire is refused when it is read rather than skipped by the
scheduler at three in the morning. The rest is pure: when a schedule is due, which alerts start a runbook,
the parameters a run gets and the locks it holds. Nothing here keeps state or talks to anything.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import string
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

UTC = timezone.utc


class TriggerError(ValueError):
    """A template, matcher or schedule cannot be used as written, or a run lacks a value a template needs."""


# Templates: "stack:{stack}", "{instance}". Only plain names: a template is written in a notebook by anyone
# who may edit runbooks, and `{stack.__class__}` or `{hosts[0]}` would reach into the values' objects.

_FORMATTER = string.Formatter()


def _pieces(template: str) -> list[tuple[str, str | None]]:
    """(literal text, placeholder name or None) pairs; TriggerError unless every placeholder is a plain name."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as e:
        raise TriggerError(f"{template!r} is not a template ({e}, and {{{{ or }}}} is a literal brace)") from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (not name.isidentifier() or spec or conversion):
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise TriggerError(
                f"{shown} in {template!r} is not a plain name such as {{stack}} "
                "(no attributes, indexes, conversions or formats)"
            )
        pieces.append((literal, name))
    return pieces


def check_template(template: str) -> str | None:
    """What is wrong with `template` in words, or None when it can be rendered."""
    try:
        _pieces(template)
    except TriggerError as e:
        return str(e)
    return None


def template_names(template: str) -> list[str]:
    """The placeholder names of `template`, each once, in order (TriggerError if it is not a template)."""
    return list(dict.fromkeys(name for _, name in _pieces(template) if name is not None))


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """`template` with each `{name}` replaced by str(values[name]); `{{` and `}}` are literal braces."""
    out = []
    for literal, name in _pieces(template):
        out.append(literal)
        if name is not None:
            if name not in values:
                available = ", ".join(sorted(values)) or "nothing"
                raise TriggerError(f"{template!r} needs {{{name}}}, but there is no {name!r} among: {available}")
            out.append(str(values[name]))
    return "".join(out)


def lock_keys(templates: Sequence[str], parameters: Mapping[str, Any]) -> list[str]:
    """The locks a run with `parameters` holds: its runbook's `locks` rendered, sorted, each once.

    Sorted so that every run takes its locks in the same order, which is what keeps two runs from each
    holding one lock the other waits for."""
    return sorted({render_template(template, parameters) for template in templates})


# Schedules


@dataclass(frozen=True)
class Schedule:
    """One entry of a runbook's `opshub.schedules`.

    `key` identifies it across edits of the runbook, so the scheduler can remember when it last fired: the
    name when it has one, else a digest of what it does (cron, time zone, parameters). Changing an unnamed
    schedule makes it a new schedule; a named one keeps its history when its cron changes.
    """

    runbook: str
    key: str
    name: str | None
    cron: str
    timezone: str = "UTC"
    parameters: dict[str, Any] = field(default_factory=dict)


def _schedule_key(cron: str, zone: str, parameters: Mapping[str, Any]) -> str:
    canonical = json.dumps([" ".join(cron.split()), zone, parameters], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def schedules_of(runbook: str, metadata: Mapping[str, Any]) -> list[Schedule]:
    """The schedules of `runbook`, from its checked metadata (`runbook_metadata`)."""
    schedules = []
    for entry in metadata.get("schedules") or []:
        cron, zone = " ".join(entry["cron"].split()), entry.get("timezone", "UTC")
        parameters = entry.get("parameters", {})
        key = entry.get("name") or _schedule_key(cron, zone, parameters)
        schedules.append(Schedule(runbook, key, entry.get("name"), cron, zone, copy.deepcopy(dict(parameters))))
    return schedules


def _utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, not the naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _due_times(schedule: Schedule, start: datetime, reverse: bool = False) -> Iterator[datetime]:
    """cronsim's due times of `schedule` from `start` (after it, or before it when reversed), in UTC.

    The cron is evaluated on the wall clock of the schedule's time zone. Across DST changes this is what
    cronsim does, which mimics Debian's cron: an expression with a fixed minute and hour (`0 3 * * 1`,
    `30 2 * * *`) whose time is skipped when clocks go forward fires at the first minute after the gap
    (02:30 becomes 03:00 CEST), and fires once, the first time, when its time happens twice as clocks go
    back; one with `*` in its minute or hour (`*/15 * * * *`) follows the real clock: nothing in the skipped
    hour, both passes through the repeated one.
    """
    try:
        times = CronSim(schedule.cron, start.astimezone(ZoneInfo(schedule.timezone)), reverse=reverse)
    except CronSimError as e:
        raise TriggerError(f"{schedule.runbook}: {schedule.cron!r} is not a cron expression ({e})") from None
    for due in times:
        yield due.astimezone(UTC)


# Wall-clock times a DST change moves: cronsim walks the wall clock, so a walk that must not miss a due
# time near a real instant starts this far beyond it and drops what lies past it.
_DST_SLACK = timedelta(hours=3)


def fires_between(schedule: Schedule, after: datetime, until: datetime, limit: int = 1000) -> list[datetime]:
    """The times `schedule` is due with after < t <= until, as timezone-aware UTC, oldest first.

    At most `limit` of them: when more are due (a scheduler back after a long outage, a schedule every
    minute), the most recent `limit`, so catching up runs what is due now rather than last week's backlog.
    Naive datetimes are refused with ValueError: a scheduler's "now" without a zone is a bug to find.
    """
    after, until = _utc(after, "after"), _utc(until, "until")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    # Walking back from `until` to the limit-th most recent due time bounds the work by `limit` (every
    # minute for a year would otherwise be half a million steps). The walk forward from a little before it
    # decides what is returned, so "due" means one thing here and in next_fire.
    start = after
    recent = (due for due in _due_times(schedule, until + _DST_SLACK, reverse=True) if due <= until)
    for count, due in enumerate(recent, 1):
        if due <= after:
            break
        if count == limit:
            start = max(after, due - _DST_SLACK)
            break
    fires: deque[datetime] = deque(maxlen=limit)
    for due in _due_times(schedule, start):
        if due > until:
            break
        if due > after:
            fires.append(due)
    return list(fires)


def next_fire(schedule: Schedule, after: datetime) -> datetime:
    """The first time `schedule` is due strictly after `after`, as timezone-aware UTC."""
    after = _utc(after, "after")
    for due in _due_times(schedule, after):
        if due > after:
            return due
    raise TriggerError(f"{schedule.runbook}: {schedule.cron!r} is never due after {after.isoformat()}")


# Alerts. Matchers as Alertmanager's classic parser reads them (pkg/labels/parse.go): `label=value`,
# `label!=value`, `label=~regex`, `label!~regex`; the value may be double-quoted, with \" \\ and \n escapes.

_MATCHER = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(=~|!~|!=|=)\s*(.*?)\s*", re.DOTALL)
_ESCAPES = {"n": "\n", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class Matcher:
    """One parsed matcher. A regex is anchored at both ends, as in Alertmanager: `=~"web"` is not `web1`."""

    label: str
    op: str
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether `labels` satisfy it; a missing label is the empty string, as in Alertmanager."""
        actual = labels.get(self.label, "")
        hit = self.regex.fullmatch(actual) is not None if self.regex is not None else actual == self.value
        return hit if self.op in ("=", "=~") else not hit

    def __str__(self) -> str:
        quoted = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.label}{self.op}"{quoted}"'


def _unquote(raw: str, text: str) -> str:
    """The matcher value `raw` unescaped; a double quote may only open and close it (as Alertmanager says)."""
    quoted, out = raw.startswith('"'), []
    tokens = re.findall(r"\\.|.", raw[1:] if quoted else raw, re.DOTALL)  # an escape and its character, or one
    for i, token in enumerate(tokens):
        if token == '"':
            if not (quoted and i == len(tokens) - 1):
                raise TriggerError(f"{text!r} is not a matcher (its value has an unescaped double quote)")
            quoted = False
        else:
            out.append(_ESCAPES.get(token[1:], token) if len(token) == 2 else token)
    if quoted:
        raise TriggerError(f"{text!r} is not a matcher (its value's double quote is not closed)")
    return "".join(out)


def parse_matcher(text: str) -> Matcher:
    """The Matcher `text` writes, or TriggerError saying why it is not one."""
    found = _MATCHER.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise TriggerError(
            f"{text!r} is not a matcher: write label=value, label!=value, label=~regex or label!~regex "
            '(the value may be double-quoted: severity="critical")'
        )
    label, op, raw = found.groups()
    value = _unquote(raw, text)
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = re.compile(f"(?:{value})")
        except re.error as e:
            raise TriggerError(f"{text!r} has a bad regular expression ({e})") from None
    return Matcher(label, op, value, regex)


@dataclass(frozen=True)
class AlertRule:
    """One entry of a runbook's `opshub.alerts`: the alerts that start it, and the parameters they give it."""

    runbook: str
    alertname: str
    matchers: tuple[Matcher, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an alert with `labels` starts the runbook: its alertname, and every matcher holds."""
        return labels.get("alertname", "") == self.alertname and all(m.matches(labels) for m in self.matchers)

    def parameters_for(self, labels: Mapping[str, str]) -> dict[str, Any]:
        """The run's parameters: text values, and text items of lists (`["{instance}"]`), are templates over
        the alert's labels; the others constants. The runbook's parameters check what comes out."""
        result = {}
        for name, value in self.parameters.items():
            try:
                if isinstance(value, str):
                    value = render_template(value, labels)
                elif isinstance(value, list):
                    value = [render_template(item, labels) if isinstance(item, str) else item for item in value]
            except TriggerError as e:
                raise TriggerError(f"{self.runbook}: alert {self.alertname}, parameter {name}: {e}") from None
            result[name] = copy.deepcopy(value)
        return result


def alert_rules_of(runbook: str, metadata: Mapping[str, Any]) -> list[AlertRule]:
    """The alert rules of `runbook`, from its checked metadata (`runbook_metadata`)."""
    rules = []
    for entry in metadata.get("alerts") or []:
        matchers = tuple(parse_matcher(text) for text in entry.get("matchers", []))
        rules.append(AlertRule(runbook, entry["alertname"], matchers, copy.deepcopy(dict(entry.get("parameters", {})))))
    return rules


# Checking: what the JSON Schema cannot see. Entries of the wrong shape are skipped here (the schema has
# said what is wrong with them), so that one message lists every problem.


def _cron_problem(cron: str) -> str | None:
    fields = cron.split()
    if len(fields) != 5:
        return f"{cron!r} is not a cron expression (it has {len(fields)} fields, not 5: minute hour day month weekday)"
    try:
        CronSim(cron, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as e:
        return f"{cron!r} is not a cron expression ({e})"
    return None


def _timezone_problem(zone: str) -> str | None:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(zone, sorted(available_timezones()), n=1)
        hint = f" (did you mean {close[0]}?)" if close else " (an IANA name such as Europe/Berlin, or UTC)"
        return f"{zone!r} is not a known time zone{hint}"
    return None


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _name_problems(key: str, parameters: Any) -> list[str]:
    names = parameters if isinstance(parameters, Mapping) else {}
    return [
        f"{key}: {name!r} is not a parameter name (a name such as dry_run)" for name in names if not name.isidentifier()
    ]


def check_triggers(metadata: Mapping[str, Any]) -> list[str]:
    """The problems of `metadata`'s locks, schedules and alerts that its JSON Schema cannot see, each naming
    its key: `opshub.schedules[0].cron: '61 * * * *' is not a cron expression (Bad minute)`."""
    problems = [
        f"opshub.locks[{i}]: {problem}"
        for i, lock in enumerate(_list(metadata.get("locks")))
        if isinstance(lock, str) and (problem := check_template(lock))
    ]
    identities: dict[str, str] = {}
    for i, schedule in enumerate(_list(metadata.get("schedules"))):
        if not isinstance(schedule, Mapping):
            continue
        key, name, parameters = f"opshub.schedules[{i}]", schedule.get("name"), schedule.get("parameters", {})
        cron, zone = schedule.get("cron"), schedule.get("timezone", "UTC")
        if isinstance(cron, str) and (problem := _cron_problem(cron)):
            problems.append(f"{key}.cron: {problem}")
        if isinstance(zone, str) and (problem := _timezone_problem(zone)):
            problems.append(f"{key}.timezone: {problem}")
        problems += _name_problems(f"{key}.parameters", parameters)
        if not (isinstance(cron, str) and isinstance(zone, str) and isinstance(parameters, Mapping)):
            continue
        identity = name if isinstance(name, str) else _schedule_key(cron, zone, parameters)
        if identity in identities:
            same = f".name: {name!r} is also the name of" if isinstance(name, str) else " is the same schedule as"
            problems.append(f"{key}{same} {identities[identity]}")
        identities.setdefault(identity, key)
    for i, alert in enumerate(_list(metadata.get("alerts"))):
        if not isinstance(alert, Mapping):
            continue
        key, parameters = f"opshub.alerts[{i}]", alert.get("parameters", {})
        for j, text in enumerate(_list(alert.get("matchers"))):
            try:
                parse_matcher(text) if isinstance(text, str) else None
            except TriggerError as e:
                problems.append(f"{key}.matchers[{j}]: {e}")
        problems += _name_problems(f"{key}.parameters", parameters)
        for name, value in (parameters if isinstance(parameters, Mapping) else {}).items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and (problem := check_template(item)):
                    problems.append(f"{key}.parameters.{name}: {problem}")
    return problems
