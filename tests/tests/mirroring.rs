//! Request mirroring (parallel run) through real proxies and upstreams: a share of the requests to
//! a service is copied to a shadow service, whose answers are compared with the primary's and
//! counted per route; the client only ever sees the primary, and never waits for the shadow — a
//! slow one, a dead one, or one over the in-flight cap. From the static state file, and applied
//! with `shoalctl` through a real control plane, changed under steady traffic without a failed
//! request.

use std::time::{Duration, Instant};

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, H2Client, empty, full, request};
use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient, service_yaml};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, eventually};

const REQUESTS: &str = "shoal_mirror_requests_total";

/// A service `name` on port 80 answering to `name.example`, with one endpoint.
fn service(name: &str, backend: &HttpBackend) -> String {
    format!(
        "  - name: {name}\n    port: 80\n    hosts: [{name}.example]\n    endpoints:\n      - address: \"{}\"\n",
        backend.addr()
    )
}

/// A proxy whose state has `services` (YAML list items) and `mirrors` (list items).
async fn proxy(services: &[String], mirrors: &str, env: &[(&str, &str)]) -> Proxy {
    let mut builder = ProxyBuilder::new().outbound_explicit().state(&format!(
        "services:\n{}mirrors:\n{mirrors}",
        services.concat()
    ));
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder.start().await
}

fn get(host: &str) -> http::Request<shoal_tests::client::Body> {
    request("GET", "/", Some(host)).body(empty()).unwrap()
}

