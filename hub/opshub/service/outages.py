"""What the service needs and cannot always reach: the run history's database. An outage is logged once
when it starts and once when it ends (not a traceback a second), and meanwhile every page and API call
that needs the database answers 503 naming it. (The runbooks repository's outages are the catalog's:
runbooks/catalog.py `RunbookCatalog.unreachable`.)"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger("opshub.service")


def is_database_outage(error: BaseException | None) -> bool:
    """The database did not answer (stopped, restarting, unreachable), as opposed to a bad query."""
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


class Outage:
    """One dependency's state: reachable, or unreachable since when and why."""

    def __init__(self, what: str):
        self.what = what
        self.since: float | None = None
        self.reason = ""

    @property
    def message(self) -> str:
        return (
            f"{self.what} cannot be reached ({self.reason}). Runs go on; their records are written once it "
            "answers again. Try again in a minute; if it lasts, tell your opshub admin."
        )

    def failed(self, error: BaseException) -> None:
        self.reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0][:300]
        if self.since is None:
            self.since = time.monotonic()
            log.error("%s cannot be reached: %s (logged once until it answers again)", self.what, self.reason)

    def answered(self) -> None:
        if self.since is not None:
            log.warning("%s answers again, after %.0f s", self.what, time.monotonic() - self.since)
            self.since = None

    @property
    def active(self) -> bool:
        return self.since is not None


database = Outage("the run history's database")
