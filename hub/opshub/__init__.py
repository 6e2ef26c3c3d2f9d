"""opshub: a JupyterHub distribution for infrastructure teams."""

import sys

__version__ = "0.1.0"

# jsonschema imports rfc3987_syntax when it is installed (jupyter_events pulls it in), only to check the
# `iri` formats, which no opshub schema uses; importing it compiles lark grammars for about 1.6 s, which
# every `opshub` command (`opshub run` first) paid. Where jsonschema is already loaded, this changes nothing.
sys.modules.setdefault("rfc3987_syntax", None)
