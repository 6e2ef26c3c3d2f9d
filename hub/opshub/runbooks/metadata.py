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

from .parameter_declaration import declaration_problems
from .params import cell_parameters
from .triggers import check_triggers, template_names
from .typed_parameters import TYPES, Parameter, ParameterError, ReadFile, parameters_of, resolve

# The dashboard names the service accepts (opshub.service.dashboards.SLUG, which checks again on publish).
DASHBOARD_NAME = "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
# A schedule's name: its identity for the scheduler (triggers.Schedule.key), so renaming it starts afresh.
SCHEDULE_NAME = "^[a-z0-9][a-z0-9-]{0,63}$"
# A credential's name: the environment variable a run gets (settings: runner.credentials).
CREDENTIAL_NAME = "^[A-Za-z_][A-Za-z0-9_]*$"
RUN_VALUES = {
    "type": "object",
    "description": "The run's parameters by name, checked against the runbook's parameters as any request is.",
}
# A path inside the repository: relative, no `..` (the choices of a parameter come from such a file).
REPOSITORY_PATH = r"^(?!/)(?!.*(^|/)\.\.(/|$))[^\x00]+$"
PARAMETER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "type": {
            "enum": list(TYPES),
            "description": "What the value is. `list`: a list of strings. `secret`: the name of a secret "
            "(an environment variable such as a runner credential), never its value. Left out: the type of "
            "the default in the parameters cell. A secret's choices are the runbook's `credentials` when it "
            "names some.",
        },
        "description": {"type": "string", "description": "Shown under the field in every form, and in --help."},
        "default": {"description": "The default; it must be the one the parameters cell sets."},
        "multiple": {"type": "boolean", "description": "The value is a list (a multi-select with choices)."},
        "choices": {"type": "array", "minItems": 1, "description": "The values allowed (a dropdown)."},
        "choices_from": {
            "type": "object",
            "additionalProperties": False,
            "required": ["file"],
            "description": "The values allowed, read from a YAML or JSON file of the repository at the run's "
            "commit: the keys (or items) of the mapping (or list) at `path`. A path part `{stack}` is the "
            "value of the parameter `stack`, so the choices follow it.",
            "properties": {
                "file": {"type": "string", "pattern": REPOSITORY_PATH, "description": "From the repository's root."},
                "path": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "description": 'Keys from the file\'s top: ["stacks"], or ["stacks", "{stack}", "hosts"].',
                },
            },
        },
        "pattern": {"type": "string", "minLength": 1, "description": "A regular expression the whole value matches."},
        "min": {"type": "number", "description": "The smallest number allowed."},
        "max": {"type": "number", "description": "The largest number allowed."},
    },
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
                "name": {
                    "type": "string",
                    "pattern": DASHBOARD_NAME,
                    "description": "Its URL: /services/opshub/dashboards/NAME/ (default: the file's name).",
                },
                "mode": {"enum": ["snapshot", "live"], "description": "See dashboards.md (default: snapshot)."},
                "groups": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "description": "Who sees it (default: every team member).",
                },
                "title": {"type": "string", "minLength": 1, "maxLength": 255, "description": "Default: the runbook's."},
                "description": {"type": "string", "description": "Default: the runbook's."},
            },
        },
        "parameters": {
            "type": "object",
            "propertyNames": {"pattern": CREDENTIAL_NAME},
            "additionalProperties": PARAMETER,
            "description": "The parameters anyone may set, with their types and the values allowed "
            "(hub/docs/runbooks.md). Parameters of the cell left out keep their default in every run. "
            "Without this key every parameter of the cell may be set, typed by its default.",
        },
        "run_groups": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "description": "The groups whose members may request a run of it (page, API, `opshub request`). "
            "Empty: everyone whose role may request runs. Schedules and alerts run it regardless.",
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
                    "parameters": RUN_VALUES,
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
                    "alertname": {"type": "string", "minLength": 1, "description": "The alert's alertname label."},
                    "matchers": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "description": "Alertmanager matchers on the alert's labels, all of which must hold: "
                        '`severity="critical"`, `team=~"ops|infra"` (regexes match the whole value).',
                    },
                    "parameters": {
                        **RUN_VALUES,
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
    "parameters": None,
    "run_groups": [],
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
    REPOSITORY_PATH: "must be a path inside the repository (relative, without ..)",
}
_REQUIREMENTS = {"minLength": "must not be empty", "maxLength": "must be at most 255 characters"}


class RunbookMetadataError(ValueError):
    """A runbook's `opshub` metadata is wrong; the message names the notebook and each wrong key."""


def runbook_metadata(notebook: Mapping[str, Any], where: str, read_file: ReadFile | None = None) -> dict[str, Any]:
    """The `opshub` metadata of `notebook` (a notebook as parsed JSON), checked, with defaults.

    `where` names the notebook in messages (its path). A notebook without `opshub` metadata gets the
    defaults: it is not a runbook that declares anything. `dashboard` comes back as None or an object
    (`true` is `{}`, `false` is None). The parameters of its schedules and alerts are checked against the
    runbook's parameters; `read_file` reads the repository's files at the same commit, for choices taken
    from a file (without it those choices are checked when a run is queued).
    """
    metadata = notebook.get("metadata", {}) if isinstance(notebook, Mapping) else None
    if not isinstance(metadata, Mapping):
        raise RunbookMetadataError(f"{where}: the notebook's metadata must be an object")
    declared = metadata.get("opshub", {})
    problems = [_describe(error) for error in _VALIDATOR.iter_errors(declared)]
    if isinstance(declared, Mapping):
        problems += check_triggers(declared)
    if not problems:
        cell = cell_parameters(notebook)
        problems += declaration_problems(declared, cell)
        if not problems and cell is not None:
            problems += trigger_value_problems(declared, parameters_of(declared, cell), read_file)
    if problems:
        raise RunbookMetadataError(f"{where}: " + "; ".join(sorted(problems)))
    result = {**copy.deepcopy(DEFAULTS), **declared}
    dashboard = result["dashboard"]
    result["dashboard"] = ({} if dashboard is True else dict(dashboard)) if dashboard else None
    return result


def trigger_value_problems(
    metadata: Mapping[str, Any], parameters: Mapping[str, Parameter], read_file: ReadFile | None
) -> list[str]:
    """The values of `metadata`'s schedules and alerts that the runbook's parameters do not allow, each
    naming its key. An alert's templates (`{instance}`) are filled in when it fires: only their names
    are checked here."""
    problems = []
    for kind in ("schedules", "alerts"):
        for i, entry in enumerate(metadata.get(kind) or []):
            key, given = f"opshub.{kind}[{i}].parameters", dict(entry.get("parameters") or {})
            for name in [name for name, value in given.items() if kind == "alerts" and _is_template(value)]:
                del given[name]  # filled in when the alert fires, and checked then
                if name not in parameters or not parameters[name].settable:
                    problems.append(f"{key}: parameter {name} cannot be set by an alert (it is not declared)")
            try:
                resolve(parameters, given, read_file)
            except ParameterError as e:
                problems += [f"{key}: {problem}" for problem in e.problems]
    return problems


def _is_template(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return any(isinstance(item, str) and template_names(item) for item in items)


def read_runbook_metadata(path: Path | str, where: str | None = None, read_file: ReadFile | None = None) -> dict:
    """`runbook_metadata` of the notebook file at `path`; a file that is not notebook JSON is an error too."""
    where = where or Path(path).name
    try:
        notebook = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RunbookMetadataError(f"{where}: cannot read it as a notebook: {e}") from None
    return runbook_metadata(notebook, where, read_file)


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
