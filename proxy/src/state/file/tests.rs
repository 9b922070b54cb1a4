use std::time::Duration;

use super::*;
use crate::state::Protocol;

const GOOD: &str = r#"
services:
  - name: backend
    port: 8080
    hosts: [api.example]
    addresses: [10.96.0.12]
    endpoints:
      - address: 127.0.0.1:9001
      - address: 127.0.0.1:9002
        ready: false
  - name: backend-v2
    port: 8080
    protocol: http2
    endpoints: [{ address: 127.0.0.1:9003, weight: 3 }]
routes:
  - name: canary
    service: backend
    rules:
      - matches: [{ path_prefix: /api, method: get, headers: { X-Canary: "1" } }]
        backends: [{ service: backend-v2, weight: 1 }]
        timeout: 2s
"#;

#[test]
fn parses_services_routes_and_indexes_authorities() {
    let state = parse(GOOD).unwrap();
    assert_eq!(state.services.len(), 2);
    let svc = state.by_authority("backend:8080").unwrap();
    assert_eq!(svc.name, "backend");
    assert!(
        state
            .by_authority("backend.default.svc.cluster.local:8080")
            .is_some()
    );
    assert!(state.by_authority("api.example:8080").is_some());
    assert!(state.by_addr(&"10.96.0.12:8080".parse().unwrap()).is_some());
    assert_eq!(svc.balancer.ready_len(), 1);
    assert_eq!(state.services[1].protocol, Protocol::Http2);

    let mut headers = http::HeaderMap::new();
    headers.insert("x-canary", "1".parse().unwrap());
    let rule = state
        .route(svc, &http::Method::GET, "/api/x", &headers)
        .unwrap();
    assert_eq!(rule.route, "canary");
    assert_eq!(
        rule.backends[rule.pick_backend()].service.name,
        "backend-v2"
    );
    assert_eq!(rule.timeout, Some(Duration::from_secs(2)));
    assert!(
        state
            .route(svc, &http::Method::POST, "/api/x", &headers)
            .is_none()
    );
    assert!(
        state
            .route(svc, &http::Method::GET, "/other", &headers)
            .is_none()
    );
}

#[test]
fn errors_name_the_field() {
    let cases = [
        ("services: [{name: Bad_Name, port: 80}]", "services[0].name"),
        ("services: [{name: a, port: 0}]", "services[0].port"),
        (
            "services: [{name: a, port: 80, endpoints: [{address: nowhere}]}]",
            "invalid socket address",
        ),
        (
            "services: [{name: a, port: 80, endpoints: [{address: '1.2.3.4:5', weight: 0}]}]",
            "endpoints[0].weight",
        ),
        (
            "services: [{name: a, port: 80}, {name: a, port: 80}]",
            "port 80 is defined twice",
        ),
        (
            "services: [{name: a, port: 80}]\nroutes: [{name: r, service: nope, rules: [{backends: [{service: a}]}]}]",
            "routes[0].service: unknown service `nope`",
        ),
        (
            "services: [{name: a, port: 80}]\nroutes: [{name: r, service: a, rules: [{backends: [{service: zz}]}]}]",
            "routes[0].rules[0].backends[0].service",
        ),
        (
            "services: [{name: a, port: 80}]\nroutes: [{name: r, service: a, rules: [{backends: [{service: a, weight: 0}]}]}]",
            "weights sum to 0",
        ),
        (
            "services: [{name: a, port: 80}]\nroutes: [{name: r, service: a, rules: [{matches: [{}], backends: [{service: a}]}]}]",
            "empty match",
        ),
        (
            "services: [{name: a, port: 80}]\nroutes: [{name: r, service: a, rules: [{timeout: soon, backends: [{service: a}]}]}]",
            "not a duration",
        ),
        (
            "services: [{name: a, port: 80}]\nroutes: [{name: r, service: a, rules: [{backends: [{service: a, port: 81}]}]}]",
            "routes[0].rules[0].backends[0].port: service a has no port 81",
        ),
        (
            "services: [{name: a, port: 80, colour: red}]",
            "unknown field `colour`",
        ),
    ];
    for (text, want) in cases {
        let err = parse(text).unwrap_err();
        assert!(
            err.contains(want),
            "for {text:?}: got {err:?}, want {want:?}"
        );
    }
}

/// A backend's `port` picks that port of the backend service; without it, the request's port when the
/// backend has it, else the backend's first port.
#[test]
fn a_backend_port_picks_that_port_of_the_backend() {
    let state = parse(
        r#"
services:
  - {name: web, port: 80}
  - {name: web, port: 8080}
  - {name: api, port: 80}
  - {name: api, port: 9090}
routes:
  - name: web
    service: web
    rules:
      - matches: [{path_prefix: /admin}]
        backends: [{service: api, port: 9090}]
      - backends: [{service: api}]
"#,
    )
    .unwrap();
    let headers = http::HeaderMap::new();
    let called = |port: u16, path: &str| {
        let web = state.by_authority(&format!("web:{port}")).unwrap();
        let rule = state
            .route(web, &http::Method::GET, path, &headers)
            .unwrap();
        let backend = &rule.backends[rule.pick_backend()].service;
        (backend.name.clone(), backend.port)
    };
    assert_eq!(called(80, "/admin"), ("api".into(), 9090));
    assert_eq!(called(8080, "/admin"), ("api".into(), 9090));
    assert_eq!(called(80, "/"), ("api".into(), 80));
    // web:8080 → api has no 8080: its first port.
    assert_eq!(called(8080, "/"), ("api".into(), 80));
}

