//! The metrics against real Prometheus tooling: `promtool check metrics` lints the exposition,
//! and a real `prometheus` server scrapes the admin port and reports the proxy's own counts.
//!
//! Both need the Debian package `prometheus` (`/usr/bin/promtool`, `/usr/bin/prometheus`); CI
//! installs it. Without it the tests fail, naming the package.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_tests::client::{H1Client, http1_get};
use shoal_tests::process::{ChildProcess, TempDir};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, closed_port_addr, eventually};

/// A proxy with some traffic behind it: 5 × 200 and 1 × 404 inbound, one proxy error.
async fn proxy_with_traffic() -> (HttpBackend, Proxy) {
    let backend = HttpBackend::respond(|r| {
        let code = if r.uri.path() == "/missing" { 404 } else { 200 };
        shoal_tests::backend::text_response(code, "x")
    })
    .await;
    let proxy = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .outbound_target(closed_port_addr())
        .state("services:\n  - name: web\n    port: 80\n    endpoints: []\n")
        .start()
        .await;
    let mut c = H1Client::connect(proxy.inbound()).await.unwrap();
    for _ in 0..5 {
        assert_eq!(c.get("app", "/").await.unwrap().status, 200);
    }
    assert_eq!(c.get("app", "/missing").await.unwrap().status, 404);
    assert_eq!(
        http1_get(proxy.outbound(), "web", "/")
            .await
            .unwrap()
            .status,
        503
    );
    (backend, proxy)
}

#[tokio::test]
async fn promtool_check_metrics_accepts_the_exposition() {
    let promtool = shoal_tests::process::require_tool("promtool", "prometheus");
    let (_backend, proxy) = proxy_with_traffic().await;
    let text = proxy.metrics().await;
    assert!(text.contains("shoal_requests_total"), "{text}");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics found problems ({}):\n{report}\n--- exposition ---\n{text}",
        out.status
    );
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs an instant query; returns the result vector.
async fn query(prometheus: SocketAddr, q: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let resp = http1_get(
        prometheus,
        &prometheus.to_string(),
        &format!("/api/v1/query?query={}", encode(q)),
    )
    .await?;
    anyhow::ensure!(resp.status == 200, "{} {}", resp.status, resp.text());
    let body: serde_json::Value = serde_json::from_slice(&resp.body)?;
    anyhow::ensure!(body["status"] == "success", "{body}");
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Starts prometheus scraping `target` every second; retries on another port if the one picked
/// was taken meanwhile.
async fn start_prometheus(
    bin: &str,
    target: SocketAddr,
    dir: &TempDir,
) -> (ChildProcess, SocketAddr) {
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: shoal\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
             \x20   static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut last = String::new();
    for attempt in 0..3 {
        let listen = closed_port_addr();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join(format!("data{attempt}")).display()
            ))
            .arg(format!("--web.listen-address={listen}"));
        let mut child = ChildProcess::spawn("prometheus", cmd).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_exit() {
                last = format!("exited with {status}");
                break;
            }
            match http1_get(listen, &listen.to_string(), "/-/ready").await {
                Ok(r) if r.status == 200 => return (child, listen),
                other => last = format!("{other:?}"),
            }
            if std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        child.kill();
        last = format!("{last}\n{}", child.output().all());
    }
    panic!("prometheus did not start: {last}");
}

#[tokio::test]
async fn prometheus_scrapes_the_admin_port() {
    let bin = shoal_tests::process::require_tool("prometheus", "prometheus");
    let (_backend, proxy) = proxy_with_traffic().await;
    let own = proxy
        .metric(
            "shoal_requests_total",
            &[("direction", "inbound"), ("status_code", "200")],
        )
        .await;
    assert_eq!(own, 5.0);
    let dir = TempDir::new("prometheus").unwrap();
    let (prometheus, listen) = start_prometheus(&bin.to_string_lossy(), proxy.admin(), &dir).await;

    let selector = r#"shoal_requests_total{job="shoal",direction="inbound",status_code="200"}"#;
    let result = eventually(Duration::from_secs(30), "the scraped series", || async {
        match query(listen, selector).await {
            Ok(r) if !r.is_empty() => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(result.len(), 1, "{result:?}");
    let series = &result[0];
    assert_eq!(series["metric"]["service"], "unknown", "{series}");
    assert_eq!(series["metric"]["route"], "default", "{series}");
    let value: f64 = series["value"][1].as_str().unwrap().parse().unwrap();
    assert_eq!(
        value, own,
        "Prometheus' value must match the proxy's own count"
    );

    let errors = query(
        listen,
        r#"shoal_proxy_errors_total{job="shoal",reason="no-endpoints"}"#,
    )
    .await
    .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["value"][1], "1");

    let histogram = query(
        listen,
        r#"sum(shoal_request_duration_seconds_count{job="shoal",direction="inbound"})"#,
    )
    .await
    .unwrap();
    assert_eq!(histogram[0]["value"][1], "6", "{histogram:?}");

    let up = query(listen, r#"up{job="shoal"}"#).await.unwrap();
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    drop(prometheus);
}
