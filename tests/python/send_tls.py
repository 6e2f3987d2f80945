"""Sends one span and one counter with the OpenTelemetry Python SDK's OTLP exporters, over gRPC
or HTTP, and prints the two export results as JSON ({"spans": "SUCCESS"|"FAILURE", "metrics": ...}).

Usage: send_tls.py grpc|http SERVICE

Everything about the connection comes from the SDK's own environment variables:
OTEL_EXPORTER_OTLP_ENDPOINT (https://… for TLS), OTEL_EXPORTER_OTLP_CERTIFICATE (the CA),
OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE / OTEL_EXPORTER_OTLP_CLIENT_KEY (mTLS),
OTEL_EXPORTER_OTLP_TIMEOUT.
"""

import json
import sys

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

protocol, service = sys.argv[1], sys.argv[2]
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
elif protocol == "http":
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
else:
    sys.exit(f"unknown protocol {protocol}")

resource = Resource.create({"service.name": service})

finished = InMemorySpanExporter()
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(SimpleSpanProcessor(finished))
with tracer_provider.get_tracer("tls-test").start_as_current_span("tls-span"):
    pass

reader = InMemoryMetricReader()
meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
meter_provider.get_meter("tls-test").create_counter("tls_requests").add(5)
metrics_data = reader.get_metrics_data()

spans = OTLPSpanExporter().export(finished.get_finished_spans())
metrics = OTLPMetricExporter().export(metrics_data)
print(json.dumps({"spans": spans.name, "metrics": metrics.name}))
