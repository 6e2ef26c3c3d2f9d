"""Keep the values of secret environment variables out of stored outputs, parameters and logs.

    secrets = secret_values(os.environ, names=["VAULT_ADDR_CREDS"])
    stored = mask_notebook(executed_notebook, secrets)
    params = mask_obj(parameters, secrets)
    log.info("%s", mask_text(message, secrets))

Every whole occurrence of a secret value is replaced by MASK. A secret is also found where it was
escaped on its way into the text: HTML (pandas tables), JSON, a Python string literal (and the
parameters cell papermill injects) and URL encoding.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import html
import json
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

MASK = "[masked]"
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
