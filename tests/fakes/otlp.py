"""A fake OTLP/HTTP trace collector for the tests: a real HTTP server (`POST /v1/traces`, protobuf
bodies, gzip or not) that decodes what the exporter sends into `Span`s."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.fakes.ingest import Reply, ingesting

SERVER, CLIENT, CONSUMER = 2, 3, 5  # opentelemetry.proto.trace.v1.Span.SpanKind


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    name: str
    kind: int
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@dataclass
class Collector:
    """What a fake OTLP/HTTP trace collector received."""

    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    decoded = Span(
                        service=str(resource.get("service.name")),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=tuple((lk.trace_id.hex(), lk.span_id.hex()) for lk in span.links),
                    )
                    with self.lock:
                        self.spans.append(decoded)

    def snapshot(self) -> list[Span]:
        with self.lock:
            return list(self.spans)


@contextmanager
def collecting() -> Iterator[tuple[Collector, str]]:
    """A collector on a free loopback port while the block runs: (its spans, its base URL, the
    value for OTEL_EXPORTER_OTLP_ENDPOINT)."""
    sink = Collector()

    def answer(path: str, headers: Message, body: bytes) -> Reply:
        if path != "/v1/traces":
            return 404, None, b""
        sink.receive(body)
        return 200, "application/x-protobuf", ExportTraceServiceResponse().SerializeToString()

    with ingesting(answer) as port:
        yield sink, f"http://127.0.0.1:{port}"
