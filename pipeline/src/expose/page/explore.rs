//! One metric, `GET /explore?metric=NAME`: its series against its limit, its labels by distinct
//! values (as `/api/v1/cardinality` counts them), its overflow series as `/metrics` shows it, what
//! the cardinality limiter folded, rejected, normalized and dropped, why, and an example folded
//! label set.

use std::fmt::Write as _;

use super::PageState;
use super::html::{self, Bar, Count, Esc};
use crate::expose::api::label_values;
use crate::expose::{Lines, text, walk};
use crate::process::cardinality::{FoldReason, OVERFLOW_LABEL, RejectReason};

/// Why points fold, per reason: what the operator reads next to the count.
fn fold_why(r: FoldReason) -> &'static str {
    match r {
        FoldReason::MaxLabelValues => {
            "a label of the point would have had more distinct values than <code>max_label_values</code>"
        }
        FoldReason::MaxSeriesPerMetric => {
            "the metric had reached its series limit (<code>max_series_per_metric</code> or its override's <code>max_series</code>)"
        }
        FoldReason::MaxSeries => "all metrics together had reached the global <code>max_series</code>",
        FoldReason::LabelCollision => {
            "after label rules, its labels equalled those of a series owned by another, unrewritten cumulative stream"
        }
    }
}

fn reject_why(r: RejectReason) -> &'static str {
    match r {
        RejectReason::StreamStateFull => {
            "a cumulative stream needed state past <code>max_stream_states</code> (reported in <code>partial_success</code>)"
        }
        RejectReason::BucketLayout => {
            "a folded or merged histogram had bucket bounds that do not add up into the metric's"
        }
        RejectReason::NoRoom => "<code>max_series</code> was reached before the metric had any series",
    }
}

/// A limit's value for a sentence: the number, or "none" for 0.
fn limit(v: usize) -> String {
    if v == 0 {
        "none".to_string()
    } else {
        Count(v as f64).to_string()
    }
}

