"""Secret settings read from files, the way Docker and Kubernetes hand secrets to a container.

For each secret setting NAME (mediagen.config.SECRETS), in this order:

1. NAME itself, from the environment or `.env`, when it is not empty;
2. `NAME_FILE`: the path of a file holding it (`REPLICATE_API_TOKEN_FILE=/run/secrets/replicate`);
3. a file named NAME (or name) in SECRETS_DIR (a mounted Kubernetes Secret, `/run/secrets`).

An empty NAME counts as unset, so a `.env` copied from `.env-example` (every variable listed,
most of them empty) does not hide the files. NAME and NAME_FILE both given is an error, as is a
NAME_FILE or SECRETS_DIR that cannot be read: each is one line naming the variable and the path.
The file's content is the value, less a trailing newline (what `echo` and editors add).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from mediagen.errors import ConfigurationError


class SecretFiles(PydanticBaseSettingsSource):
    """The settings source of the module docstring, placed before the environment and `.env`
    (it gives only what neither of them gives)."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        names: Iterable[str],
        given: Mapping[str, Any],
    ) -> None:
        """`given`: every variable of the environment, `.env` and the keyword arguments, by
        lower-case name (what the other sources saw)."""
        super().__init__(settings_cls)
        self._names = list(names)
        self._given = given

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ gives everything at once

    def __call__(self) -> dict[str, Any]:
        directory = self._given.get("secrets_dir") or None
        in_directory = _listing(Path(str(directory))) if directory else {}
        found: dict[str, Any] = {}
        for name in self._names:
            variable = f"{name.upper()}_FILE"
            path = self._given.get(f"{name}_file")
            if path:
                if self._given.get(name):
                    raise ConfigurationError(
                        f"{name.upper()} and {variable} are both set: keep one of them"
                    )
                found[name] = read_secret(Path(str(path)), variable)
            elif not self._given.get(name) and name in in_directory:
                found[name] = read_secret(in_directory[name], "SECRETS_DIR")
        return found


def _listing(directory: Path) -> dict[str, Path]:
    """The files of SECRETS_DIR by lower-case name (Kubernetes mounts keys as they are
    spelled in the Secret, DATABASE_URL; Docker's secrets are usually lower case)."""
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        raise ConfigurationError(
            f"SECRETS_DIR={directory} cannot be read ({exc.strerror or exc}): "
            "set it to the directory the secrets are mounted in, or unset it"
        ) from None
    return {entry.name.lower(): entry for entry in entries if not entry.name.startswith(".")}


def read_secret(path: Path, variable: str) -> str:
    """The secret in `path`, less a trailing newline; one line naming `variable` if it cannot
    be read."""
    try:
        return path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(
            f"{variable}: cannot read the secret file {path} ({why})"
        ) from None
