#!/usr/bin/env python3
"""Send OTel metrics with exemplars to Spindle through the real OpenTelemetry Python SDK.

A real, independent peer for Spindle's interop tests. It builds a TracerProvider (ALWAYS_ON sampler)
and a MeterProvider whose only reader exports over OTLP (gRPC or HTTP/protobuf), and records, per round:

* Counter        ``demo.requests``    unit ``{request}``, attribute ``route`` (``/checkout``, ``/cart``)
* UpDownCounter  ``demo.queue.depth`` unit ``{item}``     (+5 then -2 per round)
* Histogram      ``demo.latency``     unit ``s``, attribute ``route``, values spread over several buckets
* ObservableGauge ``demo.temperature`` no unit, attribute ``room`` (constant value)

Rounds ``1..=span_rounds`` record inside an active sampled span (one new trace per route), so the SDK's
default trace-based exemplar filter attaches exemplars; later rounds record outside any span, so their
exports carry no exemplars. After each round ``meter_provider.force_flush()`` exports deterministically.

The script checks what the SDK really exported (a wrapping exporter inspects every batch): each export
must succeed, and every span round must carry counter and histogram exemplars whose trace ids are ones
this script created. It prints ONE JSON line on stdout describing what was sent (see ``summary`` below),
and exits 0; on any failure it prints the reason on stderr and exits non-zero.
"""

import argparse
import json
import math
import sys

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.metrics import Observation
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

ROUTES = ("/checkout", "/cart")
# Explicit bucket boundaries (seconds) advised for demo.latency.
BOUNDARIES = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Values recorded per route per round: they land in four different buckets.
LATENCIES = {"/checkout": (0.004, 0.02, 0.3, 3.0), "/cart": (0.007, 0.07)}
REQUESTS = {"/checkout": 3, "/cart": 2}
QUEUE_DELTAS = (5, -2)
TEMPERATURE = 21.5


def fail(message: str) -> None:
    """Print a message on stderr and exit with status 2."""
    print(f"send_metrics.py: {message}", file=sys.stderr)
    sys.exit(2)


