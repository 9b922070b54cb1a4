//! The filters of both kinds of route, and the per-service mirror built from `RequestMirror` filters
//! (through `Policies::evaluate`, as the source runs it, without an API server).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use shoal_proto::v1;
use shoal_proto::v1::discovery_resource::Payload;

use super::super::{GRPC_ROUTES, HTTP_ROUTES, Outcome, Policies, WATCHED, Watched};
use super::translate;
use crate::discovery::catalog::Contribution;
use crate::model::{HeaderModifier, Service, ServiceRef, fixtures};
use crate::sources::kubernetes::cluster::Event;

fn grpc_route(rules: Value) -> Value {
    json!({"parentRefs": [{"kind": "Service", "name": "greeter"}], "rules": rules})
}

fn http_route(rules: Value) -> Value {
    json!({"parentRefs": [{"kind": "Service", "name": "web"}], "rules": rules})
}

fn mirror_filter(mirror: Value) -> Value {
    json!({"type": "RequestMirror", "requestMirror": mirror})
}

#[test]
fn grpc_route_header_filters_translate_like_an_http_routes() {
    let spec = grpc_route(json!([{"filters": [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "set": [{"name": "x-tenant", "value": "a"}], "remove": ["x-debug"]}},
        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
            "add": [{"name": "x-served-by", "value": "mesh"}]}}
    ]}]));
    let t = translate(&spec, "default", true).unwrap().unwrap();
    assert_eq!(
        t.rules[0].request_headers,
        Some(HeaderModifier {
            set: vec![("x-tenant".into(), "a".into())],
            remove: vec!["x-debug".into()],
            ..HeaderModifier::default()
        })
    );
    assert_eq!(
        t.rules[0].response_headers,
        Some(HeaderModifier {
            add: vec![("x-served-by".into(), "mesh".into())],
            ..HeaderModifier::default()
        })
    );
    assert_eq!(t.mirrors, [None]);
}

