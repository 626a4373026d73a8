"""What `GET /api/v1/models` says of each model: its name, provider, whether it is the default,
and the JSON Schema of its inputs where the provider gives one.

- built-in: the schema of `parameters` (`GenerationParameters`), what the generator reads;
- Cog: the server's own `GET /openapi.json`, `components.schemas.Input` (with the schemas it
  refers to under `$defs`), fetched through `mediagen.outbound` (a short deadline, a size cap)
  from the first endpoint that answers, and kept SCHEMA_TTL seconds (an error, such as the 404
  of a Cog server run without a build, or no answer: null, kept FAILED_TTL seconds);
- Replicate: null (its schema is one API call per model away; we make none per request).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from pydantic import BaseModel, Field

from mediagen.catalog.catalog import Catalog
from mediagen.catalog.routes import ModelRoute, ProviderName
from mediagen.catalog.schemas import cog_input, invalid
from mediagen.errors import OutboundError
from mediagen.outbound import Outbound, Policy

SCHEMA_TTL = 300.0
FAILED_TTL = 30.0
FETCH_DEADLINE = 3.0  # for one endpoint's openapi.json, all of it
MAX_SCHEMA_BYTES = 2 * 1024 * 1024


class ModelInfo(BaseModel):
    name: str = Field(description="What a request gives as `model`.")
    provider: ProviderName
    default: bool = Field(description="What a request that names no model runs on.")
    input_schema: dict[str, Any] | None = Field(
        description="JSON Schema of the model's inputs (`parameters`), where the provider "
        "gives one: the built-in generator's; a Cog model's, from the models file or its "
        "server (inputs are checked against it at submit); null otherwise (a Cog model's "
        "inputs then go to it unchecked)."
    )


class ModelList(BaseModel):
    data: list[ModelInfo]


class InputSchemas:
    """Input schemas by model, cached; one fetch at a time per model whatever the callers."""

    def __init__(self, outbound: Outbound, builtin: dict[str, Any] | None = None) -> None:
        self.outbound = outbound
        self.builtin = builtin
        self._policy = Policy(deadline=FETCH_DEADLINE, max_bytes=MAX_SCHEMA_BYTES, pin=False)
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._fetching: dict[str, asyncio.Task[dict[str, Any] | None]] = {}

    async def of(self, route: ModelRoute) -> dict[str, Any] | None:
        if route.provider == "builtin":
            return self.builtin
        if route.provider != "cog":
            return None
        if route.input_schema is not None:  # the models file's
            return route.input_schema
        if not route.endpoints:
            return None
        cached = self._cache.get(route.name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        task = self._fetching.get(route.name)
        if task is None:
            task = asyncio.create_task(self._fetch(route))
            self._fetching[route.name] = task
            task.add_done_callback(lambda _: self._fetching.pop(route.name, None))
        return await asyncio.shield(task)

    async def _fetch(self, route: ModelRoute) -> dict[str, Any] | None:
        schema = None
        for endpoint in route.endpoints:
            try:
                reply = await self.outbound.call(
                    "GET", f"{endpoint.url}/openapi.json", self._policy
                )
            except OutboundError:
                continue
            if reply.status != 200:
                continue
            try:
                schema = cog_input(orjson.loads(reply.body))
            except orjson.JSONDecodeError:
                continue
            if schema is not None and invalid(schema) is None:
                break
            schema = None  # none, or one that cannot be checked against: as if none was given
        ttl = SCHEMA_TTL if schema is not None else FAILED_TTL
        self._cache[route.name] = (time.monotonic() + ttl, schema)
        return schema

    async def listing(self, catalog: Catalog) -> ModelList:
        routes = catalog.models()
        schemas = await asyncio.gather(*(self.of(route) for route in routes))
        return ModelList(
            data=[
                ModelInfo(
                    name=route.name,
                    provider=route.provider,
                    default=route.default,
                    input_schema=schema,
                )
                for route, schema in zip(routes, schemas, strict=True)
            ]
        )
