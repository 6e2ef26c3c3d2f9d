"""What is wrong with a runbook's `opshub.parameters` declaration that its JSON Schema cannot see.

metadata.py reports these with the schema's problems, each naming its key, e.g.
`opshub.parameters.stack.default is "web" but the parameters cell says stack = "lab": make them the same`.
typed_parameters.py reads a declaration these found nothing wrong with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .params import DeclaredParameter
from .typed_parameters import (
    ANY,
    NO_DEFAULT,
    PLACEHOLDER,
    ParameterError,
    check_value,
    declared_type,
    inferred_type,
    is_of_type,
    literal,
    parameters_of,
)


def declaration_problems(metadata: Mapping[str, Any], cell: Mapping[str, DeclaredParameter] | None) -> list[str]:
    """What is wrong with `metadata`'s parameters declaration that its JSON Schema cannot see, each naming
    its key. `cell` is the parameters cell (None when it cannot be read: a notebook that is not Python)."""
    declaration = metadata.get("parameters")
    if not isinstance(declaration, Mapping):
        return []
    problems = []
    for name, spec in declaration.items():
        if not isinstance(spec, Mapping):
            continue
        key = f"opshub.parameters.{name}"
        in_cell = (cell or {}).get(name)
        if cell is not None and in_cell is None:
            listed = ", ".join(cell) or "none"
            problems.append(f"{key}: the parameters cell does not set {name} (it sets: {listed})")
        cell_default = literal(in_cell.default) if in_cell else NO_DEFAULT
        if "default" in spec and cell_default is not NO_DEFAULT and _differs(spec["default"], cell_default):
            problems.append(
                f"{key}.default is {json.dumps(spec['default'])} but the parameters cell says "
                f"{name} = {in_cell.default}: make them the same"
            )
        default = spec.get("default", cell_default)
        if spec.get("type") is None and inferred_type(default)[0] == ANY:
            shown = in_cell.default if in_cell else "none"
            problems.append(f"{key}.type is needed: its default ({shown}) does not say which type it is")
            continue
        kind, multiple = declared_type(spec, default)
        constraint_problems = _constraint_problems(key, name, spec, kind, multiple, declaration, cell)
        problems += constraint_problems
        if default is not NO_DEFAULT and not constraint_problems:  # its default, held to sound constraints
            parameter = parameters_of({"parameters": {name: spec}}, {name: in_cell} if in_cell else {})[name]
            try:
                check_value(parameter, default)
            except ParameterError as e:
                problems.append(f"{key}: its default does not hold: {e}")
    return problems


def _differs(a: Any, b: Any) -> bool:
    normal = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return json.dumps(normal(a), sort_keys=True) != json.dumps(normal(b), sort_keys=True, default=repr) or (
        type(a) is bool
    ) != (type(b) is bool)


_ARTICLES = {"integer": "an"}


def _takes_several(spec: Mapping[str, Any], in_cell: DeclaredParameter | None) -> bool:
    """Whether a declared parameter's value is a list (its type, or its cell default's when it has none)."""
    default = spec.get("default", literal(in_cell.default) if in_cell else NO_DEFAULT)
    return declared_type(spec, default)[1]


def _constraint_problems(key, name, spec, kind, multiple, declaration, cell) -> list[str]:
    problems = []
    if multiple and kind not in ("string", "integer", "number"):
        problems.append(f"{key}.multiple: a {kind} parameter cannot take several values")
    if ("min" in spec or "max" in spec) and kind not in ("integer", "number"):
        problems.append(f"{key}: min and max are for integer and number parameters, not {kind}")
    if "min" in spec and "max" in spec and spec["min"] > spec["max"]:
        problems.append(f"{key}: min ({spec['min']}) is above max ({spec['max']})")
    if "pattern" in spec:
        if kind not in ("string", "secret"):
            problems.append(f"{key}.pattern is for string parameters, not {kind}")
        else:
            try:
                re.compile(spec["pattern"])
            except re.error as e:
                problems.append(f"{key}.pattern is not a regular expression ({e})")
    if "choices" in spec and "choices_from" in spec:
        problems.append(f"{key}: give choices or choices_from, not both")
    if "choices" in spec:
        for i, choice in enumerate(spec["choices"]):
            if not is_of_type(kind, choice):
                problems.append(f"{key}.choices[{i}]: {json.dumps(choice)} is not {_ARTICLES.get(kind, 'a')} {kind}")
    if "choices_from" in spec:
        if len([part for part in spec["choices_from"].get("path", []) if "{" in part]) > 1:
            problems.append(f"{key}.choices_from.path: at most one part may be a {{parameter}}")
        if kind not in ("string", "integer", "number"):
            problems.append(f"{key}.choices_from is for string, integer and number parameters, not {kind}")
        for part in spec["choices_from"].get("path", []):
            parent = (m := PLACEHOLDER.match(part)) and m.group(1)
            if "{" in part and not parent:
                problems.append(f"{key}.choices_from.path: {part!r} is not a key or one {{parameter}}")
            elif parent == name:
                problems.append(f"{key}.choices_from.path: {part!r} makes {name} depend on itself")
            elif parent and parent not in declaration:
                problems.append(f"{key}.choices_from.path: {part!r} names no declared parameter")
            elif parent and _takes_several(declaration[parent], (cell or {}).get(parent)):
                problems.append(f"{key}.choices_from.path: {part!r} names a parameter that takes several values")
            elif (
                parent
                and "choices_from" in declaration[parent]
                and any(PLACEHOLDER.match(p) for p in declaration[parent]["choices_from"].get("path", []))
            ):
                problems.append(f"{key}.choices_from.path: {part!r} names a parameter whose choices depend on another")
    return problems
