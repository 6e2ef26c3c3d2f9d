"""Masking secret environment values in texts, parameters and executed notebooks."""

from __future__ import annotations

import copy
import json
import sys

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from opshub.runbooks.masking import (
    DEFAULT_PATTERNS,
    MASK,
    is_secret_name,
    kernel_environment,
    mask_notebook,
    mask_obj,
    mask_text,
    parse_environment_dump,
    secret_values,
)
from papermill.parameterize import parameterize_notebook

from tests.helpers import run_async

TOKEN = "ghp_s3cr3tTOKENvalue"
PASSWORD = "hunter2-correct-horse"


# Which variables are secret


@pytest.mark.parametrize(
    "name", ["GITHUB_TOKEN", "github_token", "DB_PASSWORD", "Db_Password", "APP_SECRET", "AWS_SECRET_ACCESS_KEY"]
)
def test_names_matching_the_default_patterns_are_secret(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["TOKEN", "PATH", "HOME", "TOKENIZER", "PASSWORD_HINT_FILE", "KEYBOARD", "MY_KEYS"])
def test_other_names_are_not_secret(name):
    assert not is_secret_name(name)


def test_listed_names_are_secret_whatever_their_case():
    assert is_secret_name("vault_creds", names=["VAULT_CREDS"])
    assert not is_secret_name("VAULT_CREDS_FILE", names=["VAULT_CREDS"])


def test_patterns_can_be_replaced():
    assert is_secret_name("OPS_PIN", patterns=["*_PIN"])
    assert not is_secret_name("GITHUB_TOKEN", patterns=["*_PIN"])
    assert not is_secret_name("GITHUB_TOKEN", patterns=[])
    assert DEFAULT_PATTERNS == ("*_TOKEN", "*_PASSWORD", "*_SECRET", "*_KEY")


def test_secret_values_longest_first_without_short_empty_or_duplicate_values():
    environ = {
        "GITHUB_TOKEN": TOKEN,
        "DB_PASSWORD": PASSWORD,
        "BACKUP_PASSWORD": PASSWORD,  # the same value twice
        "SHORT_SECRET": "abc",  # too short: would mask innocent text
        "EMPTY_KEY": "",
        "SPACES_KEY": "   ",
        "PADDED_TOKEN": "  padded-value\n",
        "VAULT_CREDS": "listed-by-name",
        "HOME": "/root/not-a-secret",
    }
    assert secret_values(environ, names=["VAULT_CREDS"]) == [PASSWORD, TOKEN, "listed-by-name", "padded-value"]


def test_min_length_is_configurable():
    environ = {"PIN_SECRET": "1234", "LONG_SECRET": "12345678"}
    assert secret_values(environ) == ["12345678", "1234"]
    assert secret_values(environ, min_length=5) == ["12345678"]


# Texts


def test_mask_text_replaces_every_whole_occurrence():
    text = f"token={TOKEN}; again {TOKEN}, password {PASSWORD}."
    assert mask_text(text, [PASSWORD, TOKEN]) == f"token={MASK}; again {MASK}, password {MASK}."


def test_mask_text_leaves_text_without_secrets_alone():
    assert mask_text("nothing to see", [TOKEN]) == "nothing to see"
    assert mask_text("", [TOKEN]) == ""
    assert mask_text(f"no secrets given {TOKEN}", []) == f"no secrets given {TOKEN}"


def test_overlapping_secrets_are_masked_fully():
    # "abcdef" and "defghi" overlap in "abcdefghi": masking one first must not leave the other's tail.
    assert mask_text("x abcdefghi y", ["abcdef", "defghi"]) == f"x {MASK} y"
    # A secret containing another: the longer one is masked whole, not as prefix + leftover.
    assert mask_text("pw=abcd1234", ["abcd", "abcd1234"]) == f"pw={MASK}"
    assert mask_text("pw=abcd12", ["abcd", "abcd1234"]) == f"pw={MASK}12"


@pytest.mark.parametrize("secret", ["a.b*c+d?", "p@$$(w0rd)[x]{2}^|\\d", "^start$", "..."])
def test_secrets_with_regex_special_characters_are_matched_literally(secret):
    assert mask_text(f"[{secret}]", [secret]) == f"[{MASK}]"
    assert mask_text("something else entirely", [secret]) == "something else entirely"


def test_secrets_escaped_in_html_json_python_and_urls_are_masked():
    secret = 'p<a>&"s\\s'
    assert mask_text("<td>p&lt;a&gt;&amp;&quot;s\\s</td>", [secret]) == f"<td>{MASK}</td>"
    assert mask_text(json.dumps({"password": secret}), [secret]) == f'{{"password": "{MASK}"}}'
    assert mask_text(f"password = {secret!r}", [secret]) == f"password = '{MASK}'"
    assert mask_text("https://ops:p%3Ca%3E%26%22s%5Cs@host/", [secret]) == f"https://ops:{MASK}@host/"


