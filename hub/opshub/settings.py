"""Load and validate an opshub settings file.

One YAML file describes a deployment; `settings.schema.yaml` is its only schema. Loading
validates it, fills in the schema's defaults and resolves relative paths, so everything
downstream (the apply functions in `opshub.configure`) works on complete, checked data.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parents[1]  # hub/opshub/ -> the project's checkout (the embedded default's paths)
SETTINGS_ENV = "OPSHUB_SETTINGS"
PORT_ENV = "OPSHUB_PORT"
EMBEDDED_SETTINGS = PACKAGE_DIR / "embedded.yaml"

# Keys that could hold a secret value. Settings name *where* secrets are (`*_env`, `*_file`);
# a literal value under such a key is still masked when settings are shown.
_SECRET_KEY = re.compile(r"(password|secret|token|key)$", re.IGNORECASE)
MASK = "********"


class SettingsError(Exception):
    """Invalid settings. `problems` lists one message per problem, each naming its key path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid opshub settings in {source}:\n{lines}")


@dataclass(frozen=True)
class Settings:
    """Validated settings with defaults filled in and paths made absolute."""

    data: dict[str, Any]
    source: str

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.data[section]

    @property
    def state_dir(self) -> Path:
        return Path(self.data["hub"]["state_dir"])


def schema() -> dict[str, Any]:
    return yaml.safe_load((PACKAGE_DIR / "settings.schema.yaml").read_text())


def settings_path(path: str | os.PathLike | None = None) -> Path:
    """The file to load: the argument, else $OPSHUB_SETTINGS, else the embedded default."""
    chosen = path or os.environ.get(SETTINGS_ENV)
    return Path(chosen) if chosen else EMBEDDED_SETTINGS


