"""Keep the values of secret environment variables out of stored outputs, parameters and logs.

    secrets = secret_values(os.environ, names=["VAULT_ADDR_CREDS"])
    stored = mask_notebook(executed_notebook, secrets)
    params = mask_obj(parameters, secrets)
    log.info("%s", mask_text(message, secrets))

Every whole occurrence of a secret value is replaced by MASK. A secret is also found where it was
escaped on its way into the text: HTML (pandas tables), JSON, a Python string literal (and the
parameters cell papermill injects) and URL encoding.

The secrets are those of the environment that executed the code, which is the kernel's, not only the
server's: `os.environ["DB_PASSWORD"] = ...` or `%env` in Python, `export API_TOKEN=...` in bash.
`kernel_environment(km)` asks a running kernel for it (see there why this way).
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import functools
import html
import json
import os
import queue
import shlex
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

MASK = "[masked]"
SECRET_NAMES_ENV = "OPSHUB_SECRET_NAMES"  # more secret variable names, comma-separated (history.secret_names)
DEFAULT_PATTERNS = ("*_TOKEN", "*_PASSWORD", "*_SECRET", "*_KEY")

# Base64-encoded binary outputs: a secret never appears in them as text, and replacing a chance match
# of a short secret inside the base64 would only corrupt the image.
BINARY_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"})

T = TypeVar("T")


def is_secret_name(name: str, names: Iterable[str] = (), patterns: Iterable[str] = DEFAULT_PATTERNS) -> bool:
    """Whether the environment variable `name` holds a secret: listed in `names` or matching a pattern.

    Both comparisons ignore case (`*_TOKEN` matches `github_token`).
    """
    upper = name.upper()
    return any(upper == listed.upper() for listed in names) or any(
        fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in patterns
    )


def secret_values(
    environ: Mapping[str, str],
    names: Iterable[str] = (),
    patterns: Iterable[str] = DEFAULT_PATTERNS,
    min_length: int = 4,
) -> list[str]:
    """The values of the secret variables in `environ`, longest first, without duplicates.

    Values shorter than `min_length` (after stripping surrounding whitespace) are left out: masking
    "1" or "yes" everywhere would hide innocent text and tell a reader what the secret is.
    """
    names, patterns = list(names), list(patterns)
    values = {
        value.strip()
        for name, value in environ.items()
        if is_secret_name(name, names, patterns) and len(value.strip()) >= min_length
    }
    return sorted(values, key=lambda value: (-len(value), value))


def secrets_for(environ: Mapping[str, str], parameters: Mapping[str, Any] | None = None) -> list[str]:
    """The values to mask: secret environment variables ($OPSHUB_SECRET_NAMES, comma-separated, plus the
    default patterns) and the values of parameters whose names look like secrets (`-p api_token ...`)."""
    names = [name.strip() for name in environ.get(SECRET_NAMES_ENV, "").split(",") if name.strip()]
    secrets = set(secret_values(environ, names))
    for name, value in (parameters or {}).items():
        if is_secret_name(name, names) and isinstance(value, str) and len(value.strip()) >= 4:
            secrets.add(value.strip())
    return sorted(secrets, key=lambda value: (-len(value), value))


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of a secret (plain or escaped) replaced by MASK.

    Where secrets overlap, the whole overlapping stretch becomes one MASK, so no part of either shows.
    """
    if not text:
        return text
    forms = _searched_forms(tuple(secrets))
    spans = []
    for form in forms:
        start = text.find(form)
        while start != -1:
            spans.append((start, start + len(form)))
            start = text.find(form, start + 1)
    if not spans:
        return text
    pieces, position = [], 0
    for start, end in _merge(spans):
        pieces += [text[position:start], MASK]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def mask_obj(obj: T, secrets: Iterable[str]) -> T:
    """A copy of `obj` (dicts, lists, tuples and strings, nested) with secrets masked in every string.

    Dict keys are masked too. Numbers and other values are kept as they are.
    """
    return _mask_in_place(copy.deepcopy(obj), tuple(secrets))


def mask_notebook(nb: T, secrets: Iterable[str]) -> T:
    """A copy of an nbformat notebook with secrets masked wherever text is stored.

    That is cell sources (the `injected-parameters` cell papermill adds included), cell and notebook
    metadata (papermill keeps the parameters in `metadata.papermill.parameters`), outputs (stream text,
    every text mime type in `data` such as text/plain and text/html, error `ename`, `evalue` and
    `traceback`) and text attachments. The input is not changed.
    """
    secrets = tuple(secrets)
    masked = copy.deepcopy(nb)
    masked["metadata"] = _mask_in_place(masked.get("metadata", {}), secrets)
    for cell in masked.get("cells", []):
        for key in ("source", "metadata"):
            if key in cell:
                cell[key] = _mask_in_place(cell[key], secrets)
        for bundle in cell.get("attachments", {}).values():
            _mask_mime_bundle(bundle, secrets)
        for output in cell.get("outputs", []):
            for key in list(output):
                if key == "data":
                    _mask_mime_bundle(output["data"], secrets)
                elif key != "output_type":
                    output[key] = _mask_in_place(output[key], secrets)
    return masked


def _mask_mime_bundle(bundle: dict[str, Any], secrets: tuple[str, ...]) -> None:
    for mime_type in list(bundle):
        if mime_type not in BINARY_MIME_TYPES:
            bundle[mime_type] = _mask_in_place(bundle[mime_type], secrets)


