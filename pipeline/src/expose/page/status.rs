//! The status page, `GET /`: a header with the window the rates cover, then receivers,
//! exporters, store, the cardinality explorer's top metrics and the effective configuration.
//! Sections with `data-live` are the ones the script swaps in on every refresh.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::history::{Rates, Snapshot, WINDOW};
use super::html::{self, Age, Bar, Bytes, Count, Esc, PerSecond, Query, Seconds};
use super::{ExporterInfo, PageState};
use crate::expose::api::families_by_series;
use crate::process::cardinality::{FamilySnapshot, LimiterSnapshot};

pub(super) fn render(state: &PageState, top: usize, out: &mut String) {
    let e = &state.expose;
    let active = e.store.series_count();
    let snap = Arc::new(Snapshot::take(&*e.telemetry, active, Instant::now()));
    let base = state.history.record(snap.clone());
    let rates = Rates {
        now: &snap,
        base: base.as_deref(),
    };
    let body = if rates.base.is_none() { " data-no-rates" } else { "" };
    html::open(out, "Spindle status", &state.info.version, body);
    summary(state, &rates, out);
    receivers(&rates, out);
    exporters(&state.info.exporters, &rates, out);
    let limiter = e.limiter.snapshot();
    store(state, &rates, &limiter, out);
    cardinality(state, &limiter, top, out);
    let _ = writeln!(
        out,
        "<section id=\"config\" aria-labelledby=\"config-h\"><h2 id=\"config-h\">Effective configuration</h2>\
         <details><summary>Every key with its value, as <code>spindle print-config</code> prints it \
         (secrets as <code>&lt;redacted&gt;</code>)</summary><pre>{}</pre></details></section>",
        Esc(&state.info.config_yaml)
    );
    html::close(out, true);
}

fn summary(state: &PageState, rates: &Rates<'_>, out: &mut String) {
    let window = match rates.span() {
        Some(d) => format!("Rates are per second over the last {:.1} s.", d.as_secs_f64()),
        None => "Rates need an earlier view: they appear on the next refresh.".to_string(),
    };
    let _ = write!(
        out,
        "<h1>Status</h1>\n<section id=\"summary\" data-live><p>Up {}; figures as of <time datetime=\"{now}\">{now}</time>. \
         {window} Totals are since start.</p></section>\n\
         <p id=\"live\" class=\"muted\" aria-live=\"polite\"></p>\
         <noscript><p class=\"muted\">Without JavaScript this page does not refresh itself: reload it for new figures \
         (its rates then cover the time since an earlier view, as it says above; {} s or more once views are that far apart).</p></noscript>\n",
        Age(state.started.elapsed()),
        WINDOW.as_secs(),
        now = humantime::format_rfc3339_seconds(SystemTime::now()),
    );
}

/// `other` with the labels of `key` (a `name{labels}` key of another sample name).
fn sibling(key: &str, name: &str, other: &str) -> String {
    format!("{other}{}", key.get(name.len()..).unwrap_or(""))
}

/// A rate over a total: `12.5/s` above `1,234` (muted), in a cell of class `n` and `class`.
fn rate_and_total(out: &mut String, rates: &Rates<'_>, key: &str, class: &str) {
    let _ = write!(
        out,
        "<td class=\"n{class}\" data-value=\"{}\">{}<br><span class=\"muted\">{}</span></td>",
        rates.value(key),
        PerSecond(rates.per_second(key)),
        Count(rates.value(key))
    );
}

fn label<'l>(labels: &'l [(String, String)], name: &str) -> &'l str {
    labels.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

