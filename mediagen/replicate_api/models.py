"""`GET /v1/models/{owner}/{name}` (and its version): what the clients' `run()` reads of a
model, with the input schema its provider gives (mediagen.catalog.listing)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import State

from mediagen import __version__
from mediagen.catalog import ModelRoute
from mediagen.replicate_api.predictions import model_name, timestamp, version_id
from mediagen.replicate_api.schemas import ModelVersion, ReplicateModel

# Versions are not recorded: a model's one version dates from when this process started.
_SINCE = timestamp(datetime.now(UTC).replace(microsecond=0)) or ""
_PROMPT = {"type": "string", "title": "Prompt", "description": "What to generate."}
_OUTPUT = {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"}
_ANY_OUTPUT = {"title": "Output"}  # a model's own output: any JSON (mediagen.jobs.values)
_DESCRIPTION = {
    "builtin": "mediagen's built-in generator",
    "replicate": "run on Replicate by mediagen",
    "cog": "run on self-hosted Cog servers by mediagen",
}


def _input(schema: dict[str, Any] | None, route: ModelRoute) -> dict[str, Any]:
    """The `Input` schema: a Cog model's own as it declares it (any object where it is not
    known: its inputs go to it as given); the built-in generator's parameters and a Replicate
    model's, with `prompt` (a job's prompt) among its inputs."""
    if route.provider == "cog":
        if schema is None:
            return {"type": "object", "title": "Input"}
        return {"title": "Input", **_inlined(schema)}
    if schema is None:
        return {"type": "object", "properties": {"prompt": _PROMPT}, "required": ["prompt"]}
    result = copy.deepcopy(schema)
    result.pop("propertyNames", None)  # mediagen's parameters rule: `prompt` is an input here
    result.pop("maxProperties", None)
    properties = result.setdefault("properties", {})
    if "prompt" not in properties:
        result["properties"] = {"prompt": _PROMPT, **properties}
    result["required"] = sorted({*result.get("required", []), "prompt"})
    result.setdefault("title", "Input")
    return result


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` without `$defs`: each `#/$defs/...` reference replaced by what it names (in an
    OpenAPI document a `$ref` starts from the document's root, not from `Input`)."""
    defs = schema.get("$defs") or {}

    def inline(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name in defs and name not in seen:  # a cycle stays a reference
                    rest = {k: inline(v, seen) for k, v in node.items() if k != "$ref"}
                    return {**inline(defs[name], seen | {name}), **rest}
            return {k: inline(v, seen) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        return node

    result: dict[str, Any] = inline(schema, frozenset())
    return result


async def version_of(state: State, model: str, route: ModelRoute) -> ModelVersion:
    schema = await state.input_schemas.of(route)
    return ModelVersion(
        id=version_id(model),
        created_at=_SINCE,
        # Not a Cog version: the clients read it only to parse, and an unparsable one is
        # left alone (a version before Cog 0.3.9 would change how outputs are read).
        cog_version=f"mediagen-{__version__}",
        openapi_schema={
            "openapi": "3.0.2",
            "info": {"title": model_name(model), "version": version_id(model)},
            "paths": {},
            "components": {
                "schemas": {
                    "Input": _input(schema, route),
                    "Output": _OUTPUT if route.provider == "builtin" else _ANY_OUTPUT,
                }
            },
        },
    )


async def model_of(state: State, model: str, route: ModelRoute, base: str) -> ReplicateModel:
    name = model_name(model)
    owner, _, short = name.partition("/")
    return ReplicateModel(
        url=f"{base}/v1/models/{name}",
        owner=owner,
        name=short,
        description=_DESCRIPTION.get(route.provider),
        visibility="public",
        github_url=None,
        paper_url=None,
        license_url=None,
        run_count=0,
        cover_image_url=None,
        default_example=None,
        latest_version=await version_of(state, model, route),
    )
