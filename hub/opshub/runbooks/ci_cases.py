"""The cases file of `opshub ci` (`runbooks-ci.yaml`): reading it, naming the line and the key of each
problem, choosing cases (`--case`), and the `${NAME}` variables of their parameters."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CASE_KEYS = ("name", "runbook", "parameters", "expect", "output_contains", "timeout_seconds")
DEFAULT_TIMEOUT_SECONDS = 1800  # a case's run, before it is interrupted: a hung runbook must not hang the job
EXPECTATIONS = ("succeeded", "failed")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ${NAME} in a parameter's text


class CasesError(ValueError):
    """The cases file cannot be used: the message names the file, the line and the key."""


@dataclass
class Case:
    name: str  # how lines, JUnit and --case name it: `name`, else the runbook
    runbook: str
    parameters: dict[str, Any] = field(default_factory=dict)
    expect: str = "succeeded"
    output_contains: list[str] = field(default_factory=list)
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def stem(self) -> str:
        """The name of its files in the output folder (NAME.ipynb, NAME.log)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name.removesuffix(".ipynb"))


# The cases file


def load_cases(path: Path) -> list[Case]:
    """The cases of the file at `path`. CasesError names the line and the key of each problem."""
    try:
        text = path.read_text()
    except OSError as e:
        raise CasesError(f"{path}: cannot read it: {e.strerror or e}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise CasesError(f"{path}{where}: not YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise CasesError(f"{path}, line 1: the file must be a mapping with a `cases:` list")
    unknown = sorted(set(data) - {"cases"})
    if unknown:
        raise CasesError(f"{path}, line {_key_line(root, unknown[0])}: unknown key {unknown[0]!r} (only `cases:`)")
    nodes = _value_node(root, "cases").value
    cases = [_case(path, index, item, nodes[index]) for index, item in enumerate(data["cases"])]
    if not cases:
        raise CasesError(f"{path}, line {_value_node(root, 'cases').start_mark.line + 1}: `cases:` lists no case")
    seen: dict[str, int] = {}
    for index, case in enumerate(cases):
        if case.stem in seen:  # their reports and executed notebooks would be one
            raise CasesError(
                f"{path}, line {nodes[index].start_mark.line + 1}: a second case named {case.name!r}"
                f" (cases {seen[case.stem] + 1} and {index + 1}): give one a `name:` of its own"
            )
        seen[case.stem] = index
    return cases


def _case(path: Path, index: int, item: Any, node) -> Case:
    def problem(key: str | None, text: str) -> CasesError:
        line = _key_line(node, key) if key else node.start_mark.line + 1
        where = f"cases[{index}]" + (f".{key}" if key else "")
        return CasesError(f"{path}, line {line}: {where}: {text}")

    if not isinstance(item, dict):
        raise problem(None, "a case is a mapping with at least `runbook:`")
    for key in item:
        if key not in CASE_KEYS:
            raise problem(key, f"unknown key (a case has {', '.join(CASE_KEYS)})")
    runbook = item.get("runbook")
    if not isinstance(runbook, str) or not runbook.strip():
        raise problem("runbook" if "runbook" in item else None, "`runbook:` must name a runbook of the folder")
    name = item.get("name", runbook)
    if not isinstance(name, str) or not name.strip():
        raise problem("name", "must be text")
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict) or not all(isinstance(key, str) for key in parameters):
        raise problem("parameters", "must be a mapping of parameter names to values")
    expect = item.get("expect", "succeeded")
    if expect not in EXPECTATIONS:
        raise problem("expect", f"must be succeeded or failed, not {expect!r}")
    contains = item.get("output_contains") or []
    if isinstance(contains, str):
        contains = [contains]
    if not isinstance(contains, list) or not all(isinstance(text, str) and text for text in contains):
        raise problem("output_contains", "must be a list of non-empty strings")
    timeout = item.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
        raise problem("timeout_seconds", f"must be a number of seconds between 1 and 86400, not {timeout!r}")
    return Case(name.strip(), runbook.strip(), parameters, expect, contains, timeout)


def _value_node(mapping, key: str):
    return next(value for k, value in mapping.value if k.value == key)


def _key_line(node, key: str) -> int:
    """The line of `key` in the mapping `node` (1-based), else the mapping's own."""
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if getattr(k, "value", None) == key:
                return k.start_mark.line + 1
    return node.start_mark.line + 1


def select(cases: list[Case], wanted: Sequence[str]) -> list[Case]:
    """The cases whose name contains one of `wanted` (every case when none). CasesError when one of
    `wanted` matches no case."""
    if not wanted:
        return cases
    for text in wanted:
        if not any(text in case.name for case in cases):
            names = "\n".join(f"  {case.name}" for case in cases)
            raise CasesError(f"--case {text}: no case's name contains it. The cases:\n{names}")
    return [case for case in cases if any(text in case.name for text in wanted)]


def expand_variables(value: Any, environ: Mapping[str, str], where: str = "parameters") -> Any:
    """`value` with each `${NAME}` in its text replaced by the environment variable NAME (a path that
    differs per machine: `ca_file: ${FLEET_CA}`). CasesError naming the parameter when NAME is not set."""
    if isinstance(value, dict):
        return {key: expand_variables(item, environ, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [expand_variables(item, environ, f"{where}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def variable(match: re.Match) -> str:
        if match.group(1) not in environ:
            raise CasesError(f"{where}: {value!r} names the variable {match.group(1)}, which is not set")
        return environ[match.group(1)]

    return VARIABLE.sub(variable, value)
