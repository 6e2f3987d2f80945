#!/usr/bin/env python3
"""Export one counter through the real OpenTelemetry Python SDK with the headers of
``OTEL_EXPORTER_OTLP_HEADERS`` (set from ``--headers`` before the exporter is built, so the SDK parses
it as it would from the environment), and print the export result as JSON.

Used by ``tests/tests/interop_auth.rs``: the SDK's OTLP exporter (gRPC or HTTP/protobuf) is the peer
whose credentials Spindle accepts or refuses. The script itself never fails on a refused export: it
prints ``{"result": "FAILURE"}`` and the SDK's own log lines go to stderr.
"""

import argparse
import json
import os

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource


class RecordingExporter(MetricExporter):
    """Delegates to the SDK's exporter and remembers every result."""

    def __init__(self, inner: MetricExporter):
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.results = []

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self.results.append(result)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("grpc", "http"), required=True)
    parser.add_argument("--endpoint", required=True, help="http://host:port (gRPC) or the /v1/metrics URL")
    parser.add_argument("--service", required=True, help="service.name")
    parser.add_argument("--headers", default=None, help="OTEL_EXPORTER_OTLP_HEADERS, e.g. authorization=Bearer%%20tok")
    args = parser.parse_args()
    if args.headers is not None:
        os.environ["OTEL_EXPORTER_OTLP_HEADERS"] = args.headers
    else:
        os.environ.pop("OTEL_EXPORTER_OTLP_HEADERS", None)
    if args.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        inner = OTLPMetricExporter(endpoint=args.endpoint, insecure=True, timeout=10)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        inner = OTLPMetricExporter(endpoint=args.endpoint, timeout=10)
    exporter = RecordingExporter(inner)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": args.service}), metric_readers=[reader])
    counter = provider.get_meter("auth-probe", "1.0").create_counter("auth.probe", unit="1")
    counter.add(7, {"route": "/pay"})
    # One export: shutdown collects and exports once (a force_flush would add a second at exit).
    provider.shutdown()
    ok = bool(exporter.results) and all(r == MetricExportResult.SUCCESS for r in exporter.results)
    print(json.dumps({"result": "SUCCESS" if ok else "FAILURE"}))


if __name__ == "__main__":
    main()
