//! A per-layer filter that lets the OpenTelemetry SDK's own log events through at most once per
//! interval per call site, so a Spindle that is down produces one "export failed" line per
//! interval instead of one per batch and retry.
//!
//! What comes in: every event the fmt layer would print. What goes out: the same events, except
//! repeats of an `opentelemetry*`-target call site within the interval. The map is bounded by the
//! number of call sites, which is fixed at compile time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Metadata, Subscriber, subscriber::Interest};
use tracing_subscriber::layer::{Context, Filter};

/// Whether `target` belongs to the OpenTelemetry SDK or its exporters.
pub(crate) fn is_otel_target(target: &str) -> bool {
    target.starts_with("opentelemetry")
}

/// The filter; see the module documentation.
#[derive(Debug)]
pub(crate) struct ExportLogThrottle {
    interval: Duration,
    last: Mutex<HashMap<Identifier, Instant>>,
}

impl ExportLogThrottle {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    fn allow(&self, meta: &Metadata<'_>) -> bool {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        match last.get_mut(&meta.callsite()) {
            Some(at) if now.duration_since(*at) < self.interval => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                last.insert(meta.callsite(), now);
                true
            }
        }
    }
}

impl<S: Subscriber> Filter<S> for ExportLogThrottle {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_event() && is_otel_target(meta.target()) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        !is_otel_target(meta.target()) || self.allow(meta)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{Layer, fmt};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn emit_export_error() {
        tracing::error!(target: "opentelemetry_sdk", name = "BatchSpanProcessor.ExportError", "export failed");
    }

    #[test]
    fn repeats_within_the_interval_are_dropped_other_events_pass() {
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(ExportLogThrottle::new(Duration::from_millis(300)));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..50 {
                emit_export_error();
                tracing::info!("ordinary line");
            }
            std::thread::sleep(Duration::from_millis(350));
            emit_export_error();
            emit_export_error();
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.matches("export failed").count(), 2, "{text}");
        assert_eq!(text.matches("ordinary line").count(), 50);
    }
}