/// The mirror counter of `service` with `result` (and any other labels).
async fn counted(proxy: &Proxy, service: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("service", service)];
    all.extend_from_slice(labels);
    proxy.metric(REQUESTS, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_never_delays_the_client_and_gets_its_share() {
    let primary = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let shadow = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        text_response(200, "ok")
    })
    .await;
    let proxy = proxy(
        &[service("app", &primary), service("app-shadow", &shadow)],
        "  - {service: app, mirror: app-shadow, percent: 50, compare_headers: [content-type]}\n",
        &[("SHOAL_MIRROR_MAX_IN_FLIGHT", "1000")],
    )
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    let n = 300;
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let started = Instant::now();
        let resp = client.send(get("app.example")).await.unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            (resp.status.as_u16(), resp.text()),
            (200, "ok".into()),
            "{i}"
        );
    }
    // The shadow takes 2 s an answer; the client waits for the primary only (a generous bound,
    // for a loaded machine).
    assert!(
        slowest < Duration::from_secs(1),
        "the slowest answer took {slowest:?}; the shadow's 2 s must not show"
    );
    assert_eq!(primary.count(), n);
    // Every copy is compared once the shadow answers: all of them match.
    let matched = eventually(Duration::from_secs(20), "every copy compared", || async {
        let matched = counted(&proxy, "app.default", &[("result", "match")]).await;
        let all = counted(&proxy, "app.default", &[]).await;
        if matched > 0.0 && matched == all && matched as usize == shadow.count() {
            Ok(matched as usize)
        } else {
            Err(format!(
                "{matched} matched of {all} counted, the shadow saw {}",
                shadow.count()
            ))
        }
    })
    .await;
    // 50 % of 300: the binomial's standard deviation is 8.7; ±45 is beyond 5 of them.
    assert!(
        (105..=195).contains(&matched),
        "{matched} of {n} mirrored, 50 % configured"
    );
    for copy in shadow.requests() {
        assert_eq!(copy.header("shoal-mirror"), Some("1"));
        assert_eq!(copy.authority().as_deref(), Some("app-shadow:80"));
    }
    for seen in primary.requests() {
        assert_eq!(
            seen.header("shoal-mirror"),
            None,
            "the primary got a copy's mark"
        );
    }
    let config = proxy.config().await;
    let mirror = &config["state"]["services"][0]["mirror"];
    assert_eq!(mirror["mirror_service"], "app-shadow.default", "{config}");
    assert_eq!(mirror["mirror_port"], 80, "{config}");
    assert_eq!(mirror["percent"], 50.0, "{config}");
    assert_eq!(
        mirror["compare_headers"],
        serde_json::json!(["content-type"]),
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatches_are_counted_by_the_part_that_differed() {
    let with = |status: u16, version: &'static str, body: &'static str| {
        HttpBackend::respond(move |_| {
            let mut resp = text_response(status, body);
            resp.headers_mut()
                .insert("x-version", http::HeaderValue::from_static(version));
            // Never compared: differs on every answer.
            resp.headers_mut().insert(
                "x-request-time",
                http::HeaderValue::from(fastrand_like_now()),
            );
            resp
        })
    };
    let primary = with(200, "1", "same").await;
    let (status, header, body, same) = (
        with(500, "1", "same").await,
        with(200, "2", "same").await,
        with(200, "1", "different").await,
        HttpBackend::echo().await,
    );
    // `echoed` mirrors to an echo shadow, its primary an echo too: the request body must arrive.
    let echo = HttpBackend::echo().await;
    let services = [
        service("app-status", &primary),
        service("app-header", &primary),
        service("app-body", &primary),
        service("app-same", &primary),
        service("echoed", &echo),
        service("shadow-status", &status),
        service("shadow-header", &header),
        service("shadow-body", &body),
        service("shadow-same", &primary),
        service("shadow-echo", &same),
    ];
    let mirror = |from: &str, to: &str| {
        format!(
            "  - {{service: {from}, mirror: {to}, percent: 100, compare_headers: [x-version]}}\n"
        )
    };
    let proxy = proxy(
        &services,
        &[
            mirror("app-status", "shadow-status"),
            mirror("app-header", "shadow-header"),
            mirror("app-body", "shadow-body"),
            mirror("app-same", "shadow-same"),
            "  - {service: echoed, mirror: shadow-echo, percent: 100}\n".to_string(),
        ]
        .concat(),
        &[],
    )
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    for host in ["app-status", "app-header", "app-body", "app-same"] {
        for _ in 0..10 {
            let resp = client.send(get(&format!("{host}.example"))).await.unwrap();
            assert_eq!((resp.status.as_u16(), resp.text()), (200, "same".into()));
        }
    }
    for i in 0..10 {
        let req = request("POST", "/submit", Some("echoed.example"))
            .body(full(format!("payload {i}")))
            .unwrap();
        let resp = client.send(req).await.unwrap();
        assert_eq!(resp.text(), format!("payload {i}"));
    }
    // HTTP/2 from the client: its request body copied from the h2 stream, its response hashed.
    let h2 = H2Client::connect(proxy.outbound()).await.unwrap();
    for i in 0..5 {
        let req = request("POST", "http://echoed.example/h2", None)
            .body(full(format!("h2 payload {i}")))
            .unwrap();
        assert_eq!(
            h2.send(req).await.unwrap().text(),
            format!("h2 payload {i}")
        );
    }
    // Over the replay limit (64 KiB): sent to the primary, not mirrored.
    let big = "x".repeat(100 * 1024);
    let req = request("POST", "/big", Some("echoed.example"))
        .body(full(big.clone()))
        .unwrap();
    assert_eq!(client.send(req).await.unwrap().text().len(), big.len());

    let mismatch = |service: &'static str, part: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .wait_metric(
                    "shoal_mirror_mismatches_total",
                    &[("service", service), ("part", part)],
                    10.0,
                )
                .await;
        }
    };
    mismatch("app-status.default", "status").await;
    mismatch("app-header.default", "header").await;
    mismatch("app-body.default", "body").await;
    proxy
        .wait_metric(
            REQUESTS,
            &[("service", "app-same.default"), ("result", "match")],
            10.0,
        )
        .await;
    proxy
        .wait_metric(
            REQUESTS,
            &[("service", "echoed.default"), ("result", "match")],
            15.0,
        )
        .await;
    proxy
        .wait_metric(
            "shoal_mirror_skipped_total",
            &[("service", "echoed.default"), ("reason", "body_too_large")],
            1.0,
        )
        .await;
    // Each mismatch is counted under its own part only.
    for (service, part) in [
        ("app-status.default", "header"),
        ("app-status.default", "body"),
        ("app-header.default", "status"),
        ("app-header.default", "body"),
        ("app-body.default", "status"),
        ("app-body.default", "header"),
    ] {
        let n = proxy
            .metric(
                "shoal_mirror_mismatches_total",
                &[("service", service), ("part", part)],
            )
            .await;
        assert_eq!(n, 0.0, "{service} {part}");
    }
    for service in [
        "app-status.default",
        "app-header.default",
        "app-body.default",
    ] {
        assert_eq!(
            counted(&proxy, service, &[("result", "mismatch")]).await,
            10.0
        );
    }
    assert_eq!(
        counted(&proxy, "app-same.default", &[("result", "mismatch")]).await,
        0.0
    );
    // The copies carried the primary's bodies; the large one was never sent.
    let mut bodies: Vec<_> = (same.requests().iter())
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    bodies.sort();
    let mut expected: Vec<_> = (0..10)
        .map(|i| format!("payload {i}"))
        .chain((0..5).map(|i| format!("h2 payload {i}")))
        .collect();
    expected.sort();
    assert_eq!(bodies, expected);
}

