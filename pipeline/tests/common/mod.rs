//! Helpers shared by the in-process integration tests: a Spindle on port 0, attribute builders.

#![allow(dead_code)] // each test binary uses its own subset

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use spindle::app::{Running, start};
use spindle::config::Config;

/// Defaults with every listener on `127.0.0.1:0`, then `tweak`.
pub fn config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    c.receivers.otlp.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.receivers.otlp.http.listen = "127.0.0.1:0".parse().unwrap();
    c.prometheus.listen = "127.0.0.1:0".parse().unwrap();
    tweak(&mut c);
    c
}

/// A Spindle started from [`config`]; the configuration must validate.
pub async fn spindle(tweak: impl FnOnce(&mut Config)) -> Running {
    let c = config(tweak);
    assert_eq!(c.validate(), vec![], "test config must validate");
    start(c).await.unwrap()
}

/// The text of `GET /metrics` (Prometheus text format).
pub async fn scrape(r: &Running) -> String {
    reqwest::get(format!("http://{}/metrics", r.prometheus_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A string attribute.
pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}
