"""Published dashboards at /services/opshub/dashboards/: runbooks for the people who only look.

Two kinds:

- `live`: a copy of a read-only notebook taken at publish time (or at a repository commit), rendered
  by the standalone Voila backend on each view with preheated kernels (see `voila.py`). Viewers use
  its widgets; nothing else they send reaches a kernel.
- `snapshot`: the outputs of the latest good (succeeded) run of a runbook, from the run history,
  rendered as sandboxed HTML (dashboard_health.py says whether later runs failed). Nothing executes when it is viewed: the default for runbooks, and the
  only choice for runbooks whose metadata says `changes_systems: true`.

Authors and admins publish (`custom:opshub:dashboards:publish`) through the API (`opshub publish`,
JupyterLab), or by declaring the dashboard in a runbook's metadata in the repository:

    "opshub": {"dashboard": {"name": "patching-status", "mode": "live", "groups": ["managers"]}}

Who may see a dashboard: members of its groups (none: every logged-in team member), its owner and
publishers. A dashboard restricted to groups also restricts the runs of its runbook, on every route
that shows runs (see `Dashboards.hidden_runbooks`). Who may change one: its owner or an admin; a
dashboard declared in the repository belongs to the repository and changes there only.

This module is the registry (about 540 lines: its rules of validation, ownership, publishing from git
and keeping the dashboards server in step belong together); the dashboards' handlers are in
handlers/dashboards.py.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import secrets
import shutil
import subprocess
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import nbformat
from jupyterhub.services.auth import check_scopes
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from tornado.ioloop import PeriodicCallback

from ..contract import PUBLISH_SCOPE
from ..runbooks.metadata import RunbookMetadataError, runbook_metadata
from ..settings import schema_default
from . import outages
from .dashboard_health import Health, live_health, outputs_only_html, record_live_view, snapshot_health
from .handlers.base import is_admin
from .models import DASHBOARD_MODES, Dashboard, Run
from .outages import is_database_outage
from .voila import WATCHDOG_SECONDS, BackendDown, VoilaBackend

log = logging.getLogger("opshub.service.dashboards")

SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")  # use valid_name(): it fullmatches
GROUP = re.compile(r"^[^\x00-\x1f/]{1,255}$")
GIT_OWNER = "git"  # the owner of dashboards published from the repository
DEFAULTS = schema_default("dashboards")  # pool_size, cull_idle_seconds, default_groups, git_sync_interval
EMPTY_TAR = bytes(10240)  # a tar archive of nothing: two zero blocks and padding


class PublishError(ValueError):
    """A publication refused; the message names the problem. `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def valid_name(name: Any) -> bool:
    """The one test of dashboard names (fullmatch: `$` would also match before a trailing newline)."""
    return isinstance(name, str) and SLUG.fullmatch(name) is not None


def check_name(name: Any) -> str:
    if not valid_name(name):
        raise PublishError(
            f"invalid dashboard name {name!r}: use 1 to 64 lowercase letters, digits and dashes"
            " (no slashes, dots or encoded characters), starting and ending with a letter or digit"
        )
    return name


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64].strip("-") or "dashboard"


def check_groups(groups: Any) -> list[str]:
    if not isinstance(groups, list) or not all(isinstance(g, str) and GROUP.match(g) for g in groups):
        raise PublishError(f"groups must be a list of group names, not {groups!r}")
    return sorted(set(groups))


def opshub_metadata(notebook: dict, what: str = "the notebook") -> dict:
    """The notebook's checked `opshub` metadata with defaults; PublishError (400) naming the wrong key."""
    try:
        return runbook_metadata(notebook, what)
    except RunbookMetadataError as e:
        raise PublishError(str(e)) from None


def parse_notebook(notebook: Any, what: str) -> dict:
    """The notebook as a validated nbformat v4 dict (what Voila will be given)."""
    if isinstance(notebook, str):
        try:
            notebook = json.loads(notebook)
        except ValueError:
            raise PublishError(f"{what} is not JSON") from None
    if not isinstance(notebook, dict):
        raise PublishError(f"{what} must be a notebook (nbformat v4 JSON object)")
    try:
        node = nbformat.from_dict(notebook)
        if node.get("nbformat") != 4:
            raise PublishError(f"{what} is not an nbformat v4 notebook")
        nbformat.validate(node)
    except nbformat.ValidationError as e:
        raise PublishError(f"{what} is not a valid notebook: {str(e).splitlines()[0]}") from None
    opshub_metadata(notebook, what)  # a runbook with wrong metadata is refused before anything is stored
    return notebook


def refuse_live_if_it_changes_systems(notebook: dict, what: str) -> None:
    if opshub_metadata(notebook, what)["changes_systems"]:
        raise PublishError(
            f"{what} is marked `changes_systems: true` in its opshub metadata: as a live dashboard it would"
            " run again every time someone opens the page. Publish it as a snapshot instead"
            " (mode `snapshot`: the output of its latest recorded run, executing nothing when viewed)."
        )


class RunbooksRepository:
    """What dashboards read of the runbooks repository, through the service's one copy of it (the
    catalog owns that cache: runbooks/catalog.py)."""

    def __init__(self, catalog):
        self.catalog = catalog

    def commit(self) -> str | None:
        return self.catalog.commit()

    def notebook(self, path: str, commit: str) -> dict:
        if path not in self.catalog.names():
            known = ", ".join(sorted(self.catalog.names())) or "none"
            raise PublishError(f"unknown runbook {path!r}: the repository has {known}", status=404)
        return json.loads(self.catalog.show(commit, path))

    def archive(self, commit: str) -> bytes:
        """The repository's files at `commit`, as a tar (data files for live dashboards' kernels)."""
        return self.catalog.archive(commit)


class Dashboards:
    """The registry of dashboards (a table of the run history database), their published copies and
    the dashboards server that renders the live ones (see voila.py)."""

    def __init__(
        self,
        store,
        folder: Path,
        prefix: str,
        backend: VoilaBackend | None = None,
        catalog=None,
        settings: dict | None = None,
        stats=None,
    ):
        self.store = store
        self.stats = stats  # the service's RunStats: when a run ends, preheated pages are made again
        self._finished_runs = self.finished_runs()
        self.sessions = sessionmaker(store.engine, expire_on_commit=False)
        self.folder = Path(folder)
        self.prefix = prefix
        self.settings = {**DEFAULTS, **(settings or {})}
        self.repository = RunbooksRepository(catalog) if catalog is not None else None
        self.published = self.folder / "published"  # the live copies, handed to the dashboards server
        self.runbooks_archive: bytes | None = None  # the repository's files at the synced commit, likewise
        # The one credential dashboard kernels get: read-only run summaries (see DataRunsHandler).
        self.data_token = secrets.token_urlsafe(32)
        self.backend = backend
        if backend is not None:
            backend.restore = self.restore_backend
        self.kernels: OrderedDict[str, str] = OrderedDict()  # kernel id handed out in a page -> dashboard
        self.synced_commit: str | None = None
        # Live dashboards' kernels start only once the dashboards server has the repository's files
        # (their inventory and data files): until then their pages say they are waiting for them.
        self.files_delivered = False
        self._snapshot_html: OrderedDict[str, str] = OrderedDict()  # run id -> rendered HTML
        self._sync_lock = asyncio.Lock()
        # One refresh of the server at a time: a refresh after runs that read a copy just before a
        # republish must not land after the republish's own (the old copy would win).
        self._refresh_lock = asyncio.Lock()
        self._cache_lock = threading.Lock()

    def kernel_environment(self) -> dict[str, str]:
        """What the service adds to a live dashboard's kernel (the dashboards server adds where the
        service and the repository's files are): no hub, service or user token, only a read-only
        token for run summaries."""
        return {"OPSHUB_HISTORY_TOKEN": self.data_token}

    # -- the registry --------------------------------------------------------------------------

    def get(self, name: str) -> Dashboard | None:
        with self.sessions() as session:
            return session.get(Dashboard, name)

    def all(self) -> list[Dashboard]:
        with self.sessions() as session:
            return list(session.scalars(select(Dashboard).order_by(Dashboard.title, Dashboard.name)))

    def health(self, dashboard: Dashboard) -> Health:
        if dashboard.mode == "live":
            return live_health(dashboard)
        with self.sessions() as session:
            return snapshot_health(session, dashboard.runbook)

    def record_view(self, name: str, failure: str | None) -> Health:
        """What a live dashboard's view found: rendered (None) or the failure (dashboard_health.py)."""
        with self.sessions.begin() as session:
            return record_live_view(session, name, failure, utcnow())

    def files_ready(self) -> bool:
        """Whether live dashboards may start kernels: the server has the repository's files (if any)."""
        return self.repository is None or self.files_delivered

    def may_publish(self, user: dict | None) -> bool:
        return bool(user and check_scopes({f"{PUBLISH_SCOPE}!user={user['name']}"}, user.get("scopes", [])))

    def may_view(self, user: dict, dashboard: Dashboard) -> bool:
        if not user or user.get("kind") != "user":
            return False
        if not dashboard.groups or dashboard.owner == user["name"]:
            return True
        if set(dashboard.groups) & set(user.get("groups") or []):
            return True
        return bool(check_scopes({f"{PUBLISH_SCOPE}!user={user['name']}"}, user.get("scopes", [])))

    def hidden_runbooks(self, user: dict | None) -> frozenset[str]:
        """Runbooks whose runs `user` may not see: those shown by a dashboard restricted to groups that
        `user` may not view. A restriction holds even where another dashboard shows the same runbook to
        everyone. Admins see every run; whoever ran a run always sees it (the callers' business)."""
        if is_admin(user):
            return frozenset()
        return frozenset(
            d.runbook for d in self.all() if d.runbook and d.groups and not (user and self.may_view(user, d))
        )

    @staticmethod
    def check_may_change(dashboard: Dashboard, user: str, admin: bool, source: str, action: str) -> None:
        """Ownership: the repository's dashboards change in the repository, others by their owner or an admin."""
        if source == "git":
            return
        if dashboard.source == "git":
            raise PublishError(
                f"dashboard {dashboard.name!r} belongs to the runbooks repository (declared in {dashboard.runbook}):"
                f" nobody may {action} it here; change the `dashboard` entry of its opshub metadata there,"
                " or choose another name",
                status=403,
            )
        if dashboard.owner != user and not admin:
            raise PublishError(
                f"dashboard {dashboard.name!r} belongs to {dashboard.owner}: only they or an admin may {action} it"
                " (choose another name for yours)",
                status=403,
            )

    def publish(
        self, body: dict, owner: str, source: str = "api", commit: str | None = None, admin: bool = False
    ) -> Dashboard:
        """Check a publication (API body or repository declaration), store it and publish its copy.

        Over an existing name only its owner or an `admin` (who then owns it) may publish."""
        unknown = set(body) - {"name", "mode", "groups", "title", "description", "notebook", "runbook"}
        if unknown:
            raise PublishError(f"unknown field(s) {', '.join(sorted(unknown))} (the owner comes from the token)")
        name = check_name(body.get("name"))
        mode = body.get("mode") or "snapshot"
        if mode not in DASHBOARD_MODES:
            raise PublishError(f"mode must be one of {', '.join(DASHBOARD_MODES)}, not {mode!r}")
        groups = check_groups(body["groups"] if body.get("groups") is not None else self.settings["default_groups"])
        runbook = body.get("runbook")
        if runbook is not None and (not isinstance(runbook, str) or not runbook.endswith(".ipynb")):
            raise PublishError(f"runbook must be the path of a notebook in the runbooks repository, not {runbook!r}")
        notebook = None
        if body.get("notebook") is not None:
            notebook = parse_notebook(body["notebook"], "the notebook")
        if mode == "snapshot":
            if not runbook:
                raise PublishError("a snapshot dashboard shows the latest run of a runbook: give `runbook`")
            if self.repository is None or runbook not in self.repository.catalog.names():
                known = ", ".join(sorted(self.repository.catalog.names())) if self.repository else "none"
                raise PublishError(f"unknown runbook {runbook!r}: the repository has {known}", status=404)
            notebook = None  # a snapshot executes nothing and keeps no copy
        elif notebook is None:
            if not runbook:
                raise PublishError("a live dashboard needs the notebook (or the `runbook` to copy from the repository)")
            if self.repository is None:
                raise PublishError("no runbooks repository to copy the notebook from")
            commit = commit or self.repository.commit()
            notebook = parse_notebook(self.repository.notebook(runbook, commit), f"runbook {runbook}")
        if mode == "live":
            refuse_live_if_it_changes_systems(notebook, f"runbook {runbook}" if runbook else "this notebook")
        if notebook:
            meta = opshub_metadata(notebook)
        else:  # a snapshot is titled like its runbook
            commit = commit or self.repository.commit()
            meta = opshub_metadata(self.repository.notebook(runbook, commit))
        title = body.get("title") or meta.get("title") or name
        description = body.get("description") or meta.get("description") or ""
        if not isinstance(title, str) or len(title) > 255 or not isinstance(description, str):
            raise PublishError("title must be text of at most 255 characters, description text")

        now = utcnow()
        with self.sessions.begin() as session:
            dashboard = session.get(Dashboard, name)
            if dashboard is not None:
                self.check_may_change(dashboard, owner, admin, source, "republish")
            if dashboard is None:
                dashboard = Dashboard(name=name, created_at=now)
                session.add(dashboard)
            dashboard.mode = mode
            dashboard.title = title
            dashboard.description = description
            dashboard.groups = groups
            dashboard.owner = owner
            dashboard.source = source
            dashboard.runbook = runbook
            dashboard.commit = commit
            dashboard.notebook = json.dumps(notebook) if notebook else None
            dashboard.updated_at = now
            dashboard.broken_since = dashboard.broken_detail = dashboard.last_good_at = None  # a new copy: unknown
        self._write_copy(dashboard)
        log.info("%s published dashboard %s (%s, %s)", owner, name, mode, source)
        return dashboard

    def unpublish(self, name: str, source: str = "api", user: str = "", admin: bool = False) -> Dashboard:
        """Remove a dashboard: by `user` if they own it or are an `admin`, or by the repository's sync."""
        check_name(name)
        with self.sessions.begin() as session:
            dashboard = session.get(Dashboard, name)
            if dashboard is None:
                raise PublishError(f"no dashboard named {name!r}", status=404)
            self.check_may_change(dashboard, user, admin, source, "unpublish")
            session.delete(dashboard)
        (self.published / f"{name}.ipynb").unlink(missing_ok=True)
        return dashboard

    def _write_copy(self, dashboard: Dashboard) -> None:
        path = self.published / f"{dashboard.name}.ipynb"
        if dashboard.mode == "live":
            self.published.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(dashboard.notebook)
            tmp.rename(path)
        else:
            path.unlink(missing_ok=True)

    # -- publishing from git ----------------------------------------------------------------------

    def declared_in_repository(self, commit: str) -> dict[str, dict]:
        """Publications declared in the `opshub.dashboard` metadata of the repository's notebooks."""
        declared = {}
        for path in sorted(self.repository.catalog.names()):
            try:
                notebook = self.repository.notebook(path, commit)
            except (PublishError, subprocess.CalledProcessError, ValueError) as e:
                log.error("cannot read %s at %s: %s", path, commit[:12], e)
                continue
            try:
                spec = runbook_metadata(notebook, path)["dashboard"]
            except RunbookMetadataError as e:
                log.error("not publishing a dashboard from %s at %s: %s", path, commit[:12], e)
                continue
            if spec is None:
                continue
            name = spec.get("name") or slugify(Path(path).stem)
            body = {key: spec[key] for key in ("mode", "groups", "title", "description") if key in spec}
            body.update(name=name, runbook=path)
            if body.get("mode") == "live":
                body["notebook"] = notebook
            if name in declared:
                log.error(
                    "%s and %s both declare dashboard %r: keeping the first", declared[name]["runbook"], path, name
                )
                continue
            declared[name] = body
        return declared

    def sync_from_git(self) -> list[str]:
        """Publish what the repository's branch declares (when it moved); return the live notebooks
        to preheat again."""
        if self.repository is None:
            return []
        commit = self.repository.commit()
        if commit is None or commit == self.synced_commit:
            return []
        self.runbooks_archive = self.repository.archive(commit)
        declared = self.declared_in_repository(commit)
        changed = []
        for name, body in declared.items():
            existing = self.get(name) if valid_name(name) else None
            if existing is not None and existing.source != "git":
                log.warning("dashboard %s from %s replaces the one %s published", name, body["runbook"], existing.owner)
                self.unpublish(name, source="git")
            try:
                dashboard = self.publish(body, owner=GIT_OWNER, source="git", commit=commit)
            except PublishError as e:
                log.error("not publishing %s from %s: %s", name, body["runbook"], e)
                continue
            if dashboard.mode == "live":
                changed.append(f"{name}.ipynb")
        for dashboard in self.all():
            if dashboard.source == "git" and dashboard.name not in declared:
                self.unpublish(dashboard.name, source="git")
                changed.append(f"{dashboard.name}.ipynb")
                log.info("dashboard %s unpublished: no longer declared in the repository", dashboard.name)
        self.synced_commit = commit
        log.info("dashboards in step with the repository at %s (%d declared)", commit[:12], len(declared))
        return changed

    async def sync_and_preheat(self) -> None:
        async with self._sync_lock:
            loop = asyncio.get_running_loop()
            if self.repository is not None:
                await loop.run_in_executor(None, self.repository.catalog.refresh)
            synced = self.synced_commit
            changed = await loop.run_in_executor(None, self.sync_from_git)
            if self.synced_commit != synced and self.backend is not None and self.backend.running():
                waiting = not self.files_delivered
                try:
                    await self.backend.put_runbooks(self.runbooks_archive)
                    self.files_delivered = True
                except (BackendDown, OSError) as e:
                    log.error("the dashboards server did not take the repository's files: %s", e)
                if waiting and self.files_delivered:  # the live dashboards that waited for them
                    changed = sorted({*changed, *(p.name for p in self.published.glob("*.ipynb"))})
            for notebook in changed:
                await self.refresh_backend(notebook)

    async def refresh_backend(self, notebook: str) -> None:
        """Make the dashboards server serve the current copy, preheated again, or drop it if unpublished."""
        if self.backend is None or not self.backend.running():
            return  # handed over whole when the server (re)starts: restore_backend
        path = self.published / notebook
        async with self._refresh_lock:
            try:
                if path.exists():
                    await self.backend.put_notebook(notebook, path.read_bytes())
                    if self.files_ready():
                        await self.backend.preheat(notebook)
                else:
                    await self.backend.delete_notebook(notebook)
            except (BackendDown, OSError) as e:
                log.error("the dashboards server did not refresh %s: %s", notebook, e)

    async def restore_backend(self) -> None:
        """Everything a freshly started dashboards server serves: the kernels' environment, the
        repository's files, every live copy (preheated)."""
        self.files_delivered = False  # a fresh server has none of them
        await self.backend.put_environment(self.kernel_environment())
        if self.runbooks_archive is not None:
            await self.backend.put_runbooks(self.runbooks_archive)
            self.files_delivered = True
        elif self.repository is None:
            await self.backend.put_runbooks(EMPTY_TAR)  # nothing to wait for
        for path in sorted(self.published.glob("*.ipynb")):
            await self.backend.put_notebook(path.name, path.read_bytes())
            if self.files_ready():
                await self.backend.preheat(path.name)

    def finished_runs(self) -> int:
        return sum(self.stats.finished.values()) if self.stats is not None else 0

    async def refresh_after_runs(self) -> None:
        """Preheated kernels ran their notebook before anyone asked: when runs have ended since,
        make them again, so that live dashboards show the run history as it is now."""
        try:
            finished = self.finished_runs()
            if finished == self._finished_runs:
                return
            await self.render_snapshots()
            for dashboard in self.all():
                if dashboard.mode == "live" and self.settings["pool_size"] > 0:
                    await self.refresh_backend(f"{dashboard.name}.ipynb")
            self._finished_runs = finished
        except Exception as e:
            if not is_database_outage(e):
                raise
            outages.database.failed(e)  # logged once per outage; the next tick tries again

    async def render_snapshots(self) -> None:
        """Render the latest run of each snapshot ahead of its viewers (nbconvert takes seconds)."""
        loop = asyncio.get_running_loop()
        for dashboard in self.all():
            run = self.health(dashboard).good_run if dashboard.mode == "snapshot" else None
            if run is not None and run.output_notebook:
                try:
                    await loop.run_in_executor(None, self.snapshot_html, run)
                except Exception as e:  # a broken notebook is reported when viewed
                    log.warning("cannot render the snapshot of %s: %s", dashboard.name, e)

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild the published copies from the database, start the dashboards server, then follow
        the repository."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        await asyncio.get_running_loop().run_in_executor(None, self.sync_from_git)
        shutil.rmtree(self.published, ignore_errors=True)
        self.published.mkdir(parents=True)
        for dashboard in self.all():
            self._write_copy(dashboard)
        if self.backend is not None:
            # the pages and snapshots work meanwhile; the watchdog below keeps trying to start it
            asyncio.get_running_loop().create_task(self.backend.ensure_running())
            # every 2 s: a killed server is started again within the 10 s promised (it starts in ~3 s)
            PeriodicCallback(self.backend.ensure_running, WATCHDOG_SECONDS * 1000).start()
        interval = self.settings["git_sync_interval"] * 1000
        PeriodicCallback(self.sync_and_preheat, interval).start()
        PeriodicCallback(self.refresh_after_runs, 5_000).start()
        asyncio.get_running_loop().create_task(self.render_snapshots())

    def stop(self) -> None:
        if self.backend is not None:
            self.backend.stop()

    # -- what pages need ---------------------------------------------------------------------------

    def remember_kernel(self, kernel_id: str, name: str) -> None:
        self.kernels[kernel_id] = name
        while len(self.kernels) > 10_000:
            self.kernels.popitem(last=False)

    def snapshot_html(self, run: Run) -> str:
        html = self._snapshot_html.get(run.id)
        if html is None:
            html = outputs_only_html(run.output_notebook)
            with self._cache_lock:  # also filled from a worker thread by render_snapshots
                self._snapshot_html[run.id] = html
                while len(self._snapshot_html) > 32:
                    self._snapshot_html.popitem(last=False)
        return html
