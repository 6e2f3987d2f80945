//! The per-batch path behind the receivers: enrich → translate → cardinality limits → store for
//! metrics; span checks, enrichment, span metrics and forwarding for traces.
//!
//! In: OTLP requests from the receivers, by value ([`Consumer`]): decoded, or protobuf traces as
//! their bytes (forwarded as they came when nothing changes them). Out: series written into
//! the [`Store`], spans queued on the [`TraceExporter`] (when there is a backend), and the
//! [`Outcome`] or [`Refusal`] the receivers answer with. `app` builds the [`Pipeline`] and wires it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::export::sender::PushError;
use crate::export::traces::TraceExporter;
use crate::model::Durable;
use crate::model::Outcome;
use crate::model::batch::Samples;
use crate::process::cardinality::Limiter;
use crate::process::enrich::Enricher;
use crate::process::span_metrics::wire::WireRequest;
use crate::process::span_metrics::{SpanMetrics, SpanMetricsBatch};
use crate::process::translate::Translator;
use crate::receive::Consumer;
use crate::receive::decode::{Encoding, decode};
use crate::receive::status::Refusal;
use crate::store::Store;

/// The metrics and traces path behind the receivers.
#[derive(Debug)]
pub struct Pipeline {
    translator: Translator,
    store: Arc<Store>,
    span_metrics: Option<SpanMetrics>,
    exporter: Option<TraceExporter>,
    enricher: Option<Enricher>,
    limiter: Option<Arc<Limiter>>,
}

/// Writes translated metrics: through the cardinality limiter (when there is one), then into the
/// store, both on the store's clock so they expire series in step. `admit` is false for batches
/// that must not create series (span-metric exemplars published after their counts).
pub fn write_metrics(store: &Store, limiter: Option<&Limiter>, mut batch: Samples, admit: bool) -> Outcome {
    let now = Instant::now();
    if let Some(l) = limiter {
        l.limit(&mut batch, store.tick(now), admit);
    }
    store.write(batch, now)
}

impl Pipeline {
    /// A pipeline writing translated metrics and span metrics into `store`, and forwarding spans to
    /// `exporter` when there is one.
    pub fn new(
        translator: Translator,
        store: Arc<Store>,
        span_metrics: Option<SpanMetrics>,
        exporter: Option<TraceExporter>,
    ) -> Self {
        Self {
            translator,
            store,
            span_metrics,
            exporter,
            enricher: None,
            limiter: None,
        }
    }

    /// The same pipeline, passing every metrics batch through `limiter` before the store.
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    fn write(&self, batch: Samples, admit: bool) -> Outcome {
        write_metrics(&self.store, self.limiter.as_deref(), batch, admit)
    }

    /// The same pipeline, enriching every request with `enricher` before anything else reads it
    /// (a no-op enricher is dropped, so it costs nothing).
    pub fn with_enricher(mut self, enricher: Enricher) -> Self {
        self.enricher = (!enricher.is_noop()).then_some(enricher);
        self
    }
}

impl Consumer for Pipeline {
    fn consume_metrics(&self, mut req: ExportMetricsServiceRequest) -> Result<Outcome, Refusal> {
        if let Some(e) = &self.enricher {
            e.metrics(&mut req);
        }
        let samples = self.translator.translate(req);
        Ok(self.write(samples, true))
    }

    /// A protobuf metrics request as it was received. Without enrichment (which changes the
    /// decoded request) it is translated straight from its bytes
    /// ([`Translator::translate_encoded`]: the same samples, no prost structs); bytes the reader
    /// refuses are decoded, so the sender gets prost's own message, or prost's result.
    fn consume_metrics_encoded(&self, body: Bytes) -> Result<Outcome, Refusal> {
        if self.enricher.is_none()
            && let Ok(samples) = self.translator.translate_encoded(&body)
        {
            return Ok(self.write(samples, true));
        }
        self.consume_metrics(decode(&body, Encoding::Protobuf)?)
    }