def load_settings(
    path: str | os.PathLike | None = None,
    port: int | str | None = None,
    cwd: str | os.PathLike | None = None,
) -> Settings:
    """Read, validate and complete a settings file. Raises SettingsError naming each problem.

    `port` overrides `hub.port` (as `make run PORT=...` does); relative paths are resolved
    against `cwd`, by default the settings file's folder (for the embedded default: this checkout,
    where `make run` keeps `state/`), never the folder the command happens to run in.
    """
    file = settings_path(path)
    if cwd is None:
        cwd = CHECKOUT_DIR if file.resolve() == EMBEDDED_SETTINGS.resolve() else file.resolve().parent
    source = str(file)
    try:
        text = file.read_text()
    except OSError as e:
        raise SettingsError(source, [f"cannot read the settings file: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SettingsError(source, [f"{where}not valid YAML ({problem})"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(source, ["(top level): expected a mapping of sections such as `hub:`"])
    if port is not None:
        try:
            data.setdefault("hub", {})["port"] = int(port)
        except (TypeError, ValueError, AttributeError):
            raise SettingsError(source, [f"hub.port: the port override {port!r} is not a number"]) from None
    return validate(data, source=source, cwd=cwd)


def validate(data: dict[str, Any], source: str = "<settings>", cwd: str | os.PathLike | None = None) -> Settings:
    """Validate raw settings against the schema and the cross-section rules."""
    _yaml_on_key(data)
    the_schema = schema()
    validator = jsonschema.Draft202012Validator(the_schema)
    problems = [_describe(err) for err in sorted(validator.iter_errors(data), key=_error_sort_key)]
    if problems:
        raise SettingsError(source, problems)
    complete = _fill_defaults(copy.deepcopy(data), the_schema, the_schema)
    problems = _check_consistency(complete)
    if problems:
        raise SettingsError(source, problems)
    _resolve_paths(complete, Path(cwd or os.getcwd()))
    return Settings(data=complete, source=source)


def _yaml_on_key(data: dict[str, Any]) -> None:
    """YAML 1.1 (PyYAML) reads an unquoted `on:` key as the boolean True: a notification rule's `on`
    is meant, so it is given its name back."""
    notifications = data.get("notifications")
    rules = notifications.get("rules") if isinstance(notifications, dict) else None
    for rule in rules if isinstance(rules, list) else ():
        if isinstance(rule, dict) and True in rule and "on" not in rule:
            rule["on"] = rule.pop(True)


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _error_sort_key(err: jsonschema.ValidationError):
    return [str(p) for p in err.absolute_path]


def _describe(err: jsonschema.ValidationError) -> str:
    where = _key_path(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        unknown = sorted(set(err.instance) - set(allowed))
        hint = f"; known keys: {', '.join(allowed)}" if allowed else ""
        if any(_SECRET_KEY.search(k) for k in unknown):
            hint += (
                ". Secrets never go in the settings file: name an environment variable (`*_env`)"
                " or a file (`*_file`) that holds them"
            )
        return f"{where}: unknown key(s) {', '.join(unknown)}{hint}"
    if err.validator == "enum":
        return f"{where}: {err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "type":
        return f"{where}: expected {err.validator_value}, got {type(err.instance).__name__} {err.instance!r}"
    if err.validator == "pattern":
        return f"{where}: {err.instance!r} does not match the pattern {err.validator_value}"
    return f"{where}: {err.message}"


def _resolve_ref(node: dict, root: dict) -> dict:
    ref = node.get("$ref")
    if not ref:
        return node
    target = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _fill_defaults(data: Any, node: dict, root: dict) -> Any:
    node = _resolve_ref(node, root)
    if not isinstance(data, dict) or "properties" not in node:
        return data
    for key, sub in node["properties"].items():
        sub = _resolve_ref(sub, root)
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if key in data:
            data[key] = _fill_defaults(data[key], sub, root)
    return data


def schema_default(key: str) -> Any:
    """The schema's default of a dotted key (`history.output_cap_bytes`; a section gives all of its
    defaults): other parts of opshub take their defaults from here, never a copy of their own."""
    root = schema()
    node, value = root, {}
    for part in key.split("."):
        node = _resolve_ref(_resolve_ref(node, root)["properties"][part], root)
        value = value.get(part, {}) if isinstance(value, dict) else {}
    return _fill_defaults(copy.deepcopy(node.get("default", value)), node, root)


def role_groups(data: dict[str, Any]) -> set[str]:
    return {g for groups in data["roles"].values() for g in groups}


def _check_consistency(data: dict[str, Any]) -> list[str]:
    """Rules that span sections, which JSON Schema cannot express clearly."""
    problems = []
    roles = role_groups(data)
    if not roles:
        problems.append("roles: no group is mapped to any role, so nobody could log in")
    for group in data["auth"]["allowed_groups"]:
        if group not in roles:
            problems.append(f"auth.allowed_groups: group {group!r} has no role in `roles`; add it there")
    provider = data["auth"]["provider"]
    if provider in OAUTH_PROVIDERS:
        problems.extend(_check_oauth_client(data["auth"], provider))
    if provider == "shared-password":
        members = data["auth"]["shared_password"]["groups"]
        if not members:
            problems.append("auth.shared_password.groups: the shared-password provider needs the team listed here")
        for group in members:
            if group not in roles:
                problems.append(
                    f"auth.shared_password.groups.{group}: group {group!r} has no role in `roles`;"
                    " its members could not log in"
                )
    notifications = data["notifications"]
    for i, rule in enumerate(notifications["rules"]):
        for target in rule["to"]:
            if target not in notifications["targets"]:
                known = ", ".join(sorted(notifications["targets"])) or "none"
                problems.append(
                    f"notifications.rules.{i}.to: unknown target {target!r} (known targets: {known});"
                    " declare it under notifications.targets"
                )
    runbooks = data["runbooks"]
    if runbooks["mirror_from"] and _is_url(runbooks["repository"]):
        problems.append(
            "runbooks.mirror_from: mirroring needs `runbooks.repository` to be a local path,"
            f" not the URL {runbooks['repository']!r}"
        )
    return problems


OAUTH_PROVIDERS = ("github", "gitlab", "oidc")


def _check_oauth_client(auth: dict[str, Any], provider: str) -> list[str]:
    section = auth[provider]
    where = f"auth.{provider}"
    problems = []
    if provider == "oidc" and not section.get("issuer"):
        problems.append(f"{where}.issuer: the oidc provider needs the issuer URL")
    if not section.get("client_id"):
        problems.append(f"{where}.client_id: the {provider} provider needs the OAuth client ID")
    secret_sources = [k for k in ("client_secret_env", "client_secret_file") if section.get(k)]
    if len(secret_sources) != 1:
        problems.append(
            f"{where}: give exactly one of client_secret_env (an environment variable) or client_secret_file"
            f" (a file) for the client secret{'' if secret_sources else ', not neither'}"
        )
    return problems


def callback_url(data: dict[str, Any]) -> str:
    """Where the identity provider sends people back after login (register it there)."""
    return public_url(data) + "hub/oauth_callback"


def public_url(data: dict[str, Any]) -> str:
    hub = data["hub"]
    return hub["public_url"] or f"http://{hub['ip']}:{hub['port']}{hub['base_url']}"


def _is_url(value: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", value)) or bool(re.match(r"^[^/]+@[^/]+:", value))


def _resolve_paths(data: dict[str, Any], cwd: Path) -> None:
    def absolute(value: str) -> str:
        return str((cwd / value).resolve()) if value else value

    data["hub"]["state_dir"] = absolute(data["hub"]["state_dir"])
    data["hub"]["extra_config_dir"] = absolute(data["hub"]["extra_config_dir"])
    data["runbooks"]["mirror_from"] = absolute(data["runbooks"]["mirror_from"])
    data["spawner"]["local"]["homes_dir"] = absolute(data["spawner"]["local"]["homes_dir"])
    if not _is_url(data["runbooks"]["repository"]):
        data["runbooks"]["repository"] = absolute(data["runbooks"]["repository"])


def repository_url(settings: Settings) -> str:
    """The runbooks repository as a git URL (local paths become file:// URLs)."""
    repo = settings["runbooks"]["repository"]
    return repo if _is_url(repo) else Path(repo).as_uri()


def masked(data: Any) -> Any:
    """A copy of settings data that is safe to print: literal secret values are masked."""
    if isinstance(data, dict):
        return {k: MASK if (_SECRET_KEY.search(k) and isinstance(v, str) and v) else masked(v) for k, v in data.items()}
    if isinstance(data, list):
        return [masked(v) for v in data]
    return data


def render_docs() -> str:
    """The settings reference, in Markdown, rendered from the schema's descriptions."""
    root = schema()
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated by `opshub config docs` from hub/opshub/settings.schema.yaml; do not edit. -->",
        "",
        root["description"],
        "",
        "Check a file with `opshub config validate FILE`; see it with defaults filled in and",
        "secrets masked with `opshub config show FILE`. The hub reads the file named by",
        f"`{SETTINGS_ENV}`, or the embedded default (`hub/opshub/embedded.yaml`) when it is unset.",
        "",
    ]

    def walk(node: dict, path: list[str], depth: int) -> None:
        node = _resolve_ref(node, root)
        for key, sub in node.get("properties", {}).items():
            sub = _resolve_ref(sub, root)
            dotted = ".".join([*path, key])
            if sub.get("type") == "object" and "properties" in sub:
                lines.extend([f"{'#' * min(depth, 4)} `{dotted}`", "", sub.get("description", ""), ""])
                walk(sub, [*path, key], depth + 1)
                continue
            facts = [f"type: {sub.get('type', 'any')}"]
            if "enum" in sub:
                facts.append("one of: " + ", ".join(f"`{v}`" for v in sub["enum"]))
            if "default" in sub:
                facts.append(f"default: `{json.dumps(sub['default'])}`")
            lines.extend([f"- **`{dotted}`** ({'; '.join(facts)})  ", f"  {sub.get('description', '')}", ""])
        if node.get("properties"):
            lines.append("")

    walk(root, [], 2)
    return "\n".join(lines).rstrip() + "\n"
