#!/usr/bin/env python3
"""Send an exponential histogram with exemplars to Spindle through the real OpenTelemetry Python SDK.

A real, independent peer for the native-histogram interop test. The SDK's View turns the histogram
``demo.exp.latency`` (unit ``s``) into an exponential-bucket histogram (max 160 buckets, so its scale
comes out between 0 and 20 as the SDK picks it). Each value is recorded inside a sampled span (ALWAYS_ON),
so the SDK's default trace-based exemplar filter attaches exemplars. One cumulative export over OTLP
(gRPC or HTTP/protobuf), checked to succeed.

Prints ONE JSON line: ``{"count", "sum", "values", "trace_ids", "span_ids", "scale", "exemplars"}``
where ``scale`` is the scale the SDK exported and ``exemplars`` the trace ids it attached.
"""

import argparse
import json
import math
import random
import sys

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON


def fail(message: str) -> None:
    print(f"send_exponential.py: {message}", file=sys.stderr)
    sys.exit(2)


class RecordingExporter(MetricExporter):
    """Delegates to the OTLP exporter; records the result, scale and exemplars of every export."""

    def __init__(self, inner: MetricExporter):
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self.inner = inner
        self.results, self.scales, self.exemplars = [], [], []

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        for rm in metrics_data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != "demo.exp.latency":
                        continue
                    for point in metric.data.data_points:
                        self.scales.append(point.scale)
                        for ex in point.exemplars or ():
                            if ex.trace_id:
                                self.exemplars.append(format(ex.trace_id, "032x"))
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self.results.append(result)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("grpc", "http"), required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--values", type=int, default=500)
    args = parser.parse_args()

    resource = Resource.create({"service.name": args.service, "service.instance.id": f"{args.service}-1"})
    tracer = TracerProvider(resource=resource, sampler=ALWAYS_ON).get_tracer("spindle.interop.native")
    if args.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        inner = OTLPMetricExporter(endpoint=args.endpoint, insecure=True, timeout=10)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        inner = OTLPMetricExporter(endpoint=args.endpoint.rstrip("/") + "/v1/metrics", timeout=10)
    exporter = RecordingExporter(inner)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
    view = View(instrument_name="demo.exp.latency", aggregation=ExponentialBucketHistogramAggregation(max_size=160))
    provider = MeterProvider(resource=resource, metric_readers=[reader], views=[view])
    latency = provider.get_meter("spindle.interop.native", version="1.0.0").create_histogram(
        "demo.exp.latency", unit="s", description="Latency, exponential buckets")

    rng = random.Random(42)
    values, trace_ids, span_ids = [], [], []
    for _ in range(args.values):
        # Log-normal around 50 ms: spread over many exponential buckets.
        v = round(math.exp(rng.gauss(math.log(0.05), 1.0)), 9)
        with tracer.start_as_current_span("op") as span:
            ctx = span.get_span_context()
            trace_ids.append(format(ctx.trace_id, "032x"))
            span_ids.append(format(ctx.span_id, "016x"))
            latency.record(v, {"route": "/search"})
        values.append(v)
    provider.force_flush()
    provider.shutdown()
    if not exporter.results or any(r != MetricExportResult.SUCCESS for r in exporter.results):
        fail(f"export failed: {exporter.results}")
    if not exporter.exemplars:
        fail("the SDK attached no exemplars")
    print(json.dumps({"count": len(values), "sum": math.fsum(values), "values": values,
                      "trace_ids": trace_ids, "span_ids": span_ids,
                      "scale": exporter.scales[-1], "exemplars": exporter.exemplars}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
