"""Typed runbook parameters (runbooks/typed_parameters.py): the declaration in a runbook's `opshub` metadata,
types inferred from the parameters cell without one, the one check every way in goes through (`resolve`),
choices read from a repository file (following another parameter), and what forms and --help show, tried as
a careless and a hostile runbook author and requester would."""

from __future__ import annotations

import json
import math

import nbformat
import pytest
from opshub.runbooks.metadata import RunbookMetadataError, runbook_metadata
from opshub.runbooks.parameter_declaration import declaration_problems
from opshub.runbooks.params import cell_parameters
from opshub.runbooks.triggers import alert_rules_of
from opshub.runbooks.typed_parameters import (
    Parameter,
    ParameterError,
    RepositoryFiles,
    check_value,
    choices_for,
    coerce,
    describe_for_help,
    form_fields,
    parameters_of,
    resolve,
)

CELL = 'stack = "lab"  # a stack\ndry_run = True\nwait_timeout = 900\nhosts = []'
PATCHING_CELL = CELL + '\nssh_options = "-o BatchMode=yes"'
STACKS = "inventory/stacks.yaml"
INVENTORY = """\
stacks:
  lab:
    hosts: [localhost]
  web:
    hosts: [web01, web02]
  db:
    hosts: [db01]
"""
PATCHING = {
    "stack": {
        "type": "string",
        "description": "The stack to patch",
        "choices_from": {"file": STACKS, "path": ["stacks"]},
    },
    "hosts": {
        "type": "list",
        "description": "Hosts of the stack (none: all of them)",
        "choices_from": {"file": STACKS, "path": ["stacks", "{stack}", "hosts"]},
    },
    "dry_run": {"type": "boolean"},
    "wait_timeout": {"type": "integer", "min": 60, "max": 3600},
}


