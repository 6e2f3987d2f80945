//! TLS on every listener and the exporters' client certificates, with real certificates made by
//! the `openssl` CLI (`spindle_e2e::pki`): OTLP over TLS on gRPC and HTTP (plaintext refused), mTLS
//! (a client certificate from the configured CA accepted, none or another CA's refused), https on
//! the Prometheus endpoint, certificate rotation under load (the new certificate served, no
//! request failing, a bad file keeping the old one), the handshake under the connection limits,
//! and the trace exporter presenting its client certificate to a backend that requires one.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{kv, scrape, spindle, traces_request};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use spindle::app::Running;
use spindle::config::{Config, DurationStr, OtlpProtocol};
use spindle::testing::{counter_metric, metrics_request, span};
use spindle_e2e::pki::{CertFiles, Pki};
use tokio::io::AsyncReadExt;
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn read(path: impl AsRef<std::path::Path>) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn set_tls(t: &mut spindle::server::TlsConfig, srv: &CertFiles, client_ca: Option<&Pki>) {
    t.cert_file = Some(srv.cert_str());
    t.key_file = Some(srv.key_str());
    t.client_ca_file = client_ca.map(Pki::ca_str);
}

/// An HTTP client trusting `pki`'s CA (only), presenting `identity` if given.
fn https_client(pki: &Pki, identity: Option<&CertFiles>, pooled: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&read(&pki.ca.cert)).unwrap())
        .timeout(Duration::from_secs(5));
    if let Some(id) = identity {
        let mut pem = read(&id.cert);
        pem.extend(read(&id.key));
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    if !pooled {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

/// A gRPC channel over TLS trusting `pki`'s CA, presenting `identity` if given.
async fn grpc_channel(
    r: &Running,
    pki: &Pki,
    identity: Option<&CertFiles>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca.cert)))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(read(&id.cert), read(&id.key)));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{}", r.grpc_addr.port()))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .tls_config(tls)?
        .connect()
        .await
}

fn metrics_body(name: &str) -> opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
    metrics_request(vec![kv("service.name", "tls")], vec![counter_metric(name, 3, vec![])])
}

async fn post_metrics(client: &reqwest::Client, r: &Running, name: &str) -> reqwest::Result<reqwest::StatusCode> {
    client
        .post(format!("https://127.0.0.1:{}/v1/metrics", r.http_addr.port()))
        .header("content-type", "application/x-protobuf")
        .body(metrics_body(name).encode_to_vec())
        .send()
        .await
        .map(|r| r.status())
}

