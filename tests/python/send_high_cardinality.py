#!/usr/bin/env python3
"""Send high-cardinality OTel metrics to Spindle through the real OpenTelemetry Python SDK.

A real, independent peer for Spindle's cardinality interop test. A MeterProvider whose only reader
exports over OTLP (gRPC or HTTP/protobuf) with the SDK's default, cumulative temporality records:

* Counter   ``hc.requests`` unit ``{request}``, attribute ``user_id`` (``u0`` … ``u<users-1>``)
* Histogram ``hc.latency``  unit ``ms``, attribute ``user_id``, bucket bounds ``BOUNDARIES``

in two rounds, each followed by ``meter_provider.force_flush()``:

1. every user but the last ``--late-users`` gets a counter increment and one or two histogram
   values;
2. every third user gets more, and the late users appear for the first time.

Cumulative temporality makes round 2 re-send every stream's running total, so streams that Spindle
folded into an overflow series in round 1 arrive again: that is what checks exactness for
cumulative inputs. All increments and values are integers, so every total is exact in f64.

The SDK's own cardinality limit (2000 attribute sets per instrument by default) is raised on the
reader so the SDK really exports every distinct ``user_id``; a wrapping exporter counts the points
of every export and fails the run if the SDK folded anything into its own overflow point, or if an
export fails.

Prints ONE JSON line on stdout (see ``summary`` below) and exits 0; on failure prints the reason on
stderr and exits non-zero.
"""

import argparse
import json
import math
import sys
import time

from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

COUNTER = "hc.requests"
HISTOGRAM = "hc.latency"
# Explicit bucket boundaries (milliseconds) advised for hc.latency.
BOUNDARIES = (10.0, 50.0, 100.0, 250.0)
SDK_OVERFLOW_ATTRIBUTE = "otel.metric.overflow"


def fail(message: str) -> None:
    """Print a message on stderr and exit with status 2."""
    print(f"send_high_cardinality.py: {message}", file=sys.stderr)
    sys.exit(2)


