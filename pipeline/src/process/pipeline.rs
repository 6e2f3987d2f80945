//! The per-batch path behind the receivers: enrich → translate → cardinality limits → store for
//! metrics; span checks, enrichment, span metrics and forwarding for traces.
//!
//! In: decoded OTLP requests from the receivers, by value ([`Consumer`]). Out: series written into
//! the [`Store`], spans queued on the [`TraceExporter`] (when there is a backend), and the
//! [`Outcome`] or [`Refusal`] the receivers answer with. `app` builds the [`Pipeline`] and wires it.

use std::sync::Arc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::export::traces::TraceExporter;
use crate::model::Outcome;
use crate::model::batch::Samples;
use crate::process::cardinality::Limiter;
use crate::process::enrich::Enricher;
use crate::process::span_metrics::SpanMetrics;
use crate::process::translate::Translator;
use crate::receive::Consumer;
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
                ss.spans.retain(|s| s.trace_id.len() == 16 && s.span_id.len() == 8);
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
        let (counts, exemplars) = metrics.map(|m| (m.counts, m.exemplars)).unzip();
        let exemplars = match &self.exporter {
            // Queue first: when the queue refuses, nothing has been counted and the client retries
            // (`receive::status` maps the queue's full / closed to "overloaded").
            Some(exporter) => {
                exporter
                    .try_enqueue(req, out.accepted, exemplars.unwrap_or_default())
                    .map_err(Refusal::from)?;
                None
            }
            // No backend: exemplars name spans Spindle received.
            None => exemplars,
        };
        if let Some(c) = counts {
            self.write(c, true);
        }
        // After the counts, so the cardinality limiter sends each exemplar where its count went.
        if let Some(e) = exemplars {
            self.write(e, false);
        }
        Ok(out)
    }
}
