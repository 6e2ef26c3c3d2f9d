"""The import rules of hub/opshub/ (hub/docs/architecture.md): each folder is a process or a concern,
imports go only the allowed ways, and no two modules import each other, even late."""

from __future__ import annotations

import ast
from pathlib import Path

from opshub.settings import PACKAGE_DIR

# folder (or top-level module) -> what it may import from opshub. Modules at the top not listed
# here (settings, contract, startup, cli...) are the shared base or the composition roots.
ALLOWED = {
    # the execution side: never the service; run_record: what every side sends and the service takes
    "runbooks": {"runbooks", "settings", "contract", "run_record", "git", "hardening"},
    "lab": {"lab", "runbooks", "settings", "contract", "run_record", "git"},  # a person's server
    "dashboards_backend": {
        "dashboards_backend",
        "archive",
        "hardening",
        "sandbox",
    },  # the dashboards server: nothing of the hub's
    "runner": {
        "runner",
        "runbooks",
        "contract",
        "run_record",
        "archive",
        "hardening",
        "sandbox",
    },  # the runner's server: runs runbooks, reports
    # the control plane; settings for the schema's defaults (declared once)
    "service": {
        "service",
        "runbooks",
        "contract",
        "run_record",
        "git",
        "settings",
        "dashboards_backend",
        "runner",
        "hardening",
    },
    "configure": {
        "configure",
        "settings",
        "contract",
        "dashboards_backend",
        "runner",
        "accounts",
        "sandbox",
    },  # pure functions
}


def opshub_imports(path: Path) -> set[str]:
    """Dotted opshub modules imported anywhere in the file (function-level imports included)."""
    module = "opshub." + ".".join(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("opshub")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("opshub"):
                found.add(name)
    return found


def modules() -> dict[str, Path]:
    return {
        "opshub." + ".".join(p.relative_to(PACKAGE_DIR).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE_DIR.rglob("*.py")
        if "migrations" not in p.parts
    }


def test_each_folder_imports_only_what_it_may():
    wrong = []
    for name, path in modules().items():
        part = name.split(".")[1] if "." in name else ""
        if part not in ALLOWED:
            continue
        for imported in opshub_imports(path):
            target = imported.split(".")[1] if imported.count(".") else ""
            if target and target not in ALLOWED[part]:
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_import_each_other():
    graph = {name: {i for i in opshub_imports(path) if i in modules()} for name, path in modules().items()}
    cycles = sorted(f"{a} <-> {b}" for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, ()))
    assert not cycles, cycles


def test_git_is_called_in_one_place():
    """Every git command goes through opshub/git.py (no prompts, C locale, a timeout)."""
    calls = [
        f"{name}: {line.strip()}"
        for name, path in modules().items()
        if name != "opshub.git"
        for line in path.read_text().splitlines()
        if '["git"' in line or "['git'" in line
    ]
    assert not calls, calls


def test_the_rules_see_a_violation():
    """The check itself can fail: a late import of the service from runbooks/ is found."""
    source = PACKAGE_DIR / "runbooks" / "client.py"
    assert "opshub.service.store" not in opshub_imports(source)
    probe = PACKAGE_DIR / "runbooks" / "_layering_probe.py"
    probe.write_text("def f():\n    from ..service.store import RunStore\n")
    try:
        assert "opshub.service.store" in opshub_imports(probe)
    finally:
        probe.unlink()


DOOR = "opshub.service.lifecycle"


def status_writes(source: str) -> list[str]:
    """Writes of a run's status in this source: `.values(status=...)`, `x.status = ...`, `delete(Run)`,
    and adding a run to a session (`session.add(run)`, `session.add(Run(...))`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            parts = [p for t in targets for p in (t.elts if isinstance(t, ast.Tuple) else [t])]
            for part in parts:  # `self.status` is an exception's HTTP status, not a run's
                is_self = (
                    isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name) and part.value.id == "self"
                )
                if isinstance(part, ast.Attribute) and part.attr == "status" and not is_self:
                    found.append(f"line {node.lineno}: assigns .status")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute | ast.Name):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
        if name == "values" and any(k.arg == "status" for k in node.keywords):
            found.append(f"line {node.lineno}: .values(status=...)")
        if name == "delete" and any(isinstance(a, ast.Name) and a.id == "Run" for a in node.args):
            found.append(f"line {node.lineno}: delete(Run)")
        if name in ("add", "add_all", "merge") and any(
            (isinstance(a, ast.Name) and "run" in a.id.lower())
            or (isinstance(a, ast.Call) and isinstance(a.func, ast.Name) and a.func.id == "Run")
            for a in node.args
        ):
            found.append(f"line {node.lineno}: adds a run to a session")
    return found


def test_a_runs_status_is_written_only_by_its_one_door():
    """Every change of a run's status goes through service/lifecycle.py, which checks it against the
    table of transitions, records the event and tells the subscribers (issue 21)."""
    wrong = [
        f"{name} {write}"
        for name, path in modules().items()
        if name != DOOR
        for write in status_writes(path.read_text())
    ]
    assert not wrong, "\n".join(wrong)


def test_the_status_rule_sees_each_kind_of_write():
    probes = [
        "session.execute(update(Run).where(Run.id == x).values(status='failed'))",
        "run.status = 'cancelled'",
        "run.status, run.ended_at = 'cancelled', now",
        "session.execute(delete(Run).where(Run.id == x))",
        "session.add(run)",
        "session.add(Run(id=x, status='running'))",
    ]
    for probe in probes:
        assert status_writes(probe), probe
    assert not status_writes("session.add(ScheduleState(key=k))\nupdate(Run).values(cancel_requested_by=by)")
