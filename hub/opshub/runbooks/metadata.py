"""A runbook's `opshub` notebook metadata, checked strictly against one JSON Schema.

    "metadata": {"opshub": {"title": "Patch a server stack", "description": "...", "changes_systems": true,
                            "dashboard": {"name": "patching", "mode": "snapshot", "groups": ["managers"]}}}

`runbook_metadata(notebook, "patch.ipynb")` returns the metadata with defaults filled in, or raises
RunbookMetadataError naming the notebook and every wrong key, e.g.
"patch.ipynb: opshub.changes_systems must be true or false, not 'true'".

Types are strict: `changes_systems` guards live dashboards, so "true", 1 or [true] are refused rather than
read as "not true". Unknown keys are refused too, naming the closest known key: a typo such as
`changes_system` would otherwise silently drop the guard.

`locks`, `schedules` and `alerts` say what starts a runbook unattended (runbooks/triggers.py reads them):

    "locks": ["stack:{stack}"],
    "schedules": [{"name": "weekly-web", "cron": "0 3 * * 1", "timezone": "Europe/Berlin",
                   "parameters": {"stack": "web", "dry_run": false}}],
    "alerts": [{"alertname": "HostDown", "matchers": ["severity=\\"critical\\"", "team=~\\"ops|infra\\""],
                "parameters": {"host": "{instance}", "dry_run": true}}]

The schema checks their shapes; what it cannot see (a cron expression, a time zone, a matcher, a template)
`triggers.check_triggers` checks, and its problems are reported in the same message, e.g.
"patch.ipynb: opshub.schedules[0].cron: '61 * * * *' is not a cron expression (Bad minute)". A scheduler
never meets a schedule it cannot evaluate: the runbook is refused when it is read.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from .triggers import check_triggers

# The dashboard names the service accepts (opshub.service.dashboards.SLUG, which checks again on publish).
DASHBOARD_NAME = "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
# A schedule's name: its identity for the scheduler (triggers.Schedule.key), so renaming it starts afresh.
SCHEDULE_NAME = "^[a-z0-9][a-z0-9-]{0,63}$"
# A credential's name: the environment variable a run gets (settings: runner.credentials).
CREDENTIAL_NAME = "^[A-Za-z_][A-Za-z0-9_]*$"
PARAMETERS = {
    "type": "object",
    "description": "The run's parameters by name (any JSON values), as `opshub run -p NAME VALUE` would give them.",
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "opshub runbook metadata (the `opshub` object in a notebook's metadata)",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 255, "description": "Shown in lists and dashboards."},
        "description": {"type": "string", "description": "One or two sentences on what the runbook does."},
        "changes_systems": {
            "type": "boolean",
            "default": False,
            "description": "Whether running it changes systems. A runbook that does is never a live dashboard.",
        },
        "dashboard": {
            "type": ["object", "boolean"],
            "description": "Publish it as a dashboard from the repository. `true`: a snapshot named after the file.",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": DASHBOARD_NAME},
                "mode": {"enum": ["snapshot", "live"]},
                "groups": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "title": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": {"type": "string"},
            },
        },
        "credentials": {
            "type": "array",
            "items": {"type": "string", "pattern": CREDENTIAL_NAME},
            "uniqueItems": True,
            "description": "The runner's credentials (`runner.credentials` names) an unattended run needs. "
            "A run whose runbook is not granted one of them is refused on record, naming it.",
        },
        "locks": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "description": "Locks a run holds, so two runs holding one never overlap. `{name}` is the run's "
            "parameter `name` (`stack:{stack}`); `{{` and `}}` are literal braces.",
        },
        "schedules": {
            "type": "array",
            "description": "When the runbook runs by itself.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["cron"],
                "properties": {
                    "name": {"type": "string", "pattern": SCHEDULE_NAME, "description": "Unique in the runbook."},
                    "cron": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Cron's 5 fields: minute hour day-of-month month day-of-week.",
                    },
                    "timezone": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The IANA time zone the cron is read in; UTC if left out.",
                    },
                    "parameters": PARAMETERS,
                },
            },
        },
        "alerts": {
            "type": "array",
            "description": "The Alertmanager alerts that start the runbook.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["alertname"],
                "properties": {
                    "alertname": {"type": "string", "minLength": 1},
                    "matchers": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "description": "Alertmanager matchers on the alert's labels, all of which must hold: "
                        '`severity="critical"`, `team=~"ops|infra"` (regexes match the whole value).',
                    },
                    "parameters": {
                        **PARAMETERS,
                        "description": "The run's parameters: text is a template over the alert's labels "
                        "(`{instance}`), other values are constants.",
                    },
                },
            },
        },
    },
}
DEFAULTS: dict[str, Any] = {
    "title": None,
    "description": "",
    "changes_systems": False,
    "dashboard": None,
    "credentials": [],
    "locks": [],
    "schedules": [],
    "alerts": [],
}

_VALIDATOR = Draft202012Validator(SCHEMA)
_TYPE_WORDS = {"boolean": "true or false", "string": "text", "array": "a list", "object": "an object"}
_PATTERNS = {
    DASHBOARD_NAME: "must be 1 to 64 lowercase letters, digits and dashes, starting and ending with a letter or digit",
    SCHEDULE_NAME: "must be 1 to 64 lowercase letters, digits and dashes, starting with a letter or digit",
    CREDENTIAL_NAME: "must be a variable name: letters, digits and underscores, not starting with a digit",
}
_REQUIREMENTS = {"minLength": "must not be empty", "maxLength": "must be at most 255 characters"}


class RunbookMetadataError(ValueError):
    """A runbook's `opshub` metadata is wrong; the message names the notebook and each wrong key."""