#[test]
fn refused_filters_are_named_with_the_reason() {
    let header =
        |kind: &str, field: &str, edits: Value| json!({"filters": [{"type": kind, field: edits}]});
    let grpc_cases = [
        (
            json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}]}),
            "spec.rules[0].filters[0].type: \"RequestRedirect\" is not a GRPCRoute filter type",
        ),
        (
            json!({"filters": [{"type": "URLRewrite"}]}),
            "spec.rules[0].filters[0].type: \"URLRewrite\" is not a GRPCRoute filter type",
        ),
        (
            json!({"filters": [{"type": "ExtensionRef"}]}),
            "spec.rules[0].filters[0].type: ExtensionRef is not enforced: shoal-proxy runs only",
        ),
        (
            header(
                "ResponseHeaderModifier",
                "responseHeaderModifier",
                json!({"set": [{"name": "grpc-status", "value": "0"}]}),
            ),
            "spec.rules[0].filters[0].responseHeaderModifier.set[0].name: \"grpc-status\": the gRPC protocol reserves",
        ),
        (
            header(
                "RequestHeaderModifier",
                "requestHeaderModifier",
                json!({"remove": ["te"]}),
            ),
            "spec.rules[0].filters[0].requestHeaderModifier.remove[0]: \"te\" is a hop-by-hop",
        ),
    ];
    for (rule, expected) in grpc_cases {
        let error = translate(&grpc_route(json!([rule])), "default", true).unwrap_err();
        assert!(error.starts_with(expected), "{error}\nwanted: {expected}");
    }
    let http_cases = [
        (
            json!({"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "a"}}]}),
            "spec.rules[0].filters[0].type: URLRewrite is not enforced: shoal-proxy sends a request with the \
             host and path it was made with",
        ),
        (
            header(
                "RequestHeaderModifier",
                "requestHeaderModifier",
                json!({"add": [{"name": "Host", "value": "elsewhere"}]}),
            ),
            "spec.rules[0].filters[0].requestHeaderModifier.add[0].name: \"Host\" is a hop-by-hop",
        ),
        (
            header(
                "ResponseHeaderModifier",
                "responseHeaderModifier",
                json!({"set": [{"name": "shoal-proxy-error", "value": "none"}]}),
            ),
            "spec.rules[0].filters[0].responseHeaderModifier.set[0].name: \"shoal-proxy-error\" is one of \
             the mesh's own",
        ),
        (
            json!({"filters": [{"type": "RequestMirror"}]}),
            "spec.rules[0].filters[0].requestMirror: required",
        ),
        (
            json!({"filters": [mirror_filter(json!({"percent": 10}))]}),
            "spec.rules[0].filters[0].requestMirror.backendRef: required",
        ),
        (
            json!({"filters": [mirror_filter(json!({"backendRef": {"name": "s", "port": 80},
                                                    "percent": 10, "fraction": {"numerator": 1}}))]}),
            "spec.rules[0].filters[0].requestMirror.fraction: set percent or fraction, not both",
        ),
        (
            json!({"filters": [mirror_filter(json!({"backendRef": {"name": "s", "port": 80}, "percent": 101}))]}),
            "spec.rules[0].filters[0].requestMirror.percent: 101 is more than 100",
        ),
        (
            json!({"filters": [mirror_filter(json!({"backendRef": {"name": "s", "port": 80},
                                                    "fraction": {"numerator": 3, "denominator": 2}}))]}),
            "spec.rules[0].filters[0].requestMirror.fraction.numerator: 3 is more than the denominator",
        ),
        (
            json!({"filters": [mirror_filter(json!({"backendRef": {"name": "s", "port": 80},
                                                    "fraction": {"numerator": 0, "denominator": 0}}))]}),
            "spec.rules[0].filters[0].requestMirror.fraction.denominator: 0",
        ),
        (
            json!({"filters": [mirror_filter(json!({"backendRef": {"name": "s", "namespace": "other", "port": 80}}))]}),
            "spec.rules[0].filters[0].requestMirror.backendRef.namespace: a backend in another namespace",
        ),
        (
            json!({"filters": [mirror_filter(json!({"backendRef": {"kind": "ServiceImport", "name": "s"}}))]}),
            "spec.rules[0].filters[0].requestMirror.backendRef.kind: only Services",
        ),
        (
            json!({"filters": [mirror_filter(json!({"backendRef": {"name": "s", "port": 80, "weight": 2}}))]}),
            "spec.rules[0].filters[0].requestMirror.backendRef.weight: not a field",
        ),
        (
            json!({"filters": [mirror_filter(json!({"backendRef": {"name": "s", "port": 80}})),
                               mirror_filter(json!({"backendRef": {"name": "t", "port": 80}}))]}),
            "spec.rules[0].filters[1].type: a second RequestMirror filter in one rule",
        ),
    ];
    for (rule, expected) in http_cases {
        let error = translate(&http_route(json!([rule])), "default", false).unwrap_err();
        assert!(error.starts_with(expected), "{error}\nwanted: {expected}");
    }
}

#[test]
fn mirror_shares_translate_from_percent_or_fraction() {
    let share = |mirror: Value| {
        let rule = json!({"filters": [mirror_filter(mirror)]});
        let t = translate(&http_route(json!([rule])), "default", false)
            .unwrap()
            .unwrap();
        t.mirrors[0].clone().unwrap()
    };
    let every = share(json!({"backendRef": {"name": "web-shadow", "port": 8080}}));
    assert_eq!(every.percent, 100.0);
    assert_eq!(every.service, ServiceRef::new("web-shadow", "default"));
    assert_eq!(every.port, Some(8080));
    assert_eq!(every.field, "spec.rules[0].filters[0].requestMirror");
    let percent = share(json!({"backendRef": {"name": "s", "port": 80}, "percent": 25}));
    assert_eq!(percent.percent, 25.0);
    let third =
        share(json!({"backendRef": {"name": "s"}, "fraction": {"numerator": 1, "denominator": 3}}));
    assert!((third.percent - 100.0 / 3.0).abs() < 1e-9, "{third:?}");
    assert_eq!(third.port, None);
    let per_hundred =
        share(json!({"backendRef": {"name": "s", "port": 80}, "fraction": {"numerator": 5}}));
    assert_eq!(per_hundred.percent, 5.0);
}

/// Every kind listed, with `objects` (`(kind index, name, spec)` in namespace `default`), evaluated against
/// the Services `web`, `web-v1`, `web-shadow` and `greeter` (port 8080 each).
fn evaluate(objects: &[(usize, &str, Value)]) -> Outcome {
    let mut policies = Policies::default();
    for index in 0..WATCHED.len() {
        policies.event(index, Event::Relist);
    }
    for (index, name, spec) in objects {
        let watched = Watched {
            generation: 1,
            spec: spec.clone(),
            status: Value::Null,
        };
        let key = ("default".to_owned(), (*name).to_owned());
        policies.event(*index, Event::Listed(key, Some(watched)));
    }
    for index in 0..WATCHED.len() {
        policies.event(index, Event::RelistDone);
    }
    let services: BTreeMap<String, Service> = ["web", "web-v1", "web-shadow", "greeter"]
        .into_iter()
        .map(|name| {
            let s = fixtures::service(name);
            (s.qualified().to_string(), s)
        })
        .collect();
    policies.evaluate(&services)
}

/// The `Accepted` condition written for the route `name` of kind `index`.
fn condition(outcome: &Outcome, index: usize, name: &str) -> Value {
    let patch = (outcome.patches.iter())
        .find(|p| p.id.0 == index && p.id.1.1 == name)
        .unwrap_or_else(|| panic!("no status for {name}"));
    patch.body["status"]["parents"][0]["conditions"][0].clone()
}

/// The mirror the Gateway API routes of `service` contribute, if any.
fn served_mirror(outcome: &Outcome, service: &str) -> Option<v1::Mirror> {
    let source = format!("{}{service}.default", super::SOURCE_PREFIX);
    let (_, contributed) = outcome.sources.iter().find(|(s, _)| *s == source)?;
    contributed.iter().find_map(|(_, c)| match c {
        Contribution::Whole(Payload::Mirror(m)) => Some(m.clone()),
        _ => None,
    })
}

/// Whether the Gateway API routes of `service` contribute a route.
fn serves_route(outcome: &Outcome, service: &str) -> bool {
    let source = format!("{}{service}.default", super::SOURCE_PREFIX);
    (outcome.sources.iter()).any(|(s, contributed)| {
        *s == source
            && (contributed.iter())
                .any(|(_, c)| matches!(c, Contribution::Whole(Payload::Route(_))))
    })
}

fn shadow(percent: u64) -> Value {
    mirror_filter(json!({"backendRef": {"name": "web-shadow", "port": 8080}, "percent": percent}))
}

#[test]
fn a_route_whose_every_rule_mirrors_alike_serves_the_services_mirror() {
    let route = http_route(json!([
        {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
         "backendRefs": [{"name": "web-v1", "port": 8080}], "filters": [shadow(50)]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "new.example"}}]},
        {"backendRefs": [{"name": "web", "port": 8080}], "filters": [shadow(50)]}
    ]));
    let outcome = evaluate(&[(HTTP_ROUTES, "web", route)]);
    let accepted = condition(&outcome, HTTP_ROUTES, "web");
    assert_eq!(accepted["status"], "True", "{accepted}");
    assert!(serves_route(&outcome, "web"));
    let mirror = served_mirror(&outcome, "web").expect("a mirror");
    assert_eq!(mirror.target_service, "web.default");
    assert_eq!(mirror.mirror_service, "web-shadow.default");
    assert_eq!(mirror.mirror_port, 8080);
    assert_eq!(mirror.percent, 50.0);

    // A GRPCRoute's mirror, as a fraction.
    let grpc = grpc_route(json!([{"filters": [mirror_filter(json!({
        "backendRef": {"name": "web-shadow", "port": 8080}, "fraction": {"numerator": 1, "denominator": 4}}))]}]));
    let outcome = evaluate(&[(GRPC_ROUTES, "greeter", grpc)]);
    assert_eq!(
        condition(&outcome, GRPC_ROUTES, "greeter")["status"],
        "True"
    );
    assert_eq!(served_mirror(&outcome, "greeter").unwrap().percent, 25.0);
}

