//! Consistent hashing (`load_balancer: {algorithm: ring_hash, hash_key: ...}`) through real proxies
//! and upstreams that name themselves: requests with the same header, cookie or query parameter
//! value keep landing on one endpoint while different keys spread; a request without the key is
//! balanced as usual; an endpoint registered through a real control plane (`shoalctl apply`)
//! takes about 1/N of the keys and no key moves between the others; an endpoint ejected by outlier
//! detection passes its keys on and gets them back when readmitted; opaque TCP connections are
//! placed by the client's address under `source_ip`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, empty, request};
use shoal_tests::control_plane::{ControlPlaneBuilder, registration_yaml, service_yaml};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// Endpoints answering 200 with their own name (`e0`, `e1`, ...).
async fn named(n: usize) -> Vec<HttpBackend> {
    let mut backends = Vec::new();
    for i in 0..n {
        let name = format!("e{i}");
        backends.push(HttpBackend::respond(move |_| text_response(200, &name)).await);
    }
    backends
}

/// One request to `host` (`path`, extra `headers`) over `client`; the answering endpoint's name.
async fn ask(client: &mut H1Client, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = request("GET", path, Some(host));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.send(req.body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.text()
}

/// A proxy with one service per key kind over the same endpoints: `header.example` hashes
/// `x-user`, `cookie.example` the cookie `session`, `query.example` the parameter `user`.
async fn keyed_proxy(endpoints: &[SocketAddr], outlier: &str) -> Proxy {
    let list: String = endpoints
        .iter()
        .map(|a| format!("\n      - address: \"{a}\""))
        .collect();
    let mut state = String::from("services:\n");
    let mut policies = String::from("backend_policies:\n");
    for (name, key) in [
        ("header", "{header: x-user}"),
        ("cookie", "{cookie: session}"),
        ("query", "{query_parameter: user}"),
    ] {
        state.push_str(&format!(
            "  - name: {name}\n    port: 80\n    hosts: [{name}.example]\n    endpoints:{list}\n"
        ));
        policies.push_str(&format!(
            "  - service: {name}\n    load_balancer: {{algorithm: ring_hash, hash_key: {key}}}\n{outlier}"
        ));
    }
    ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!("{state}{policies}"))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sticks_to_one_endpoint_keys_spread_and_every_key_kind_works() {
    let backends = named(4).await;
    let addrs: Vec<_> = backends.iter().map(HttpBackend::addr).collect();
    let proxy = keyed_proxy(&addrs, "").await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();

    let mut by_kind: Vec<HashMap<String, String>> = Vec::new();
    for kind in ["header", "cookie", "query"] {
        let host = format!("{kind}.example");
        let mut home = HashMap::new();
        for u in 0..40 {
            let user = format!("user-{u}");
            let cookie = format!("theme=dark; session={user}");
            let path = format!("/cart?page=2&user={user}");
            let (path, headers): (&str, Vec<(&str, &str)>) = match kind {
                "header" => ("/", vec![("x-user", &user)]),
                "cookie" => ("/", vec![("cookie", &cookie)]),
                _ => (&path, vec![]),
            };
            let first = ask(&mut client, &host, path, &headers).await;
            for i in 0..4 {
                let again = ask(&mut client, &host, path, &headers).await;
                assert_eq!(again, first, "{kind} key {user}, request {i}: moved");
            }
            home.insert(user, first);
        }
        let used: HashSet<_> = home.values().collect();
        assert!(used.len() >= 3, "{kind}: 40 keys on {used:?} only");
        by_kind.push(home);
    }
    // The same key is the same key whichever part of the request carries it.
    assert_eq!(by_kind[0], by_kind[1]);
    assert_eq!(by_kind[0], by_kind[2]);

    // Without the key: the default algorithm spreads the requests.
    let mut spread = HashSet::new();
    for _ in 0..60 {
        spread.insert(ask(&mut client, "header.example", "/", &[]).await);
    }
    assert!(spread.len() >= 2, "keyless requests all went to {spread:?}");

    let config = proxy.config().await;
    let services = config["state"]["services"].as_array().unwrap();
    let header = services.iter().find(|s| s["name"] == "header").unwrap();
    assert_eq!(header["load_balancer"]["algorithm"], "ring_hash");
    let policy = &header["backend_policy"]["policy"];
    assert_eq!(policy["load_balancer"], "ring_hash", "{policy}");
    assert_eq!(policy["hash_key"]["header"], "x-user", "{policy}");
    let query = services.iter().find(|s| s["name"] == "query").unwrap();
    assert_eq!(
        query["backend_policy"]["policy"]["hash_key"]["query_parameter"],
        "user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_without_a_key_is_refused_naming_the_field() {
    let backend = HttpBackend::respond(|_| text_response(200, "ok")).await;
    let exited = ProxyBuilder::new()
        .outbound_explicit()
        .state(&format!(
            "services:\n  - name: app\n    port: 80\n    endpoints:\n      - address: \"{}\"\n\
             backend_policies:\n  - service: app\n    load_balancer: {{algorithm: ring_hash}}\n",
            backend.addr()
        ))
        .run_to_exit(Duration::from_secs(10))
        .unwrap();
    let text = format!("{}{}", exited.stdout, exited.stderr);
    assert!(
        text.contains(
            "backend_policies[0].load_balancer.hash_key: required with algorithm ring_hash"
        ),
        "{text}"
    );
}

/// Where each of `keys` lands: key → endpoint name.
async fn placement(client: &mut H1Client, keys: &[String]) -> Vec<String> {
    let mut placed = Vec::new();
    for key in keys {
        placed.push(ask(client, "web", "/", &[("x-user", key)]).await);
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_registered_through_the_control_plane_takes_about_one_in_n_keys() {
    let backends = named(5).await;
    let addrs: Vec<_> = backends.iter().map(HttpBackend::addr).collect();
    let cp = ControlPlaneBuilder::new().start().await;
    let applied = cp
        .apply(&format!(
            "{}---\nkind: BackendPolicy\nmetadata: {{name: web}}\nspec:\n  service: web\n  \
             load_balancer: {{algorithm: ring_hash, hash_key: {{header: x-user}}}}\n",
            service_yaml("web", 80, &addrs[..4])
        ))
        .await;
    assert!(
        applied
            .stdout
            .contains("backend-policy/web.default created"),
        "{applied:?}"
    );
    let proxy = cp.proxy_builder("hash-proxy").start().await;
    let keys: Vec<String> = (0..400).map(|k| format!("user-{k}")).collect();
    // The first request subscribes to the service (and waits for it); the policy may arrive
    // after the endpoints: wait until the balancer hashes.
    eventually(WAIT, "the ring hash policy applied", || async {
        let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
        ask(&mut c, "web", "/", &[("x-user", "someone")]).await;
        let config = proxy.config().await;
        let services = config["state"]["services"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match services.iter().find(|s| s["name"] == "web") {
            Some(s) if s["load_balancer"]["algorithm"] == "ring_hash" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    let before = placement(&mut client, &keys).await;
    assert_eq!(before, placement(&mut client, &keys).await, "keys moved");
    assert!(!before.contains(&"e4".to_string()));

    let registered = cp
        .apply(registration_yaml("web-4", "web", addrs[4], None).trim_start_matches("---\n"))
        .await;
    assert!(registered.stdout.contains("created"), "{registered:?}");
    eventually(
        WAIT,
        "the fifth endpoint in the proxy's balancer",
        || async {
            let config = proxy.config().await;
            let services = config["state"]["services"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let n = services
                .iter()
                .find(|s| s["name"] == "web")
                .and_then(|s| s["load_balancer"]["endpoints"].as_array().map(Vec::len));
            if n == Some(5) {
                Ok(())
            } else {
                Err(format!("{n:?} endpoints"))
            }
        },
    )
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    let after = placement(&mut client, &keys).await;
    let moved: Vec<usize> = (0..keys.len()).filter(|&k| before[k] != after[k]).collect();
    for &k in &moved {
        assert_eq!(
            after[k], "e4",
            "key {} moved between old endpoints",
            keys[k]
        );
    }
    // Ideally 1/5 of 400 = 80; the ring's and the sample's variance are well inside ± 40.
    assert!(
        (40..=120).contains(&moved.len()),
        "{} of 400 keys moved to the new endpoint",
        moved.len()
    );
    eprintln!("{} of 400 keys moved to the fifth endpoint", moved.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoints_keys_move_and_come_back_when_it_is_readmitted() {
    let healthy = Arc::new(AtomicBool::new(true));
    let mut backends = named(3).await;
    let flag = healthy.clone();
    backends.push(
        HttpBackend::respond(move |_| {
            if flag.load(Ordering::SeqCst) {
                text_response(200, "e3")
            } else {
                text_response(500, "broken")
            }
        })
        .await,
    );
    let addrs: Vec<_> = backends.iter().map(HttpBackend::addr).collect();
    let proxy = keyed_proxy(
        &addrs,
        "    outlier_detection: {consecutive_5xx: 2, base_ejection_time: 2s, max_ejection_percent: 50}\n",
    )
    .await;
    let mut client = H1Client::connect(proxy.outbound()).await.unwrap();
    let keys: Vec<String> = (0..60).map(|k| format!("user-{k}")).collect();
    let mut home = Vec::new();
    for key in &keys {
        home.push(ask(&mut client, "header.example", "/", &[("x-user", key)]).await);
    }
    let victim_keys: Vec<usize> = (0..keys.len()).filter(|&k| home[k] == "e3").collect();
    assert!(!victim_keys.is_empty(), "no key on e3: {home:?}");

    // e3 fails: two failures in a row on one of its keys eject it.
    healthy.store(false, Ordering::SeqCst);
    let victim = &keys[victim_keys[0]];
    for _ in 0..2 {
        let mut req = request("GET", "/", Some("header.example"));
        req = req.header("x-user", victim.as_str());
        let resp = client.send(req.body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status, 500);
    }
    // Ejected: its keys go elsewhere, each to one endpoint; the others' keys stay.
    let mut moved_to = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let now = ask(&mut client, "header.example", "/", &[("x-user", key)]).await;
        if home[k] == "e3" {
            assert_ne!(now, "e3");
            moved_to.push(now);
        } else {
            assert_eq!(now, home[k], "key {key} moved though its endpoint is fine");
        }
    }
    for (i, &k) in victim_keys.iter().enumerate() {
        let again = ask(&mut client, "header.example", "/", &[("x-user", &keys[k])]).await;
        assert_eq!(
            again, moved_to[i],
            "key {} is not stable while e3 is out",
            keys[k]
        );
    }

    // e3 recovers; after the ejection time a probe readmits it and its keys come back.
    healthy.store(true, Ordering::SeqCst);
    eventually(WAIT, "e3's keys back on e3", || async {
        let mut c = H1Client::connect(proxy.outbound()).await.unwrap();
        let now = ask(&mut c, "header.example", "/", &[("x-user", victim)]).await;
        if now == "e3" { Ok(()) } else { Err(now) }
    })
    .await;
    for (k, key) in keys.iter().enumerate() {
        let now = ask(&mut client, "header.example", "/", &[("x-user", key)]).await;
        assert_eq!(now, home[k], "key {key} after e3 came back");
    }
}

/// One opaque connection from `source` through `proxy`'s outbound target: a line echoed back.
async fn opaque_from(proxy: &Proxy, source: [u8; 4]) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut s = socket.connect(proxy.outbound()).await.unwrap();
    // Not HTTP, not TLS: detection decides "opaque" from the first bytes.
    s.write_all(b"hello, opaque world\n").await.unwrap();
    let mut buf = [0u8; 20];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("no echo within 10s")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_is_placed_by_the_clients_address_under_source_ip() {
    let mut echoes = Vec::new();
    for _ in 0..4 {
        echoes.push(shoal_tests::TcpBackend::echo().await);
    }
    let list: String = echoes
        .iter()
        .map(|e| format!("\n      - address: \"{}\"", e.addr()))
        .collect();
    // The outbound target is the service's virtual address: opaque connections to it are balanced.
    let proxy = ProxyBuilder::new()
        .outbound_target("127.0.0.1:9")
        .state(&format!(
            "services:\n  - name: db\n    port: 9\n    addresses: [127.0.0.1]\n    endpoints:{list}\n\
             backend_policies:\n  - service: db\n    load_balancer: {{algorithm: ring_hash, hash_key: {{source_ip: true}}}}\n"
        ))
        .start()
        .await;
    let accepted = || echoes.iter().map(|e| e.accepted()).collect::<Vec<_>>();
    for _ in 0..10 {
        opaque_from(&proxy, [127, 0, 0, 1]).await;
    }
    let one = accepted();
    assert_eq!(
        one.iter().filter(|&&n| n == 10).count(),
        1,
        "ten connections from one client on one endpoint: {one:?}"
    );
    for last in 2..=31 {
        opaque_from(&proxy, [127, 0, 0, last]).await;
    }
    let spread = accepted();
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 3,
        "30 more clients on {spread:?}"
    );
}