def test_a_multi_line_secret_is_masked():
    key = "-----BEGIN KEY-----\nMIIEabc\nxyz==\n-----END KEY-----"
    assert mask_text(f"key:\n{key}\ndone", [key]) == f"key:\n{MASK}\ndone"


# Parameters and other objects


def test_mask_obj_masks_strings_at_any_depth_and_keeps_other_values():
    params = {
        "stack": "web",
        "api_token": TOKEN,
        "hosts": ["web1", f"user:{PASSWORD}@web2"],
        "nested": {"deeper": ({"auth": f"Bearer {TOKEN}"}, 42)},
        TOKEN: "a secret as a key",
        "count": 3,
        "ratio": 0.5,
        "dry_run": True,
        "nothing": None,
    }
    original = copy.deepcopy(params)

    masked = mask_obj(params, [TOKEN, PASSWORD])

    assert masked == {
        "stack": "web",
        "api_token": MASK,
        "hosts": ["web1", f"user:{MASK}@web2"],
        "nested": {"deeper": ({"auth": f"Bearer {MASK}"}, 42)},
        MASK: "a secret as a key",
        "count": 3,
        "ratio": 0.5,
        "dry_run": True,
        "nothing": None,
    }
    assert params == original  # the input is untouched
    assert mask_obj(f"just {TOKEN}", [TOKEN]) == f"just {MASK}"


# Notebooks


