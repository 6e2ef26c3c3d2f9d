"""The spool of interactive runs on local disk, and its delivery to the opshub service.

The recorder (recorder.py) writes each run's state here after every cell; a `Deliverer` sends the
records to the service in order and retries while the service is unreachable. The run id is chosen
by the recorder, so a retried start is recognised by the service instead of recorded twice, and a
finish already recorded answers 409, which counts as done.

A spooled run's `start` and `end` are records of `opshub.run_record` as JSON (`RunStart`; `RunEnd`
without the notebook and drift, which the deliverer adds), checked again when they are sent: files
spooled by an older version are delivered as they are, and one that is not a record is set aside,
naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..run_record import Heartbeat, RecordError, RunEnd, RunStart
from ..runbooks.client import ServiceClient, ServiceError
from ..runbooks.execute import DEFAULT_HEARTBEAT_SECONDS

log = logging.getLogger("opshub.recorder")
PROGRESS_SECONDS = 3  # at most this often a run's cells so far go to the service (each sends the notebook)
_DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Spool:
    """Run records waiting for delivery: one JSON file per run, replaced atomically on every change."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def write(self, record: dict[str, Any]) -> None:
        path = self.folder / f"{record['id']}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)

    def records(self) -> list[dict[str, Any]]:
        """Every spooled record, oldest first. Unreadable files are moved aside (and logged), not lost."""
        found = []
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError) as e:
                log.error("opshub: cannot read spooled run %s (%s); moved to %s.bad", path, e, path.name)
                path.rename(path.with_suffix(".bad"))
        return found

    def delivered(self, run_id: str) -> int | None:
        """The version of the run the service has (None: not even its start)."""
        try:
            return int((self.folder / f"{run_id}.delivered").read_text())
        except (OSError, ValueError):
            return None

    def mark_delivered(self, run_id: str, version: int) -> None:
        (self.folder / f"{run_id}.delivered").write_text(str(version))

    def remove(self, run_id: str) -> None:
        for suffix in (".json", ".delivered"):
            (self.folder / f"{run_id}{suffix}").unlink(missing_ok=True)

    def set_aside(self, run_id: str, reason: str) -> None:
        """Keep a record the service refused for good, with the reason, out of the delivery loop."""
        path = self.folder / f"{run_id}.json"
        if path.exists():
            path.rename(self.folder / f"{run_id}.refused")
            (self.folder / f"{run_id}.refused.reason").write_text(reason + "\n")
        (self.folder / f"{run_id}.delivered").unlink(missing_ok=True)


def deployment_folder(base: Path, deployment_id: str | None) -> Path:
    """Where a person's server spools the interactive runs of its deployment: `base/<deployment id>`.

    A person's system account (and so `base`, in their home) is the same for every deployment on the
    machine that starts servers as it, one after another: each delivers only its own runs, never
    another's to the wrong service. Records from before deployments had ids lie in `base` itself: the
    first deployment to find them, while no other deployment's folder is there, takes them over
    (before, they were any deployment's: one at a time now, the one that runs next is theirs); once
    another deployment has a folder they are left alone, with a log line saying so. Without an id
    (a server not started by such a hub) runs are spooled in `base`, as before."""
    base = Path(base)
    if not deployment_id:
        return base
    if not _DEPLOYMENT_ID.fullmatch(deployment_id):
        log.error("opshub: deployment id %r is not a folder name; interactive runs spooled in %s", deployment_id, base)
        return base
    folder = base / deployment_id
    earlier = sorted(p for p in base.glob("*") if p.is_file() and not p.is_symlink()) if base.is_dir() else []
    if not earlier:
        return folder
    others = [p.name for p in base.iterdir() if p.is_dir() and p.name != deployment_id]
    if others:
        log.warning(
            "opshub: %d spooled interactive-run files in %s are from before deployments had ids, and other"
            " deployments (%s) spool here too: left alone, not delivered; move them into %s to deliver"
            " them to this deployment",
            len(earlier),
            base,
            ", ".join(sorted(others)),
            folder,
        )
        return folder
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in earlier:
        os.replace(path, folder / path.name)
    log.info(
        "opshub: took over %d spooled interactive-run files of %s (from before deployment ids)", len(earlier), base
    )
    return folder


class Deliverer:
    """Sends spooled runs to the opshub service, one request at a time, in order, until each is finished."""

    def __init__(
        self,
        spool: Spool,
        client_factory: Callable[[], ServiceClient],
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,  # as `opshub run`: well inside the sweep's timeout
    ):
        self.spool = spool
        self.client_factory = client_factory
        self.heartbeat_seconds = heartbeat_seconds
        self.last_heartbeat: dict[str, float] = {}
        self.wake = asyncio.Event()

    async def run_forever(self, interval: float = 2.0, max_backoff: float = 30.0) -> None:
        delay = interval
        while True:
            try:
                delivered_all = await asyncio.get_running_loop().run_in_executor(None, self.deliver_once)
            except Exception:
                log.exception("opshub: delivering interactive runs failed")
                delivered_all = False
            delay = interval if delivered_all else min(delay * 2, max_backoff)
            self.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=delay)

    def deliver_once(self) -> bool:
        """One pass over the spool. Returns False when the service could not be reached."""
        records = self.spool.records()
        if not records:
            return True
        try:
            client = self.client_factory()
        except ServiceError as e:
            log.warning("opshub: interactive runs kept on disk, not recorded yet: %s", e)
            return False
        for record in records:
            try:
                self._deliver(client, record)
            except RecordError as e:  # not a record the service takes: sending it again will not change that
                log.error("opshub: spooled run %s is not a run record: %s", record["id"], e)
                self.spool.set_aside(record["id"], str(e))
            except ServiceError as e:
                if e.status == 0 or e.status >= 500:
                    log.warning("opshub: run %s kept on disk until the service answers: %s", record["id"], e)
                    return False
                log.error("opshub: the service refused run %s: %s", record["id"], e)
                self.spool.set_aside(record["id"], str(e))
        return True

    def _deliver(self, client: ServiceClient, record: dict[str, Any]) -> None:
        run_id, version = record["id"], record["version"]
        delivered = self.spool.delivered(run_id)
        if delivered is None:
            client.start_run(RunStart.from_json(record["start"]))
            delivered = 0
            self.spool.mark_delivered(run_id, delivered)
        end = record.get("end")
        if end is not None:
            body = {**end, "drift": record["drift"], "output_notebook": record["notebook"]}
            try:
                client.finish_run(run_id, RunEnd.from_json(body))
            except ServiceError as e:
                if e.status != 409:  # 409: already ended, by an earlier attempt whose answer was lost
                    raise
            self.spool.remove(run_id)
            self.last_heartbeat.pop(run_id, None)
        elif delivered < version and time.monotonic() - self.last_heartbeat.get(run_id, 0) >= PROGRESS_SECONDS:
            # progress: the cells so far, so the history shows them and nothing is lost if this server
            # dies; at most every PROGRESS_SECONDS, as each sends the whole notebook so far
            client.heartbeat(run_id, Heartbeat(output_notebook=record["notebook"], drift=record["drift"]))
            self.spool.mark_delivered(run_id, version)
            self.last_heartbeat[run_id] = time.monotonic()
        elif time.monotonic() - self.last_heartbeat.get(run_id, 0) >= self.heartbeat_seconds:
            client.heartbeat(run_id)
            self.last_heartbeat[run_id] = time.monotonic()