/// A value that differs from one call to the next.
fn fastrand_like_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shadow_counts_failures_and_the_client_is_unaffected() {
    let primary = HttpBackend::respond(|_| text_response(200, "ok")).await;
    // An address nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let services = [
        service("app", &primary),
        format!(
            "  - name: app-shadow\n    port: 80\n    endpoints:\n      - address: \"{dead}\"\n"
        ),
    ];
    let proxy = proxy(
        &services,
        "  - {service: app, mirror: app-shadow, percent: 100}\n",
        &[],
    )
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    for _ in 0..20 {
        let resp = client.send(get("app.example")).await.unwrap();
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "ok".into()));
    }
    proxy
        .wait_metric(
            REQUESTS,
            &[("service", "app.default"), ("result", "failed")],
            20.0,
        )
        .await;
    assert_eq!(
        counted(&proxy, "app.default", &[("result", "match")]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_over_the_in_flight_cap_are_skipped_not_queued() {
    let primary = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let shadow = HttpBackend::start(|_| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        text_response(200, "ok")
    })
    .await;
    let proxy = proxy(
        &[service("app", &primary), service("app-shadow", &shadow)],
        "  - {service: app, mirror: app-shadow, percent: 100}\n",
        &[("SHOAL_MIRROR_MAX_IN_FLIGHT", "2")],
    )
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    let n = 10;
    for _ in 0..n {
        let resp = client.send(get("app.example")).await.unwrap();
        assert_eq!(resp.status, 200);
    }
    let (skipped, compared) = eventually(Duration::from_secs(20), "every copy counted", || async {
        let skipped = proxy
            .metric(
                "shoal_mirror_skipped_total",
                &[("service", "app.default"), ("reason", "in_flight_limit")],
            )
            .await;
        let compared = counted(&proxy, "app.default", &[("result", "match")]).await;
        if skipped + compared == n as f64 {
            Ok((skipped as usize, compared as usize))
        } else {
            Err(format!("{skipped} skipped, {compared} compared"))
        }
    })
    .await;
    // Ten requests within the shadow's 3 s: at most two copies in flight at once.
    assert!(skipped >= 1, "{skipped} skipped, {compared} compared");
    assert_eq!(shadow.count(), compared, "skipped copies are never sent");
}

fn mirror_yaml(percent: u32, headers: &str) -> String {
    format!(
        "kind: Mirror\nmetadata: {{name: app}}\nspec:\n  target_service: app\n  mirror_service: app-shadow\n  percent: {percent}\n  compare_headers: [{headers}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_applied_with_shoalctl_compares_and_changes_under_traffic() {
    let primary = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let shadow = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&format!(
        "{}---\n{}",
        service_yaml("app", 80, &[primary.addr()]),
        service_yaml("app-shadow", 80, &[shadow.addr()])
    ))
    .await
    .success();
    let applied = cp.apply(&mirror_yaml(100, "content-type")).await.success();
    assert!(
        applied.stdout.contains("mirror/app.default created"),
        "{applied:?}"
    );
    let proxy = cp.proxy_builder("mirror-proxy").start().await;
    let mut client = MeshClient::new(proxy.outbound());
    // The first request subscribes to the service and its mirror, which subscribes to the
    // shadow: copies start once it arrived.
    eventually(Duration::from_secs(10), "copies compared", || async {
        let resp = MeshClient::new(proxy.outbound())
            .get("app", "/")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(resp.status, 200);
        let matched = counted(&proxy, "app.default", &[("result", "match")]).await;
        if matched > 0.0 {
            Ok(())
        } else {
            Err("none yet".to_string())
        }
    })
    .await;
    assert!(shadow.count() > 0);
    let config = proxy.config().await;
    let app = config["state"]["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "app")
        .cloned()
        .unwrap_or_else(|| panic!("no service app in /config: {config}"));
    assert_eq!(
        app["mirror"]["mirror_service"], "app-shadow.default",
        "{app}"
    );
    assert_eq!(app["mirror"]["percent"], 100.0, "{app}");

    // Changing the policy under steady traffic: no failed request.
    let load = {
        let addr = proxy.outbound();
        tokio::spawn(async move {
            let mut client = MeshClient::new(addr);
            let mut failed = 0;
            for _ in 0..300 {
                let resp = client.get("app", "/").await.unwrap();
                failed += usize::from(resp.status != 200);
            }
            failed
        })
    };
    cp.apply(&mirror_yaml(50, "content-type, etag"))
        .await
        .success();
    cp.apply(&mirror_yaml(0, "")).await.success();
    assert_eq!(
        load.await.unwrap(),
        0,
        "failed requests while the mirror changed"
    );
    eventually(
        Duration::from_secs(10),
        "the last policy in /config",
        || async {
            let config = proxy.config().await;
            let percent = config["state"]["services"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == "app")
                .map(|s| s["mirror"]["percent"].clone());
            if percent == Some(serde_json::json!(0.0)) {
                Ok(())
            } else {
                Err(format!("{percent:?}"))
            }
        },
    )
    .await;
    let before = shadow.count();
    for _ in 0..20 {
        assert_eq!(client.get("app", "/").await.unwrap().status, 200);
    }
    assert_eq!(shadow.count(), before, "0 % copies nothing");

    // What the proxy could not compare is refused at apply, naming the field.
    let refused = cp
        .ctl(
            &["apply", "-f", "-"],
            Some(&mirror_yaml(10, "Content-Type")),
        )
        .await;
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("spec.compare_headers[0]"),
        "{}",
        refused.stderr
    );
}