def executed_notebook():
    """A notebook as papermill leaves it: injected parameters, metadata and every kind of output."""
    nb = new_notebook(
        cells=[
            new_markdown_cell(f"Connect with `{TOKEN}`"),
            new_code_cell("token = 'default'", metadata={"tags": ["parameters"]}),
            new_code_cell(
                "print(token)",
                execution_count=1,
                outputs=[
                    new_output("stream", name="stdout", text=f"using {TOKEN}\n"),
                    new_output(
                        "execute_result",
                        execution_count=1,
                        data={
                            "text/plain": f"'{TOKEN}'",
                            "text/html": f"<b>{PASSWORD}</b>",
                            "application/json": {"token": TOKEN},
                            "text/markdown": f"*{PASSWORD}*",
                        },
                    ),
                    new_output("display_data", data={"image/svg+xml": f"<svg><text>{TOKEN}</text></svg>"}),
                ],
            ),
            new_code_cell(
                "login()",
                execution_count=2,
                outputs=[
                    new_output(
                        "error",
                        ename="AuthError",
                        evalue=f"bad password {PASSWORD}",
                        traceback=["Traceback (most recent call last)", f"AuthError: bad password {PASSWORD}"],
                    )
                ],
            ),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    # What papermill's notebook loader adds before parameterising.
    nb.metadata["papermill"] = {}
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    return parameterize_notebook(nb, {"token": TOKEN, "password": PASSWORD, "stack": "web"})


def test_the_executed_notebook_really_holds_the_secrets_before_masking():
    nb = executed_notebook()
    assert "injected-parameters" in nb.cells[2].metadata.tags
    text = nbformat.writes(nb)
    assert TOKEN in text and PASSWORD in text


def test_mask_notebook_masks_sources_outputs_injected_parameters_and_metadata():
    nb = executed_notebook()

    masked = mask_notebook(nb, [PASSWORD, TOKEN])

    text = nbformat.writes(masked)
    assert TOKEN not in text
    assert PASSWORD not in text
    nbformat.validate(masked)
    injected = masked.cells[2]
    assert "injected-parameters" in injected.metadata.tags
    assert f'token = "{MASK}"' in injected.source
    assert 'stack = "web"' in injected.source
    assert masked.metadata.papermill.parameters == {"token": MASK, "password": MASK, "stack": "web"}
    assert masked.cells[0].source == f"Connect with `{MASK}`"
    stream, result, svg = masked.cells[3].outputs
    assert stream.text == f"using {MASK}\n"
    assert result.data["text/plain"] == f"'{MASK}'"
    assert result.data["text/html"] == f"<b>{MASK}</b>"
    assert result.data["application/json"] == {"token": MASK}
    assert result.data["text/markdown"] == f"*{MASK}*"
    assert svg.data["image/svg+xml"] == f"<svg><text>{MASK}</text></svg>"
    error = masked.cells[4].outputs[0]
    assert error.evalue == f"bad password {MASK}"
    assert error.traceback == ["Traceback (most recent call last)", f"AuthError: bad password {MASK}"]
    assert error.ename == "AuthError"


def test_mask_notebook_does_not_change_its_input():
    nb = executed_notebook()
    before = nbformat.writes(nb)
    mask_notebook(nb, [PASSWORD, TOKEN])
    assert nbformat.writes(nb) == before


def test_mask_notebook_keeps_what_has_no_secret():
    nb = executed_notebook()
    masked = mask_notebook(nb, ["not-in-this-notebook"])
    assert masked == nb
    assert isinstance(masked, nbformat.NotebookNode)
    assert masked.cells[3].outputs[0].text == f"using {TOKEN}\n"  # attribute access still works


def test_mask_notebook_leaves_base64_images_intact():
    # A short secret can occur by chance inside base64 data; masking it would only corrupt the image.
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    secret = "AAAABJRU"
    nb = new_notebook(
        cells=[
            new_code_cell(
                "plot()",
                outputs=[new_output("display_data", data={"image/png": png, "text/plain": f"<Figure {secret}>"})],
            )
        ]
    )
    masked = mask_notebook(nb, [secret])
    assert masked.cells[0].outputs[0].data["image/png"] == png
    assert masked.cells[0].outputs[0].data["text/plain"] == f"<Figure {MASK}>"


def test_mask_notebook_handles_sources_stored_as_lists_of_lines():
    nb = {
        "cells": [{"cell_type": "code", "metadata": {}, "source": ["x = 1\n", f"token = '{TOKEN}'\n"], "outputs": []}],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    assert mask_notebook(nb, [TOKEN])["cells"][0]["source"] == ["x = 1\n", f"token = '{MASK}'\n"]


def test_secret_values_feed_mask_notebook():
    environ = {"GITHUB_TOKEN": TOKEN, "DB_PASSWORD": PASSWORD, "HOME": "/root"}
    masked = mask_notebook(executed_notebook(), secret_values(environ))
    text = nbformat.writes(masked)
    assert TOKEN not in text and PASSWORD not in text
    assert MASK in text


# The kernel's own environment: real kernels, asked as the recorder and `opshub run` ask them


@pytest.fixture
def bash_kernelspec(tmp_path, monkeypatch):
    """bash_kernel's kernelspec, found through JUPYTER_PATH (the ops image installs it system-wide)."""
    spec = tmp_path / "jupyter" / "kernels" / "bash"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "bash_kernel", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Bash", "language": "bash"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))


def in_a_kernel(kernel_name: str, code: str) -> tuple[dict | None, list[dict], int, int]:
    """Run `code` in a fresh kernel, then ask its environment. Returns (environment, the IOPub messages
    the person's client got for the question, execution count before and after)."""

    async def scenario():
        km = AsyncKernelManager(kernel_name=kernel_name)
        await km.start_kernel()
        client = km.client()  # the person's client (JupyterLab), with the manager's own session
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            before = (await client.execute_interactive(code, timeout=60))["content"]["execution_count"]
            environment = await kernel_environment(km, timeout=60)
            seen = []
            while True:  # what the person's client sees of the question on IOPub
                try:
                    seen.append(await client.get_iopub_msg(timeout=1))
                except Exception:
                    break
            after = (await client.execute_interactive("true" if kernel_name == "bash" else "1", timeout=60))["content"]
            return environment, seen, before, after["execution_count"]
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    return run_async(scenario())


def test_a_python_kernel_tells_the_secrets_its_cells_set_and_shows_nothing_of_it():
    code = "import os\nos.environ['DB_PASSWORD'] = 'pw-in-the-kernel'\n%env API_TOKEN=tok-from-percent-env"
    environment, seen, before, after = in_a_kernel("python3", code)
    assert environment["DB_PASSWORD"] == "pw-in-the-kernel" and environment["API_TOKEN"] == "tok-from-percent-env"
    assert {"pw-in-the-kernel", "tok-from-percent-env"} <= set(secret_values(environment))
    assert after == before + 1, "the question took no execution count"
    kinds = {message["header"]["msg_type"] for message in seen}
    assert kinds <= {"status"}, f"the person's notebook got {kinds} from the question"


def test_a_bash_kernel_tells_exported_and_plain_shell_variables(bash_kernelspec):
    code = "export API_TOKEN=tok-exported-in-bash\nDB_PASSWORD='plain shell\nvariable'\nn=keep-me"
    environment, seen, before, after = in_a_kernel("bash", code)
    assert environment["API_TOKEN"] == "tok-exported-in-bash"
    assert environment["DB_PASSWORD"] == "plain shell\nvariable"
    assert environment["n"] == "keep-me", "the question's loop variable did not clobber the person's"
    assert after == before + 1
    assert {message["header"]["msg_type"] for message in seen} <= {"status"}


def test_a_kernel_of_another_language_is_not_asked():
    class Spec:
        language = "R"

    class Manager:
        kernel_spec = Spec()

    assert run_async(kernel_environment(Manager())) is None


def test_parse_environment_dump():
    assert parse_environment_dump(b"A\0one\0B\0two\nlines\0") == {"A": "one", "B": "two\nlines"}
    assert parse_environment_dump(b"A\0one\0B") == {"A": "one"}
    assert parse_environment_dump(b"") == {}
