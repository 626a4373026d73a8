"""A Cog model's inputs as its schema declares them: where the schema comes from, which inputs
a Cog job sends, and how they are checked at submit. The one home of these rules: the API
(`GET /api/v1/models`, `/v1` versions, `mediagen.jobs.admission`) and the Cog provider ask here.

- **The schema** is `components.schemas.Input` of the model's OpenAPI document, made
  self-contained (`cog_input`): the `openapi.json` that `cog build` writes, named in the models
  file (`schema = "path"`, read with that file, `read_schema`), or else the one the model's
  server publishes at `GET /openapi.json` (`mediagen.catalog.listing.InputSchemas` fetches
  and keeps it).
- **What a Cog job sends** (`model_inputs`): exactly the inputs the caller gave, never a default
  of mediagen's; the job's prompt goes as the input `prompt` only when the model has one, or
  when its schema is unknown and the caller gave a prompt (`sends_prompt`). Otherwise the
  prompt is only the job's label.
- **The check** (`problems`): where the schema is known, unknown names, missing required inputs
  and values its rules refuse (types, bounds, choices) are found at submit, each at the model's
  own field name, as Cog's server would check them (it refuses a null where the type does not
  allow one, `nullable` or not). Where it is not known, the inputs go to the model unchecked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

MAX_MESSAGE = 200  # characters of one problem's message (the schema's words quote the value)
_REF = "#/components/schemas/"


class Problem(NamedTuple):
    """One input the model refuses: where (its name, then the place inside a list), why, and a
    machine-readable kind."""

    loc: tuple[str | int, ...]
    msg: str
    type: str


def cog_input(openapi: Any) -> dict[str, Any] | None:
    """`components.schemas.Input` of a Cog model's OpenAPI document, self-contained: the
    component schemas it refers to (choices become enums of their own) go under `$defs`."""
    if not isinstance(openapi, dict):
        return None
    components = openapi.get("components")
    schemas = components.get("schemas") if isinstance(components, dict) else None
    if not isinstance(schemas, dict) or not isinstance(schemas.get("Input"), dict):
        return None
    found: dict[str, Any] = {}

    def local(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith(_REF):
                    name = value.removeprefix(_REF)
                    if name not in found and isinstance(schemas.get(name), dict):
                        found[name] = None  # placeholder: refs may be cyclic
                        found[name] = local(schemas[name])
                    out[key] = f"#/$defs/{name}"
                else:
                    out[key] = local(value)
            return out
        if isinstance(node, list):
            return [local(item) for item in node]
        return node

    schema: dict[str, Any] = local(schemas["Input"])
    if found:
        schema["$defs"] = {**schema.get("$defs", {}), **found}
    return schema


def read_schema(path: Path) -> dict[str, Any]:
    """The input schema of the OpenAPI document at `path` (what `cog build` writes); ValueError
    saying why it cannot be used."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    schema = cog_input(document)
    if schema is None:
        raise ValueError(f"{path} has no components.schemas.Input (a Cog model's openapi.json)")
    reason = invalid(schema)
    if reason is not None:
        raise ValueError(f"{path}: the Input schema is not valid: {reason}")
    return schema


def invalid(schema: Mapping[str, Any]) -> str | None:
    """Why `schema` cannot be checked against (not valid JSON Schema), or None."""
    try:
        Draft202012Validator.check_schema(_checkable(schema))
    except SchemaError as exc:
        return exc.message
    return None


def names(schema: Mapping[str, Any]) -> list[str]:
    """The model's input names, in the order its schema gives them (`x-order`)."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return []

    def order(name: str) -> float:
        spec = properties[name]
        place = spec.get("x-order") if isinstance(spec, dict) else None
        return place if isinstance(place, int | float) else float("inf")

    return sorted(properties, key=order)


def sends_prompt(schema: Mapping[str, Any] | None, prompt: str) -> bool:
    """Whether a Cog job's prompt goes to the model as its input `prompt`: when the model has
    that input, or when its schema is unknown and the caller gave a prompt (an empty prompt is
    none: a `/v1` prediction without `input.prompt`)."""
    return bool(prompt) and (schema is None or "prompt" in names(schema))


def model_inputs(
    schema: Mapping[str, Any] | None, prompt: str, parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """What a Cog job sends its model: the caller's inputs, and its prompt as `sends_prompt`
    says."""
    inputs = dict(parameters)
    if sends_prompt(schema, prompt):
        inputs["prompt"] = prompt
    return inputs


def problems(schema: Mapping[str, Any], inputs: Mapping[str, Any]) -> list[Problem]:
    """What the model refuses of `inputs` (none: they may be sent): unknown names, missing
    required inputs, then each value its schema's rules refuse."""
    known = names(schema)
    found: list[Problem] = []
    takes = f"its inputs are {', '.join(known)}" if known else "it takes no inputs"
    for name in inputs:
        if name not in known:
            found.append(Problem((name,), f"not an input of this model ({takes})", "unknown"))
    required = schema.get("required")
    for name in required if isinstance(required, list) else []:
        if name not in inputs:
            found.append(Problem((str(name),), "Field required", "missing"))
    values = {name: value for name, value in inputs.items() if name in known}
    validator = Draft202012Validator(_checkable(schema))
    for error in sorted(validator.iter_errors(values), key=lambda e: list(map(str, e.path))):
        message = error.message
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        found.append(Problem(tuple(error.absolute_path), message, str(error.validator)))
    return found


def _checkable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` as JSON Schema checks it here: `required` and unknown names are `problems`'s
    own (named better). Values are checked as Cog's server checks them: JSON Schema's rules,
    OpenAPI's `nullable` read as nothing (a null is refused unless the type allows it)."""
    return {k: v for k, v in schema.items() if k not in ("required", "additionalProperties")}