#[test]
fn a_mirror_the_service_cannot_serve_alike_refuses_the_routes_asking_for_it() {
    let refused = |objects: &[(usize, &str, Value)], name: &str, wanted: &[&str]| {
        let outcome = evaluate(objects);
        let c = condition(&outcome, HTTP_ROUTES, name);
        assert_eq!(c["status"], "False", "{c}");
        assert_eq!(c["reason"], "UnsupportedValue", "{c}");
        let message = c["message"].as_str().unwrap();
        for part in wanted {
            assert!(message.contains(part), "{message}\nwanted: {part}");
        }
        assert_eq!(served_mirror(&outcome, "web"), None);
        outcome
    };
    // One rule without the mirror.
    let some = http_route(json!([
        {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}], "filters": [shadow(50)]},
        {"backendRefs": [{"name": "web-v1", "port": 8080}]}
    ]));
    let outcome = refused(
        &[(HTTP_ROUTES, "web", some)],
        "web",
        &[
            "HTTPRoute default/web spec.rules[0].filters[0].requestMirror: shoal-proxy mirrors every request",
            "HTTPRoute default/web spec.rules[1] has no RequestMirror",
        ],
    );
    assert!(!serves_route(&outcome, "web"), "refused: not served");
    // Two shares.
    let two = http_route(json!([
        {"matches": [{"method": "GET"}], "filters": [shadow(50)]},
        {"filters": [shadow(10)]}
    ]));
    refused(
        &[(HTTP_ROUTES, "web", two)],
        "web",
        &[
            "spec.rules[1].filters[0].requestMirror: differs from HTTPRoute default/web spec.rules[0]",
        ],
    );
    // No rule matches every request.
    let partial = http_route(
        json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                                     "filters": [shadow(50)]}]),
    );
    refused(
        &[(HTTP_ROUTES, "web", partial)],
        "web",
        &["also those no rule matches"],
    );
    // A redirect rule with a mirror.
    let redirect = http_route(json!([{"filters": [
        {"type": "RequestRedirect", "requestRedirect": {"hostname": "new.example"}}, shadow(50)]}]));
    refused(
        &[(HTTP_ROUTES, "web", redirect)],
        "web",
        &["spec.rules[0].filters[1].requestMirror: the rule is answered with a redirect"],
    );
    // An unknown shadow.
    let unknown = http_route(
        json!([{"filters": [mirror_filter(json!({"backendRef": {"name": "nowhere", "port": 8080}}))]}]),
    );
    refused(
        &[(HTTP_ROUTES, "web", unknown)],
        "web",
        &[
            "spec.rules[0].filters[0].requestMirror.backendRef: translated to a Shoal mirror that is refused",
            "spec.mirror_service",
            "nowhere",
        ],
    );
    // Another route attached to the same Service without the mirror: the mirroring route is refused, the
    // other is served.
    let mirroring = http_route(json!([{"filters": [shadow(50)]}]));
    let plain = http_route(json!([{"backendRefs": [{"name": "web-v1", "port": 8080}]}]));
    let outcome = refused(
        &[
            (HTTP_ROUTES, "a-mirroring", mirroring),
            (HTTP_ROUTES, "b-plain", plain),
        ],
        "a-mirroring",
        &["HTTPRoute default/b-plain spec.rules[0] has no RequestMirror"],
    );
    assert_eq!(
        condition(&outcome, HTTP_ROUTES, "b-plain")["status"],
        "True"
    );
    assert!(serves_route(&outcome, "web"));
}

