//! Without a pipeline: the real `demo-service` binary with `OTEL_METRICS_EXPORTER=prometheus`,
//! scraped by a real Prometheus (Debian package `prometheus`); with `otlp,prometheus`, both paths
//! at once against an in-process Spindle; bad values of the exporter variables stop the service at
//! start-up with a message naming the variable.
//!
//! Asserted: Prometheus' query API returns `http_server_request_duration_seconds_count` by route
//! template with the counts of the requests sent, and `process_cpu_time_seconds_total` grows
//! under load; with both exporters, Spindle's `/metrics` and the service's own `/metrics` show the
//! same request counts, and the process and runtime metrics reach Spindle over OTLP.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::{Demo, command, start};
use spindle_e2e::{Prometheus, fetch_text, free_port, parse_exposition, start_spindle, url_encode};
use tokio::process::Command;

/// A demo-service for `name` with traces off (`envs` on top), its stderr shown.
async fn spawn_demo(name: &str, envs: &[(&str, String)]) -> Demo {
    start(traceless(name, envs), name).await
}

/// [`command`] with `OTEL_TRACES_EXPORTER=none`, `RUST_LOG=error` and stderr shown.
fn traceless(name: &str, envs: &[(&str, String)]) -> Command {
    let mut all = vec![
        ("OTEL_TRACES_EXPORTER", "none".to_string()),
        ("RUST_LOG", "error".to_string()),
    ];
    all.extend(envs.iter().map(|(k, v)| (*k, v.clone())));
    let mut cmd = command(name, &all);
    cmd.stderr(Stdio::inherit());
    cmd
}

async fn get(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
        .as_u16()
}

/// `(labels, value)` of each series an instant query returns.
async fn query(prom: &Prometheus, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let answer = prom.api(&format!("/api/v1/query?query={}", url_encode(promql))).await;
    assert_eq!(answer["status"], "success", "{promql}: {answer}");
    answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let v = r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            (r["metric"].clone(), v)
        })
        .collect()
}