fn receivers(rates: &Rates<'_>, out: &mut String) {
    const REQUESTS: &str = "spindle_received_requests_total";
    out.push_str(
        "<section id=\"receivers\" data-live aria-labelledby=\"receivers-h\"><h2 id=\"receivers-h\">Receivers</h2>\n\
         <table><caption>OTLP requests and items accepted, and items rejected in <code>partial_success</code>: \
         per second, and since start below</caption>\
         <thead><tr><th scope=\"col\">Signal</th><th scope=\"col\">Protocol</th><th scope=\"col\" class=\"n\">Requests</th>\
         <th scope=\"col\" class=\"n\">Items</th><th scope=\"col\" class=\"n\">Rejected items</th></tr></thead><tbody>\n",
    );
    for (key, labels, _) in rates.now.series(REQUESTS) {
        let _ = write!(
            out,
            "<tr><th scope=\"row\">{}</th><td>{}</td>",
            Esc(label(&labels, "signal")),
            Esc(label(&labels, "protocol"))
        );
        rate_and_total(out, rates, key, "");
        rate_and_total(out, rates, &sibling(key, REQUESTS, "spindle_received_items_total"), "");
        rate_and_total(out, rates, &sibling(key, REQUESTS, "spindle_rejected_items_total"), "");
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n<h3>Refusals</h3>\n");
    let refused: Vec<_> = rates
        .now
        .series("spindle_refused_requests_total")
        .filter(|(_, _, v)| *v > 0.0)
        .collect();
    if refused.is_empty() {
        out.push_str("<p>No request refused since start.</p>\n");
    } else {
        out.push_str(
            "<table><caption>Requests refused as a whole, by reason (the sender got an error status)</caption>\
             <thead><tr><th scope=\"col\">Signal</th><th scope=\"col\">Protocol</th><th scope=\"col\">Reason</th>\
             <th scope=\"col\" class=\"n\">Requests</th></tr></thead><tbody>\n",
        );
        for (key, labels, _) in &refused {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><th scope=\"row\">{}</th>",
                Esc(label(labels, "signal")),
                Esc(label(labels, "protocol")),
                Esc(label(labels, "reason"))
            );
            rate_and_total(out, rates, key, "");
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody></table>\n");
    }
    let limited: Vec<_> = rates
        .now
        .series("spindle_limited_items_total")
        .filter(|(_, _, v)| *v > 0.0)
        .collect();
    if !limited.is_empty() {
        out.push_str(
            "<table><caption>Items refused or truncated by <code>receivers.otlp.limits</code>, by reason</caption>\
             <thead><tr><th scope=\"col\">Signal</th><th scope=\"col\">Reason</th><th scope=\"col\" class=\"n\">Items</th></tr></thead><tbody>\n",
        );
        for (key, labels, _) in &limited {
            let _ = write!(
                out,
                "<tr><td>{}</td><th scope=\"row\">{}</th>",
                Esc(label(labels, "signal")),
                Esc(label(labels, "reason"))
            );
            rate_and_total(out, rates, key, "");
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str("</section>\n");
}

fn exporters(exporters: &[ExporterInfo], rates: &Rates<'_>, out: &mut String) {
    out.push_str(
        "<section id=\"exporters\" data-live aria-labelledby=\"exporters-h\"><h2 id=\"exporters-h\">Exporters</h2>\n\
         <table><caption>Queue fill against its bound (<code>queue_max_bytes</code>); items sent, attempts retried \
         and items dropped per second (since start below); attempt latency over the window: mean, and the bound 99% \
         fall under</caption>\
         <thead><tr><th scope=\"col\">Exporter</th><th scope=\"col\" class=\"n\">Queue</th>\
         <th scope=\"col\">Fill</th><th scope=\"col\" class=\"n\">Sent</th><th scope=\"col\" class=\"n\">Retried</th>\
         <th scope=\"col\" class=\"n\">Dropped</th><th scope=\"col\" class=\"n\">Latency</th>\
         <th scope=\"col\">Last error</th></tr></thead><tbody>\n",
    );
    for x in exporters {
        let [sent, dropped, retries, queue, capacity, duration] = x.kind.families();
        let _ = write!(
            out,
            "<tr id=\"exporter-{}\"><th scope=\"row\">{}",
            x.kind.items(),
            Esc(x.kind.title())
        );
        let Some(endpoint) = &x.endpoint else {
            out.push_str("</th><td colspan=\"7\" class=\"muted\">not configured</td></tr>\n");
            continue;
        };
        let (bytes, bound) = (rates.value(queue), rates.value(capacity));
        let _ = write!(
            out,
            "<br><code class=\"endpoint\">{}</code></th><td class=\"n queue\" data-bytes=\"{bytes}\" data-capacity=\"{bound}\">{}<br>\
             <span class=\"muted\">of {}</span></td><td>{}</td>",
            Esc(endpoint),
            Bytes(bytes),
            Bytes(bound),
            Bar {
                value: bytes,
                max: bound,
                of: "of the queue bound"
            }
        );
        rate_and_total(out, rates, sent, " sent");
        rate_and_total(out, rates, retries, " retried");
        let drops: Vec<_> = rates.now.series(dropped).collect();
        let total: f64 = drops.iter().map(|d| d.2).sum();
        let per_second = rates.sum_per_second(drops.iter().map(|d| d.0));
        let _ = write!(
            out,
            "<td class=\"n dropped\" data-value=\"{total}\">{}<br><span class=\"muted\">{}</span>",
            PerSecond(per_second),
            Count(total)
        );
        for (_, labels, v) in drops.iter().filter(|d| d.2 > 0.0) {
            let _ = write!(
                out,
                "<br><span class=\"bad\">{}: {}</span>",
                Esc(label(labels, "reason")),
                Count(*v)
            );
        }
        let (recent, _) = rates.mean(duration);
        let _ = write!(
            out,
            "</td><td class=\"n latency\">{}<br><span class=\"muted\">99% under {}</span></td>",
            Seconds(recent),
            Seconds(rates.quantile_bound(duration, 0.99))
        );
        match (x.last_error)() {
            None => out.push_str("<td class=\"muted\">none</td>"),
            Some(err) => {
                let ago = SystemTime::now().duration_since(err.at).unwrap_or_default();
                let _ = write!(
                    out,
                    "<td class=\"err\"><time datetime=\"{at}\">{at}</time> ({} ago, {}):<br><code>{}</code></td>",
                    Age(ago),
                    if err.permanent { "batch dropped" } else { "retried" },
                    Esc(&err.message),
                    at = humantime::format_rfc3339_seconds(err.at),
                );
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></section>\n");
}

fn store(state: &PageState, rates: &Rates<'_>, limiter: &LimiterSnapshot, out: &mut String) {
    const SCRAPE: &str = "spindle_scrape_duration_seconds";
    let active = rates.value("spindle_active_series");
    let max = state.info.store_max_series as f64;
    let _ = write!(
        out,
        "<section id=\"store\" data-live aria-labelledby=\"store-h\"><h2 id=\"store-h\">Store</h2>\n\
         <table><thead><tr><th scope=\"col\">Figure</th><th scope=\"col\" class=\"n\">Value</th><th scope=\"col\">Detail</th></tr></thead><tbody>\n\
         <tr><th scope=\"row\">Active series</th><td class=\"n\" id=\"active-series\" data-value=\"{active}\">{}</td>\
         <td>{} of <code>prometheus.max_series</code> ({})</td></tr>\n",
        Count(active),
        Bar {
            value: active,
            max,
            of: "of prometheus.max_series"
        },
        Count(max)
    );
    let expired = "spindle_expired_series_total";
    let _ = writeln!(
        out,
        "<tr><th scope=\"row\">Series expired</th><td class=\"n\" data-value=\"{}\">{}</td><td>{} \
         (not updated for <code>prometheus.series_ttl</code>)</td></tr>",
        rates.value(expired),
        Count(rates.value(expired)),
        PerSecond(rates.per_second(expired))
    );
    let count = format!("{SCRAPE}_count");
    let (recent, overall) = rates.mean(SCRAPE);
    let _ = write!(
        out,
        "<tr><th scope=\"row\">Scrapes of <code>/metrics</code></th><td class=\"n\" data-value=\"{}\">{}</td><td>{}</td></tr>\n\
         <tr><th scope=\"row\">Scrape duration</th><td class=\"n\">{}</td><td>mean over the window; 99% under {}; mean since start {}</td></tr>\n",
        rates.value(&count),
        Count(rates.value(&count)),
        PerSecond(rates.per_second(&count)),
        Seconds(recent),
        Seconds(rates.quantile_bound(SCRAPE, 0.99)),
        Seconds(overall)
    );
    let limited = limiter.series_count as f64;
    let _ = writeln!(
        out,
        "<tr><th scope=\"row\">Series counted by the cardinality limiter</th><td class=\"n\">{}</td>\
         <td>{} of its <code>max_series</code> ({}; one overflow slot per metric included)</td></tr>",
        Count(limited),
        Bar {
            value: limited,
            max: limiter.max_series as f64,
            of: "of the limiter's max_series"
        },
        Count(limiter.max_series as f64)
    );
    let folded: Vec<_> = rates.now.series("spindle_cardinality_folded_points_total").collect();
    let folded_total: f64 = folded.iter().map(|f| f.2).sum();
    let rejected: Vec<_> = rates.now.series("spindle_cardinality_rejected_points_total").collect();
    let rejected_total: f64 = rejected.iter().map(|f| f.2).sum();
    let _ = write!(
        out,
        "<tr><th scope=\"row\">Points folded into overflow series</th><td class=\"n\" data-value=\"{folded_total}\">{}</td><td>{}</td></tr>\n\
         <tr><th scope=\"row\">Points rejected by the cardinality limiter</th><td class=\"n\" data-value=\"{rejected_total}\">{}</td><td>{}</td></tr>\n\
         <tr><th scope=\"row\">Stream states</th><td class=\"n\">{}</td><td>cumulative streams whose last report is kept to fold or merge them exactly</td></tr>\n\
         </tbody></table></section>\n",
        Count(folded_total),
        PerSecond(rates.sum_per_second(folded.iter().map(|f| f.0))),
        Count(rejected_total),
        PerSecond(rates.sum_per_second(rejected.iter().map(|f| f.0))),
        Count(limiter.stream_states as f64),
    );
}

fn cardinality(state: &PageState, limiter: &LimiterSnapshot, top: usize, out: &mut String) {
    let e = &state.expose;
    let families = families_by_series(&e.store);
    let limits: HashMap<&str, &FamilySnapshot> = limiter.families.iter().map(|f| (&*f.name, f)).collect();
    let total: usize = families.iter().map(|f| f.0).sum();
    let _ = write!(
        out,
        "<section id=\"cardinality\" data-live aria-labelledby=\"cardinality-h\"><h2 id=\"cardinality-h\">Cardinality</h2>\n\
         <p>{} metrics with {} series. Each bar is a metric's series against its limit \
         (<code>max_series_per_metric</code> or its <code>metrics</code> override; the global <code>max_series</code> when it has none). \
         A metric's name opens its labels, its overflow series and what was folded or normalized, and why.</p>\n",
        Count(families.len() as f64),
        Count(total as f64)
    );
    if families.is_empty() {
        out.push_str("<p>No metric is stored yet.</p></section>\n");
        return;
    }
    let shown = top.min(families.len());
    let _ = writeln!(
        out,
        "<table id=\"top-metrics\"><caption>Top {shown} metrics by series{}</caption>\
         <thead><tr><th scope=\"col\" class=\"n\">#</th><th scope=\"col\">Metric</th><th scope=\"col\" class=\"n\">Series</th>\
         <th scope=\"col\" class=\"n\">Limit</th><th scope=\"col\">Fill</th><th scope=\"col\" class=\"n\">Folded points</th>\
         <th scope=\"col\" class=\"n\">Normalized values</th><th scope=\"col\" class=\"n\">Dropped labels</th></tr></thead><tbody>",
        if shown < families.len() {
            format!(
                " (of {}; <a href=\"/?top={}\">show more</a>)",
                families.len(),
                (top * 4).min(super::MAX_TOP)
            )
        } else {
            String::new()
        }
    );
    for (rank, (series, h)) in families.iter().take(top).enumerate() {
        let name = h.lock().meta.name.clone();
        let f = limits.get(name.as_str());
        let per_metric = f.map_or(0, |f| f.max_series);
        let (limit, of) = if per_metric > 0 {
            (per_metric, "of the metric's series limit")
        } else {
            (limiter.max_series, "of the global max_series")
        };
        let _ = write!(
            out,
            "<tr><td class=\"n\">{}</td><th scope=\"row\"><a href=\"/explore?metric={}\">{}</a></th>\
             <td class=\"n series\" data-value=\"{series}\">{}</td><td class=\"n\">{}{}</td><td>{}</td>",
            rank + 1,
            Query(&name),
            Esc(&name),
            Count(*series as f64),
            Count(limit as f64),
            if per_metric > 0 {
                ""
            } else {
                " <span class=\"muted\">(global)</span>"
            },
            Bar {
                value: *series as f64,
                max: limit as f64,
                of
            }
        );
        let (folded, normalized, dropped) =
            f.map_or((0, 0, 0), |f| (f.folded_points(), f.normalized, f.dropped_labels));
        let class = |v: u64| if v > 0 { "n warn" } else { "n" };
        let _ = writeln!(
            out,
            "<td class=\"{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            class(folded),
            Count(folded as f64),
            Count(normalized as f64),
            Count(dropped as f64)
        );
    }
    out.push_str("</tbody></table></section>\n");
}