    fn consume_traces(&self, mut req: ExportTraceServiceRequest) -> Result<Outcome, Refusal> {
        // Spans without valid ids are rejected, and neither counted nor forwarded.
        let mut out = Outcome::default();
        // So are spans past `receivers.otlp.limits.max_attributes_per_span`.
        if let Some(sm) = &self.span_metrics {
            sm.limit_spans(&mut req, &mut out);
        }
        for rs in &mut req.resource_spans {
            for ss in &mut rs.scope_spans {
                let before = ss.spans.len();
                ss.spans.retain(|s| valid_ids(&s.trace_id, &s.span_id));
                out.accepted += ss.spans.len() as u64;
                let bad = (before - ss.spans.len()) as u64;
                if bad > 0 {
                    out.reject(bad, || {
                        "span with a trace_id that is not 16 bytes or a span_id that is not 8 bytes".into()
                    });
                }
            }
        }
        if let Some(e) = &self.enricher {
            e.traces(&mut req);
        }
        let metrics = self
            .span_metrics
            .as_ref()
            .filter(|sm| sm.enabled())
            .map(|sm| sm.process(&req));
        let accepted = out.accepted;
        out.durable = self.forward(metrics, |exporter, exemplars| {
            exporter.try_enqueue(req, accepted, exemplars)
        })?;
        Ok(out)
    }

    /// A protobuf traces request as it was received. When nothing would change its spans (no
    /// enrichment, every span passes the checks), span metrics are read from the bytes
    /// ([`WireRequest`]) and the bytes themselves are queued for forwarding: the request is never
    /// decoded into structs nor encoded again, and the backend receives exactly what the sender
    /// sent. Otherwise (and for bytes the reader refuses, so the sender gets prost's own message)
    /// it takes the decoded path of [`Consumer::consume_traces`].
    fn consume_traces_encoded(&self, body: Bytes) -> Result<Outcome, Refusal> {
        if self.enricher.is_some() {
            return self.consume_traces(decode(&body, Encoding::Protobuf)?);
        }
        let (metrics, accepted) = match WireRequest::parse(&body) {
            Ok(wire)
                if wire.spans.iter().all(|s| valid_ids(s.trace_id, s.span_id))
                    && self.span_metrics.as_ref().is_none_or(|sm| sm.admits_all(&wire)) =>
            {
                let metrics = self
                    .span_metrics
                    .as_ref()
                    .filter(|sm| sm.enabled())
                    .map(|sm| sm.process_wire(&wire));
                (metrics, wire.spans.len() as u64)
            }
            _ => return self.consume_traces(decode(&body, Encoding::Protobuf)?),
        };
        let durable = self.forward(metrics, |exporter, exemplars| {
            exporter.try_enqueue_encoded(body, accepted, exemplars)
        })?;
        Ok(Outcome {
            accepted,
            durable,
            ..Outcome::default()
        })
    }
}

impl Pipeline {
    /// Queues a request's spans on the exporter (`enqueue`, with the exemplars that name them)
    /// and writes its span metrics: the counts now, the exemplars once the spans are forwarded (or
    /// now, when there is no backend).
    ///
    /// Returns the durable queue's write the receiver awaits before answering, if any.
    ///
    /// # Errors
    /// [`Refusal::Overloaded`] when the exporter's queue refuses; nothing was counted then.
    fn forward(
        &self,
        metrics: Option<SpanMetricsBatch>,
        enqueue: impl FnOnce(&TraceExporter, Samples) -> Result<Option<Durable>, PushError>,
    ) -> Result<Option<Durable>, Refusal> {
        let (counts, exemplars) = metrics.map(|m| (m.counts, m.exemplars)).unzip();
        let (exemplars, durable) = match &self.exporter {
            // Queue first: when the queue refuses, nothing has been counted and the client retries
            // (`receive::status` maps the queue's full / closed to "overloaded").
            Some(exporter) => (
                None,
                enqueue(exporter, exemplars.unwrap_or_default()).map_err(Refusal::from)?,
            ),
            // No backend: exemplars name spans Spindle received.
            None => (exemplars, None),
        };
        if let Some(c) = counts {
            self.write(c, true);
        }
        // After the counts, so the cardinality limiter sends each exemplar where its count went.
        if let Some(e) = exemplars {
            self.write(e, false);
        }
        Ok(durable)
    }
}

/// Whether a span's ids have their lengths (16 and 8 bytes); spans without are rejected.
fn valid_ids(trace_id: &[u8], span_id: &[u8]) -> bool {
    trace_id.len() == 16 && span_id.len() == 8
}
