"""Which credentials a runbook is granted (`runner.credentials`): one rule for the runner's server,
which reads the granted files, and the hub's spawner, which mounts into a run's container only the
files granted to its runbook (configure/spawner.py `SystemServers`)."""

from __future__ import annotations

import fnmatch


def granted(specs: dict[str, dict], runbook: str) -> list[str]:
    """The credentials `runbook` (its path in the repository) may have: those one of whose `runbooks`
    patterns matches its path (fnmatch: `*` also matches `/`, so `patching/*` is the folder's)."""
    return sorted(
        name
        for name, spec in specs.items()
        if any(fnmatch.fnmatchcase(runbook, str(pattern)) for pattern in spec.get("runbooks") or [])
    )
