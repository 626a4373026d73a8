"""The three forms of parameter value that name an input file (`mediagen.files.inputs`), and
what reads as a URL at all, kept free of imports so request validation can use them.

A value is *URL-like* when, read the way URL parsers read it (spaces and control characters
around it, and tabs and line breaks anywhere, are ignored), it begins with a scheme and a colon
(`[A-Za-z][A-Za-z0-9+.-]*:`) followed by `//` (or `\\\\`, which browsers read as `//`), or its
scheme is one that is fetched or run without that: `http`, `https`, `ftp`, `ws`, `wss`, `file`
(the special schemes of the URL standard), `data`, `javascript`, `vbscript`. Text that merely
contains a URL (`a photo like https://...`), or a colon elsewhere (`16:9`, `style: anime`), is
not: only a value that *is* a URL can make a model's server fetch something.
"""

from __future__ import annotations

import re

FILE_URI = "mediagen://files/"
# `data:<media type>[;param...];base64,<payload>`: the only data: URIs taken as files. The same
# pattern in ECMAScript terms goes into the OpenAPI schema.
DATA_URI_PATTERN = (
    r"^data:[A-Za-z0-9!#$&^_.+/-]*(;[A-Za-z0-9!#$&^_.+=-]*)*;base64,[A-Za-z0-9+/]*={0,2}$"
)
DATA_URI = re.compile(DATA_URI_PATTERN)
# An https URL we fetch: a host (no user information, no backslash), then printable text.
_HTTPS = re.compile(r"^https://[^\s/?#@\\]+([/?#]\S*)?$")
_HTTPS_ANY_CASE = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]://")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):([/\\]{2})?")
_BARE_SCHEMES = frozenset(
    {"http", "https", "ftp", "ws", "wss", "file", "data", "javascript", "vbscript"}
)
_AROUND = "".join(chr(c) for c in range(0x21))  # C0 controls and space, as parsers strip them
_INSIDE = str.maketrans("", "", "\t\n\r")


def url_scheme(value: object) -> str | None:
    """The scheme (lower case) of a value that reads as a URL, else None (any other text, and
    every value that is not a string)."""
    if not isinstance(value, str) or ":" not in value:
        return None
    match = _SCHEME.match(value.strip(_AROUND).translate(_INSIDE))
    if match is None:
        return None
    scheme = match.group(1).lower()
    return scheme if match.group(2) or scheme in _BARE_SCHEMES else None


def names_file(value: object) -> bool:
    """Whether a parameter's value names an input file."""
    return isinstance(value, str) and (
        value.startswith(FILE_URI)
        or (value.startswith("https://") and _HTTPS.match(value) is not None)
        or (value.startswith("data:") and DATA_URI.match(value) is not None)
    )


def has_userinfo(value: str) -> bool:
    """Whether a URL-like value carries user information (`user@host`) before its host."""
    rest = value.strip(_AROUND).translate(_INSIDE).partition(":")[2].lstrip("/\\")
    return "@" in re.split(r"[/?#\\]", rest, maxsplit=1)[0]


def https_fetched(value: str) -> str | None:
    """`value` as the https URL we fetch when it is one in any case of its scheme (`HTTPS://`
    becomes `https://`), else None."""
    if _HTTPS_ANY_CASE.match(value) is None:
        return None
    url = "https" + value[5:]
    return url if _HTTPS.match(url) else None