/// A list of label names as `code` items, or `—`.
fn names(list: &[String]) -> String {
    if list.is_empty() {
        return "—".to_string();
    }
    list.iter()
        .map(|l| format!("<code>{}</code>", Esc(l)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn render(state: &PageState, name: &str, out: &mut String) -> bool {
    let e = &state.expose;
    let Some(h) = e.store.families().into_iter().find(|h| h.lock().meta.name == name) else {
        html::open(out, "Spindle: no such metric", &state.info.version, "");
        let _ = writeln!(
            out,
            "<h1>No metric <code>{}</code></h1><p>The store holds no metric of that name (its series may have \
             expired). <a href=\"/\">Back to the status page</a>.</p>",
            Esc(name)
        );
        html::close(out, false);
        return false;
    };
    let (kind, help, series) = {
        let f = h.lock();
        (f.meta.kind, f.meta.help.clone(), f.series().len())
    };
    let (labels, has_overflow) = label_values(&e.store, &h);
    let overflow_labels = format!("{OVERFLOW_LABEL}=\"true\"");
    let mut overflow = Vec::new();
    if has_overflow {
        let f = h.lock();
        if let Some(s) = f.series().iter().find(|s| s.labels() == overflow_labels.as_bytes()) {
            walk::series(
                &mut Lines::new(text::Text, &mut overflow),
                &f.meta.name,
                f.meta.kind,
                s.labels(),
                s.start_unix_nano(),
                &s.value,
            );
        }
    }
    let snapshot = e.limiter.snapshot();
    let fam = snapshot.families.iter().find(|f| &*f.name == name);
    let rules = e.limiter.rules_for(name, kind);

    html::open(out, &format!("Spindle: {name}"), &state.info.version, "");
    let _ = write!(
        out,
        "<p><a href=\"/\">← Status</a></p><h1><code>{}</code></h1>\n<p>{}{}</p>\n",
        Esc(name),
        Esc(kind.openmetrics_type()),
        if help.is_empty() {
            String::new()
        } else {
            format!(": {}", Esc(&help))
        }
    );

    // Series against the limit.
    let (cap, of) = if rules.max_series > 0 {
        (rules.max_series, "of the metric's series limit")
    } else {
        (snapshot.max_series, "of the global max_series")
    };
    let source = match &rules.matched_override {
        Some(glob) => format!("the <code>metrics</code> override <code>{}</code>", Esc(glob)),
        None => "<code>max_series_per_metric</code>".to_string(),
    };
    let _ = write!(
        out,
        "<section aria-labelledby=\"limits-h\"><h2 id=\"limits-h\">Series and limits</h2><table><tbody>\n\
         <tr><th scope=\"row\">Series</th><td class=\"n\" id=\"series\" data-value=\"{series}\">{}</td><td>{}</td></tr>\n\
         <tr><th scope=\"row\">Series limit</th><td class=\"n\">{}</td><td>from {source}{}</td></tr>\n\
         <tr><th scope=\"row\">Distinct values per label</th><td class=\"n\">{}</td><td>limit, from {source}</td></tr>\n\
         <tr><th scope=\"row\">Series admitted by the limiter</th><td class=\"n\">{}</td><td>the overflow series not included</td></tr>\n\
         <tr><th scope=\"row\">Stream states</th><td class=\"n\">{}</td><td>cumulative streams whose last report is kept</td></tr>\n\
         </tbody></table></section>\n",
        Count(series as f64),
        Bar {
            value: series as f64,
            max: cap as f64,
            of
        },
        limit(rules.max_series),
        if rules.max_series == 0 {
            format!(
                "; the global <code>max_series</code> is {}",
                Count(snapshot.max_series as f64)
            )
        } else {
            String::new()
        },
        limit(rules.max_label_values),
        Count(fam.map_or(0, |f| f.admitted_series) as f64),
        Count(fam.map_or(0, |f| f.stream_states) as f64),
    );

    // Labels by distinct values.
    let at_limit = |l: &str| {
        fam.and_then(|f| f.labels_at_limit.iter().find(|x| &*x.name == l))
            .map_or(0, |x| x.folded_points)
    };
    let _ = write!(
        out,
        "<section aria-labelledby=\"labels-h\"><h2 id=\"labels-h\">Labels by distinct values</h2>\n\
         <table id=\"labels\"><caption>{} labels over the stored series{}</caption><thead><tr><th scope=\"col\">Label</th>\
         <th scope=\"col\" class=\"n\">Distinct values</th>{}<th scope=\"col\" class=\"n\">Points folded at its limit</th></tr></thead><tbody>\n",
        labels.len(),
        if labels.len() > super::MAX_LABELS {
            format!(", the first {} shown", super::MAX_LABELS)
        } else {
            String::new()
        },
        if rules.max_label_values > 0 {
            "<th scope=\"col\">Against <code>max_label_values</code></th>"
        } else {
            ""
        },
    );
    for (label, n) in labels.iter().take(super::MAX_LABELS) {
        let _ = write!(
            out,
            "<tr><th scope=\"row\"><code>{}</code></th><td class=\"n\" data-value=\"{n}\">{}</td>",
            Esc(label),
            Count(*n as f64)
        );
        if rules.max_label_values > 0 {
            let _ = write!(
                out,
                "<td>{}</td>",
                Bar {
                    value: *n as f64,
                    max: rules.max_label_values as f64,
                    of: "of max_label_values"
                }
            );
        }
        let _ = writeln!(out, "<td class=\"n\">{}</td></tr>", Count(at_limit(label) as f64));
    }
    out.push_str("</tbody></table></section>\n");

    // The overflow series.
    out.push_str("<section aria-labelledby=\"overflow-h\"><h2 id=\"overflow-h\">Overflow series</h2>\n");
    if overflow.is_empty() {
        out.push_str("<p>None: no point of this metric is folded at the moment.</p>\n");
    } else {
        let _ = writeln!(
            out,
            "<p>Points past a limit are added into <code>{{{}}}</code>, so the metric's totals stay exact. As <code>/metrics</code> shows it:</p>\
             <pre id=\"overflow\">{}</pre>",
            Esc(&overflow_labels),
            Esc(&String::from_utf8_lossy(&overflow))
        );
    }
    out.push_str("</section>\n");

    // What the limiter did, and why.
    out.push_str(
        "<section aria-labelledby=\"folded-h\"><h2 id=\"folded-h\">Folded, rejected, normalized, dropped</h2>\n",
    );
    match fam {
        Some(f) if f.limited() => {
            let folded: Vec<_> = FoldReason::ALL.iter().filter(|r| f.folded(**r) > 0).collect();
            if !folded.is_empty() {
                out.push_str(
                    "<table><caption>Points folded into the overflow series since start, by reason</caption>\
                     <thead><tr><th scope=\"col\">Reason</th><th scope=\"col\" class=\"n\">Points</th><th scope=\"col\">Why</th></tr></thead><tbody>\n",
                );
                for r in folded {
                    let _ = writeln!(
                        out,
                        "<tr><th scope=\"row\"><code>{}</code></th><td class=\"n\">{}</td><td>{}</td></tr>",
                        r.as_str(),
                        Count(f.folded(*r) as f64),
                        fold_why(*r)
                    );
                }
                out.push_str("</tbody></table>\n");
            }
            let rejected: Vec<_> = RejectReason::ALL.iter().filter(|r| f.rejected(**r) > 0).collect();
            if !rejected.is_empty() {
                out.push_str(
                    "<table><caption>Points rejected since start, by reason</caption>\
                     <thead><tr><th scope=\"col\">Reason</th><th scope=\"col\" class=\"n\">Points</th><th scope=\"col\">Why</th></tr></thead><tbody>\n",
                );
                for r in rejected {
                    let _ = writeln!(
                        out,
                        "<tr><th scope=\"row\"><code>{}</code></th><td class=\"n\">{}</td><td>{}</td></tr>",
                        r.as_str(),
                        Count(f.rejected(*r) as f64),
                        reject_why(*r)
                    );
                }
                out.push_str("</tbody></table>\n");
            }
            if let Some(example) = &f.example_folded_series {
                let _ = writeln!(
                    out,
                    "<p>An example of a folded label set (one that folded recently):</p><pre id=\"example\">{}</pre>",
                    Esc(example)
                );
            }
            let _ = writeln!(
                out,
                "<p>{} label values normalized; {} labels dropped.</p>",
                Count(f.normalized as f64),
                Count(f.dropped_labels as f64)
            );
        }
        _ => out.push_str("<p>The cardinality limiter has changed nothing of this metric.</p>\n"),
    }
    let _ = writeln!(
        out,
        "<h3>Label rules that apply</h3><p><code>deny_labels</code>: {}; <code>allow_labels</code>: {}{}.</p>",
        names(&rules.deny_labels),
        names(&rules.allow_labels),
        if rules.allow_labels.is_empty() {
            " (every label kept)"
        } else {
            " (and job, instance)"
        }
    );
    if rules.normalize.is_empty() {
        out.push_str("<p>No <code>normalize</code> rule applies.</p>\n");
    } else {
        out.push_str(
            "<table><caption><code>normalize</code> rules that apply, in order</caption><thead><tr><th scope=\"col\">Labels</th>\
             <th scope=\"col\">Kind</th><th scope=\"col\">Replacement</th><th scope=\"col\">Pattern</th></tr></thead><tbody>\n",
        );
        for n in &rules.normalize {
            let replacement = n.replacement.as_deref().unwrap_or(n.kind.default_replacement());
            let _ = writeln!(
                out,
                "<tr><td>{}</td><th scope=\"row\">{}</th><td><code>{}</code></td><td>{}</td></tr>",
                names(&n.labels),
                Esc(n.kind.as_str()),
                Esc(replacement),
                n.pattern
                    .as_deref()
                    .map_or_else(|| "built in".to_string(), |p| format!("<code>{}</code>", Esc(p)))
            );
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str("</section>\n");
    html::close(out, false);
    true
}