#[test]
fn exact_and_regex_matches() {
    let state = parse(
        "services: [{name: a, port: 80}, {name: b, port: 80}]\nroutes: [{name: r, service: a, rules: [\n  {matches: [{path_exact: /x}], backends: [{service: b}]},\n  {matches: [{path_regex: '/v[0-9]+/.*', header_regex: {user: '(?i)ADMIN-.*'}}], backends: [{service: b}]}]}]",
    )
    .unwrap();
    let a = state.by_authority("a:80").unwrap();
    let none = http::HeaderMap::new();
    let get = &http::Method::GET;
    assert!(state.route(a, get, "/x", &none).is_some());
    assert!(state.route(a, get, "/x/y", &none).is_none());
    let mut admin = http::HeaderMap::new();
    admin.insert("user", "admin-7".parse().unwrap());
    assert!(state.route(a, get, "/v2/items", &admin).is_some());
    assert!(state.route(a, get, "/v2/items", &none).is_none());
    assert!(state.route(a, get, "/vx/items", &admin).is_none());
}

#[test]
fn rejected_update_keeps_last_good_state() {
    let dir = std::env::temp_dir().join(format!("shoal-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.yaml");
    let store = Store::new("test");
    std::fs::write(&path, GOOD).unwrap();
    assert_eq!(load_into(&store, &path), Ok(1));
    std::fs::write(&path, "services: [{name: broken").unwrap();
    assert!(load_into(&store, &path).is_err());
    assert_eq!(store.snapshot().services.len(), 2, "last good state kept");
    let status = store.status();
    assert_eq!(status.version, 1);
    assert!(status.last_error.unwrap().contains("invalid state file"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Property test (proptest): the good document above, mutated line by line (values swapped for
/// hostile ones, lines dropped, duplicated or re-indented), never panics the parser, and every
/// refusal says something. Run with more cases in CI (`PROPTEST_CASES`).
mod props {
    use proptest::prelude::*;

    use super::{GOOD, parse};

    const VALUES: &[&str] = &[
        "-1",
        "0",
        "65536",
        "99999999999999999999",
        "\"\"",
        "[]",
        "{}",
        "~",
        "::",
        "1.2.3.4:99999",
        "[::1]:80",
        "\"((\"",
        "é",
        "1e400",
        "true",
        "- x",
        "&a",
        "*a",
        "!!binary AA==",
        "0s",
        "-5s",
        "999999999999h",
    ];

    #[derive(Debug, Clone)]
    enum Edit {
        Value(usize, usize),
        Drop(usize),
        Repeat(usize),
        Indent(usize, usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), 0..VALUES.len()).prop_map(|(l, v)| Edit::Value(l, v)),
            any::<usize>().prop_map(Edit::Drop),
            any::<usize>().prop_map(Edit::Repeat),
            (any::<usize>(), 0usize..7).prop_map(|(l, n)| Edit::Indent(l, n)),
        ]
    }

    fn mutated(edits: &[Edit]) -> String {
        let mut lines: Vec<String> = GOOD.lines().map(str::to_string).collect();
        for e in edits {
            let n = lines.len().max(1);
            match *e {
                Edit::Value(l, v) => {
                    if let Some(line) = lines.get_mut(l % n)
                        && let Some((key, _)) = line.split_once(": ")
                    {
                        *line = format!("{key}: {}", VALUES[v]);
                    }
                }
                Edit::Drop(l) if !lines.is_empty() => {
                    lines.remove(l % n);
                }
                Edit::Repeat(l) if !lines.is_empty() => {
                    let line = lines[l % n].clone();
                    lines.insert(l % n, line);
                }
                Edit::Indent(l, by) => {
                    if let Some(line) = lines.get_mut(l % n) {
                        *line = format!("{}{}", " ".repeat(by), line.trim_start());
                    }
                }
                _ => {}
            }
        }
        lines.join("\n")
    }

    proptest! {
        #[test]
        fn mutated_state_files_never_panic_and_refusals_explain(edits in prop::collection::vec(edit(), 1..8)) {
            if let Err(e) = parse(&mutated(&edits)) {
                prop_assert!(!e.trim().is_empty());
            }
        }
    }
}

#[test]
fn two_services_on_one_virtual_address_and_port_are_refused() {
    let yaml = r#"
services:
  - name: alpha
    port: 80
    addresses: [10.96.0.10]
    endpoints: [{ address: "127.0.0.1:9001" }]
  - name: beta
    port: 80
    addresses: [10.96.0.10]
    endpoints: [{ address: "127.0.0.1:9002" }]
"#;
    let err = parse(yaml).unwrap_err();
    assert!(
        err.contains("services[1]: address 10.96.0.10:80 is already used by service alpha.default"),
        "{err}"
    );
}