def runbook_metadata(notebook: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The `opshub` metadata of `notebook` (a notebook as parsed JSON), checked, with defaults.

    `where` names the notebook in messages (its path). A notebook without `opshub` metadata gets the
    defaults: it is not a runbook that declares anything. `dashboard` comes back as None or an object
    (`true` is `{}`, `false` is None).
    """
    metadata = notebook.get("metadata", {}) if isinstance(notebook, Mapping) else None
    if not isinstance(metadata, Mapping):
        raise RunbookMetadataError(f"{where}: the notebook's metadata must be an object")
    declared = metadata.get("opshub", {})
    problems = [_describe(error) for error in _VALIDATOR.iter_errors(declared)]
    if isinstance(declared, Mapping):
        problems += check_triggers(declared)
    if problems:
        raise RunbookMetadataError(f"{where}: " + "; ".join(sorted(problems)))
    result = {**copy.deepcopy(DEFAULTS), **declared}
    dashboard = result["dashboard"]
    result["dashboard"] = ({} if dashboard is True else dict(dashboard)) if dashboard else None
    return result


def read_runbook_metadata(path: Path | str, where: str | None = None) -> dict[str, Any]:
    """`runbook_metadata` of the notebook file at `path`; a file that is not notebook JSON is an error too."""
    where = where or Path(path).name
    try:
        notebook = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RunbookMetadataError(f"{where}: cannot read it as a notebook: {e}") from None
    return runbook_metadata(notebook, where)


def _describe(error) -> str:
    """One schema violation in words, naming the key as `opshub.a.b`."""
    key = "opshub" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
    value = error.instance
    shown = repr(value) if isinstance(value, str) else json.dumps(value, default=repr)  # as in the notebook
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        unknown = sorted(set(value) - set(known))
        described = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            described.append(f"{key}.{name} is not a known key{hint}")
        return "; ".join(described) + f"; the keys of {key} are {', '.join(known)}"
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"{key} must be {' or '.join(_TYPE_WORDS.get(t, t) for t in expected)}, not {shown}"
    if error.validator == "enum":
        return f"{key} must be one of {', '.join(error.validator_value)}, not {shown}"
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in value]
        return "; ".join(f"{key}.{name} is required" for name in missing)
    if error.validator == "pattern" and error.validator_value in _PATTERNS:
        return f"{key} {_PATTERNS[error.validator_value]}, not {shown}"
    if error.validator in _REQUIREMENTS:
        return f"{key} {_REQUIREMENTS[error.validator]}, not {shown}"
    return f"{key}: {error.message}"