#[test]
fn the_mirror_is_judged_on_the_rules_served_for_the_service() {
    // The catch-all rule's route is refused for its backend port: the other route's rule alone does not
    // match every request, so its mirror is refused too.
    let catch_all = http_route(
        json!([{"backendRefs": [{"name": "web-v1", "port": 9090}], "filters": [shadow(50)]}]),
    );
    let partial = http_route(json!([{"matches": [{"method": "GET"}], "filters": [shadow(50)]}]));
    let outcome = evaluate(&[(HTTP_ROUTES, "a", catch_all), (HTTP_ROUTES, "b", partial)]);
    let a = condition(&outcome, HTTP_ROUTES, "a");
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.rules[0].backendRefs[0].port: 9090"),
        "{a}"
    );
    let b = condition(&outcome, HTTP_ROUTES, "b");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("also those no rule matches"),
        "{b}"
    );
    assert_eq!(served_mirror(&outcome, "web"), None);
}

#[test]
fn a_shoal_mirror_takes_precedence_over_request_mirror_filters() {
    let mirror = json!({"target_service": "web", "mirror_service": "web-v1", "percent": 10});
    let route = http_route(
        json!([{"backendRefs": [{"name": "web-v1", "port": 8080}], "filters": [shadow(50)]}]),
    );
    let shoal_mirror = WATCHED.iter().position(|k| k.kind == "Mirror").unwrap();
    let outcome = evaluate(&[(shoal_mirror, "web", mirror), (HTTP_ROUTES, "web", route)]);
    let c = condition(&outcome, HTTP_ROUTES, "web");
    assert_eq!(c["reason"], "Conflicted", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("the Shoal mirror web.default mirrors service web.default"),
        "{c}"
    );
    assert_eq!(served_mirror(&outcome, "web"), None);
    let shoal_source =
        (outcome.sources.iter()).find(|(s, _)| s.starts_with("kubernetes-crd/mirror/"));
    assert!(
        shoal_source.is_some_and(|(_, c)| !c.is_empty()),
        "the Shoal Mirror is served"
    );
}

#[test]
fn a_backend_refs_port_is_the_port_the_proxy_calls() {
    let route = http_route(json!([{"backendRefs": [{"name": "web-v1", "port": 8080}]}]));
    let outcome = evaluate(&[(HTTP_ROUTES, "ported", route)]);
    assert_eq!(condition(&outcome, HTTP_ROUTES, "ported")["status"], "True");
    let source = format!("{}web.default", super::SOURCE_PREFIX);
    let pushed = (outcome.sources.iter())
        .filter(|(s, _)| *s == source)
        .flat_map(|(_, contributed)| contributed)
        .find_map(|(_, c)| match c {
            Contribution::Whole(Payload::Route(r)) => Some(r.clone()),
            _ => None,
        })
        .expect("the route is served");
    assert_eq!(pushed.rules[0].backends[0].port, 8080, "{pushed:?}");

    let elsewhere = http_route(json!([{"backendRefs": [{"name": "web-v1", "port": 9443}]}]));
    let outcome = evaluate(&[(HTTP_ROUTES, "elsewhere", elsewhere)]);
    let refused = condition(&outcome, HTTP_ROUTES, "elsewhere");
    assert_eq!(
        refused["message"],
        "spec.rules[0].backendRefs[0].port: 9443 is not a port of Service web-v1.default (8080)",
        "{refused}"
    );
}
