#!/usr/bin/env python3
"""Send OTel metrics with hostile label values to Spindle through the real OpenTelemetry Python SDK.

A real, independent peer for the status page's browser test. A MeterProvider whose only reader
exports over OTLP/HTTP (protobuf) records a counter ``page.visits`` (unit ``{visit}``) with one
attribute, ``path``, over ``--paths`` distinct values: the first is
``<script>alert(document.title)</script>`` and the others ``/items/<n>"'&<b>``, so that every value
carries HTML markup. The SDK's own cardinality limit is raised above ``--paths``. One export
(``force_flush``); it must succeed.

Prints ONE JSON line on stdout, ``{"metric": "page.visits", "points": N, "hostile": "<script>…"}``,
and exits 0; on failure prints the reason on stderr and exits non-zero.
"""

import argparse
import json
import math
import sys

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

HOSTILE = "<script>alert(document.title)</script>"


class RecordingExporter(OTLPMetricExporter):
    """The SDK's OTLP/HTTP exporter, recording each export's result."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.results = []

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self.results.append(result)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="http://host:port of Spindle's OTLP/HTTP receiver")
    parser.add_argument("--service", required=True, help="service.name")
    parser.add_argument("--paths", type=int, default=300, help="distinct path values (default 300)")
    args = parser.parse_args()

    exporter = RecordingExporter(endpoint=args.endpoint.rstrip("/") + "/v1/metrics", timeout=20)
    reader = PeriodicExportingMetricReader(
        exporter, export_interval_millis=math.inf, cardinality_limits={Counter: args.paths + 100}
    )
    provider = MeterProvider(resource=Resource.create({"service.name": args.service}), metric_readers=[reader])
    visits = provider.get_meter("spindle.interop.page", version="0.1.0").create_counter(
        "page.visits", unit="{visit}", description="Visits per <path> & \"page\""
    )
    values = [HOSTILE] + [f"/items/{n}\"'&<b>" for n in range(1, args.paths)]
    for i, path in enumerate(values):
        visits.add(i % 5 + 1, {"path": path})
    if not provider.force_flush(timeout_millis=30_000):
        print("send_page_traffic.py: force_flush timed out", file=sys.stderr)
        return 2
    provider.shutdown()
    if not exporter.results or any(r != MetricExportResult.SUCCESS for r in exporter.results):
        print(f"send_page_traffic.py: export failed: {exporter.results}", file=sys.stderr)
        return 2
    print(json.dumps({"metric": "page.visits", "points": len(values), "hostile": HOSTILE}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