/// Polls `promql` until `ok` holds for its result (Prometheus scrapes every second).
async fn wait_query(
    prom: &Prometheus,
    promql: &str,
    what: &str,
    ok: impl Fn(&[(serde_json::Value, f64)]) -> bool,
) -> Vec<(serde_json::Value, f64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = query(prom, promql).await;
        if ok(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {promql} gave {r:?}; targets: {}\n{}",
            prom.target_health().await,
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_service_directly() {
    let port = free_port();
    let demo = spawn_demo(
        "demo-direct",
        &[
            ("OTEL_METRICS_EXPORTER", "prometheus".into()),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1".into()),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", port.to_string()),
        ],
    )
    .await;
    let target = format!("127.0.0.1:{port}").parse().expect("addr");
    let prom = Prometheus::start_direct(target, "demo-direct").await;
    let client = reqwest::Client::new();
    for id in [1, 2, 3, 4, 5] {
        assert_eq!(get(&client, &format!("{}/users/{id}", demo.url)).await, 200);
    }
    assert_eq!(get(&client, &format!("{}/users/7", demo.url)).await, 500);
    assert_eq!(get(&client, &format!("{}/no/such/page", demo.url)).await, 404);

    let by_route = "sum by (http_route, http_response_status_code) \
                    (http_server_request_duration_seconds_count{job=\"demo-direct\"})";
    let value = |r: &[(serde_json::Value, f64)], route: &str, status: &str| -> f64 {
        r.iter()
            .filter(|(m, _)| m["http_route"] == route && m["http_response_status_code"] == status)
            .map(|(_, v)| *v)
            .sum()
    };
    let result = wait_query(&prom, by_route, "request counts by route", |r| {
        value(r, "/users/{id}", "200") == 5.0 && value(r, "/users/{id}", "500") == 1.0
    })
    .await;
    assert_eq!(value(&result, "unmatched", "404"), 1.0, "{result:?}");
    for (m, _) in &result {
        let route = m["http_route"].as_str().unwrap_or("");
        assert!(route.contains('{') || route == "unmatched", "raw path as a label: {m}");
    }
    let buckets = query(
        &prom,
        "http_server_request_duration_seconds_bucket{http_route=\"/users/{id}\",le=\"+Inf\"}",
    )
    .await;
    assert!(!buckets.is_empty(), "histogram buckets are stored");
    assert_eq!(
        buckets[0].0["job"], "demo-direct",
        "Prometheus sets job from the scrape config"
    );

    for name in [
        "process_memory_usage_bytes",
        "process_open_file_descriptor_count",
        "process_thread_count",
        "process_uptime_seconds",
        "tokio_runtime_workers",
        "tokio_runtime_global_queue_depth",
    ] {
        let r = query(&prom, &format!("{name}{{job=\"demo-direct\"}}")).await;
        assert_eq!(r.len(), 1, "{name}: {r:?}");
    }

    // CPU time grows under load.
    let cpu = "sum(process_cpu_time_seconds_total{job=\"demo-direct\"})";
    let before = wait_query(&prom, cpu, "CPU time", |r| r.len() == 1).await[0].1;
    let load_until = Instant::now() + Duration::from_secs(3);
    let mut sent = 0u64;
    while Instant::now() < load_until {
        let batch = (0..32).map(|i| {
            let client = client.clone();
            let url = format!("{}/users/{}", demo.url, 11 + i);
            async move { get(&client, &url).await }
        });
        for status in futures_join(batch).await {
            assert!(status == 200 || status == 404 || status == 500);
            sent += 1;
        }
    }
    let after = wait_query(&prom, cpu, "CPU time to grow under load", |r| {
        r.first().is_some_and(|(_, v)| *v > before + 0.05)
    })
    .await[0]
        .1;
    assert!(after > before, "CPU {before} → {after} after {sent} requests");
    let busy = query(
        &prom,
        "sum(tokio_runtime_worker_busy_time_seconds_total{job=\"demo-direct\"})",
    )
    .await;
    assert!(
        busy.first().is_some_and(|(_, v)| *v > 0.0),
        "workers were busy: {busy:?}"
    );
}

/// Runs the futures concurrently on the test's runtime.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<u16>
where
    F: std::future::Future<Output = u16> + Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("request task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_and_prometheus_at_once_show_the_same_counts() {
    let spindle = start_spindle(|_| {}).await;
    let demo = spawn_demo(
        "demo-both",
        &[
            ("OTEL_METRICS_EXPORTER", "otlp,prometheus".into()),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                format!("http://{}", spindle.grpc_addr),
            ),
            ("DEMO_METRICS_ON_LISTEN", "true".into()),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for id in [1, 2, 3, 10, 14, 21] {
        get(&client, &format!("{}/users/{id}", demo.url)).await;
    }
    get(&client, &format!("{}/orders/5", demo.url)).await;
    let own: std::net::SocketAddr = demo
        .url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .expect("host:port");

    let duration = "http_server_request_duration_seconds_count";
    let key = |s: &spindle_e2e::Sample| {
        (
            s.label("http_route").to_owned(),
            s.label("http_response_status_code").to_owned(),
            s.value,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let direct = parse_exposition(&fetch_text(own).await);
        let pipeline = parse_exposition(&fetch_text(spindle.prometheus_addr).await);
        let mut a: Vec<_> = direct.find(duration, &[]).into_iter().map(key).collect();
        let mut b: Vec<_> = pipeline
            .find(duration, &[("job", "demo-both")])
            .into_iter()
            .map(key)
            .collect();
        a.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
        b.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
        let total: f64 = a.iter().map(|(_, _, v)| v).sum();
        let process_on_spindle = [
            "process_cpu_time_seconds_total",
            "process_memory_usage_bytes",
            "tokio_runtime_alive_tasks",
        ]
        .iter()
        .all(|n| !pipeline.find(n, &[("job", "demo-both")]).is_empty());
        if a == b && total == 7.0 && process_on_spindle {
            assert!(a.contains(&("/users/{id}".into(), "200".into(), 3.0)), "{a:?}");
            assert!(a.contains(&("/users/{id}".into(), "500".into(), 2.0)), "{a:?}");
            let lookups = pipeline.one("demo_user_lookups_total", &[("job", "demo-both"), ("result", "found")]);
            assert_eq!(
                lookups.value,
                direct.one("demo_user_lookups_total", &[("result", "found")]).value
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service's /metrics {a:?} and Spindle's {b:?} disagree (process metrics on Spindle: \
             {process_on_spindle})\n{}",
            pipeline.lines_of("process_cpu_time_seconds")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    spindle.shutdown().await.expect("spindle shuts down");
}

#[tokio::test]
async fn bad_exporter_variables_stop_the_service_naming_the_variable() {
    for (var, value) in [
        ("OTEL_METRICS_EXPORTER", "prometheus,console"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "port"),
    ] {
        let out = traceless(
            "demo-bad",
            &[("OTEL_METRICS_EXPORTER", "prometheus".into()), (var, value.into())],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
        let out = tokio::time::timeout(Duration::from_secs(20), out)
            .await
            .unwrap_or_else(|_| panic!("{var}={value}: the service started instead of refusing the value"))
            .expect("run demo-service");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value}: should not start");
        assert!(
            stderr.contains(var) && stderr.contains(value),
            "{var}={value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "an error, not a panic: {stderr}");
    }
}
