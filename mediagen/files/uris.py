"""The three forms of parameter value that name an input file (`mediagen.files.inputs`), kept
free of imports so request validation can use them."""

from __future__ import annotations

import re

FILE_URI = "mediagen://files/"
# `data:<media type>[;param...];base64,<payload>`: the only data: URIs taken as files. The same
# pattern in ECMAScript terms goes into the OpenAPI schema.
DATA_URI_PATTERN = (
    r"^data:[A-Za-z0-9!#$&^_.+/-]*(;[A-Za-z0-9!#$&^_.+=-]*)*;base64,[A-Za-z0-9+/]*={0,2}$"
)
DATA_URI = re.compile(DATA_URI_PATTERN)
_HTTPS = re.compile(r"^https://[^\s/?#@]+([/?#]\S*)?$")


def names_file(value: object) -> bool:
    """Whether a parameter's value names an input file."""
    return isinstance(value, str) and (
        value.startswith(FILE_URI)
        or (value.startswith("https://") and _HTTPS.match(value) is not None)
        or (value.startswith("data:") and DATA_URI.match(value) is not None)
    )
