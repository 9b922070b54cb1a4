use super::*;

const EXAMPLE: &str = r#"
# the backend, and a canary split
kind: Service
metadata: {name: backend}
spec:
  ports:
  - {name: http, port: 8080, protocol: http1}
---
kind: Route
metadata:
  name: backend
  namespace: default
  labels: {team: shop}
spec:
  parent_service: backend
  rules:
  - name: canary
    matches:
    - path: {prefix: /api}
      headers:
      - {name: x-canary, exact: "1"}
    backends:
    - {service: backend-v2, weight: 10}
    - {service: backend}
    timeout_ms: 2000
    retry: {attempts: 3, retry_on: [connect_failure, gateway_error]}
    request_header_modifier:
      set: [{name: x-route, value: canary}]
      remove: [x-debug]
    response_header_modifier: {add: [{name: x-served-by, value: mesh}]}
  - matches: [{path: {prefix: /old}}]
    request_redirect: {scheme: https, path: {replace_prefix_match: /new}, status_code: 301}
---
---
kind: BackendPolicy
metadata: {name: backend}
spec:
  service: backend
  load_balancer: {algorithm: ring_hash, hash_key: {header: x-user}}
  circuit_breaker: {failure_ratio_threshold: 0.5, override: force_open}
"#;

#[test]
fn reads_every_document_and_skips_empty_ones() {
    let parsed = parse(EXAMPLE).expect("parses");
    assert_eq!(parsed.len(), 3);
    let route = &parsed[1].resource;
    assert_eq!(route.kind, v1::ResourceKind::Route as i32);
    let Some(v1::resource::Spec::Route(spec)) = &route.spec else {
        panic!("a route spec: {route:?}");
    };
    let rule = &spec.rules[0];
    assert_eq!(rule.backends[1].weight, 1, "a left-out weight is 1");
    assert_eq!(rule.retry.as_ref().map(|r| r.retry_on.len()), Some(2));
    let header = &rule.matches[0].headers[0];
    assert_eq!(
        header.value,
        Some(v1::header_match::Value::Exact("1".into()))
    );
    assert_eq!(parsed[2].index, 3);
    let redirect = spec.rules[1].request_redirect.as_ref().expect("a redirect");
    assert_eq!(
        (redirect.scheme.as_str(), redirect.status_code),
        ("https", 301)
    );
    let edits = rule
        .request_header_modifier
        .as_ref()
        .expect("request edits");
    assert_eq!(
        (edits.set[0].value.as_str(), edits.remove.len()),
        ("canary", 1)
    );
}

#[test]
fn printed_documents_read_back_the_same() {
    for item in parse(EXAMPLE).expect("parses") {
        let document = AnyDocument::from_wire(&item.resource).expect("a known kind");
        let text = document.to_yaml().expect("yaml");
        let again = parse(&text).expect("reads back");
        assert_eq!(again[0].resource, item.resource, "{text}");
    }
}

#[test]
fn errors_name_the_document_the_field_and_the_line() {
    let typo = "kind: Service\nmetadata: {name: a}\nspec: {ports: []}\n---\nkind: Service\nmetadata: {name: b}\nspec:\n  prots: []\n";
    let error = parse(typo).unwrap_err();
    assert!(
        error.starts_with("document 2: spec: unknown field `prots`"),
        "{error}"
    );
    assert!(error.contains("line 8"), "{error}");

    let syntax = "kind: Service\nmetadata: {name: a\n";
    let error = parse(syntax).unwrap_err();
    assert!(error.starts_with("document 1: "), "{error}");
    assert!(error.contains("line"), "{error}");

    let kind = "kind: Gateway\nmetadata: {name: a}\nspec: {}\n";
    let error = parse(kind).unwrap_err();
    assert!(
        error.contains("unknown kind \"Gateway\"") && error.contains("Mirror"),
        "{error}"
    );

    let no_kind = "metadata: {name: a}\n";
    assert!(parse(no_kind).unwrap_err().contains("missing `kind`"));

    let header = "kind: Route\nmetadata: {name: a}\nspec:\n  rules:\n  - matches:\n    - headers: [{name: x, exact: a, regex: b}]\n";
    let error = parse(header).unwrap_err();
    assert!(
        error.contains("spec.rules[0].matches[0].headers[0]: set exactly one"),
        "{error}"
    );

    let bad_enum =
        "kind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80, protocol: http3}]\n";
    let error = parse(bad_enum).unwrap_err();
    assert!(
        error.contains("spec.ports[0].protocol") && error.contains("http3"),
        "{error}"
    );
}