class CountingExporter(MetricExporter):
    """Delegates to the real OTLP exporter; counts points per metric and records every result."""

    def __init__(self, inner: MetricExporter):
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.exports = []  # one entry per export call: {"result", "points": {metric: n}, "sdk_overflow", "seconds"}

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        points = {}
        sdk_overflow = 0
        for rm in metrics_data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    dps = metric.data.data_points
                    points[metric.name] = points.get(metric.name, 0) + len(dps)
                    sdk_overflow += sum(1 for p in dps if (p.attributes or {}).get(SDK_OVERFLOW_ATTRIBUTE))
        t0 = time.monotonic()
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        seconds = time.monotonic() - t0
        self.exports.append({"result": result, "points": points, "sdk_overflow": sdk_overflow, "seconds": seconds})
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def make_exporter(protocol: str, endpoint: str, batch: int) -> MetricExporter:
    """The SDK's own OTLP metric exporter, splitting exports into requests of `batch` points."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=20, max_export_batch_size=batch)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/metrics"):
        url += "/v1/metrics"
    return OTLPMetricExporter(endpoint=url, timeout=20, max_export_batch_size=batch)


# What each user records. Integers, varied per user, so totals are exact and folded streams differ.
def round1_increment(i: int) -> int:
    return i % 7 + 1


def round2_increment(i: int) -> int:
    return i % 5 + 1


def round1_values(i: int) -> tuple:
    first = (i * 37) % 300 + 1  # 1..300: lands in every bucket
    return (first,) if i % 2 else (first, (i * 11) % 60 + 5)


def round2_values(i: int) -> tuple:
    return ((i * 13) % 400 + 1,)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("grpc", "http"), required=True)
    parser.add_argument(
        "--endpoint",
        required=True,
        help="gRPC: http://host:port; HTTP: http://host:port (/v1/metrics is appended when missing)",
    )
    parser.add_argument("--service", required=True, help="service.name")
    parser.add_argument("--users", type=int, default=100_000, help="distinct user_id values (default 100000)")
    parser.add_argument(
        "--late-users", type=int, default=500, help="how many of the users first appear in round 2 (default 500)"
    )
    parser.add_argument("--batch", type=int, default=10_000, help="data points per OTLP request (default 10000)")
    args = parser.parse_args()
    if not 0 <= args.late_users < args.users:
        fail("--late-users must be in [0, --users)")

    resource = Resource.create({"service.name": args.service, "service.instance.id": f"{args.service}-1"})
    exporter = CountingExporter(make_exporter(args.protocol, args.endpoint, args.batch))
    # Raise the SDK's per-instrument cardinality limit (default 2000) above the number of users, so
    # the SDK itself folds nothing into its own otel.metric.overflow point.
    limit = args.users + 1000
    reader = PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=math.inf,
        cardinality_limits={Counter: limit, Histogram: limit},
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meter_provider.get_meter("spindle.interop.cardinality", version="0.1.0")
    requests = meter.create_counter(COUNTER, unit="{request}", description="Requests per user")
    latency = meter.create_histogram(
        HISTOGRAM,
        unit="ms",
        description="Latency per user",
        explicit_bucket_boundaries_advisory=list(BOUNDARIES),
    )

    users = args.users
    early = users - args.late_users
    attrs = [{"user_id": f"u{i}"} for i in range(users)]
    counter_total = 0
    values = []  # every recorded histogram value

    def record(i: int, increment: int, vals: tuple) -> None:
        nonlocal counter_total
        requests.add(increment, attrs[i])
        counter_total += increment
        for v in vals:
            latency.record(v, attrs[i])
            values.append(v)

    timings = {}
    rounds = []
    for round_no in (1, 2):
        t0 = time.monotonic()
        if round_no == 1:
            for i in range(early):
                record(i, round1_increment(i), round1_values(i))
        else:
            for i in range(0, early, 3):
                record(i, round2_increment(i), round2_values(i))
            for i in range(early, users):
                record(i, round1_increment(i), round1_values(i))
        t1 = time.monotonic()
        before = len(exporter.exports)
        if not meter_provider.force_flush(timeout_millis=60_000):
            fail(f"round {round_no}: force_flush timed out")
        t2 = time.monotonic()
        timings[f"round{round_no}_record_s"] = round(t1 - t0, 3)
        mine = exporter.exports[before:]
        timings[f"round{round_no}_flush_s"] = round(t2 - t1, 3)
        timings[f"round{round_no}_otlp_export_s"] = round(sum(e["seconds"] for e in mine), 3)
        if not mine:
            fail(f"round {round_no}: force_flush exported nothing")
        for e in mine:
            if e["result"] != MetricExportResult.SUCCESS:
                fail(f"round {round_no}: export to {args.endpoint} over {args.protocol} failed: {e['result']}")
            if e["sdk_overflow"]:
                fail(f"round {round_no}: the SDK folded {e['sdk_overflow']} points into its own overflow point")
        points = {}
        for e in mine:
            for name, n in e["points"].items():
                points[name] = points.get(name, 0) + n
        # Cumulative: every stream seen so far is exported again.
        seen = early if round_no == 1 else users
        for name in (COUNTER, HISTOGRAM):
            if points.get(name) != seen:
                fail(f"round {round_no}: the SDK exported {points.get(name)} points of {name}, expected {seen}")
        rounds.append({"points": points})

    meter_provider.shutdown()

    buckets = {repr(b): sum(1 for v in values if v <= b) for b in BOUNDARIES}
    buckets["+Inf"] = len(values)
    summary = {
        "protocol": args.protocol,
        "service": args.service,
        "instance": f"{args.service}-1",
        "users": users,
        "late_users": args.late_users,
        "rounds": rounds,
        "counter": {"name": COUNTER, "total": counter_total},
        "histogram": {"name": HISTOGRAM, "count": len(values), "sum": sum(values), "buckets": buckets},
        "timings": timings,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
