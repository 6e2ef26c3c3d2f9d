"""A runbook's typed parameters: one declaration that every form, command and trigger is checked against.

A runbook declares them in its `opshub` metadata (metadata.py's schema checks the shape):

    "parameters": {
      "stack":   {"type": "string", "description": "The stack to patch",
                  "choices_from": {"file": "inventory/stacks.yaml", "path": ["stacks"]}},
      "hosts":   {"type": "list", "description": "Hosts of the stack (none: all of them)",
                  "choices_from": {"file": "inventory/stacks.yaml", "path": ["stacks", "{stack}", "hosts"]}},
      "dry_run": {"type": "boolean"},
      "wait_timeout": {"type": "integer", "min": 60, "max": 3600}
    }

Each value still has its default in the papermill `parameters` cell (`stack = "lab"`); a `default` in the
declaration must say the same, or the runbook is refused naming both. With a declaration, only declared
parameters can be set, by anyone (a request, a schedule, an alert, `opshub run`): the others keep the
cell's default (the patching runbook's `ssh_options`). Without one, every parameter of the cell can be set
and its type is inferred from its default (`dry_run = True` is a boolean, so "false" means False).

`resolve(parameters, given, read_file)` is the one check for every way in: it turns values (typed JSON,
or text from a form or `-p NAME VALUE`) into typed values, refuses what is not allowed with a message that
names the parameter, the value and what is allowed, and returns every value that applies, defaults
included. `read_file(path)` reads a repository file at the run's commit (the choices from the inventory).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .params import DeclaredParameter, UsageError, parse_value

# The types a declaration may name. `list` is a list of strings: `{"type": "string", "multiple": true}`.
TYPES = ("string", "integer", "number", "boolean", "list", "secret")
ANY = "any"  # a parameter whose cell default says nothing of its type (None, a dict, an expression)
LARGEST = 2**53  # numbers beyond it do not survive JSON readers as they were written
LONGEST_TEXT = 10_000  # characters of one text value: a parameter is a name, a host, an option
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NO_DEFAULT = object()
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

ReadFile = Callable[[str], str]


class ParameterError(ValueError):
    """Values that are not allowed: one line per problem, each naming the parameter and its value."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Parameter:
    """One parameter as every way in sees it."""

    name: str
    type: str  # one of TYPES but "list" (string + multiple), or ANY
    multiple: bool = False  # the value is a list of `type`
    description: str = ""
    default: Any = NO_DEFAULT  # the typed default; absent when the cell's is no literal
    default_text: str = ""  # the default as the cell writes it
    settable: bool = True  # False: left out of the runbook's declaration, kept at its default in every run
    choices: tuple | None = None
    choices_from: Mapping[str, Any] | None = None  # {"file": ..., "path": [...]}
    pattern: str | None = None
    min: float | None = None
    max: float | None = None
    declared: bool = False  # in the `opshub.parameters` declaration (False: inferred from the cell)

    @property
    def has_default(self) -> bool:
        return self.default is not NO_DEFAULT

    @property
    def depends_on(self) -> list[str]:
        """The parameters whose value picks this one's choices (`{stack}` in its choices_from path)."""
        path = (self.choices_from or {}).get("path") or []
        return [m.group(1) for part in path if (m := PLACEHOLDER.match(part))]

    @property
    def kind(self) -> str:
        """How people see the type: `list of string`, `integer`..."""
        return f"list of {self.type}" if self.multiple else self.type

    def describe(self) -> dict[str, Any]:
        """The parameter as JSON, for forms (the request page, JupyterLab's dialog) and the API."""
        described = {
            "name": self.name,
            "type": self.type,
            "multiple": self.multiple,
            "description": self.description,
            "default": self.default if self.has_default else None,
            "has_default": self.has_default,
            "default_text": self.default_text,
            "settable": self.settable,
        }
        for key in ("choices", "pattern", "min", "max"):
            if getattr(self, key) is not None:
                described[key] = list(self.choices) if key == "choices" else getattr(self, key)
        if self.choices_from:
            described["choices_from"] = dict(self.choices_from)
            described["depends_on"] = self.depends_on
        return described


# Reading the declaration


