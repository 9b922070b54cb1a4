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

/// The one series of `result` whose labels include all of `labels`: its value.
fn value_of(result: &[serde_json::Value], labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = result
        .iter()
        .filter(|s| labels.iter().all(|(k, v)| s["metric"][*k] == *v))
        .collect();
    assert_eq!(found.len(), 1, "one series with {labels:?} in {result:?}");
    found[0]["value"][1].as_str().unwrap().parse().unwrap()
}

/// Asserts `value` is within `tolerance` of `expected`.
fn near(what: &str, value: f64, expected: f64, tolerance: f64) {
    assert!(
        (value - expected).abs() <= tolerance,
        "{what}: {value}, expected {expected} ± {tolerance}"
    );
}

/// Every PromQL example of docs/metrics.md, run by a real Prometheus over a proxy's traffic: a
/// route `shop` with a rule `checkout` (half its answers 500) and a rule `browse` splitting 90/10
/// between `shop` and `shop-v2`, whose every first attempt is refused with 503 (retried once) and
/// whose answers take 30 ms. The answers are checked against what the backends saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_queries_answer_after_a_traffic_split() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use shoal_tests::backend::text_response;

    let bin = shoal_tests::process::require_tool("prometheus", "prometheus");
    let queries = shoal_tests::metrics_doc::documented_queries(&shoal_tests::metrics_doc::text());
    let titles: Vec<&str> = queries.keys().map(String::as_str).collect();
    assert_eq!(
        titles,
        [
            "Request rate per backend",
            "Retries ratio per route",
            "Success rate per route",
            "Traffic split per backend",
            "p99 latency per route",
        ],
        "each example of docs/metrics.md is checked below"
    );
    let checkouts = Arc::new(AtomicUsize::new(0));
    let v1 = HttpBackend::respond({
        let checkouts = checkouts.clone();
        move |r| {
            if r.uri.path() == "/checkout" && checkouts.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
                return text_response(500, "failed");
            }
            text_response(200, "v1")
        }
    })
    .await;
    let v2 = HttpBackend::start(|r| async move {
        // A retry carries `shoal-attempt: 2`; a first attempt no such header.
        if r.header("shoal-attempt").is_none() {
            return text_response(503, "busy");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        text_response(200, "v2")
    })
    .await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            r#"services:
  - name: shop
    port: 80
    endpoints: [{{ address: "{}" }}]
  - name: shop-v2
    port: 80
    endpoints: [{{ address: "{}" }}]
routes:
  - name: shop
    service: shop
    rules:
      - name: checkout
        matches: [{{ path_exact: /checkout }}]
        backends: [{{ service: shop }}]
      - name: browse
        backends:
          - {{ service: shop, weight: 90 }}
          - {{ service: shop-v2, weight: 10 }}
        retry: {{ attempts: 2, retry_on: [service_unavailable] }}
"#,
            v1.addr(),
            v2.addr()
        ))
        .start()
        .await;

    // Before Prometheus starts, every request series exists (a rate needs two samples, and a
    // series first scraped after the traffic would show none of it).
    let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
    for _ in 0..2 {
        c.get("shop", "/checkout").await.unwrap();
    }
    // Both backends of `browse` answer at least once (the first request may go to either).
    let (mut from_v1, mut from_v2) = (false, false);
    while !(from_v1 && from_v2) {
        let resp = c.get("shop", "/").await.unwrap();
        assert_eq!(resp.status, 200);
        match &resp.body[..] {
            b"v1" => from_v1 = true,
            b"v2" => from_v2 = true,
            other => panic!("an answer from neither backend: {other:?}"),
        }
        assert!(v1.count() < 500, "nothing reached shop-v2 in 500 requests");
    }
    let dir = TempDir::new("prometheus").unwrap();
    let (prometheus, listen) = start_prometheus(&bin.to_string_lossy(), proxy.admin(), &dir).await;
    eventually(
        Duration::from_secs(30),
        "the four request series",
        || async {
            match query(
                listen,
                r#"count(shoal_requests_total{direction="outbound"})"#,
            )
            .await
            {
                Ok(r) if r.len() == 1 && r[0]["value"][1] == "4" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // The traffic: 1,000 requests to `browse`, 200 to `checkout`, on four connections.
    let (v1_before, v2_before) = (v1.count(), v2.requests().len());
    let v2_served_before = served(&v2);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let addr = proxy.outbound();
        tasks.spawn(async move {
            let mut c = H1Client::connect(addr).await.unwrap();
            for i in 0..300 {
                let path = if i % 6 == 0 { "/checkout" } else { "/" };
                let resp = c.get("shop", path).await.unwrap();
                assert!(resp.status == 200 || path == "/checkout", "{resp:?}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let v2_served = served(&v2) - v2_served_before;
    let v1_browse = v1.count() - v1_before - 200;
    assert_eq!(v1_browse + v2_served, 1000);
    assert_eq!(
        v2.requests().len() - v2_before,
        2 * v2_served,
        "each canary request took two attempts"
    );
    let share_v2 = v2_served as f64 / 1000.0;
    near("the canary's real share", share_v2, 0.1, 0.04);

    // Prometheus has scraped everything the proxy counted.
    let total = proxy
        .metric("shoal_requests_total", &[("direction", "outbound")])
        .await;
    eventually(Duration::from_secs(30), "the last scrape", || async {
        match query(listen, r#"sum(shoal_requests_total{direction="outbound"})"#).await {
            Ok(r) if r.len() == 1 && r[0]["value"][1].as_str() == Some(&total.to_string()) => {
                Ok(())
            }
            other => Err(format!("{other:?} (the proxy counted {total})")),
        }
    })
    .await;
    let run = |title: &'static str| {
        let q = queries[title].clone();
        async move {
            query(listen, &q)
                .await
                .unwrap_or_else(|e| panic!("{title}: {q}: {e}"))
        }
    };
    let browse = [("service", "shop.default"), ("route", "browse")];
    let checkout = [("service", "shop.default"), ("route", "checkout")];
    let with = |labels: &[(&'static str, &'static str)], backend: &'static str| {
        let mut l = labels.to_vec();
        l.push(("backend", backend));
        l
    };

    let rate = run("Request rate per backend").await;
    assert_eq!(rate.len(), 3, "{rate:?}");
    for labels in [
        with(&browse, "shop.default"),
        with(&browse, "shop-v2.default"),
        with(&checkout, "shop.default"),
    ] {
        assert!(value_of(&rate, &labels) > 0.0, "{labels:?}: {rate:?}");
    }

    let success = run("Success rate per route").await;
    assert_eq!(success.len(), 2, "{success:?}");
    near(
        "browse success rate",
        value_of(&success, &browse),
        1.0,
        1e-9,
    );
    near(
        "checkout success rate",
        value_of(&success, &checkout),
        0.5,
        0.05,
    );

    // The histograms are registered with the state, so routes without traffic are there too,
    // as NaN.
    let p99: Vec<_> = (run("p99 latency per route").await)
        .into_iter()
        .filter(|s| s["value"][1] != "NaN")
        .collect();
    assert_eq!(p99.len(), 2, "{p99:?}");
    let (p99_browse, p99_checkout) = (value_of(&p99, &browse), value_of(&p99, &checkout));
    // Over 1 % of `browse` waits for the canary's 30 ms answer; `checkout` never does.
    assert!(
        (0.025..=1.0).contains(&p99_browse),
        "browse p99 {p99_browse} s"
    );
    assert!(
        p99_checkout < p99_browse,
        "checkout p99 {p99_checkout} s, browse {p99_browse} s"
    );

    let split = run("Traffic split per backend").await;
    assert_eq!(split.len(), 3, "{split:?}");
    let (main, canary) = (
        value_of(&split, &with(&browse, "shop.default")),
        value_of(&split, &with(&browse, "shop-v2.default")),
    );
    near("browse share of shop", main, 0.9, 0.07);
    near("browse share of shop-v2", canary, 0.1, 0.07);
    near("browse shares' sum", main + canary, 1.0, 1e-9);
    near("shop-v2 share vs its real share", canary, share_v2, 0.02);
    near(
        "checkout share of shop",
        value_of(&split, &with(&checkout, "shop.default")),
        1.0,
        1e-9,
    );

    // Every canary request was retried once, so retries ÷ requests is the canary's share; only
    // `browse` has a retry policy.
    let retries = run("Retries ratio per route").await;
    assert_eq!(retries.len(), 1, "{retries:?}");
    near(
        "browse retries ratio",
        value_of(&retries, &browse),
        share_v2,
        0.02,
    );
    drop(prometheus);
}

/// Requests the canary answered 200 (its second attempts).
fn served(backend: &HttpBackend) -> usize {
    backend
        .requests()
        .iter()
        .filter(|r| r.header("shoal-attempt") == Some("2"))
        .count()
}