/// A TLS handshake with `addr` offering `versions`, trusting `pki`'s CA; the leaf certificate it
/// presents (DER).
async fn handshake(
    addr: std::net::SocketAddr,
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in spindle::util::pem::certs(&pki.ca_str()).unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

/// The leaf certificate a TLS handshake with `addr` presents (DER), trusting `pki`'s CA.
async fn served_cert(addr: std::net::SocketAddr, pki: &Pki) -> Vec<u8> {
    handshake(addr, pki, rustls::DEFAULT_VERSIONS).await.unwrap()
}

fn der(files: &CertFiles) -> Vec<u8> {
    spindle::util::pem::certs(&files.cert_str()).unwrap()[0].to_vec()
}

fn line_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_over_tls_on_grpc_and_http_arrives_and_plaintext_is_refused() {
    let pki = Pki::new("spindle test ca");
    let srv = pki.server("srv", 1);
    let r = spindle(|c| set_tls(&mut c.receivers.otlp.tls, &srv, None)).await;

    let channel = grpc_channel(&r, &pki, None).await.unwrap();
    MetricsServiceClient::new(channel)
        .export(metrics_body("over_grpc"))
        .await
        .unwrap();
    let client = https_client(&pki, None, true);
    assert_eq!(post_metrics(&client, &r, "over_http").await.unwrap(), 200);
    let text = scrape(&r).await;
    assert!(text.contains("over_grpc_total{job=\"tls\"} 3"), "{text}");
    assert!(text.contains("over_http_total{job=\"tls\"} 3"), "{text}");

    // Plaintext clients are refused: the bytes they send are no TLS handshake.
    let plain = reqwest::Client::new()
        .post(format!("http://{}/v1/metrics", r.http_addr))
        .header("content-type", "application/x-protobuf")
        .body(metrics_body("plain").encode_to_vec())
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    let plain_grpc = async {
        let ch = Endpoint::from_shared(format!("http://{}", r.grpc_addr))
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        MetricsServiceClient::new(ch)
            .export(metrics_body("plain"))
            .await
            .map_err(anyhow::Error::from)
            .map(|_| ())
    }
    .await;
    assert!(plain_grpc.is_err());
    let text = scrape(&r).await;
    assert!(!text.contains("plain_total"));
    // Each refused handshake is counted once, by listener.
    for listener in ["otlp_http", "otlp_grpc"] {
        let closed = format!("spindle_connections_closed_total{{listener=\"{listener}\",reason=\"tls_handshake\"}}");
        assert!(line_value(&text, &closed) >= 1.0, "{closed}: {text}");
    }
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_accepts_a_client_certificate_from_the_ca_and_refuses_none_or_another_cas() {
    let pki = Pki::new("spindle test ca");
    let srv = pki.server("srv", 1);
    let client_cert = pki.client("client");
    let other = Pki::new("another ca");
    let other_client = other.client("client");
    let r = spindle(|c| set_tls(&mut c.receivers.otlp.tls, &srv, Some(&pki))).await;

    let ok = https_client(&pki, Some(&client_cert), true);
    assert_eq!(post_metrics(&ok, &r, "with_cert").await.unwrap(), 200);
    let none = https_client(&pki, None, true);
    assert!(post_metrics(&none, &r, "without_cert").await.is_err());
    let wrong = https_client(&pki, Some(&other_client), true);
    assert!(post_metrics(&wrong, &r, "other_ca").await.is_err());

    let ch = grpc_channel(&r, &pki, Some(&client_cert)).await.unwrap();
    TraceServiceClient::new(ch)
        .export(traces_request(
            vec![kv("service.name", "tls")],
            vec![span("op", 1, vec![])],
        ))
        .await
        .unwrap();
    let refused = match grpc_channel(&r, &pki, None).await {
        Err(_) => true,
        Ok(ch) => MetricsServiceClient::new(ch)
            .export(metrics_body("grpc_without_cert"))
            .await
            .is_err(),
    };
    assert!(refused, "a gRPC client without a certificate must be refused");

    let text = scrape(&r).await;
    assert!(text.contains("with_cert_total{job=\"tls\"} 3"), "{text}");
    assert!(!text.contains("without_cert") && !text.contains("other_ca"), "{text}");
    assert!(text.contains("traces_span_metrics_calls_total{"), "{text}");
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_prometheus_endpoint_serves_https_to_a_verifying_client() {
    let pki = Pki::new("spindle test ca");
    let srv = pki.server("srv", 7);
    let r = spindle(|c| set_tls(&mut c.prometheus.tls, &srv, None)).await;
    let resp = https_client(&pki, None, true)
        .get(format!("https://localhost:{}/metrics", r.prometheus_addr.port()))
        .header("accept", "application/openmetrics-text")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("spindle_open_connections") && text.ends_with("# EOF\n"),
        "{text}"
    );
    assert_eq!(served_cert(r.prometheus_addr, &pki).await, der(&srv));
    assert!(
        reqwest::get(format!("http://{}/metrics", r.prometheus_addr))
            .await
            .is_err(),
        "plain http is refused"
    );
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn min_version_1_3_refuses_a_tls_1_2_client() {
    let pki = Pki::new("spindle test ca");
    let srv = pki.server("srv", 1);
    let r = spindle(|c| {
        set_tls(&mut c.prometheus.tls, &srv, None);
        c.prometheus.tls.min_version = spindle::server::MinTlsVersion::Tls13;
        set_tls(&mut c.receivers.otlp.tls, &srv, None);
    })
    .await;
    let (tls12, tls13) = (&[&rustls::version::TLS12][..], &[&rustls::version::TLS13][..]);
    assert!(handshake(r.prometheus_addr, &pki, tls12).await.is_err());
    assert_eq!(handshake(r.prometheus_addr, &pki, tls13).await.unwrap(), der(&srv));
    // The default, 1.2, accepts both.
    assert_eq!(handshake(r.http_addr, &pki, tls12).await.unwrap(), der(&srv));
    assert_eq!(handshake(r.http_addr, &pki, tls13).await.unwrap(), der(&srv));
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_certificates_are_served_without_a_restart_or_a_failed_request() {
    let pki = Pki::new("spindle test ca");
    let (one, two) = (pki.server("one", 1), pki.server("two", 2));
    let dir = pki.dir.path();
    let live = CertFiles {
        cert: dir.join("live.pem"),
        key: dir.join("live.key"),
    };
    // Files are replaced by renaming new ones over them, as a rotation tool does.
    let replace = |from: &std::path::Path, to: &std::path::Path| {
        let tmp = dir.join("incoming.tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    };
    replace(&one.cert, &live.cert);
    replace(&one.key, &live.key);
    let r = spindle(|c| set_tls(&mut c.prometheus.tls, &live, None)).await;
    let url = format!("https://127.0.0.1:{}/metrics", r.prometheus_addr.port());
    assert_eq!(served_cert(r.prometheus_addr, &pki).await, der(&one));

    // Two clients scrape in a loop: one keeps its connection, one opens a new one every time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut loops = Vec::new();
    for pooled in [true, false] {
        let (client, url, stop, ok, failed) = (
            https_client(&pki, None, pooled),
            url.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = match client.get(&url).send().await {
                    Ok(resp) if resp.status() == 200 => resp.bytes().await.map(|_| ()).map_err(|e| e.to_string()),
                    Ok(resp) => Err(resp.status().to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // A file that is not a certificate: the reload fails, the old certificate stays.
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    replace(&garbage, &live.cert);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        served_cert(r.prometheus_addr, &pki).await,
        der(&one),
        "a failed reload keeps the old"
    );

    // The new certificate, then its key (in between they do not match: the old one stays).
    replace(&two.cert, &live.cert);
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace(&two.key, &live.key);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = served_cert(r.prometheus_addr, &pki).await;
        if served == der(&two) {
            break;
        }
        assert_eq!(served, der(&one), "only the old or the new certificate is ever served");
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request may fail during the rotation"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "{} requests",
        ok.load(Ordering::Relaxed)
    );
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_the_handshake_is_closed_and_counts_against_the_cap() {
    let pki = Pki::new("spindle test ca");
    let srv = pki.server("srv", 1);
    let r = spindle(|c: &mut Config| {
        set_tls(&mut c.receivers.otlp.tls, &srv, None);
        c.receivers.otlp.http.header_read_timeout = DurationStr(Duration::from_millis(500));
        c.receivers.otlp.http.max_connections = 1;
        c.receivers.otlp.grpc.idle_timeout = DurationStr(Duration::from_millis(500));
    })
    .await;
    // Half a ClientHello, then silence.
    let mut http = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut http, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut grpc = tokio::net::TcpStream::connect(r.grpc_addr).await.unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), http.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    let closed = tokio::time::timeout(Duration::from_secs(5), grpc.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    assert!(t0.elapsed() < Duration::from_secs(4));
    let closed_by = |text: &str, listener: &str, reason: &str| {
        line_value(
            text,
            &format!("spindle_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}}"),
        )
    };
    let text = scrape(&r).await;
    assert_eq!(closed_by(&text, "otlp_http", "header_read_timeout"), 1.0, "{text}");
    assert_eq!(closed_by(&text, "otlp_grpc", "idle_timeout"), 1.0, "{text}");

    // With the cap at 1, a stalled handshake holds the only slot until a new client takes it.
    let _stalled = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = scrape(&r).await;
    assert_eq!(
        line_value(&text, "spindle_open_connections{listener=\"otlp_http\"}"),
        1.0,
        "{text}"
    );
    let client = https_client(&pki, None, true);
    assert_eq!(post_metrics(&client, &r, "after_stall").await.unwrap(), 200);
    let text = scrape(&r).await;
    assert_eq!(closed_by(&text, "otlp_http", "max_connections"), 1.0, "{text}");
    r.shutdown().await.unwrap();
}

/// A trace backend that counts the spans it receives.
#[derive(Default, Clone)]
struct Backend(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Backend {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = req
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::SeqCst);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send_spans(r: &Running, n: u8) {
    let ch = Endpoint::from_shared(format!("http://{}", r.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let spans = (1..=n).map(|i| span("op", i, vec![])).collect();
    TraceServiceClient::new(ch)
        .export(traces_request(vec![kv("service.name", "fwd")], spans))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trace_exporter_presents_its_client_certificate_to_a_backend_that_requires_one() {
    let pki = Pki::new("spindle test ca");
    let srv = pki.server("backend", 1);
    let client_cert = pki.client("spindle");
    // A tonic (rustls) backend that requires a client certificate signed by the CA.
    let backend = Backend::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&srv.cert), read(&srv.key)))
        .client_ca_root(Certificate::from_pem(read(&pki.ca.cert)));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(
            TraceServiceServer::new(backend.clone()).accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        )
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);

    let exporting = |cert: bool| {
        let (pki, client_cert) = (&pki, &client_cert);
        move |c: &mut Config| {
            let ex = &mut c.exporters.traces.otlp;
            ex.endpoint = Some(format!("https://localhost:{}", addr.port()));
            ex.ca_file = Some(pki.ca_str());
            if cert {
                ex.cert_file = Some(client_cert.cert_str());
                ex.key_file = Some(client_cert.key_str());
            }
            ex.retry_initial_backoff = DurationStr(Duration::from_millis(50));
            ex.shutdown_timeout = DurationStr(Duration::from_millis(200));
        }
    };
    let r = spindle(exporting(true)).await;
    send_spans(&r, 5).await;
    wait_until("5 spans at the backend", async || backend.0.load(Ordering::SeqCst) == 5).await;
    r.shutdown().await.unwrap();

    // Without the client certificate the backend refuses the handshake: nothing arrives.
    let r = spindle(exporting(false)).await;
    send_spans(&r, 3).await;
    // Refused: with TLS 1.3 the refusal arrives after the client's Finished, once the request is
    // on its way — as the server's alert inside a transport error, or, when the connection broke
    // first, as a reset or broken pipe (tonic then says UNKNOWN or CANCELLED, by timing). Every
    // attempt is classed the same — retried, never a permanent drop, so nothing accepted is
    // lost — and those that show the alert are counted as TLS failures.
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = |text: &str| {
        line_value(text, "spindle_exporter_retries_total") >= 8.0
            && line_value(text, "spindle_exporter_tls_failures_total") >= 1.0
    };
    while !refused(&text) {
        let exporter: Vec<&str> = text.lines().filter(|l| l.starts_with("spindle_exporter")).collect();
        assert!(Instant::now() < deadline, "not 8 retried attempts: {exporter:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = scrape(&r).await;
    }
    assert_eq!(
        line_value(
            &text,
            "spindle_exporter_dropped_spans_total{reason=\"permanent_error\"}"
        ),
        0.0,
        "{text}"
    );
    assert_eq!(line_value(&text, "spindle_exporter_sent_spans_total"), 0.0);
    assert_eq!(backend.0.load(Ordering::SeqCst), 5, "nothing more arrives");
    r.shutdown().await.unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_trace_exporter_presents_its_client_certificate_to_an_mtls_spindle() {
    let pki = Pki::new("spindle test ca");
    let srv = pki.server("srv", 1);
    let client_cert = pki.client("spindle");
    let backend = spindle(|c| set_tls(&mut c.receivers.otlp.tls, &srv, Some(&pki))).await;
    let port = backend.http_addr.port();
    let r = spindle(|c| {
        let ex = &mut c.exporters.traces.otlp;
        ex.endpoint = Some(format!("https://127.0.0.1:{port}"));
        ex.protocol = OtlpProtocol::HttpProtobuf;
        ex.ca_file = Some(pki.ca_str());
        ex.cert_file = Some(client_cert.cert_str());
        ex.key_file = Some(client_cert.key_str());
    })
    .await;
    send_spans(&r, 4).await;
    wait_until("4 spans counted by the backend", async || {
        line_value(
            &scrape(&backend).await,
            "traces_span_metrics_calls_total{service_name=\"fwd\"",
        ) == 4.0
    })
    .await;
    r.shutdown().await.unwrap();
    backend.shutdown().await.unwrap();
}

async fn send_metrics(r: &Running) {
    let ch = Endpoint::from_shared(format!("http://{}", r.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    MetricsServiceClient::new(ch)
        .export(metrics_body("written"))
        .await
        .unwrap();
}

/// An HTTPS server (axum over rustls) that requires a client certificate signed by `pki`'s CA.
struct MtlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    refused: Arc<AtomicU64>,
}

impl axum::serve::Listener for MtlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(_) => {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_write_presents_its_client_certificate_to_a_receiver_that_requires_one() {
    let pki = Pki::new("spindle test ca");
    let srv = pki.server("receiver", 1);
    let client_cert = pki.client("spindle");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(spindle::util::pem::certs(&pki.ca_str()).unwrap().remove(0))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            spindle::util::pem::certs(&srv.cert_str()).unwrap(),
            spindle::util::pem::key(&srv.key_str()).unwrap(),
        )
        .unwrap();
    let (writes, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let listener = MtlsListener {
        tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        refused: refused.clone(),
    };
    let port = listener.tcp.local_addr().unwrap().port();
    let w = writes.clone();
    let app = axum::Router::new().route(
        "/api/v1/write",
        axum::routing::post(move || {
            let w = w.clone();
            async move {
                w.fetch_add(1, Ordering::SeqCst);
                http::StatusCode::NO_CONTENT
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let writing = |cert: bool| {
        let (pki, client_cert) = (&pki, &client_cert);
        move |c: &mut Config| {
            let rw = &mut c.exporters.remote_write;
            rw.endpoint = Some(format!("https://localhost:{port}/api/v1/write"));
            rw.interval = DurationStr(Duration::from_secs(1));
            rw.ca_file = Some(pki.ca_str());
            if cert {
                rw.cert_file = Some(client_cert.cert_str());
                rw.key_file = Some(client_cert.key_str());
            }
            rw.retry_initial_backoff = DurationStr(Duration::from_millis(50));
            rw.shutdown_timeout = DurationStr(Duration::from_millis(200));
        }
    };
    let r = spindle(writing(true)).await;
    send_metrics(&r).await;
    wait_until("a remote write request", async || writes.load(Ordering::SeqCst) >= 1).await;
    assert_eq!(refused.load(Ordering::SeqCst), 0);
    r.shutdown().await.unwrap();

    // Without the client certificate the receiver refuses the handshake.
    let before = writes.load(Ordering::SeqCst);
    let r = spindle(writing(false)).await;
    send_metrics(&r).await;
    wait_until("a refused handshake", async || refused.load(Ordering::SeqCst) >= 1).await;
    // Over HTTP too, the refusal is counted as a TLS failure and retried, never dropped.
    wait_until("a counted TLS failure", async || {
        line_value(&scrape(&r).await, "spindle_remote_write_tls_failures_total") >= 1.0
    })
    .await;
    let text = scrape(&r).await;
    assert_eq!(
        line_value(
            &text,
            "spindle_remote_write_dropped_samples_total{reason=\"permanent_error\"}"
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        writes.load(Ordering::SeqCst),
        before,
        "nothing is written without the certificate"
    );
    r.shutdown().await.unwrap();
    server.abort();
}