def literal(text: str) -> Any:
    """The Python literal `text` as a value, or NO_DEFAULT when it is an expression."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return NO_DEFAULT


def inferred_type(default: Any) -> tuple[str, bool]:
    """(type, multiple) that a cell default says: `True` boolean, `900` integer, `["a"]` list of string."""
    if isinstance(default, bool):
        return "boolean", False
    if isinstance(default, int):
        return "integer", False
    if isinstance(default, float):
        return "number", False
    if isinstance(default, str):
        return "string", False
    if isinstance(default, list | tuple) and all(isinstance(item, str) for item in default):
        return "string", True
    return ANY, False


def parameters_of(metadata: Mapping[str, Any], cell: Mapping[str, DeclaredParameter]) -> dict[str, Parameter]:
    """The runbook's parameters, in the cell's order then the declaration's, from its checked metadata
    (`metadata["parameters"]`, None when it declares none) and its parameters cell.

    Call `parameter_declaration.declaration_problems` first: this trusts the declaration to be consistent."""
    declaration = metadata.get("parameters")
    found: dict[str, Parameter] = {}
    for name, in_cell in cell.items():
        default = literal(in_cell.default)
        if isinstance(default, tuple):
            default = list(default)
        if declaration is None or name not in declaration:
            kind, multiple = inferred_type(default)
            found[name] = Parameter(
                name, kind, multiple, in_cell.help, default, in_cell.default, settable=declaration is None
            )
    for name, spec in (declaration or {}).items():
        in_cell = cell.get(name)
        default = spec.get("default", literal(in_cell.default) if in_cell else NO_DEFAULT)
        kind, multiple = declared_type(spec, default)
        if isinstance(default, tuple):
            default = list(default)
        found[name] = Parameter(
            name,
            kind,
            multiple,
            spec.get("description") or (in_cell.help if in_cell else ""),
            default,
            in_cell.default if in_cell else (json.dumps(default) if default is not NO_DEFAULT else ""),
            True,
            _choices(spec, kind, metadata),
            spec.get("choices_from"),
            spec.get("pattern"),
            spec.get("min"),
            spec.get("max"),
            declared=True,
        )
    order = list(cell) + [name for name in found if name not in cell]
    return {name: found[name] for name in order if name in found}


def _choices(spec: Mapping[str, Any], kind: str, metadata: Mapping[str, Any]) -> tuple | None:
    """A parameter's fixed choices; a secret's are the runbook's `credentials` when it names some."""
    if "choices" in spec:
        return tuple(spec["choices"])
    if kind == "secret" and metadata.get("credentials"):
        return tuple(metadata["credentials"])
    return None


def declared_type(spec: Mapping[str, Any], default: Any) -> tuple[str, bool]:
    kind = spec.get("type")
    if kind == "list":
        return "string", True
    if kind is None:
        kind, multiple = inferred_type(default)
        return kind, bool(spec.get("multiple", multiple))
    return kind, bool(spec.get("multiple", False))


# Checking values


