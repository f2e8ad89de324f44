"""OpenTelemetry and structured logging, set up the same way in every process.

Spans go to an OTLP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set; otherwise
the SDK still creates real spans (so trace ids reach logs and Kafka headers) but
exports nothing. Logs are one JSON object per line carrying the current trace and
span ids, plus any ``trial_id`` / ``study_id`` passed in ``extra``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_CONFIGURED = False
_LOG_FIELDS = ("trial_id", "study_id", "attempt_id", "worker_id", "topic", "event")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span_ctx = trace.get_current_span().get_span_context()
        if span_ctx.is_valid:
            payload["trace_id"] = format(span_ctx.trace_id, "032x")
            payload["span_id"] = format(span_ctx.span_id, "016x")
        for key in _LOG_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup(service_name: str, level: str | None = None) -> None:
    """Configure tracing and JSON logs for this process (idempotent)."""
    global _CONFIGURED
    if _CONFIGURED:
        return
    _CONFIGURED = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("LADDER_LOG_LEVEL", "INFO")).upper())
    for noisy in ("kafka", "aiokafka", "faust", "mode", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if flush:
        flush()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


# Kafka headers are a list of (str, bytes) pairs; W3C trace context travels in
# them as "traceparent" / "tracestate".
Headers = list[tuple[str, bytes]]


def inject_headers(headers: Headers | None = None) -> Headers:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out = list(headers or [])
    out.extend((k, v.encode()) for k, v in carrier.items())
    return out


def extract_context(headers: Iterable[tuple[str, bytes | str]] | None) -> context.Context:
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        carrier[key.lower()] = value
    return propagate.extract(carrier)


# One tracer for every Kafka span: get_tracer per record costs a consumer real CPU.
# It is a proxy until ``setup`` installs the provider, then forwards to it.
_KAFKA_TRACER = trace.get_tracer("ladder.kafka")


def kafka_producer_span(topic: str, key: str) -> AbstractContextManager[trace.Span]:
    """PRODUCER span around one send; call ``inject_headers`` inside it so the record
    carries this span as its parent."""
    return _KAFKA_TRACER.start_as_current_span(
        f"{topic} publish",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.kafka.message.key": key,
        },
    )


def kafka_consumer_span(
    topic: str, partition: int, offset: int, parent: context.Context
) -> AbstractContextManager[trace.Span]:
    """CONSUMER span for processing one record, child of the producer's context."""
    return _KAFKA_TRACER.start_as_current_span(
        f"{topic} process",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.source.name": topic,
            "messaging.kafka.partition": partition,
            "messaging.kafka.offset": offset,
        },
    )


def grpc_server_interceptors() -> Sequence[object]:
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor()]


def instrument_grpc_client() -> None:
    """Patch grpc channels created after this call to emit client spans and
    propagate trace context in metadata."""
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient

    instrumentor = GrpcInstrumentorClient()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()
