"""A job's `parameters`: the model's inputs, and their rules.

Every key must be an identifier and every value a JSON scalar or a short list of them
(`passed_through`), whatever the model. Which names and values a model takes is its own rule,
checked at submit once the model is known (`mediagen.jobs.admission`): the built-in generator
(and a Replicate model) reads `GenerationParameters`, defaults filled in, and passes unknown
keys through (a Replicate model has inputs of its own); a Cog model takes exactly what its
schema declares (`mediagen.catalog.schemas`), nothing added. A value that reads as a URL must be
an input file (checked at submit, `mediagen.files.inputs.screen`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict, JsonValue
from pydantic_core import PydanticCustomError

from mediagen.config import get_settings
from mediagen.files.uris import DATA_URI, DATA_URI_PATTERN

MAX_PARAMETERS = 40  # known and passed-through keys together
# Names a passed-through parameter may not take: the provider gets them from the request itself
# (a `parameters.prompt` would replace the validated, length-checked prompt).
RESERVED_PARAMETERS = frozenset({"prompt"})
_EXTRA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
Scalar = str | int | float | bool | None
NO_NUL = "^[^\\u0000]*$"  # Postgres text and JSON cannot hold NUL characters
_SETTINGS = get_settings()  # bounds that the OpenAPI schema states, as configured

_SCALAR_SCHEMA: list[JsonValue] = [
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
    {"type": "null"},
    {"type": "string", "maxLength": 10_000, "pattern": NO_NUL},
]
_EXTRAS_SCHEMA: JsonDict = {
    # Unknown parameters as the model validator below accepts them, stated for clients and fuzzers.
    "additionalProperties": {
        "anyOf": [
            *_SCALAR_SCHEMA,
            # An input file given inline (mediagen.files.inputs): bounded by the body limit.
            {"type": "string", "maxLength": _SETTINGS.max_body_bytes, "pattern": DATA_URI_PATTERN},
            {"type": "array", "maxItems": 64, "items": {"anyOf": _SCALAR_SCHEMA}},
        ]
    },
    "propertyNames": {
        "pattern": _EXTRA_KEY.pattern,
        "not": {"enum": list[JsonValue](sorted(RESERVED_PARAMETERS))},
    },
    "maxProperties": MAX_PARAMETERS,
}
_DIMENSION_SCHEMA: JsonDict = {
    "minimum": _SETTINGS.min_dimension,
    "maximum": _SETTINGS.max_dimension,
    "multipleOf": 8,
}


def _json_number(kind: str) -> Callable[[object], object]:
    """As JSON Schema counts numbers: 976.0 is an integer, `true` and "7" are not numbers."""

    def check(value: object) -> object:
        if isinstance(value, bool | str):
            raise PydanticCustomError(f"{kind}_type", f"Input should be a valid {kind}")
        return value

    return check


_BOUND_NAMES = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusiveMinimum",
    "lt": "exclusiveMaximum",
}


def _schema_extra(schema: JsonDict) -> None:
    """Add the extras rules, and name bounds as JSON Schema does: behind a BeforeValidator,
    pydantic emits a field's `ge`/`le` under those names."""
    schema.update(_EXTRAS_SCHEMA)

    def rename(node: JsonValue) -> None:
        if isinstance(node, dict):
            for short, standard in _BOUND_NAMES.items():
                if short in node:
                    node[standard] = node.pop(short)
            for child in node.values():
                rename(child)
        elif isinstance(node, list):
            for child in node:
                rename(child)

    rename(schema.get("properties"))


def passed_through(parameters: dict[str, Any]) -> None:
    """What every parameter must be, whatever the model: an identifier, not reserved, with a
    JSON scalar or a list of up to 64 of them (strings at most 10000 characters, without NUL,
    but for an input file given inline); MAX_PARAMETERS at most."""
    if len(parameters) > MAX_PARAMETERS:
        raise ValueError(f"at most {MAX_PARAMETERS} parameters are accepted")
    for key, value in parameters.items():
        if not _EXTRA_KEY.match(key):
            raise ValueError(f"parameter name {key!r} is not an identifier")
        if key in RESERVED_PARAMETERS:
            raise ValueError(f"parameter {key!r} is reserved: give it at the top level")
        values = value if isinstance(value, list) else [value]
        if len(values) > 64 or not all(isinstance(v, Scalar) for v in values):
            raise ValueError(f"parameter {key!r} must be a scalar or a list of up to 64 scalars")
        if isinstance(value, str) and DATA_URI.match(value):
            continue  # an input file given inline: the request body limit bounds it
        if any(isinstance(v, str) and len(v) > 10_000 for v in values):
            raise ValueError(f"parameter {key!r} is longer than 10000 characters")
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise ValueError(f"parameter {key!r} must not contain NUL characters")


def _checked(parameters: dict[str, Any]) -> dict[str, Any]:
    passed_through(parameters)
    return parameters


Int = Annotated[int, BeforeValidator(_json_number("integer"))]
Float = Annotated[float, BeforeValidator(_json_number("number"))]


class GenerationParameters(BaseModel):
    """Generation settings. Width and height must be multiples of 8 within the configured bounds
    (64..2048 by default)."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_schema_extra)

    width: Int = Field(
        1024,
        description="Image width in pixels, a multiple of 8.",
        json_schema_extra=_DIMENSION_SCHEMA,
    )
    height: Int = Field(
        1024,
        description="Image height in pixels, a multiple of 8.",
        json_schema_extra=_DIMENSION_SCHEMA,
    )
    num_inference_steps: Int = Field(50, ge=1, le=150)
    # Bounds inside the Annotated: on the Optional they would reach the schema as `ge`/`le`.
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)] | None = Field(
        None, description="Same prompt + seed, same image."
    )
    output_format: Literal["png", "jpg", "jpeg", "webp"] = "png"
    num_outputs: Int = Field(1, ge=1, le=4)
    guidance_scale: Annotated[Float, Field(ge=0, le=50)] | None = None
    negative_prompt: str | None = Field(None, max_length=2000, pattern=NO_NUL)

    @field_validator("width", "height")
    @classmethod
    def _dimension(cls, value: int) -> int:
        settings = get_settings()
        low, high = settings.min_dimension, settings.max_dimension
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @model_validator(mode="after")
    def _extras(self) -> GenerationParameters:
        extra = self.model_extra or {}
        if len(self.model_fields_set | set(extra)) > MAX_PARAMETERS:
            raise ValueError(f"at most {MAX_PARAMETERS} parameters are accepted")
        passed_through(extra)
        return self


# `parameters` as a request holds them: the caller's own keys and values (no defaults), checked
# by the rules every model shares; the model's own rules apply at submit. The schema documents
# the built-in generator's.
Parameters = Annotated[
    dict[str, Any],
    AfterValidator(_checked),
    WithJsonSchema(
        {
            **GenerationParameters.model_json_schema(),
            "description": "The model's inputs. For the built-in generator (and a Replicate "
            "model), these settings, defaults filled in, and other keys passed through; for a "
            "Cog model, exactly the inputs its schema declares (`GET /api/v1/models`), sent as "
            "given. Width and height must be multiples of 8 within the configured bounds "
            "(64..2048 by default).",
        }
    ),
]
