#!/usr/bin/env python3
"""Send spans to Spindle through the real OpenTelemetry Python SDK.

A real, independent peer for Spindle's trace interop tests. It builds a TracerProvider (ALWAYS_ON
sampler) with a BatchSpanProcessor (``--batch-size`` spans per export) around the SDK's own OTLP span
exporter (gRPC or HTTP/protobuf), and creates ``--traces`` traces, each with:

* a root span ``GET /users/{id}`` of kind SERVER (attribute ``http.route``), status UNSET, and
* ``--spans-per-trace - 1`` children cycling through the kinds and names in ``CHILDREN``
  (INTERNAL, CLIENT, PRODUCER, CONSUMER), every third child with status ERROR and every fifth
  with status OK.

Durations are set explicitly (start and end timestamps, ending now) so they spread over several
histogram buckets without sleeping. After ``force_flush`` the script checks what the SDK really
exported (a wrapping exporter records every batch): every export must have succeeded and every span
created must have been exported exactly once. It then prints ONE JSON line on stdout:

    {"service": ..., "spans": [{"trace_id": 32 hex, "span_id": 16 hex, "name": ...,
      "kind": "SPAN_KIND_SERVER", "status": "STATUS_CODE_UNSET", "duration_ms": 2001}, ...]}

and exits 0; on any failure it prints the reason on stderr and exits non-zero.
"""

import argparse
import json
import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode

ROOT = ("GET /users/{id}", SpanKind.SERVER)
CHILDREN = (
    ("render user", SpanKind.INTERNAL),
    ("SELECT users", SpanKind.CLIENT),
    ("orders publish", SpanKind.PRODUCER),
    ("orders process", SpanKind.CONSUMER),
)
# Span durations in milliseconds, cycled over; they land in different default buckets.
DURATIONS_MS = (1, 3, 7, 20, 60, 150, 400, 1200)
STATUS_NAMES = {
    StatusCode.UNSET: "STATUS_CODE_UNSET",
    StatusCode.OK: "STATUS_CODE_OK",
    StatusCode.ERROR: "STATUS_CODE_ERROR",
}


def fail(message: str) -> None:
    """Print a message on stderr and exit with status 2."""
    print(f"send_spans.py: {message}", file=sys.stderr)
    sys.exit(2)


class RecordingExporter(SpanExporter):
    """Delegates to the real OTLP span exporter and records the result and span ids of every export."""

    def __init__(self, inner: SpanExporter):
        self.inner = inner
        self.exports = []  # (result, [(trace_id hex, span_id hex)])

    def export(self, spans) -> SpanExportResult:
        ids = [(format(s.context.trace_id, "032x"), format(s.context.span_id, "016x")) for s in spans]
        result = self.inner.export(spans)
        self.exports.append((result, ids))
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.inner.shutdown()


def make_exporter(protocol: str, endpoint: str) -> SpanExporter:
    """Build the SDK's own OTLP span exporter for the protocol."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    return OTLPSpanExporter(endpoint=url, timeout=10)


def kind_name(kind: SpanKind) -> str:
    """OTLP enum name of a span kind, as Spindle's `span_kind` label spells it."""
    return f"SPAN_KIND_{kind.name}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("grpc", "http"), required=True)
    parser.add_argument(
        "--endpoint",
        required=True,
        help="gRPC: http://host:port; HTTP: http://host:port (/v1/traces is appended when missing)",
    )
    parser.add_argument("--service", required=True, help="service.name")
    parser.add_argument("--traces", type=int, required=True, help="number of traces")
    parser.add_argument("--spans-per-trace", type=int, default=4, help="spans per trace, root included (default 4)")
    parser.add_argument("--batch-size", type=int, default=32, help="spans per SDK export (default 32)")
    args = parser.parse_args()
    if args.traces < 1 or args.spans_per_trace < 1 or args.batch_size < 1:
        fail("--traces, --spans-per-trace and --batch-size must be at least 1")

    resource = Resource.create({"service.name": args.service, "service.instance.id": f"{args.service}-1"})
    provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
    exporter = RecordingExporter(make_exporter(args.protocol, args.endpoint))
    # Exports happen every `--batch-size` spans and on force_flush (the timer is too long to matter),
    # so Spindle receives several requests.
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=100_000,
            max_export_batch_size=args.batch_size,
            schedule_delay_millis=60_000,
        )
    )
    tracer = provider.get_tracer("spindle.interop.python.traces", "1.0.0")

    sent = []
    counter = 0
    for t in range(args.traces):
        now = time.time_ns()
        root_ms = DURATIONS_MS[t % len(DURATIONS_MS)] + 2000
        root = tracer.start_span(
            ROOT[0],
            kind=ROOT[1],
            attributes={"http.route": "/users/{id}", "http.request.method": "GET", "trace.index": t},
            start_time=now - root_ms * 1_000_000,
        )
        ctx = root.get_span_context()
        if not ctx.trace_flags.sampled:
            fail("root span is not sampled although the sampler is ALWAYS_ON")
        parent = trace.set_span_in_context(root)
        for c in range(args.spans_per_trace - 1):
            name, kind = CHILDREN[c % len(CHILDREN)]
            ms = DURATIONS_MS[counter % len(DURATIONS_MS)]
            counter += 1
            start = now - (ms + 1) * 1_000_000
            child = tracer.start_span(
                name, context=parent, kind=kind, attributes={"child.index": c}, start_time=start
            )
            status = StatusCode.UNSET
            if counter % 3 == 0:
                status = StatusCode.ERROR
                child.set_status(Status(StatusCode.ERROR, "injected failure"))
            elif counter % 5 == 0:
                status = StatusCode.OK
                child.set_status(Status(StatusCode.OK))
            cctx = child.get_span_context()
            if cctx.trace_id != ctx.trace_id:
                fail("child span is not in its root's trace")
            child.end(end_time=start + ms * 1_000_000)
            sent.append(
                {
                    "trace_id": format(cctx.trace_id, "032x"),
                    "span_id": format(cctx.span_id, "016x"),
                    "name": name,
                    "kind": kind_name(kind),
                    "status": STATUS_NAMES[status],
                    "duration_ms": ms,
                }
            )
        root.end(end_time=now)
        sent.append(
            {
                "trace_id": format(ctx.trace_id, "032x"),
                "span_id": format(ctx.span_id, "016x"),
                "name": ROOT[0],
                "kind": kind_name(ROOT[1]),
                "status": STATUS_NAMES[StatusCode.UNSET],
                "duration_ms": root_ms,
            }
        )

    if not provider.force_flush(timeout_millis=30_000):
        fail("force_flush timed out")
    failed = [r for r, _ in exporter.exports if r != SpanExportResult.SUCCESS]
    if failed:
        fail(f"{len(failed)} of {len(exporter.exports)} exports to {args.endpoint} over {args.protocol} failed: {failed}")
    exported = [pair for _, ids in exporter.exports for pair in ids]
    created = [(s["trace_id"], s["span_id"]) for s in sent]
    if len(exporter.exports) < 2 and len(created) > args.batch_size:
        fail(f"expected several exports of at most {args.batch_size} spans, got {len(exporter.exports)}")
    if sorted(exported) != sorted(created):
        fail(f"the SDK exported {len(exported)} spans, {len(set(exported))} distinct, but {len(created)} were created")
    provider.shutdown()

    print(json.dumps({"service": args.service, "protocol": args.protocol, "spans": sent}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