def coerce(parameter: Parameter, value: Any, text: bool = False) -> Any:
    """`value` as `parameter`'s type: typed JSON as it is, or text (a form field, `-p NAME VALUE`, a
    rendered alert template) read for the type. ParameterError naming it when it is not one."""
    if parameter.multiple:
        if isinstance(value, str):
            stripped = value.strip()
            if stripped.startswith("["):
                try:
                    value = json.loads(stripped)
                except ValueError:
                    allowed = 'a JSON list such as ["a", "b"], or items separated by commas'
                    raise _error(parameter, value, allowed) from None
            else:
                value = [item.strip() for item in stripped.split(",") if item.strip()]
            text = True
        if not isinstance(value, list | tuple):
            raise _error(parameter, value, f"a list of {parameter.type}")
        single = Parameter(parameter.name, parameter.type)
        return [coerce(single, item, text=text or isinstance(item, str)) for item in value]
    kind = parameter.type
    if kind == ANY:
        if not (text and isinstance(value, str)):
            return value
        try:
            return parse_value(value)
        except UsageError as e:
            raise ParameterError([f"parameter {parameter.name}: {e}"]) from None
    if kind in ("string", "secret"):
        if not isinstance(value, str):
            raise _error(parameter, value, "text")
        if len(value) > LONGEST_TEXT:
            raise _error(parameter, value, f"text of at most {LONGEST_TEXT} characters")
        if kind == "secret" and not SECRET_NAME.fullmatch(value):
            raise _error(parameter, value, "the name of a secret (letters, digits and _, such as DB_PASSWORD)")
        return value
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _error(parameter, value, "true or false")
    if isinstance(value, str):
        try:
            value = int(value.strip()) if kind == "integer" else float(value.strip())
        except ValueError:
            raise _error(parameter, value, "a whole number" if kind == "integer" else "a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise _error(parameter, value, "a whole number" if kind == "integer" else "a number")
    if abs(value) > LARGEST:
        raise _error(parameter, value, f"a number between -{LARGEST} and {LARGEST}")
    if kind == "integer":
        if isinstance(value, float) and not value.is_integer():
            raise _error(parameter, value, "a whole number")
        return int(value)
    return value


def _finite(value: int | float) -> bool:
    return math.isfinite(value) if isinstance(value, float) else True


def is_of_type(kind: str, value: Any) -> bool:
    """Whether typed JSON `value` is a `kind` as it is (no text read): for choices written in a declaration."""
    if kind in ("string", "secret"):
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and _finite(value)
    return True


def check_value(parameter: Parameter, value: Any, choices: list | None = None, text: bool = False) -> Any:
    """`value` coerced and held against the parameter's constraints; `choices` are its choices_from."""
    value = coerce(parameter, value, text)
    allowed = choices if choices is not None else (list(parameter.choices) if parameter.choices else None)
    for item in value if parameter.multiple else [value]:
        if allowed is not None and item not in allowed:
            source = f" (from {parameter.choices_from['file']})" if choices is not None else ""
            listed = ", ".join(str(choice) for choice in allowed[:30]) + (", ..." if len(allowed) > 30 else "")
            raise _error(parameter, item, f"one of {listed or 'nothing'}{source}")
        if parameter.pattern and not re.fullmatch(parameter.pattern, item):
            raise _error(parameter, item, f"text matching {parameter.pattern}")
        if parameter.min is not None and item < parameter.min:
            raise _error(parameter, item, f"at least {parameter.min}")
        if parameter.max is not None and item > parameter.max:
            raise _error(parameter, item, f"at most {parameter.max}")
    return value


def _error(parameter: Parameter, value: Any, allowed: str) -> ParameterError:
    shown = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ParameterError([f"parameter {parameter.name}: {shown} is not {allowed}"])


def resolve(
    parameters: Mapping[str, Parameter],
    given: Mapping[str, Any],
    read_file: ReadFile | None = None,
    text: bool = False,
) -> dict[str, Any]:
    """Every value that applies to a run given `given`: each checked, typed, defaults filled in.

    `text`: the values are text (a form, `-p`), read for each type. `read_file` None: choices from files
    are not checked (nothing to read them from). ParameterError lists every problem:
    a name that is not a parameter or cannot be set (a non-settable one may be given its own default,
    so that a resolved set of values resolves to itself), and each value that is not allowed."""
    problems = []
    settable = [name for name, p in parameters.items() if p.settable]
    for name in given:
        parameter = parameters.get(name)
        if parameter is None or not parameter.settable:
            if parameter is not None and parameter.has_default and _same(parameter, given[name]):
                continue
            why = "is not a parameter of this runbook" if parameter is None else "cannot be set: it keeps its default"
            listed = ", ".join(settable) or "none"
            problems.append(f"parameter {name} {why} (the parameters that can be set: {listed})")
    values: dict[str, Any] = {}
    failed: set[str] = set()
    # parents before the parameters whose choices they pick
    order = sorted(parameters.values(), key=lambda p: bool(p.depends_on))
    for parameter in order:
        name = parameter.name
        if name in given and parameter.settable:
            value, as_text = given[name], text
        elif parameter.has_default:
            value, as_text = parameter.default, False
        else:
            continue
        if any(parent in failed for parent in parameter.depends_on):
            continue  # its choices follow a value that is wrong: that one is said
        # choices from a file: not when there is no file to read (the metadata checked without its
        # repository), nor for an empty list (nothing to look up: a stack listing no hosts)
        looked_up = parameter.choices_from and read_file is not None and value != []
        try:
            choices = choices_for(parameter, values, read_file) if looked_up else None
            values[name] = check_value(parameter, value, choices, as_text)
        except ParameterError as e:
            failed.add(name)
            problems += [p if name in given else f"{p} (the default)" for p in e.problems]
    if problems:
        raise ParameterError(problems)
    return {name: values[name] for name in parameters if name in values}


def _same(parameter: Parameter, value: Any) -> bool:
    try:
        return is_default(parameter, coerce(parameter, value))
    except ParameterError:
        return False


def is_default(parameter: Parameter, value: Any) -> bool:
    """Whether the typed `value` is the parameter's default (True is not 1)."""
    default = parameter.default
    return parameter.has_default and value == default and isinstance(value, bool) == isinstance(default, bool)


def choices_for(parameter: Parameter, values: Mapping[str, Any], read_file: ReadFile | None) -> list:
    """The choices of a `choices_from` parameter given the values of the ones it depends on, read from
    the repository's file. ParameterError when the file or the key is not there."""
    source = parameter.choices_from or {}
    where = source["file"]
    if read_file is None:
        raise ParameterError([f"parameter {parameter.name}: its choices come from {where}, which cannot be read here"])
    try:
        data = load_data(where, read_file(where))
    except (OSError, LookupError, ValueError) as e:
        raise ParameterError([f"parameter {parameter.name}: cannot read its choices from {where}: {e}"]) from None
    walked = []
    for part in source.get("path", []):
        parent = (m := PLACEHOLDER.match(part)) and m.group(1)
        key = values.get(parent) if parent else part
        if parent and not isinstance(key, str | int | float):
            raise ParameterError([f"parameter {parameter.name}: its choices follow {parent}, which has no one value"])
        walked.append(str(key))
        if not isinstance(data, Mapping) or key not in data:
            raise ParameterError(
                [f"parameter {parameter.name}: {where} has no {'.'.join(walked)} to take its choices from"]
            )
        data = data[key]
    if isinstance(data, Mapping):
        return list(data)
    if isinstance(data, list) and all(isinstance(item, str | int | float) for item in data):
        return list(data)
    shown = ".".join(walked) or "top level"
    raise ParameterError([f"parameter {parameter.name}: {where}'s {shown} is neither a mapping nor a list"])


def form_fields(parameters: Mapping[str, Parameter], read_file: ReadFile | None) -> list[dict[str, Any]]:
    """Each parameter as a form shows it (`Parameter.describe`), its choices read: `choices` for a list
    that is fixed, `choices_by` {the parent's value: choices} for one that follows another parameter, so
    that a form follows the parent without asking again; `problem` when they cannot be read."""
    fields = []
    for parameter in parameters.values():
        described = parameter.describe()
        if parameter.choices_from:
            try:
                if not parameter.depends_on:
                    described["choices"] = choices_for(parameter, {}, read_file)
                else:
                    (parent_name,) = parameter.depends_on
                    parent = parameters[parent_name]
                    options = list(parent.choices or []) or (
                        choices_for(parent, {}, read_file) if parent.choices_from else []
                    )
                    described["choices_by"] = {}
                    for option in options:
                        try:
                            found = choices_for(parameter, {parent_name: option}, read_file)
                        except ParameterError:
                            found = []  # that stack lists no hosts: nothing to pick
                        described["choices_by"][str(option)] = found
            except ParameterError as e:
                described["problem"] = str(e)
        fields.append(described)
    return fields


def load_data(where: str, text: str) -> Any:
    """A repository data file's content: YAML (which JSON is too)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{where} is not YAML or JSON ({str(e).splitlines()[0]})") from None


def describe_for_help(runbook: str, fields: list[Mapping[str, Any]]) -> str:
    """Parameters (as `Parameter.describe` or the API give them) as `opshub run RUNBOOK --help` and
    `opshub request RUNBOOK --help` list them."""
    if not fields:
        return f"{runbook} has no parameters (it has no papermill `parameters` cell)."
    lines = [f"{runbook} parameters (set them with -p NAME VALUE):"]
    for p in fields:
        kind = f"list of {p['type']}" if p.get("multiple") else p["type"]
        fixed = "" if p.get("settable", True) else ", fixed: it keeps its default"
        description = f": {p['description']}" if p.get("description") else ""
        lines.append(f"  {p['name']} ({kind}{fixed}; default {p.get('default_text') or 'none'}){description}")
        allowed = []
        if p.get("choices") is not None:
            allowed.append("one of " + (", ".join(str(c) for c in p["choices"]) or "nothing"))
        elif p.get("choices_from"):
            path = ".".join(p["choices_from"].get("path", []))
            allowed.append(f"from {p['choices_from']['file']}" + (f" {path}" if path else ""))
        allowed += [
            f"{word} {p[key]}" for key, word in (("pattern", "matching"), ("min", "min"), ("max", "max")) if key in p
        ]
        if allowed and p.get("settable", True):
            lines.append(f"      {'; '.join(allowed)}")
    return "\n".join(lines)


@dataclass
class RepositoryFiles:
    """read_file for a folder on disk (`opshub run`: the runbooks checkout), refusing paths outside it."""

    root: Path
    cache: dict = field(default_factory=dict)

    def __call__(self, path: str) -> str:
        root = Path(self.root).resolve()
        target = (root / path).resolve()
        if root != target and root not in target.parents:
            raise LookupError(f"{path} is outside the repository")
        if target not in self.cache:
            self.cache[target] = target.read_text()
        return self.cache[target]