class RecordingExporter(MetricExporter):
    """Delegates to the real OTLP exporter and records results and exemplars of every export."""

    def __init__(self, inner: MetricExporter):
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.exports = []  # one entry per export call

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        exemplars = {}  # metric name -> list of (trace_id hex, span_id hex)
        for rm in metrics_data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        for ex in point.exemplars or ():
                            if ex.trace_id:
                                exemplars.setdefault(metric.name, []).append(
                                    (format(ex.trace_id, "032x"), format(ex.span_id, "016x"))
                                )
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self.exports.append({"result": result, "exemplars": exemplars})
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def make_exporter(protocol: str, endpoint: str, temporality: str) -> MetricExporter:
    """Build the SDK's own OTLP metric exporter for the protocol."""
    preferred = None
    if temporality == "delta":
        # The SDK's standard "delta" preference: synchronous and observable counters and histograms
        # are delta; up-down counters stay cumulative.
        preferred = {
            Counter: AggregationTemporality.DELTA,
            ObservableCounter: AggregationTemporality.DELTA,
            Histogram: AggregationTemporality.DELTA,
            UpDownCounter: AggregationTemporality.CUMULATIVE,
            ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
            ObservableGauge: AggregationTemporality.CUMULATIVE,
        }
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=10, preferred_temporality=preferred)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/metrics"):
        url += "/v1/metrics"
    return OTLPMetricExporter(endpoint=url, timeout=10, preferred_temporality=preferred)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("grpc", "http"), required=True)
    parser.add_argument(
        "--endpoint",
        required=True,
        help="gRPC: http://host:port; HTTP: http://host:port (/v1/metrics is appended when missing)",
    )
    parser.add_argument("--service", required=True, help="service.name")
    parser.add_argument("--namespace", default="shop", help="service.namespace (default: shop)")
    parser.add_argument("--instance", default=None, help="service.instance.id (default: <service>-1)")
    parser.add_argument("--temporality", choices=("cumulative", "delta"), default="cumulative")
    parser.add_argument("--rounds", type=int, default=1, help="export rounds (default 1)")
    parser.add_argument(
        "--span-rounds",
        type=int,
        default=None,
        help="how many of the first rounds record inside sampled spans (default: all); later rounds "
        "record outside any span and so export no exemplars",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        fail("--rounds must be at least 1")
    span_rounds = args.rounds if args.span_rounds is None else args.span_rounds
    instance = args.instance or f"{args.service}-1"

    resource = Resource.create(
        {
            "service.name": args.service,
            "service.namespace": args.namespace,
            "service.instance.id": instance,
            "deployment.environment": "test",
        }
    )
    tracer_provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
    tracer = tracer_provider.get_tracer("spindle.interop.python")

    exporter = RecordingExporter(make_exporter(args.protocol, args.endpoint, args.temporality))
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meter_provider.get_meter("spindle.interop.python", version="1.2.3")

    requests = meter.create_counter("demo.requests", unit="{request}", description="Requests served")
    queue = meter.create_up_down_counter("demo.queue.depth", unit="{item}", description="Items queued")
    latency = meter.create_histogram(
        "demo.latency",
        unit="s",
        description="Request latency",
        explicit_bucket_boundaries_advisory=list(BOUNDARIES),
    )

    def observe_temperature(_options):
        yield Observation(TEMPERATURE, {"room": "lab"})

    meter.create_observable_gauge(
        "demo.temperature", callbacks=[observe_temperature], description="Room temperature"
    )

    trace_ids, span_ids = [], []
    for round_no in range(1, args.rounds + 1):
        in_span = round_no <= span_rounds
        for route in ROUTES:
            attrs = {"route": route}
            if in_span:
                with tracer.start_as_current_span(f"handle {route}") as span:
                    ctx = span.get_span_context()
                    if not ctx.trace_flags.sampled:
                        fail("span is not sampled although the sampler is ALWAYS_ON")
                    trace_ids.append(format(ctx.trace_id, "032x"))
                    span_ids.append(format(ctx.span_id, "016x"))
                    requests.add(REQUESTS[route], attrs)
                    for value in LATENCIES[route]:
                        latency.record(value, attrs)
            else:
                requests.add(REQUESTS[route], attrs)
                for value in LATENCIES[route]:
                    latency.record(value, attrs)
        for delta in QUEUE_DELTAS:
            queue.add(delta)
        before = len(exporter.exports)
        if not meter_provider.force_flush(timeout_millis=15_000):
            fail(f"round {round_no}: force_flush timed out")
        if len(exporter.exports) == before:
            fail(f"round {round_no}: force_flush exported nothing")
        last = exporter.exports[-1]
        if last["result"] != MetricExportResult.SUCCESS:
            fail(f"round {round_no}: export to {args.endpoint} over {args.protocol} failed: {last['result']}")
        ex = last["exemplars"]
        if in_span:
            for name in ("demo.requests", "demo.latency"):
                got = ex.get(name, [])
                if not got:
                    fail(f"round {round_no}: the SDK exported no exemplars on {name} although it recorded in a span")
                unknown = [t for t, _ in got if t not in trace_ids]
                if unknown:
                    fail(f"round {round_no}: exemplar trace ids {unknown} on {name} are not ours")
        elif any(ex.values()):
            fail(f"round {round_no}: the SDK exported exemplars outside a span: {ex}")

    meter_provider.shutdown()
    tracer_provider.shutdown()

    # Totals as Spindle must show them (delta runs must be accumulated, so they are the same).
    rounds = args.rounds
    buckets = {}
    for route in ROUTES:
        cumulative = {}
        for bound in BOUNDARIES:
            cumulative[repr(bound)] = rounds * sum(1 for v in LATENCIES[route] if v <= bound)
        cumulative["+Inf"] = rounds * len(LATENCIES[route])
        buckets[route] = cumulative
    summary = {
        "protocol": args.protocol,
        "service": args.service,
        "namespace": args.namespace,
        "instance": instance,
        "job": f"{args.namespace}/{args.service}",
        "temporality": args.temporality,
        "rounds": rounds,
        "span_rounds": min(span_rounds, rounds),
        "scope": {"name": "spindle.interop.python", "version": "1.2.3"},
        "trace_ids": trace_ids,
        "span_ids": span_ids,
        "exemplars_per_round": [
            {name: [t for t, _ in pairs] for name, pairs in e["exemplars"].items()} for e in exporter.exports
        ],
        "requests": {route: rounds * REQUESTS[route] for route in ROUTES},
        "queue_depth": rounds * sum(QUEUE_DELTAS),
        "latency": {
            route: {
                "count": rounds * len(LATENCIES[route]),
                "sum": rounds * sum(LATENCIES[route]),
                "buckets": buckets[route],
            }
            for route in ROUTES
        },
        "temperature": {"room": "lab", "value": TEMPERATURE},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
