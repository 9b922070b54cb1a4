//! Every kind shoal-proxy enforces applied from one file, read back as a table, YAML and JSON, applied again,
//! deleted; the documented examples applied, or refused where docs/shoalctl.md says so.

use super::harness::{ControlPlane, expect, http_get, shoalctl};

const MESH: &str = include_str!("mesh.yaml");

#[test]
fn apply_get_delete_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(dir.path());
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, MESH).expect("write");
    let file = file.to_str().expect("utf-8 path");

    let out = expect(&shoalctl(&cp.admin, &["apply", "-f", file], ""), 0, &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[0].starts_with("service/backend.default created (version 1)"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("service/backend-v2.default created (version 2)"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("route/backend.default created (version 3)"),
        "{out}"
    );

    // -o yaml round-trips: printed documents apply again as the same content, so nothing is written.
    let yaml = expect(
        &shoalctl(&cp.admin, &["get", "route", "backend", "-o", "yaml"], ""),
        0,
        &["kind: Route"],
    );
    expect(
        &shoalctl(&cp.admin, &["apply", "-f", "-"], &yaml),
        0,
        &["route/backend.default unchanged (version 3)"],
    );
    let again = expect(
        &shoalctl(&cp.admin, &["get", "routes", "backend", "-o", "yaml"], ""),
        0,
        &[],
    );
    assert_eq!(yaml, again);
    let all = expect(
        &shoalctl(&cp.admin, &["get", "svc", "-o", "yaml"], ""),
        0,
        &["backend-v2"],
    );
    expect(
        &shoalctl(&cp.admin, &["apply", "-f", "-"], &all),
        0,
        &["service/backend.default unchanged (version 1)"],
    );

    let table = expect(
        &shoalctl(&cp.admin, &["get", "services"], ""),
        0,
        &["NAMESPACE", "http:8080/http1"],
    );
    assert_eq!(table.lines().count(), 3, "{table}");
    expect(
        &shoalctl(&cp.admin, &["get", "reg", "-o", "wide"], ""),
        0,
        &["10.0.0.7:8080", "never expires"],
    );
    let json = expect(
        &shoalctl(
            &cp.admin,
            &["get", "authz", "-n", "default", "-o", "json"],
            "",
        ),
        0,
        &[],
    );
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json[0]["spec"]["rules"][0]["name"], "shop", "{json}");

    expect(
        &shoalctl(&cp.admin, &["delete", "route", "backend"], ""),
        0,
        &["route/backend.default deleted (version 6)"],
    );
    expect(
        &shoalctl(&cp.admin, &["get", "route", "backend"], ""),
        1,
        &["NOT_FOUND", "route backend.default not found"],
    );
    expect(
        &shoalctl(&cp.admin, &["get", "routes"], ""),
        0,
        &["no Route resources found"],
    );
    let metrics = http_get(&cp.metrics, "/metrics");
    let writes = r#"shoal_cp_store_writes_total{kind="service",op="apply",result="ok"} 4"#;
    assert!(metrics.contains(writes), "{metrics}");
    let rejected = r#"shoal_cp_admin_requests_total{method="Get",code="NOT_FOUND"} 1"#;
    assert!(metrics.contains(rejected), "{metrics}");
    assert!(
        metrics.contains("shoal_cp_registrations_active"),
        "{metrics}"
    );
    assert!(http_get(&cp.metrics, "/ready").starts_with("HTTP/1.1 200"));
    assert!(http_get(&cp.metrics, "/live").starts_with("HTTP/1.1 200"));
    expect(
        &shoalctl(&cp.admin, &["status"], ""),
        0,
        &["no proxies connected"],
    );
    cp.stop();
}

/// The examples in docs/shoalctl.md, one per kind, are accepted by the server as written.
#[test]
fn documented_examples_apply_as_written() {
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/shoalctl.md");
    let docs = std::fs::read_to_string(docs).expect("docs/shoalctl.md");
    let accepted = yaml_examples(&docs);
    assert_eq!(
        accepted.len(),
        8,
        "Service, EndpointRegistration, Route, AuthorizationPolicy, RateLimit, FaultInjection, BackendPolicy, Mirror"
    );
    // The services the examples refer to besides `backend`.
    let extra = "kind: Service\nmetadata: {name: backend-v2}\nspec: {ports: [{port: 8080}]}\n---\nkind: Service\nmetadata: {name: backend-shadow}\nspec: {ports: [{port: 8080}]}\n";
    let yaml = format!("{extra}---\n{}", accepted.join("---\n"));

    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(dir.path());
    let out = expect(&shoalctl(&cp.admin, &["apply", "-f", "-"], &yaml), 0, &[]);
    assert_eq!(out.lines().count(), 10, "{out}");
    // Every documented Service field was stored, not dropped: the port's and the service's
    // `tls_mode` come back as written.
    expect(
        &shoalctl(&cp.admin, &["get", "service", "backend", "-o", "yaml"], ""),
        0,
        &[
            "tls_mode: strict",
            "tls_mode: permissive",
            "target_port: 8080",
            "virtual_addresses:",
        ],
    );
    cp.stop();
}

/// The YAML code blocks of `markdown`, but for the format's outline (`spec: {...}`).
fn yaml_examples(markdown: &str) -> Vec<&str> {
    markdown
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| !block.contains("{...}"))
        .collect()
}
