"""Runbook triggers (runbooks/triggers.py): cron evaluated for real by cronsim in a time zone and across DST
changes, lock and parameter templates, Alertmanager matchers, and the keys a scheduler remembers."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from opshub.runbooks.triggers import (
    AlertRule,
    Schedule,
    TriggerError,
    alert_rules_of,
    check_template,
    check_triggers,
    fires_between,
    lock_keys,
    next_fire,
    parse_matcher,
    render_template,
    schedules_of,
    template_names,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def schedule(cron: str, zone: str = "UTC") -> Schedule:
    return schedules_of("patch.ipynb", {"schedules": [{"cron": cron, "timezone": zone}]})[0]


def wall(times) -> list[str]:
    return [t.astimezone(BERLIN).strftime("%m-%d %H:%M %Z") for t in times]


# Schedules


def test_fires_between_excludes_after_includes_until_and_answers_in_utc():
    fires = fires_between(schedule("*/15 * * * *"), utc(2025, 5, 6, 10, 0), utc(2025, 5, 6, 11, 0))
    assert fires == [utc(2025, 5, 6, 10, 15), utc(2025, 5, 6, 10, 30), utc(2025, 5, 6, 10, 45), utc(2025, 5, 6, 11, 0)]
    assert all(t.tzinfo is UTC for t in fires)
    # the same instants given in another zone, and seconds inside the window
    after, until = utc(2025, 5, 6, 10, 0, 1).astimezone(BERLIN), utc(2025, 5, 6, 10, 44, 59, 999999).astimezone(BERLIN)
    assert fires_between(schedule("*/15 * * * *"), after, until) == fires[:2]
    assert fires_between(schedule("*/15 * * * *"), utc(2025, 5, 6, 11), utc(2025, 5, 6, 10)) == []


def test_a_weekly_schedule_in_berlin_keeps_its_wall_time_across_the_march_dst_change():
    weekly = schedules_of(
        "patch.ipynb",
        {"schedules": [{"name": "weekly-web", "cron": "0 3 * * 1", "timezone": "Europe/Berlin"}]},
    )[0]
    fires = fires_between(weekly, utc(2025, 3, 17), utc(2025, 4, 8))
    # Mondays at 03:00 in Berlin: 02:00 UTC in winter, 01:00 UTC after the clocks went forward on 30 March
    assert fires == [utc(2025, 3, 17, 2), utc(2025, 3, 24, 2), utc(2025, 3, 31, 1), utc(2025, 4, 7, 1)]
    assert next_fire(weekly, utc(2025, 3, 24, 2)) == utc(2025, 3, 31, 1), "strictly after"
    assert next_fire(weekly, utc(2025, 3, 24, 1, 59, 59)) == utc(2025, 3, 24, 2)


def test_dst_in_berlin_is_what_cronsim_does_like_debian_cron():
    # a fixed time the clocks skip runs at the first minute after the gap; one they repeat runs once
    nightly = schedule("30 2 * * *", "Europe/Berlin")
    assert wall(fires_between(nightly, utc(2025, 3, 28), utc(2025, 4, 1))) == [
        "03-28 02:30 CET",
        "03-29 02:30 CET",
        "03-30 03:00 CEST",
        "03-31 02:30 CEST",
    ]
    assert wall(fires_between(nightly, utc(2025, 10, 25), utc(2025, 10, 28))) == [
        "10-25 02:30 CEST",
        "10-26 02:30 CEST",
        "10-27 02:30 CET",
    ]
    # in the repeated hour's second pass the 02:30 has already been: the next is the following night
    assert next_fire(nightly, utc(2025, 10, 26, 1, 10)) == utc(2025, 10, 27, 1, 30)
    assert fires_between(nightly, utc(2025, 10, 26, 1, 10), utc(2025, 10, 26, 23)) == []
    # a `*` in the hour follows the real clock: nothing in the skipped hour, both passes through the repeated one
    half_hourly = schedule("*/30 * * * *", "Europe/Berlin")
    assert wall(fires_between(half_hourly, utc(2025, 3, 29, 23, 59), utc(2025, 3, 30, 1, 30))) == [
        "03-30 01:00 CET",
        "03-30 01:30 CET",
        "03-30 03:00 CEST",
        "03-30 03:30 CEST",
    ]
    assert wall(fires_between(half_hourly, utc(2025, 10, 25, 23, 59), utc(2025, 10, 26, 2))) == [
        "10-26 02:00 CEST",
        "10-26 02:30 CEST",
        "10-26 02:00 CET",
        "10-26 02:30 CET",
        "10-26 03:00 CET",
    ]


@pytest.mark.parametrize(("cron", "minutes"), [("0 * * * *", {0}), ("*/20 * * * *", {0, 20, 40})])
def test_wildcard_hours_match_the_wall_clock_minute_by_minute_across_a_half_hour_zone_dst_change(cron, minutes):
    """Adelaide is UTC+10:30 until 6 April 2025 03:00, then UTC+9:30: checked against every UTC minute."""
    adelaide = ZoneInfo("Australia/Adelaide")
    after, until = utc(2025, 4, 5, 12), utc(2025, 4, 6, 0)
    every_minute = (after + timedelta(minutes=m) for m in range(1, 12 * 60 + 1))
    expected = [t for t in every_minute if t.astimezone(adelaide).minute in minutes]
    assert fires_between(schedule(cron, "Australia/Adelaide"), after, until) == expected
    assert len(expected) == 12 * len(minutes)


@pytest.mark.parametrize("cron", ["*/20 */3 * * *", "30 2 * * *", "15,45 1-3 * * *", "0 3 * * 1", "0 */2 * * *"])
@pytest.mark.parametrize("limit", [1, 2, 6])
def test_a_limit_keeps_the_most_recent_fires(cron, limit):
    """With a limit, the walk starts near the limit-th most recent time: it must give the tail of the full list."""
    after, until = utc(2025, 3, 1, 0, 0, 30), utc(2025, 4, 15, 0, 0, 30)
    every = fires_between(schedule(cron, "Europe/Berlin"), after, until, limit=10**6)
    assert len(every) > limit
    assert fires_between(schedule(cron, "Europe/Berlin"), after, until, limit=limit) == every[-limit:]
    assert fires_between(schedule(cron, "Europe/Berlin"), after, until, limit=len(every)) == every


def test_catching_up_on_ten_years_of_every_minute_gives_the_last_ones_at_once():
    started = time.monotonic()
    fires = fires_between(schedule("* * * * *"), utc(2015, 1, 1), utc(2025, 1, 1, 0, 0, 30), limit=3)
    assert fires == [utc(2024, 12, 31, 23, 58), utc(2024, 12, 31, 23, 59), utc(2025, 1, 1)]
    assert time.monotonic() - started < 5, "walking all five million minutes takes over half a minute"


def test_naive_times_and_a_limit_below_one_are_refused():
    with pytest.raises(ValueError, match="after must be timezone-aware"):
        fires_between(schedule("* * * * *"), datetime(2025, 1, 1), utc(2025, 1, 2))
    with pytest.raises(ValueError, match="until must be timezone-aware"):
        fires_between(schedule("* * * * *"), utc(2025, 1, 1), datetime(2025, 1, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(schedule("* * * * *"), datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="limit must be at least 1"):
        fires_between(schedule("* * * * *"), utc(2025, 1, 1), utc(2025, 1, 2), limit=0)


def test_next_fire_is_the_first_of_fires_between():
    for cron in ("*/15 * * * *", "0 3 * * 1", "30 2 * * *"):
        every = schedule(cron, "Europe/Berlin")
        after = utc(2025, 3, 29, 22, 7, 13)
        assert next_fire(every, after) == fires_between(every, after, after + timedelta(days=8))[0]


def test_schedule_keys_are_the_name_or_a_stable_digest_of_what_it_does():
    metadata = {
        "schedules": [
            {"name": "weekly-web", "cron": "0 3 * * 1", "parameters": {"stack": "web"}},
            {"cron": "0 3 * * 1"},
            {"cron": " 0  3 * * 1 ", "timezone": "UTC", "parameters": {}},
            {"cron": "0 3 * * 1", "timezone": "Europe/Berlin", "parameters": {"stack": "web", "dry_run": False}},
            {"parameters": {"dry_run": False, "stack": "web"}, "timezone": "Europe/Berlin", "cron": "0 3 * * 1"},
            {"cron": "0 3 * * 1", "timezone": "Europe/Berlin", "parameters": {"stack": "db", "dry_run": False}},
        ]
    }
    named, plain, spaced, web, reordered, db = schedules_of("patch.ipynb", metadata)
    assert (named.key, named.name, named.timezone, named.parameters) == (
        "weekly-web",
        "weekly-web",
        "UTC",
        {"stack": "web"},
    )
    # pinned: a scheduler remembers these keys across restarts and opshub versions
    assert (plain.key, web.key) == ("bd9772019f19", "90ab9e627682")
    assert spaced.key == plain.key and spaced.cron == "0 3 * * 1" and plain.name is None
    assert reordered.key == web.key and db.key != web.key
    assert schedules_of("patch.ipynb", {}) == [] and schedules_of("patch.ipynb", {"schedules": []}) == []


# Templates and locks


def test_templates_render_plain_names_and_literal_braces():
    assert render_template("stack:{stack}", {"stack": "web"}) == "stack:web"
    assert render_template("{n}/{dry_run}/{n}", {"n": 3, "dry_run": False}) == "3/False/3"
    assert render_template("{{literal}} {x}}}", {"x": "y"}) == "{literal} y}"
    assert template_names("{host}-{stack}-{host} {{not}}") == ["host", "stack"]
    assert template_names("no placeholders") == [] and check_template("stack:{stack}") is None


def test_a_missing_value_names_the_placeholder_and_the_values_there_are():
    with pytest.raises(TriggerError) as refused:
        render_template("stack:{stack}", {"host": "h1", "dry_run": True})
    assert str(refused.value) == "'stack:{stack}' needs {stack}, but there is no 'stack' among: dry_run, host"
    with pytest.raises(TriggerError, match="among: nothing"):
        render_template("{stack}", {})


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{stack.__class__}", "{stack.__class__} in '{stack.__class__}' is not a plain name"),
        ("{hosts[0]}", "{hosts[0]} in '{hosts[0]}' is not a plain name"),
        ("{stack!r}", "{stack!r} in '{stack!r}' is not a plain name"),
        ("{n:>5}", "{n:>5} in '{n:>5}' is not a plain name"),
        ("{}", "{} in '{}' is not a plain name"),
        ("{0}", "{0} in '{0}' is not a plain name"),
        ("stack:{stack", "'stack:{stack' is not a template (expected '}' before end of string"),
        ("a}b", "'a}b' is not a template (Single '}' encountered"),
    ],
)
def test_templates_other_than_plain_names_are_refused(template, problem):
    assert problem in check_template(template)
    with pytest.raises(TriggerError) as refused:
        render_template(template, {"stack": "web", "hosts": ["h1"], "n": 1, "0": "x", "": "x"})
    assert problem in str(refused.value)
    with pytest.raises(TriggerError):
        template_names(template)


def test_lock_keys_are_rendered_sorted_and_each_once():
    templates = ["stack:{stack}", "host:{host}", "stack:{stack}", "global"]
    assert lock_keys(templates, {"stack": "web", "host": "h1", "unused": 1}) == ["global", "host:h1", "stack:web"]
    assert lock_keys([], {"stack": "web"}) == []
    with pytest.raises(TriggerError, match="needs {host}"):
        lock_keys(templates, {"stack": "web"})


# Alerts


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ('severity="critical"', {"severity": "critical"}, True),
        ('severity="critical"', {"severity": "warning"}, False),
        ("severity=critical", {"severity": "critical"}, True),
        (' severity = "critical" ', {"severity": "critical"}, True),
        ('severity!="critical"', {"severity": "warning"}, True),
        ('severity!="critical"', {"severity": "critical"}, False),
        ('team=~"ops|infra"', {"team": "infra"}, True),
        ('team=~"ops|infra"', {"team": "infra-eu"}, False),
        ('instance=~"web"', {"instance": "web1"}, False),  # anchored, as in Alertmanager
        ('instance=~"web"', {"instance": "a-web"}, False),
        ('instance=~"web.*"', {"instance": "web1"}, True),
        ('instance!~"web"', {"instance": "web1"}, True),
        ('instance!~"web\\d+"', {"instance": "web1"}, False),
        ('team!="ops"', {}, True),  # a missing label is the empty string
        ('team=""', {}, True),
        ('team=~".+"', {}, False),
        ('team!~".+"', {}, True),
        ('msg="say \\"hi\\""', {"msg": 'say "hi"'}, True),
        ('msg="a,b = c"', {"msg": "a,b = c"}, True),
    ],
)
def test_matchers_hold_as_in_alertmanager(text, labels, expected):
    matcher = parse_matcher(text)
    assert matcher.matches(labels) is expected
    assert parse_matcher(str(matcher)) == matcher


def test_a_matcher_parses_into_its_parts():
    matcher = parse_matcher('team =~ "ops|infra"')
    assert (matcher.label, matcher.op, matcher.value) == ("team", "=~", "ops|infra")
    assert str(matcher) == 'team=~"ops|infra"'
    assert parse_matcher('x="line\\nnext"').value == "line\nnext"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("severity", "'severity' is not a matcher: write label=value"),
        ('"severity"="critical"', "is not a matcher: write label=value"),
        ('team-name="ops"', "is not a matcher: write label=value"),
        ('severity=="critical"', "its value has an unescaped double quote"),
        ('severity="critical', "its value's double quote is not closed"),
        ('severity=critical"', "its value has an unescaped double quote"),
        ('severity="crit"ical"', "its value has an unescaped double quote"),
        ('team=~"(ops"', "has a bad regular expression (missing ), unterminated subpattern"),
        ('team!~"["', "has a bad regular expression"),
    ],
)
def test_bad_matchers_are_refused_saying_why(text, problem):
    with pytest.raises(TriggerError) as refused:
        parse_matcher(text)
    assert problem in str(refused.value)


ALERTS = {
    "alerts": [
        {
            "alertname": "HostDown",
            "matchers": ['severity="critical"', 'team=~"ops|infra"'],
            "parameters": {"host": "{instance}", "where": "{instance} ({team})", "dry_run": True, "ports": [22]},
        },
        {"alertname": "DiskFull"},
    ]
}


def test_alert_rules_match_their_alertname_and_every_matcher():
    host_down, disk_full = alert_rules_of("patch.ipynb", ALERTS)
    firing = {"alertname": "HostDown", "severity": "critical", "team": "ops", "instance": "web1:9100"}
    assert host_down.matches(firing)
    assert not host_down.matches({**firing, "alertname": "HostDownSoon"})
    assert not host_down.matches({**firing, "severity": "warning"})
    assert not host_down.matches({**firing, "team": "dev"})
    assert not host_down.matches({k: v for k, v in firing.items() if k != "alertname"})
    assert disk_full.matches({"alertname": "DiskFull", "anything": "x"}) and not disk_full.matches(firing)
    assert (disk_full.matchers, disk_full.parameters) == ((), {})


def test_alert_parameters_render_labels_and_keep_constants():
    host_down = alert_rules_of("patch.ipynb", ALERTS)[0]
    labels = {"alertname": "HostDown", "instance": "web1:9100", "team": "ops"}
    parameters = host_down.parameters_for(labels)
    assert parameters == {"host": "web1:9100", "where": "web1:9100 (ops)", "dry_run": True, "ports": [22]}
    parameters["ports"].append(80)
    assert host_down.parameters_for(labels)["ports"] == [22], "each run gets its own copy of a constant"
    with pytest.raises(TriggerError) as refused:
        host_down.parameters_for({"alertname": "HostDown", "team": "ops"})
    assert str(refused.value) == (
        "patch.ipynb: alert HostDown, parameter host: '{instance}' needs {instance}, "
        "but there is no 'instance' among: alertname, team"
    )
    assert isinstance(refused.value, ValueError)


def test_an_alert_rule_is_a_value():
    assert alert_rules_of("patch.ipynb", ALERTS) == alert_rules_of("patch.ipynb", ALERTS)
    assert alert_rules_of("patch.ipynb", ALERTS)[1] == AlertRule("patch.ipynb", "DiskFull")


# Checking what the schema cannot see


def test_good_triggers_have_no_problems():
    metadata = {
        "locks": ["stack:{stack}", "{{literal}}"],
        "schedules": [
            {"name": "weekly-web", "cron": "0 3 * * MON", "timezone": "Europe/Berlin", "parameters": {"stack": "web"}},
            {"cron": "*/15 9-17 * * 1-5"},
            {"cron": "*/15 9-17 * * 1-5", "timezone": "Asia/Kolkata"},
        ],
        "alerts": [{"alertname": "HostDown", "matchers": ["severity=critical"], "parameters": {"host": "{instance}"}}],
    }
    assert check_triggers(metadata) == []
    assert check_triggers({}) == []


def test_every_trigger_problem_is_named_by_its_key():
    metadata = {
        "locks": ["stack:{stack}", "stack:{stack!r}"],
        "schedules": [
            {"name": "nightly", "cron": "61 * * * *"},
            {"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berln"},
            {"cron": "0 3 * * * *", "timezone": "Mars/Olympus", "parameters": {"dry-run": True}},
            {"cron": "0 4 * * *"},
            {"cron": "0  4 * * *", "timezone": "UTC"},
        ],
        "alerts": [
            {"alertname": "HostDown", "matchers": ["ok=yes", 'team=~"(ops"', "severity"], "parameters": {"h": "{a.b}"}}
        ],
    }
    assert check_triggers(metadata) == [
        "opshub.locks[1]: {stack!r} in 'stack:{stack!r}' is not a plain name such as {stack} "
        "(no attributes, indexes, conversions or formats)",
        "opshub.schedules[0].cron: '61 * * * *' is not a cron expression (Bad minute)",
        "opshub.schedules[1].timezone: 'Europe/Berln' is not a known time zone (did you mean Europe/Berlin?)",
        "opshub.schedules[1].name: 'nightly' is also the name of opshub.schedules[0]",
        "opshub.schedules[2].cron: '0 3 * * * *' is not a cron expression "
        "(it has 6 fields, not 5: minute hour day month weekday)",
        "opshub.schedules[2].timezone: 'Mars/Olympus' is not a known time zone "
        "(an IANA name such as Europe/Berlin, or UTC)",
        "opshub.schedules[2].parameters: 'dry-run' is not a parameter name (a name such as dry_run)",
        "opshub.schedules[4] is the same schedule as opshub.schedules[3]",
        "opshub.alerts[0].matchers[1]: 'team=~\"(ops\"' has a bad regular expression "
        "(missing ), unterminated subpattern at position 0)",
        "opshub.alerts[0].matchers[2]: 'severity' is not a matcher: write label=value, label!=value, "
        'label=~regex or label!~regex (the value may be double-quoted: severity="critical")',
        "opshub.alerts[0].parameters.h: {a.b} in '{a.b}' is not a plain name such as {stack} "
        "(no attributes, indexes, conversions or formats)",
    ]


def test_entries_of_the_wrong_shape_are_left_to_the_schema():
    assert check_triggers({"locks": "x", "schedules": [3, {"cron": 5}], "alerts": {"alertname": "x"}}) == []
    assert check_triggers({"alerts": [{"matchers": [1, "bad"], "parameters": []}]}) == [
        "opshub.alerts[0].matchers[1]: 'bad' is not a matcher: write label=value, label!=value, "
        'label=~regex or label!~regex (the value may be double-quoted: severity="critical")'
    ]