def _mask_in_place(value: Any, secrets: tuple[str, ...]) -> Any:
    """Mask the strings inside `value`, changing dicts and lists in place (so their types survive)."""
    if isinstance(value, str):
        return mask_text(value, secrets)
    if isinstance(value, dict):
        items = [(_mask_in_place(key, secrets), _mask_in_place(item, secrets)) for key, item in value.items()]
        value.clear()
        value.update(items)
        return value
    if isinstance(value, list):
        value[:] = [_mask_in_place(item, secrets) for item in value]
        return value
    if isinstance(value, tuple):
        return tuple(_mask_in_place(item, secrets) for item in value)
    return value


@functools.lru_cache(maxsize=32)
def _searched_forms(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each secret as it may appear in text: as is, and escaped for HTML, JSON, Python and URLs."""
    forms = set()
    for secret in secrets:
        if not secret:
            continue
        forms.update(
            {
                secret,
                html.escape(secret, quote=False),
                html.escape(secret, quote=True),
                json.dumps(secret)[1:-1],
                repr(secret)[1:-1],
                # papermill's parameters cell: unicode_escape, then \" for quotes
                secret.encode("unicode_escape").decode().replace('"', '\\"'),
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret, safe=""),
            }
        )
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted spans with overlapping ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


# The kernel's own environment

# Code that makes a kernel write its variables to the file {path}, as NAME\0VALUE\0 pairs, leaving
# nothing behind in the user's namespace. Python: os.environ (which `%env` and os.environ[...] = change).
# Bash: every shell variable, exported or not (`API_TOKEN=x; curl -H "$API_TOKEN"` never exports it),
# read in a function so that its loop variable stays local; it cannot fail, so bash_kernel sends no error.
ENVIRONMENT_DUMPS = {
    "python": (
        "__import__('pathlib').Path({path}).write_bytes("
        "b''.join(k + b'\\0' + v + b'\\0' for k, v in __import__('os').environb.items()))"
    ),
    "bash": (
        "__opshub_env() {{ local __opshub_n; for __opshub_n in $(compgen -v); do"
        ' printf \'%s\\0%s\\0\' "$__opshub_n" "${{!__opshub_n-}}"; done; }};'
        " __opshub_env > {path} 2>/dev/null || true; unset -f __opshub_env"
    ),
}
QUOTE = {"python": repr, "bash": shlex.quote}
# A silent request queued behind cells that then fail is aborted by the kernel (stop_on_error): ask again.
ABORTED_RETRIES = 3


async def kernel_environment(km, timeout: float | None = None) -> dict[str, str] | None:
    """The variables of the kernel that `km` (a jupyter_client kernel manager) manages, as they are now;
    None when its language has no ENVIRONMENT_DUMPS entry or it did not answer within `timeout` seconds.

    Why this way: the kernel is the process that ran the code, and only it knows its environment now.
    /proc/<pid>/environ holds the environment the process started with, and in bash the variables live
    in a child `bash` process, not in the kernel's. Reading `NAME=value` patterns in the outputs would
    miss `echo $API_TOKEN` after an export two cells earlier. So the kernel is asked, with a silent
    execute request on a shell connection of our own: silent requests get no execution count, are kept
    out of the history and broadcast no `execute_input`, so the person's notebook shows nothing of it
    (their frontend ignores the busy/idle status of a request it did not send). The answer goes through
    a private temporary file (mode 0600, created here, read and removed here) rather than the reply,
    because bash_kernel sends nothing back for silent requests, and rather than output, which the
    person's frontend would receive.
    """
    language = (km.kernel_spec.language or "").lower() if km.kernel_spec else ""
    template = ENVIRONMENT_DUMPS.get(language)
    if template is None:
        return None
    deadline = None if timeout is None else time.monotonic() + timeout
    fd, path = tempfile.mkstemp(prefix="opshub-env-")
    os.close(fd)
    # A session of our own: a shared one would give our shell socket the same ZMQ identity as the
    # manager's other clients, and the kernel would send their replies to us.
    session = km.session.clone()
    session.session = str(uuid.uuid4())
    client = km.client(session=session)
    client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        code = template.format(path=QUOTE[language](path))
        for _ in range(ABORTED_RETRIES):
            msg_id = client.execute(code, silent=True, store_history=False, allow_stdin=False, stop_on_error=False)
            reply = await _shell_reply(client, msg_id, deadline)
            if reply is None:
                return None
            if reply["content"].get("status") != "aborted":
                break
        return parse_environment_dump(Path(path).read_bytes())
    finally:
        client.stop_channels()
        Path(path).unlink(missing_ok=True)


async def _shell_reply(client, msg_id: str, deadline: float | None) -> dict | None:
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        try:
            reply = await client.get_shell_msg(timeout=left)
        except (queue.Empty, asyncio.TimeoutError):
            return None
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            return reply


def parse_environment_dump(data: bytes) -> dict[str, str]:
    """NAME\0VALUE\0 pairs (what ENVIRONMENT_DUMPS write) as a dict; an incomplete last pair is left out."""
    parts = data.decode("utf-8", errors="replace").split("\0")
    return dict(zip(parts[0:-1:2], parts[1::2], strict=False))
