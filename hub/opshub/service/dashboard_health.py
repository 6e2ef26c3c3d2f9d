"""What a viewer of a dashboard sees besides the dashboard itself: a snapshot rendered as outputs only
(like a Voila page), and each dashboard's health (ok, broken since when, never built) for the list and
for the page a broken dashboard shows instead of Voila's bare error.

- A snapshot's health comes from the runs of its runbook: its latest finished run succeeded (ok), or
  failed or was interrupted (broken since the first such run after the last good one), or there is no
  finished run yet (never built). Cancelled and missed runs say nothing about the runbook.
- A live dashboard's health is what its latest view found: Voila's page either rendered every cell or
  showed its error for one. It is kept in the dashboards table (`broken_since`, `broken_detail`,
  `last_good_at`), and starts afresh when the dashboard is published again.
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass

import nbformat
from nbconvert import HTMLExporter
from sqlalchemy import select

from .handlers.base import UnreadableNotebook
from .models import Dashboard, Run
from .run_states import Status

# Cells papermill adds to an executed notebook: the injected parameters and the red error banners.
PAPERMILL_TAGS = frozenset({"injected-parameters", "papermill-error-cell-tag"})
# What Voila's page says in place of a failed cell's output (tracebacks are not shown to viewers).
VOILA_CELL_ERROR = re.compile(r"There was an error when executing cell \[(\d*|None)\]")
VOILA_TIMEOUT = "Cell execution timed out, aborting notebook execution."
BROKEN_STATES = (Status.FAILED, Status.INTERRUPTED)
MINUTE = datetime.timedelta(minutes=1)

log = logging.getLogger("opshub.service.dashboards")


def papermill_added(cell) -> bool:
    tags = cell.get("metadata", {}).get("tags") or []
    return isinstance(tags, list) and bool(PAPERMILL_TAGS & {t for t in tags if isinstance(t, str)})


def outputs_only_html(notebook_json: str) -> str:
    """A run's executed notebook as a dashboard: markdown and outputs, no code, prompts, papermill cells
    or error outputs (the error's details are for the run page, which its author and admins read).
    Serve it only with `BaseHandler.finish_sandboxed`."""
    try:
        notebook = nbformat.reads(notebook_json, as_version=4)
        notebook.cells = [cell for cell in notebook.cells if not papermill_added(cell)]
        for cell in notebook.cells:
            cell.metadata.pop("tags", None)  # nbconvert's tag classes are no business of a viewer's
            if cell.cell_type == "code":
                cell.outputs = [output for output in cell.outputs if output.get("output_type") != "error"]
        exporter = HTMLExporter(
            template_name="lab", exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
        )
        html, _ = exporter.from_notebook_node(notebook)
    except Exception as e:  # whatever a malformed notebook makes nbformat or nbconvert raise
        raise UnreadableNotebook(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
    return html


@dataclass
class Health:
    """How a dashboard is doing, as the list and its page say it."""

    state: str  # "ok", "broken", "never" (a snapshot without a finished run), "unknown" (a live one not viewed yet)
    since: datetime.datetime | None = None  # broken since
    last_good_at: datetime.datetime | None = None  # the last good snapshot or view
    good_run: Run | None = None  # a snapshot's last good run: what its page shows
    failed_run: Run | None = None  # a snapshot's latest broken run: the details, for its author and admins
    detail: str = ""  # a live dashboard's failure, for its author and admins

    @property
    def label(self) -> str:
        if self.state == "broken":
            return f"broken since {self.since.isoformat(timespec='minutes')} UTC" if self.since else "broken"
        return {"ok": "ok", "never": "never built", "unknown": "not opened yet"}[self.state]


def snapshot_health(session, runbook: str) -> Health:
    """A snapshot's health from its runbook's runs (see the module's docstring)."""
    runs = select(Run).where(Run.runbook == runbook)
    good = session.scalars(runs.where(Run.status == Status.SUCCEEDED).order_by(Run.started_at.desc()).limit(1)).first()
    broken = runs.where(Run.status.in_(BROKEN_STATES))
    if good is not None:
        broken = broken.where(Run.started_at > good.started_at)
    first_broken = session.scalars(broken.order_by(Run.started_at).limit(1)).first()
    latest_broken = session.scalars(broken.order_by(Run.started_at.desc()).limit(1)).first()
    good_at = (good.ended_at or good.started_at) if good else None
    if first_broken is not None:
        since = first_broken.ended_at or first_broken.started_at
        return Health("broken", since, good_at, good_run=good, failed_run=latest_broken)
    if good is None:
        return Health("never")
    return Health("ok", last_good_at=good_at, good_run=good)


def voila_failure(html: str) -> str | None:
    """What went wrong in a page Voila rendered, or None when every cell ran."""
    match = VOILA_CELL_ERROR.search(html)
    if match:
        return f"cell [{match.group(1)}] raised an error"
    if VOILA_TIMEOUT in html:
        return "a cell ran longer than the 120 s allowed"
    return None


def failed_cell_source(notebook_json: str | None, detail: str) -> str:
    """The source of the code cell Voila numbered in `detail` (its author's reading, never a viewer's)."""
    match = re.search(r"cell \[(\d+)\]", detail)
    if not notebook_json or not match:
        return ""
    try:
        code = [c for c in nbformat.reads(notebook_json, as_version=4).cells if c.cell_type == "code"]
        return code[int(match.group(1)) - 1].source
    except (IndexError, ValueError, nbformat.ValidationError):
        return ""


def live_health(dashboard) -> Health:
    """A live dashboard's health, from what its latest views recorded (Dashboards.record_view)."""
    if dashboard.broken_since is not None:
        return Health("broken", dashboard.broken_since, dashboard.last_good_at, detail=dashboard.broken_detail or "")
    if dashboard.last_good_at is not None:
        return Health("ok", last_good_at=dashboard.last_good_at)
    return Health("unknown")


def record_live_view(session, name: str, failure: str | None, now: datetime.datetime) -> Health:
    """Record what a live dashboard's view found: rendered (`failure` None) or the failure. A write
    only when its health changes (or its last good view is a minute old): views are many, changes few."""
    dashboard = session.get(Dashboard, name)
    if dashboard is None:  # unpublished meanwhile
        return Health("unknown")
    if failure is None:
        stale = not dashboard.last_good_at or now - dashboard.last_good_at > MINUTE
        if dashboard.broken_since is not None or stale:
            dashboard.broken_since, dashboard.broken_detail, dashboard.last_good_at = None, None, now
    elif dashboard.broken_since is None or dashboard.broken_detail != failure:
        if dashboard.broken_since is None:  # news: the log says it once
            log.warning("live dashboard %s (owner %s) is broken: %s", name, dashboard.owner, failure)
        dashboard.broken_since = dashboard.broken_since or now
        dashboard.broken_detail = failure
    return live_health(dashboard)
