"""Schedules in words for the Schedules page: a cron expression as a sentence ("At 03:00, on the third
Tuesday of the month", by the cron-descriptor package) and a schedule's next fires on the wall clock
of its own time zone."""

from __future__ import annotations

import datetime
import functools
from zoneinfo import ZoneInfo

from cron_descriptor import ExpressionDescriptor, FormatException, Options

from ..runbooks.triggers import Schedule, TriggerError, next_fire

NEXT_FIRES = 3  # how many coming fires the page shows


@functools.lru_cache(maxsize=512)
def cron_in_words(cron: str) -> str:
    """`cron` as a sentence in English with 24-hour times; the expression itself if it cannot be said
    (the runbook's checks have already refused what cron cannot read, so that is a describer's gap)."""
    options = Options()
    options.use_24hour_time_format = True
    options.locale_code = "en_US"  # not the service's locale: the page is in English
    options.verbose = False
    try:
        return ExpressionDescriptor(cron, options).get_description()
    except (FormatException, ValueError, KeyError, IndexError):
        return cron


def next_fires(schedule: Schedule, after: datetime.datetime, count: int = NEXT_FIRES) -> list[datetime.datetime]:
    """The next `count` due times of `schedule` after `after`, in UTC (fewer if it is never due again)."""
    fires: list[datetime.datetime] = []
    moment = after
    for _ in range(count):
        try:
            moment = next_fire(schedule, moment)
        except TriggerError:
            break
        fires.append(moment)
    return fires


def in_zone(moment: datetime.datetime, zone: str) -> str:
    """`moment` on the wall clock of `zone`: "Mon 2026-12-07 03:00 CET"."""
    local = moment.astimezone(ZoneInfo(zone))
    return local.strftime("%a %Y-%m-%d %H:%M ") + (local.tzname() or zone)
