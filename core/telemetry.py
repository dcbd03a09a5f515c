"""OpenTelemetry for Mailroom: one trace from the API call to the job and its tasks, and metrics.

Exporters (chosen once per process by ``configure_telemetry``):

- ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set: Azure Monitor through ``azure-monitor-opentelemetry``
  (traces, metrics and Mailroom's logs);
- else ``MAILROOM_TELEMETRY_CONSOLE=true``: spans and metrics printed as JSON on stdout (local);
- else nothing is exported and every call here is a cheap no-op.

The trace crosses the queues through an optional W3C ``traceparent`` on the Schedule row and on
job and task tickets: the API's span → the Job Manager's span → each Task Manager span.

No addresses, names, bodies or keys in any attribute (DESIGN invariant 6): attributes are ids,
counts, statuses and route templates only. The automatic HTTP and Azure SDK instrumentations are
off because they record URLs, and a table query's URL can hold an address.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from core.settings import Settings

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig

log = logging.getLogger("mailroom.telemetry")

SERVICE_NAME = "mailroom"
_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_configured: str | None = None  # "azure", "console" or "off" once decided
_AUTO_INSTRUMENTATIONS_OFF = {
    name: {"enabled": False}
    for name in ("azure_sdk", "django", "fastapi", "flask", "httpx", "psycopg2", "requests", "urllib",
                 "urllib3")
}

# FastAPI's own telemetry switches on once a provider is installed; it records raw paths and
# exception messages, which can hold addresses. ``api.tracing`` makes the request spans instead.
FASTAPI_TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False, "metrics": False, "logs": False, "operation_spans": False, "auto_configure": False,
}

tracer = trace.get_tracer("mailroom")
meter = metrics.get_meter("mailroom")
emails_counter = meter.create_counter(
    "mailroom.emails", unit="{email}", description="Recipients of closed jobs by final status and tenant."
)
job_duration = meter.create_histogram(
    "mailroom.job.duration", unit="s", description="A closed job's time from creation to close."
)
time_to_send = meter.create_histogram(
    "mailroom.job.time_to_send", unit="s", description="A completed job's time from start to close."
)


def configure_telemetry(settings: Settings) -> str:
    """Install the exporters once per process; returns which ("azure", "console" or "off")."""
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        if settings.applicationinsights_connection_string:
            _configure_azure(settings.applicationinsights_connection_string)
            _configured = "azure"
        elif settings.telemetry_console:
            _configure_console()
            _configured = "console"
        else:
            _configured = "off"
        return _configured


def enabled() -> bool:
    """Whether spans are exported (the API skips its middleware work otherwise)."""
    return _configured not in (None, "off")


def _configure_azure(connection_string: str) -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(
        connection_string=connection_string,
        logger_name="mailroom",
        instrumentation_options=_AUTO_INSTRUMENTATIONS_OFF,
        resource=_resource(),
    )


def _configure_console() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=_resource())
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=_one_line)))
    trace.set_tracer_provider(provider)
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
    metrics.set_meter_provider(MeterProvider(resource=_resource(), metric_readers=[reader]))


def _one_line(span: Any) -> str:
    return span.to_json(indent=None) + "\n"


def _resource() -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": SERVICE_NAME})


# -- trace context across queues ---------------------------------------------------------------


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the active span, to carry on a ticket (``None`` outside a trace)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> context.Context | None:
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    traceparent: str | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A span, continuing the trace of ``traceparent`` when given; an exception marks it failed."""
    with tracer.start_as_current_span(
        name, context=context_from(traceparent), kind=kind, attributes=dict(attributes or {}),
        record_exception=False, set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except Exception as err:
            current.set_status(Status(StatusCode.ERROR, type(err).__name__))
            current.set_attribute("error.type", type(err).__name__)
            raise


def job_attributes(tenant_id: str, job_id: str, **more: Any) -> dict[str, Any]:
    """The attributes every job-related span carries (ids only)."""
    return {"mailroom.tenant_id": tenant_id, "mailroom.job_id": job_id, **more}


# -- metrics -----------------------------------------------------------------------------------


def record_closed_job(
    tenant_id: str, counts: Mapping[str, int], duration_seconds: float | None, send_seconds: float | None
) -> None:
    """Emails per tenant and final status, job duration and time-to-send of one closed job."""
    for status, n in counts.items():
        if n:
            emails_counter.add(n, {"mailroom.tenant_id": tenant_id, "mailroom.status": status})
    if duration_seconds is not None:
        job_duration.record(duration_seconds, {"mailroom.tenant_id": tenant_id})
    if send_seconds is not None:
        time_to_send.record(send_seconds, {"mailroom.tenant_id": tenant_id})


_gauges: set[str] = set()


def observe_queue_depths(depths: Callable[[], Iterable[tuple[str, int]]]) -> None:
    """Register the ``mailroom.queue.depth`` gauge once per process (read at each export)."""
    with _lock:
        if "queue_depth" in _gauges:
            return
        _gauges.add("queue_depth")

    def observe(_: CallbackOptions) -> Iterable[Observation]:
        try:
            return [Observation(depth, {"mailroom.queue": name}) for name, depth in depths()]
        except Exception as err:  # noqa: BLE001 - a metrics callback must never break the exporter
            log.warning("queue depth not observed error=%s", type(err).__name__)
            return []

    meter.create_observable_gauge("mailroom.queue.depth", [observe], unit="{message}",
                                  description="Approximate messages waiting per queue.")