def notebook(cell: str = CELL, **opshub) -> dict:
    parameters = nbformat.v4.new_code_cell(cell, metadata={"tags": ["parameters"]})
    nb = nbformat.v4.new_notebook(cells=[parameters, nbformat.v4.new_code_cell("print('patching')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["opshub"] = opshub
    return json.loads(nbformat.writes(nb))


def files(contents: dict[str, str]):
    """A read_file over `contents`, as a repository at one commit would answer."""

    def read_file(path: str) -> str:
        if path not in contents:
            raise FileNotFoundError(f"{path} is not in the repository")
        return contents[path]

    return read_file


INVENTORY_FILES = files({STACKS: INVENTORY})


def parameters(cell: str = CELL, read_file=None, **opshub) -> dict[str, Parameter]:
    """The parameters of a runbook as the service sees them, its metadata checked first."""
    nb = notebook(cell, **opshub)
    return parameters_of(runbook_metadata(nb, "x.ipynb", read_file), cell_parameters(nb))


def patching() -> dict[str, Parameter]:
    return parameters(PATCHING_CELL, INVENTORY_FILES, parameters=PATCHING)


def refusal(cell: str = CELL, read_file=None, **opshub) -> str:
    with pytest.raises(RunbookMetadataError) as refused:
        runbook_metadata(notebook(cell, **opshub), "x.ipynb", read_file)
    return str(refused.value)


def refused(parameters, given, read_file=None, text=False) -> str:
    with pytest.raises(ParameterError) as refused:
        resolve(parameters, given, read_file, text=text)
    return str(refused.value)


def declared(cell: str = CELL, **declaration) -> dict[str, Parameter]:
    return parameters(cell, parameters=declaration)


# The parameters cell


def test_cell_parameters_reads_each_assignment_with_its_comment_as_help():
    cell = cell_parameters(notebook('stack = "lab"  # the stack\ntimeout: int = 5\nssh_options = "-o A=b"'))
    assert [(p.name, p.default, p.help) for p in cell.values()] == [
        ("stack", '"lab"', "the stack"),
        ("timeout", "5", ""),
        ("ssh_options", '"-o A=b"', ""),
    ]


def test_cell_parameters_is_empty_without_a_tagged_cell_and_none_for_another_language():
    nb = notebook()
    nb["cells"][0]["metadata"]["tags"] = []
    assert cell_parameters(nb) == {}
    nb = notebook()
    nb["metadata"]["kernelspec"]["language"] = "R"
    assert cell_parameters(nb) is None


def test_cell_parameters_only_counts_top_level_assignments():
    cell = cell_parameters(notebook('stack = "lab"\nif True:\n    hidden = 1\nimport os\na = b = 2'))
    assert list(cell) == ["stack", "a", "b"]


# Inference without a declaration


def test_types_are_inferred_from_the_cell_defaults():
    found = parameters(CELL + "\nratio = 0.5\nextra = None\nwhen = now()")
    assert {name: p.kind for name, p in found.items()} == {
        "stack": "string",
        "dry_run": "boolean",
        "wait_timeout": "integer",
        "hosts": "list of string",
        "ratio": "number",
        "extra": "any",
        "when": "any",
    }
    assert all(p.settable and not p.declared for p in found.values())
    assert found["stack"].description == "a stack"
    assert not found["when"].has_default


@pytest.mark.parametrize("text", ["false", "False", "no", "0", "off", " FALSE "])
def test_a_boolean_default_makes_false_text_false(text):
    assert resolve(parameters(), {"dry_run": text}, text=True)["dry_run"] is False


@pytest.mark.parametrize("text", ["true", "yes", "1", "on", "True"])
def test_a_boolean_default_makes_true_text_true(text):
    assert resolve(parameters(), {"dry_run": text}, text=True)["dry_run"] is True


def test_every_cell_parameter_can_be_set_without_a_declaration():
    values = {"stack": "web", "dry_run": False, "wait_timeout": 60, "hosts": ["web01"]}
    assert resolve(parameters(), values) == values


def test_a_none_default_takes_anything():
    found = parameters("extra = None")
    assert resolve(found, {"extra": {"any": ["thing"]}}) == {"extra": {"any": ["thing"]}}
    assert resolve(found, {"extra": "900"}, text=True) == {"extra": 900}
    assert resolve(found, {"extra": "web"}, text=True) == {"extra": "web"}


def test_bad_json_text_for_an_untyped_parameter_is_refused_naming_it():
    assert "parameter extra" in refused(parameters("extra = None"), {"extra": "[oops"}, text=True)


def test_an_expression_default_is_settable_but_has_no_value_unless_given():
    found = parameters("when = now()")
    assert resolve(found, {}) == {}
    assert resolve(found, {"when": "2024-01-01"}, text=True) == {"when": "2024-01-01"}


def test_a_name_that_is_no_parameter_is_refused_listing_the_settable_ones():
    assert refused(parameters(), {"__import__": "os"}) == (
        "parameter __import__ is not a parameter of this runbook "
        "(the parameters that can be set: stack, dry_run, wait_timeout, hosts)"
    )


# Every type, typed JSON and text


def integer(**constraints) -> Parameter:
    return Parameter("wait_timeout", "integer", **constraints)


def test_integer_from_text_and_from_json():
    assert coerce(integer(), "900", text=True) == 900
    assert coerce(integer(), " 900 ", text=True) == 900
    assert coerce(integer(), 900) == 900
    assert coerce(integer(), 900.0) == 900


@pytest.mark.parametrize(
    ("value", "shown"), [("abc", "'abc'"), ("1.5", "'1.5'"), ("", "''"), (1.5, "1.5"), (True, "true"), (None, "null")]
)
def test_a_wrong_integer_is_refused_naming_parameter_and_value(value, shown):
    with pytest.raises(ParameterError) as e:
        coerce(integer(), value, text=isinstance(value, str))
    assert str(e.value) == f"parameter wait_timeout: {shown} is not a whole number"


def test_resolve_refuses_abc_for_an_inferred_integer():
    message = refused(parameters(), {"wait_timeout": "abc"}, text=True)
    assert message == "parameter wait_timeout: 'abc' is not a whole number"


@pytest.mark.parametrize("value", ["1" + "0" * 400, 10**400], ids=["text", "json"])
def test_a_huge_integer_is_refused_naming_the_parameter(value):
    with pytest.raises(ParameterError, match="parameter wait_timeout"):
        coerce(integer(), value, text=isinstance(value, str))


def test_number_from_text_and_json():
    number = Parameter("ratio", "number")
    assert coerce(number, "1.5", text=True) == 1.5
    assert coerce(number, 2) == 2
    assert coerce(number, "2", text=True) == 2.0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "Infinity", math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_no_numbers(value):
    with pytest.raises(ParameterError, match=r"^parameter ratio: .* is not a number$"):
        coerce(Parameter("ratio", "number"), value, text=isinstance(value, str))


@pytest.mark.parametrize("value", ["nan", "inf", math.inf])
def test_nan_and_infinity_are_no_whole_numbers(value):
    with pytest.raises(ParameterError, match="is not a whole number"):
        coerce(integer(), value, text=isinstance(value, str))


def test_a_boolean_is_never_a_number_and_a_number_never_a_boolean():
    with pytest.raises(ParameterError, match="parameter dry_run: 1 is not true or false"):
        coerce(Parameter("dry_run", "boolean"), 1)
    with pytest.raises(ParameterError, match="parameter dry_run: 0 is not true or false"):
        coerce(Parameter("dry_run", "boolean"), 0)
    with pytest.raises(ParameterError, match="parameter wait_timeout: true is not a whole number"):
        coerce(integer(), True)
    with pytest.raises(ParameterError, match="parameter ratio: false is not a number"):
        coerce(Parameter("ratio", "number"), False)


@pytest.mark.parametrize("value", ["", "n", "nope", "2", "truthy", None, [True]])
def test_a_wrong_boolean_is_refused(value):
    with pytest.raises(ParameterError, match="parameter dry_run: .* is not true or false"):
        coerce(Parameter("dry_run", "boolean"), value, text=isinstance(value, str))


def test_a_string_must_be_text():
    assert coerce(Parameter("stack", "string"), "web") == "web"
    assert coerce(Parameter("stack", "string"), '"007"', text=True) == '"007"'
    with pytest.raises(ParameterError, match=r"parameter stack: 7 is not text"):
        coerce(Parameter("stack", "string"), 7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a,b", ["a", "b"]), (" a , b ,, ", ["a", "b"]), ('["a","b"]', ["a", "b"]), ('["a, b"]', ["a, b"]), ("", [])],
)
def test_a_list_from_text(text, expected):
    assert coerce(Parameter("hosts", "string", multiple=True), text, text=True) == expected


def test_a_list_from_json_keeps_its_items():
    assert coerce(Parameter("hosts", "string", multiple=True), ["web01", "web02"]) == ["web01", "web02"]


def test_a_wrong_list_is_refused():
    hosts = Parameter("hosts", "string", multiple=True)
    with pytest.raises(ParameterError, match=r"parameter hosts: 3 is not a list of string"):
        coerce(hosts, 3)
    with pytest.raises(ParameterError, match=r"parameter hosts: 1 is not text"):
        coerce(hosts, ["web01", 1])
    with pytest.raises(ParameterError, match=r"""parameter hosts: '\["a",' is not a JSON list such as"""):
        coerce(hosts, '["a",', text=True)


def test_a_secret_is_the_name_of_a_secret():
    secret = Parameter("password", "secret")
    assert coerce(secret, "DB_PASSWORD") == "DB_PASSWORD"
    for value in ["hunter2 with spaces", "", "1PASSWORD", "$(id)", "DB_PASSWORD\n"]:
        with pytest.raises(ParameterError, match="is not the name of a secret"):
            coerce(secret, value)


def test_a_declared_secret_refuses_a_value_with_spaces():
    found = parameters('password = "DB_PASSWORD"', parameters={"password": {"type": "secret"}})
    assert refused(found, {"password": "my password"}) == (
        "parameter password: 'my password' is not the name of a secret (letters, digits and _, such as DB_PASSWORD)"
    )


def test_multiple_integers_from_text_and_json():
    found = parameters("ports = [80, 443]", parameters={"ports": {"type": "integer", "multiple": True}})
    assert found["ports"].kind == "list of integer"
    assert resolve(found, {"ports": "80, 8080"}, text=True) == {"ports": [80, 8080]}
    assert resolve(found, {"ports": "[80, 8080]"}, text=True) == {"ports": [80, 8080]}
    assert resolve(found, {"ports": [22]}) == {"ports": [22]}
    assert refused(found, {"ports": "80,x"}, text=True) == "parameter ports: 'x' is not a whole number"
    assert refused(found, {"ports": [80, True]}) == "parameter ports: true is not a whole number"


def test_a_long_value_is_cut_short_in_the_message():
    message = refused(parameters(), {"wait_timeout": "9" * 500 + "x"}, text=True)
    assert message.endswith("...' is not a whole number") or message.endswith("... is not a whole number")
    assert len(message) < 150


# Constraints


def test_choices_refuse_another_value_listing_them():
    found = declared(stack={"choices": ["lab", "web"]})
    assert resolve(found, {"stack": "web"})["stack"] == "web"
    assert refused(found, {"stack": "nope"}) == "parameter stack: 'nope' is not one of lab, web"


def test_choices_apply_to_each_item_of_a_list():
    found = declared(hosts={"type": "list", "choices": ["web01", "web02"]})
    assert resolve(found, {"hosts": "web01,web02"}, text=True)["hosts"] == ["web01", "web02"]
    assert refused(found, {"hosts": ["web01", "evil"]}) == "parameter hosts: 'evil' is not one of web01, web02"


def test_integer_choices_take_text():
    found = declared(wait_timeout={"choices": [60, 900]})
    assert resolve(found, {"wait_timeout": "60"}, text=True)["wait_timeout"] == 60
    assert refused(found, {"wait_timeout": "61"}, text=True) == "parameter wait_timeout: 61 is not one of 60, 900"


@pytest.mark.parametrize("value", ["web\n", "web; rm -rf /", "web-1", "web1 ", "WEB"])
def test_a_pattern_must_match_the_whole_value(value):
    found = declared(stack={"pattern": "[a-z]+[0-9]*"})
    assert f"parameter stack: {value!r} is not text matching [a-z]+[0-9]*" == refused(found, {"stack": value})


def test_a_pattern_with_anchors_still_refuses_a_trailing_newline():
    found = declared(stack={"pattern": "^[a-z]+$"})
    assert resolve(found, {"stack": "web"})["stack"] == "web"
    assert "is not text matching" in refused(found, {"stack": "web\n"})


def test_min_and_max_bound_a_number():
    found = declared(wait_timeout={"min": 60, "max": 3600})
    assert resolve(found, {"wait_timeout": 60})["wait_timeout"] == 60
    assert resolve(found, {"wait_timeout": "3600"}, text=True)["wait_timeout"] == 3600
    assert refused(found, {"wait_timeout": 59}) == "parameter wait_timeout: 59 is not at least 60"
    assert refused(found, {"wait_timeout": 3601}) == "parameter wait_timeout: 3601 is not at most 3600"


# Choices from a repository file


def test_choices_from_the_keys_of_a_mapping():
    stack = patching()["stack"]
    assert choices_for(stack, {}, INVENTORY_FILES) == ["lab", "web", "db"]


def test_choices_from_the_items_of_a_list_following_another_parameter():
    hosts = patching()["hosts"]
    assert hosts.depends_on == ["stack"]
    assert choices_for(hosts, {"stack": "web"}, INVENTORY_FILES) == ["web01", "web02"]


def test_dependent_choices_follow_the_parent_value():
    found = patching()
    assert resolve(found, {"stack": "web", "hosts": "web02"}, INVENTORY_FILES, text=True)["hosts"] == ["web02"]
    assert refused(found, {"stack": "web", "hosts": ["localhost"]}, INVENTORY_FILES) == (
        f"parameter hosts: 'localhost' is not one of web01, web02 (from {STACKS})"
    )


def test_a_value_not_in_the_file_is_refused_naming_the_file():
    assert refused(patching(), {"stack": "nope"}, INVENTORY_FILES) == (
        f"parameter stack: 'nope' is not one of lab, web, db (from {STACKS})"
    )


def test_a_wrong_parent_value_reports_only_the_parent():
    message = refused(patching(), {"stack": "nope", "hosts": ["web01"]}, INVENTORY_FILES)
    assert message.startswith("parameter stack:")
    assert "hosts" not in message


def test_a_missing_file_is_a_clear_refusal():
    message = refused(patching(), {}, files({}))
    assert message.startswith(f"parameter stack: cannot read its choices from {STACKS}: ")
    assert "hosts" not in message


def test_choices_that_cannot_be_read_here_say_so():
    with pytest.raises(ParameterError, match=f"its choices come from {STACKS}, which cannot be read here"):
        choices_for(patching()["stack"], {}, None)


def test_a_missing_key_is_a_clear_refusal():
    stack = Parameter("stack", "string", choices_from={"file": STACKS, "path": ["stack"]})
    with pytest.raises(ParameterError) as e:
        choices_for(stack, {}, INVENTORY_FILES)
    assert str(e.value) == f"parameter stack: {STACKS} has no stack to take its choices from"


def test_a_parent_value_missing_from_the_file_names_the_path():
    hosts = patching()["hosts"]
    with pytest.raises(ParameterError, match=f"{STACKS} has no stacks.nope to take its choices from"):
        choices_for(hosts, {"stack": "nope"}, INVENTORY_FILES)


@pytest.mark.parametrize("text", ["stacks: [lab\n", "stacks:\n  lab: {\n", "!!python/object/apply:os.system ['id']"])
def test_a_file_that_is_not_yaml_is_a_clear_refusal(text):
    stack = patching()["stack"]
    with pytest.raises(ParameterError, match=f"cannot read its choices from {STACKS}: {STACKS} is not YAML or JSON"):
        choices_for(stack, {}, files({STACKS: text}))


def test_a_file_that_lists_no_scalars_is_refused():
    stack = Parameter("stack", "string", choices_from={"file": STACKS, "path": ["stacks"]})
    with pytest.raises(ParameterError, match=f"{STACKS}'s stacks is neither a mapping nor a list"):
        choices_for(stack, {}, files({STACKS: "stacks: [{name: web}]"}))


def test_a_file_whose_top_level_is_a_scalar_is_refused_in_words():
    stack = Parameter("stack", "string", choices_from={"file": STACKS})
    with pytest.raises(ParameterError) as e:
        choices_for(stack, {}, files({STACKS: "hello"}))
    assert str(e.value) == f"parameter stack: {STACKS}'s top level is neither a mapping nor a list"


def test_a_stack_without_hosts_runs_with_the_empty_default():
    read_file = files({STACKS: "stacks:\n  lab:\n    hosts: [localhost]\n  db: {}\n"})
    found = parameters(PATCHING_CELL, read_file, parameters=PATCHING)
    assert resolve(found, {"stack": "db"}, read_file)["hosts"] == []


def test_repository_files_reads_inside_its_root(tmp_path):
    (tmp_path / "inventory").mkdir()
    (tmp_path / STACKS).write_text(INVENTORY)
    assert RepositoryFiles(tmp_path)(STACKS) == INVENTORY
    assert RepositoryFiles(tmp_path)("inventory/../" + STACKS) == INVENTORY


@pytest.mark.parametrize("path", ["../secret.yaml", "inventory/../../secret.yaml", "/etc/passwd"])
def test_repository_files_refuses_paths_outside_its_root(tmp_path, path):
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "secret.yaml").write_text("stacks: {}")
    with pytest.raises(LookupError, match="is outside the repository"):
        RepositoryFiles(root)(path)


def test_repository_files_refuses_a_sibling_folder_sharing_its_prefix(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo2").mkdir()
    (tmp_path / "repo2" / "x.yaml").write_text("a: 1")
    with pytest.raises(LookupError):
        RepositoryFiles(tmp_path / "repo")("../repo2/x.yaml")


def test_repository_files_refuses_a_symlink_pointing_outside(tmp_path):
    root = tmp_path / "repo"
    (root / "inventory").mkdir(parents=True)
    (tmp_path / "secret.yaml").write_text("stacks: {prod: {}}")
    (root / STACKS).symlink_to(tmp_path / "secret.yaml")
    with pytest.raises(LookupError, match="is outside the repository"):
        RepositoryFiles(root)(STACKS)


def test_a_path_outside_the_repository_is_a_clear_refusal_of_the_choices(tmp_path):
    root = tmp_path / "repo"
    (root / "inventory").mkdir(parents=True)
    (tmp_path / "secret.yaml").write_text("stacks: {prod: {}}")
    (root / STACKS).symlink_to(tmp_path / "secret.yaml")
    message = refused(patching(), {"stack": "prod"}, RepositoryFiles(root))
    assert message.startswith(f"parameter stack: cannot read its choices from {STACKS}: ")
    assert "outside the repository" in message


def test_a_missing_file_on_disk_is_a_clear_refusal(tmp_path):
    message = refused(patching(), {}, RepositoryFiles(tmp_path))
    assert message.startswith(f"parameter stack: cannot read its choices from {STACKS}")


# With a declaration: only declared parameters can be set


def test_a_parameter_left_out_of_the_declaration_is_not_settable():
    found = patching()
    assert not found["ssh_options"].settable and found["stack"].settable
    assert refused(found, {"ssh_options": '-o ProxyCommand="sh -c id"'}, INVENTORY_FILES) == (
        "parameter ssh_options cannot be set: it keeps its default "
        "(the parameters that can be set: stack, dry_run, wait_timeout, hosts)"
    )


def test_a_non_settable_parameter_may_be_given_its_own_default():
    values = resolve(patching(), {"ssh_options": "-o BatchMode=yes"}, INVENTORY_FILES)
    assert values["ssh_options"] == "-o BatchMode=yes"


def test_resolving_resolved_values_gives_them_back():
    found = patching()
    once = resolve(found, {"stack": "web", "hosts": "web01", "dry_run": "no"}, INVENTORY_FILES, text=True)
    assert resolve(found, once, INVENTORY_FILES) == once


def test_an_empty_declaration_makes_nothing_settable():
    found = declared()
    assert refused(found, {"stack": "web"}) == (
        "parameter stack cannot be set: it keeps its default (the parameters that can be set: none)"
    )
    assert resolve(found, {}) == {"stack": "lab", "dry_run": True, "wait_timeout": 900, "hosts": []}


def test_resolve_returns_every_value_typed_in_the_cells_order():
    found = parameters(
        PATCHING_CELL,
        INVENTORY_FILES,
        parameters={"wait_timeout": PATCHING["wait_timeout"], "dry_run": {}, "stack": PATCHING["stack"]},
    )
    values = resolve(found, {"wait_timeout": "120", "dry_run": "false"}, INVENTORY_FILES, text=True)
    assert values == {
        "stack": "lab",
        "dry_run": False,
        "wait_timeout": 120,
        "hosts": [],
        "ssh_options": "-o BatchMode=yes",
    }
    assert list(values) == ["stack", "dry_run", "wait_timeout", "hosts", "ssh_options"]


def test_resolve_lists_every_problem_at_once():
    message = refused(patching(), {"wait_timeout": "abc", "dry_run": "maybe", "nope": 1}, INVENTORY_FILES, text=True)
    assert "parameter nope is not a parameter of this runbook" in message
    assert "parameter dry_run: 'maybe' is not true or false" in message
    assert "parameter wait_timeout: 'abc' is not a whole number" in message


def test_a_declaration_without_type_takes_the_type_of_the_cell_default():
    found = declared(dry_run={"description": "Only say what would change"})
    assert found["dry_run"].kind == "boolean" and found["dry_run"].description == "Only say what would change"
    assert resolve(found, {"dry_run": "false"}, text=True)["dry_run"] is False


def test_a_declared_default_equal_to_the_cells_is_accepted():
    found = declared(wait_timeout={"default": 900}, hosts={"default": []}, dry_run={"default": True})
    assert resolve(found, {}) == {"stack": "lab", "dry_run": True, "wait_timeout": 900, "hosts": []}


# Declaration problems


def test_a_declared_parameter_the_cell_does_not_set():
    assert refusal(parameters={"stak": {"type": "string"}}) == (
        "x.ipynb: opshub.parameters.stak: the parameters cell does not set stak "
        "(it sets: stack, dry_run, wait_timeout, hosts)"
    )


def test_a_default_that_differs_from_the_cells_names_both():
    assert refusal(parameters={"stack": {"default": "web"}}) == (
        'x.ipynb: opshub.parameters.stack.default is "web" but the parameters cell says stack = "lab": '
        "make them the same"
    )


def test_a_default_true_is_not_the_default_1():
    message = refusal(parameters={"wait_timeout": {"default": True}}, cell="wait_timeout = 1")
    assert "opshub.parameters.wait_timeout.default is true but the parameters cell says wait_timeout = 1" in message


def test_a_default_the_constraints_refuse():
    assert refusal(parameters={"wait_timeout": {"min": 1000}}) == (
        "x.ipynb: opshub.parameters.wait_timeout: its default does not hold: "
        "parameter wait_timeout: 900 is not at least 1000"
    )


def test_a_default_of_the_wrong_type():
    message = refusal(parameters={"wait_timeout": {"type": "string"}})
    assert (
        "opshub.parameters.wait_timeout: its default does not hold: parameter wait_timeout: 900 is not text" in message
    )


def test_a_default_outside_the_choices():
    assert (
        "opshub.parameters.stack: its default does not hold: parameter stack: 'lab' is not one of web, db"
        in refusal(parameters={"stack": {"choices": ["web", "db"]}})
    )


def test_every_parameters_default_is_checked_at_once():
    message = refusal(parameters={"dry_run": {"pattern": "x"}, "wait_timeout": {"min": 1000}})
    assert "opshub.parameters.dry_run.pattern is for string parameters, not boolean" in message
    assert "opshub.parameters.wait_timeout: its default does not hold" in message


def test_a_type_is_needed_when_the_default_says_none():
    assert refusal(parameters={"extra": {}}, cell="extra = None") == (
        "x.ipynb: opshub.parameters.extra.type is needed: its default (None) does not say which type it is"
    )


def test_min_above_max():
    assert "opshub.parameters.wait_timeout: min (3600) is above max (60)" in refusal(
        parameters={"wait_timeout": {"min": 3600, "max": 60}}
    )


def test_min_on_a_string():
    assert "opshub.parameters.stack: min and max are for integer and number parameters, not string" in refusal(
        parameters={"stack": {"min": 1}}
    )


def test_pattern_on_an_integer():
    assert "opshub.parameters.wait_timeout.pattern is for string parameters, not integer" in refusal(
        parameters={"wait_timeout": {"pattern": "[0-9]+"}}
    )


def test_an_invalid_regex():
    assert "opshub.parameters.stack.pattern is not a regular expression (unterminated character set" in refusal(
        parameters={"stack": {"pattern": "[a-z"}}
    )


def test_multiple_on_a_boolean():
    assert "opshub.parameters.dry_run.multiple: a boolean parameter cannot take several values" in refusal(
        parameters={"dry_run": {"multiple": True}}
    )


@pytest.mark.parametrize(
    ("declaration", "expected"),
    [
        ({"stack": {"choices": ["lab", 1]}}, "opshub.parameters.stack.choices[1]: 1 is not a string"),
        ({"wait_timeout": {"choices": [900, True]}}, "opshub.parameters.wait_timeout.choices[1]: true is not a"),
        ({"wait_timeout": {"choices": [900, 1.5]}}, "opshub.parameters.wait_timeout.choices[1]: 1.5 is not a"),
        ({"dry_run": {"choices": [True, "maybe"]}}, 'opshub.parameters.dry_run.choices[1]: "maybe" is not a'),
    ],
)
def test_choices_of_the_wrong_type(declaration, expected):
    assert expected in refusal(parameters=declaration)


def test_text_choices_for_an_integer_are_choices_of_the_wrong_type():
    assert 'opshub.parameters.wait_timeout.choices[0]: "60" is not a' in refusal(
        parameters={"wait_timeout": {"choices": ["60", "900"]}}
    )


def test_choices_and_choices_from_together():
    assert "opshub.parameters.stack: give choices or choices_from, not both" in refusal(
        parameters={"stack": {"choices": ["lab"], "choices_from": {"file": STACKS}}}
    )


def test_choices_from_on_a_boolean():
    assert "opshub.parameters.dry_run.choices_from is for string, integer and number parameters, not boolean" in (
        refusal(parameters={"dry_run": {"choices_from": {"file": STACKS}}})
    )


def dependent(path: list[str], **others) -> dict:
    return {"hosts": {"type": "list", "choices_from": {"file": STACKS, "path": path}}, **others}


def test_a_parent_that_is_itself():
    assert "opshub.parameters.hosts.choices_from.path: '{hosts}' makes hosts depend on itself" in refusal(
        parameters=dependent(["stacks", "{hosts}"])
    )


def test_a_parent_that_is_not_declared():
    assert "opshub.parameters.hosts.choices_from.path: '{stack}' names no declared parameter" in refusal(
        parameters=dependent(["stacks", "{stack}", "hosts"])
    )


def test_a_parent_that_is_a_list():
    declaration = {
        "stack": {"type": "list", "choices_from": {"file": STACKS, "path": ["{hosts}"]}},
        "hosts": {"type": "list"},
    }
    assert "opshub.parameters.stack.choices_from.path: '{hosts}' names a parameter that takes several values" in (
        refusal(cell='stack = ["lab"]\nhosts = []', parameters=declaration)
    )


def test_a_parent_inferred_to_be_a_list_is_refused():
    declaration = {"hosts": {}, "stack": {"choices_from": {"file": STACKS, "path": ["stacks", "{hosts}"]}}}
    assert "names a parameter that takes several values" in refusal(parameters=declaration)


def test_a_parent_that_is_itself_dependent():
    declaration = {
        "stack": {"choices_from": {"file": STACKS, "path": ["{dry_run}"]}},
        "dry_run": {"type": "string", "choices_from": {"file": STACKS, "path": ["{wait_timeout}"]}},
        "wait_timeout": {},
    }
    message = refusal(cell='stack = "lab"\ndry_run = "x"\nwait_timeout = 900', parameters=declaration)
    assert "opshub.parameters.stack.choices_from.path: '{dry_run}' names a parameter whose choices depend on" in message


def test_two_placeholders():
    declaration = dependent(["{stack}", "{dry_run}"], stack={}, dry_run={})
    assert "opshub.parameters.hosts.choices_from.path: at most one part may be a {parameter}" in refusal(
        parameters=declaration
    )


def test_a_placeholder_inside_a_key():
    assert "opshub.parameters.hosts.choices_from.path: 'stack-{stack}' is not a key or one {parameter}" in refusal(
        parameters=dependent(["stack-{stack}"], stack={})
    )


def test_declaration_problems_of_a_notebook_that_is_not_python_skip_the_cell():
    metadata = {"parameters": {"stack": {"type": "string", "min": 1}}}
    assert declaration_problems(metadata, None) == [
        "opshub.parameters.stack: min and max are for integer and number parameters, not string"
    ]
    assert declaration_problems({"parameters": None}, {}) == []


# Schema-level problems


def test_an_unknown_key_says_did_you_mean():
    assert "opshub.parameters.stack.choises is not a known key (did you mean choices?)" in refusal(
        parameters={"stack": {"choises": ["lab"]}}
    )


@pytest.mark.parametrize("kind", ["str", "int", "bool", "float", "dict", "any"])
def test_a_type_that_is_not_one_of_the_six(kind):
    assert (
        f"opshub.parameters.stack.type must be one of string, integer, number, boolean, list, secret, not {kind!r}"
    ) in refusal(parameters={"stack": {"type": kind}})


@pytest.mark.parametrize("path", ["../secrets.yaml", "inventory/../../x.yaml", "inventory/..", "/etc/passwd", ""])
def test_a_choices_from_file_outside_the_repository(path):
    message = refusal(parameters={"stack": {"choices_from": {"file": path}}})
    assert "opshub.parameters.stack.choices_from.file must be a path inside the repository" in message


def test_a_parameter_declared_as_a_word_not_an_object():
    assert "opshub.parameters.stack must be an object, not 'string'" in refusal(parameters={"stack": "string"})


def test_empty_choices_are_refused():
    assert "opshub.parameters.stack.choices" in refusal(parameters={"stack": {"choices": []}})


def test_a_parameter_name_that_is_no_variable_name():
    assert "must be a variable name" in refusal(parameters={"2stack": {"type": "string"}})


# Schedules and alerts


def test_a_schedule_setting_a_non_declared_parameter_is_refused_when_read():
    message = refusal(
        PATCHING_CELL,
        INVENTORY_FILES,
        parameters=PATCHING,
        schedules=[{"cron": "0 3 * * 1", "parameters": {"ssh_options": "-o ProxyCommand=x"}}],
    )
    assert "opshub.schedules[0].parameters: parameter ssh_options cannot be set: it keeps its default" in message


def test_a_schedule_setting_an_undeclared_name_is_refused():
    message = refusal(schedules=[{"cron": "0 3 * * 1", "parameters": {"stak": "web"}}])
    assert "opshub.schedules[0].parameters: parameter stak is not a parameter of this runbook" in message


def test_a_schedule_with_a_wrong_value_is_refused_when_read():
    message = refusal(schedules=[{"cron": "0 3 * * 1", "parameters": {"wait_timeout": "abc"}}])
    assert message == "x.ipynb: opshub.schedules[0].parameters: parameter wait_timeout: 'abc' is not a whole number"


def test_a_schedule_with_a_value_not_in_the_inventory_is_refused_when_read():
    message = refusal(
        PATCHING_CELL,
        INVENTORY_FILES,
        parameters=PATCHING,
        schedules=[{"cron": "0 3 * * 1", "parameters": {"stack": "prod"}}],
    )
    assert f"opshub.schedules[0].parameters: parameter stack: 'prod' is not one of lab, web, db (from {STACKS})" in (
        message
    )


def test_a_schedule_whose_choices_cannot_be_read_is_checked_when_it_is_queued():
    schedules = [{"cron": "0 3 * * 1", "parameters": {"stack": "prod"}}]
    assert runbook_metadata(notebook(PATCHING_CELL, parameters=PATCHING, schedules=schedules), "x.ipynb")


def test_a_schedule_with_typed_values_is_accepted():
    schedules = [{"cron": "0 3 * * 1", "parameters": {"stack": "web", "dry_run": False, "hosts": ["web01"]}}]
    metadata = runbook_metadata(
        notebook(PATCHING_CELL, parameters=PATCHING, schedules=schedules), "x.ipynb", INVENTORY_FILES
    )
    assert metadata["schedules"] == schedules


def test_a_schedule_value_that_quotes_the_unreadable_message_is_still_refused():
    message = refusal(
        parameters={"stack": {"choices": ["lab", "web"]}},
        schedules=[{"cron": "0 3 * * 1", "parameters": {"stack": "cannot be read here"}}],
    )
    assert "opshub.schedules[0].parameters: parameter stack" in message


def test_an_alert_template_in_a_list_is_accepted_when_read():
    alerts = [{"alertname": "HostDown", "parameters": {"hosts": ["{instance}"], "dry_run": True}}]
    metadata = runbook_metadata(notebook(PATCHING_CELL, parameters=PATCHING, alerts=alerts), "x.ipynb")
    assert metadata["alerts"] == alerts


def test_an_alert_template_for_a_non_declared_parameter_is_refused():
    alerts = [{"alertname": "HostDown", "parameters": {"ssh_options": "-o ProxyJump={instance}"}}]
    message = refusal(PATCHING_CELL, parameters=PATCHING, alerts=alerts)
    assert message == (
        "x.ipynb: opshub.alerts[0].parameters: parameter ssh_options cannot be set by an alert (it is not declared)"
    )


def test_an_alert_template_for_a_name_the_cell_lacks_is_refused_without_a_declaration():
    alerts = [{"alertname": "HostDown", "parameters": {"host": "{instance}"}}]
    assert "opshub.alerts[0].parameters: parameter host cannot be set by an alert" in refusal(alerts=alerts)


def test_an_alert_constant_is_checked_when_read():
    alerts = [{"alertname": "HostDown", "parameters": {"dry_run": "maybe"}}]
    assert "opshub.alerts[0].parameters: parameter dry_run: 'maybe' is not true or false" in refusal(alerts=alerts)


def test_an_alert_fills_list_items_and_the_result_resolves():
    alerts = [{"alertname": "HostDown", "parameters": {"hosts": ["{instance}", "web02"], "stack": "web"}}]
    metadata = runbook_metadata(notebook(PATCHING_CELL, parameters=PATCHING, alerts=alerts), "x.ipynb")
    (rule,) = alert_rules_of("x.ipynb", metadata)
    given = rule.parameters_for({"alertname": "HostDown", "instance": "web01"})
    assert given == {"hosts": ["web01", "web02"], "stack": "web"}
    assert resolve(patching(), given, INVENTORY_FILES, text=True)["hosts"] == ["web01", "web02"]


def test_an_alert_filling_in_a_host_outside_the_stack_is_refused_when_it_fires():
    alerts = [{"alertname": "HostDown", "parameters": {"hosts": ["{instance}"], "stack": "web"}}]
    metadata = runbook_metadata(notebook(PATCHING_CELL, parameters=PATCHING, alerts=alerts), "x.ipynb")
    given = alert_rules_of("x.ipynb", metadata)[0].parameters_for({"instance": "evil; id"})
    assert "parameter hosts: 'evil; id' is not one of web01, web02" in refused(patching(), given, INVENTORY_FILES, True)


# Forms and --help


def test_form_fields_give_choices_and_choices_by_parent_value():
    fields = {field["name"]: field for field in form_fields(patching(), INVENTORY_FILES)}
    assert fields["stack"]["choices"] == ["lab", "web", "db"]
    assert fields["hosts"]["choices_by"] == {"lab": ["localhost"], "web": ["web01", "web02"], "db": ["db01"]}
    assert fields["hosts"]["depends_on"] == ["stack"]
    assert fields["dry_run"]["type"] == "boolean" and fields["dry_run"]["default"] is True
    assert fields["wait_timeout"]["min"] == 60 and fields["wait_timeout"]["max"] == 3600
    assert fields["ssh_options"]["settable"] is False
    assert list(fields) == ["stack", "dry_run", "wait_timeout", "hosts", "ssh_options"]


def test_form_fields_follow_a_parent_with_fixed_choices():
    declaration = {
        "stack": {"choices": ["lab", "web", "prod"]},
        "hosts": {"type": "list", "choices_from": {"file": STACKS, "path": ["stacks", "{stack}", "hosts"]}},
    }
    fields = {field["name"]: field for field in form_fields(parameters(parameters=declaration), INVENTORY_FILES)}
    assert fields["hosts"]["choices_by"] == {"lab": ["localhost"], "web": ["web01", "web02"], "prod": []}


def test_form_fields_say_when_choices_cannot_be_read():
    fields = {field["name"]: field for field in form_fields(patching(), files({}))}
    assert fields["stack"]["problem"].startswith(f"parameter stack: cannot read its choices from {STACKS}")
    assert "choices" not in fields["stack"]


def test_help_lists_each_parameter_with_type_default_description_and_what_is_allowed():
    help_text = describe_for_help("patch.ipynb", form_fields(patching(), INVENTORY_FILES))
    assert help_text.splitlines() == [
        "patch.ipynb parameters (set them with -p NAME VALUE):",
        '  stack (string; default "lab"): The stack to patch',
        "      one of lab, web, db",
        "  dry_run (boolean; default True)",
        "  wait_timeout (integer; default 900)",
        "      min 60; max 3600",
        "  hosts (list of string; default []): Hosts of the stack (none: all of them)",
        f"      from {STACKS} stacks.{{stack}}.hosts",
        '  ssh_options (string, fixed: it keeps its default; default "-o BatchMode=yes")',
    ]


def test_help_shows_a_pattern_and_a_runbook_without_parameters():
    help_text = describe_for_help("x.ipynb", form_fields(declared(stack={"pattern": "[a-z]+"}), None))
    assert "      matching [a-z]+" in help_text.splitlines()
    assert describe_for_help("x.ipynb", []) == "x.ipynb has no parameters (it has no papermill `parameters` cell)."


def test_check_value_takes_choices_read_from_the_file():
    stack = patching()["stack"]
    assert check_value(stack, "web", ["lab", "web"]) == "web"
    with pytest.raises(ParameterError, match=f"parameter stack: 'prod' is not one of lab, web \\(from {STACKS}\\)"):
        check_value(stack, "prod", ["lab", "web"])


def test_a_secret_names_one_of_the_runbooks_credentials_when_it_asks_for_some():
    cell = 'password = "DB_PASSWORD"'
    asking = parameters(cell, parameters={"password": {"type": "secret"}}, credentials=["DB_PASSWORD", "DB_REPLICA"])
    assert resolve(asking, {"password": "DB_REPLICA"}) == {"password": "DB_REPLICA"}
    message = refused(asking, {"password": "SSH_KEY"})
    assert message == "parameter password: 'SSH_KEY' is not one of DB_PASSWORD, DB_REPLICA"
    anything = parameters(cell, parameters={"password": {"type": "secret"}})
    assert resolve(anything, {"password": "SSH_KEY"}) == {"password": "SSH_KEY"}
