"""OpenTelemetry traces across publish, dispatch, request and reply (optional: ``pip install 'zmqbus[traces]'``).

Off until :func:`enable` is called; while off, the hot path pays one test of
a module attribute per publish and per batch received. On, every message
carries the W3C trace context (``traceparent``, ``tracestate``) in its
``headers`` (PROTOCOL.md section 4, element 12), and spans follow the
OpenTelemetry messaging conventions:

* ``send <topic>`` (PRODUCER) around a publish;
* ``process <topic>`` (CONSUMER) around each handler, a child of the sender's span;
* ``request <service>`` (CLIENT) around a request, its tries and retries included;
* ``process <service>`` (SERVER) around the handler that serves it.

Attributes: ``messaging.system`` = ``zmqbus``, ``messaging.destination.name``
(topic or service), ``messaging.operation.name`` / ``messaging.operation.type``,
``messaging.message.id``, ``messaging.message.conversation_id`` (the
correlation id), ``messaging.client.id``. Whatever a handler publishes or
requests continues the handled message's trace. Control traffic
(``_zmqbus.*``) is never traced.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import ZmqbusError
from ..core.message import ProcessingMessage

__all__ = [
    "enable",
    "enable_tracing",
    "enable_from_environment",
    "disable",
    "tracer",
    "inject",
    "start_span",
    "end_span",
]

#: The tracer while tracing is on, else None (read on the hot path: keep it a plain module attribute).
tracer: Any = None

_KINDS: dict[str, Any] = {}
_otel: dict[str, Any] = {}  # the OpenTelemetry modules, imported once by enable()
_OPERATIONS = {
    "send": ("send", "send"),
    "process": ("process", "process"),
    "request": ("request", "send"),
    "serve": ("process", "process"),
}


def enable(tracer_provider: Any = None) -> None:
    """Trace every broker of this process with ``tracer_provider`` (default: OpenTelemetry's global one)."""
    global tracer
    try:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import Status, StatusCode
    except ImportError:
        raise ZmqbusError("tracing needs OpenTelemetry: pip install 'zmqbus[traces]'") from None
    from .. import __version__

    _otel.update(context=context, propagate=propagate, trace=trace, Status=Status, StatusCode=StatusCode)

    _KINDS.update(
        send=trace.SpanKind.PRODUCER,
        process=trace.SpanKind.CONSUMER,
        request=trace.SpanKind.CLIENT,
        serve=trace.SpanKind.SERVER,
    )
    tracer = trace.get_tracer("zmqbus", __version__, tracer_provider=tracer_provider)


#: :func:`enable` under the name ``zmqbus`` exports it by.
enable_tracing = enable


#: What ``$ZMQBUS_TRACING`` may say (``zmqbus run``/``up --trace`` set it): where spans go.
EXPORTERS = ("console", "otlp")


def enable_from_environment(service_name: str, environ: Any = None) -> str | None:
    """Turn tracing on as ``$ZMQBUS_TRACING`` says (``console``: spans printed as JSON on standard output;
    ``otlp``: to an OpenTelemetry collector, configured by the exporter's own ``OTEL_EXPORTER_OTLP_*``
    variables; unset, empty or ``off``: nothing), with the SDK (``opentelemetry-sdk``; for ``otlp``,
    ``opentelemetry-exporter-otlp``). ``service.name`` is ``service_name`` unless ``OTEL_SERVICE_NAME``
    or ``OTEL_RESOURCE_ATTRIBUTES`` name one (the SDK's own configuration wins). Returns the exporter
    used (None: tracing left off); a value it does not know, or a package missing, raises ZmqbusError."""
    import os

    env = os.environ if environ is None else environ
    kind = (env.get("ZMQBUS_TRACING") or "").strip().lower()
    if kind in ("", "0", "off", "none"):
        return None
    if kind not in EXPORTERS:
        raise ZmqbusError(f"ZMQBUS_TRACING={kind!r}: use one of {', '.join(EXPORTERS)} (or off)")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ZmqbusError("ZMQBUS_TRACING needs the OpenTelemetry SDK: pip install opentelemetry-sdk") from None
    exporter: Any
    if kind == "console":
        exporter = ConsoleSpanExporter()
    else:
        grpc = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")) == "grpc"
        try:
            if grpc:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ZmqbusError("ZMQBUS_TRACING=otlp needs: pip install opentelemetry-exporter-otlp") from None
        exporter = OTLPSpanExporter()
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))  # flushed at exit (the provider's atexit hook)
    enable(provider)
    return kind


def disable() -> None:
    """Stop tracing (messages already sent keep their headers)."""
    global tracer
    tracer = None


def traced(destination: str) -> bool:
    """True when tracing is on and ``destination`` is not control traffic."""
    return tracer is not None and not destination.startswith("_zmqbus.")


def inject(message: ProcessingMessage) -> None:
    """Put the current trace context into ``message``'s headers."""
    carrier: dict[str, str] = {}
    _otel["propagate"].inject(carrier)
    message.metadata.headers.update(carrier)


def start_span(
    kind: str, destination: str, message: ProcessingMessage, client_id: str, *, remote: bool
) -> tuple[Any, Any]:
    """Start a span of ``kind`` (send, process, request, serve) for ``message`` and make it current;
    with ``remote``, its parent is the trace context in the message's headers. Returns (span, token)."""
    parent = _otel["propagate"].extract(message.metadata.headers) if remote else None
    md = message.metadata
    operation = _OPERATIONS[kind]
    span = tracer.start_span(
        f"{operation[0]} {destination}",
        context=parent,
        kind=_KINDS[kind],
        attributes={
            "messaging.system": "zmqbus",
            "messaging.destination.name": destination,
            "messaging.operation.name": operation[0],
            "messaging.operation.type": operation[1],
            "messaging.message.id": md.message_id,
            "messaging.message.conversation_id": md.correlation_id,
            "messaging.client.id": client_id,
        },
    )
    token = _otel["context"].attach(_otel["trace"].set_span_in_context(span))
    return span, token


def detach(token: Any) -> None:
    _otel["context"].detach(token)


def end_span(span: Any, error: BaseException | None = None) -> None:
    """End ``span``, recording ``error`` (and an error status) if there was one."""
    if error is not None:
        span.record_exception(error)
        span.set_status(_otel["Status"](_otel["StatusCode"].ERROR, f"{type(error).__name__}: {error}"))
        span.set_attribute("error.type", type(error).__name__)
    span.end()
