//! The translation of Gateway API routes and the conversion of custom resources, without an API server (the
//! whole path, watchers and status included, is tested in tests/tests/kube_policy.rs and kube_gateway.rs).

use std::time::Duration;

use serde_json::json;

use super::crd::convert;
use super::gateway::{duration, translate};
use crate::model::{
    HeaderMatch, HeaderModifier, PathMatch, PathModifier, RequestRedirect, ResourceKind, Route,
    ServiceRef, Spec, ValueMatch, fixtures, validate,
};

#[test]
fn a_custom_resource_converts_like_a_document() {
    let spec = json!({"parent_service": "web", "rules": [{"backends": [
        {"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10}
    ]}]});
    let resource = convert(ResourceKind::Route, "shop", "web", &spec).unwrap();
    let Spec::Route(route) = resource.spec else {
        panic!("a route")
    };
    assert_eq!(route.parent, ServiceRef::new("web", "shop"));
    assert_eq!(
        route.rules[0].backends[1].service,
        ServiceRef::new("web-v2", "shop")
    );
    assert_eq!(route.rules[0].backends[1].weight, 10);
}

#[test]
fn an_unknown_field_is_named() {
    let spec = json!({"parent_service": "web", "rules": [{"bakends": []}]});
    let error = convert(ResourceKind::Route, "default", "web", &spec).unwrap_err();
    assert!(error.contains("bakends"), "{error}");
    assert!(!error.starts_with("document"), "{error}");
}

#[test]
fn http_route_translates_matches_weights_and_timeouts() {
    let spec = json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "web"}, {"kind": "Gateway", "name": "edge"}],
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                          "headers": [{"name": "x-canary", "value": "yes"},
                                      {"type": "RegularExpression", "name": "x-user", "value": "a.*"}],
                          "method": "GET"}],
             "backendRefs": [{"name": "web-v2", "port": 80}],
             "timeouts": {"request": "1m30s"}},
            {"backendRefs": [{"name": "web-v1", "port": 80, "weight": 3}, {"name": "web-v2", "port": 80}]}
        ]
    });
    let t = translate(&spec, "default", false).unwrap().unwrap();
    assert_eq!(
        t.parents.len(),
        1,
        "the Gateway parent is another controller's"
    );
    assert_eq!(t.parents[0].1, ServiceRef::new("web", "default"));
    let rule = &t.rules[0];
    assert_eq!(rule.matches[0].path, Some(PathMatch::Prefix("/api".into())));
    assert_eq!(rule.matches[0].method.as_deref(), Some("GET"));
    assert_eq!(
        rule.matches[0].headers[1],
        HeaderMatch {
            name: "x-user".into(),
            value: ValueMatch::Regex("a.*".into())
        }
    );
    assert_eq!(rule.timeout, Some(Duration::from_secs(90)));
    let weights: Vec<u32> = t.rules[1].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [3, 1]);
    assert_eq!(t.rules[1].backends[0].port, Some(80));
}

#[test]
fn what_does_not_translate_is_named() {
    let route = |rule: serde_json::Value| json!({"parentRefs": [{"kind": "Service", "name": "web"}], "rules": [rule]});
    let cases = [
        (
            route(json!({"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "a"}}]})),
            "spec.rules[0].filters[0].type: URLRewrite",
        ),
        (
            route(json!({"filters": [{"type": "RequestMirror"}]})),
            "spec.rules[0].filters[0].requestMirror: required",
        ),
        (
            route(json!({"filters": [{"type": "ExtensionRef"}]})),
            "spec.rules[0].filters[0].type: ExtensionRef",
        ),
        (
            route(json!({"filters": [{"type": "RequestHeaderModifier"}]})),
            "spec.rules[0].filters[0].requestHeaderModifier: required",
        ),
        (
            route(json!({"filters": [
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["a"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["b"]}}
            ]})),
            "spec.rules[0].filters[1].type: a second ResponseHeaderModifier",
        ),
        (
            route(
                json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {"port": 70000}}]}),
            ),
            "spec.rules[0].filters[0].requestRedirect.port",
        ),
        (
            route(json!({"filters": [{"type": "RequestRedirect",
                                      "requestRedirect": {"path": {"type": "Strip"}}}]})),
            "spec.rules[0].filters[0].requestRedirect.path.type",
        ),
        (
            route(
                json!({"backendRefs": [{"name": "b", "port": 80, "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["a"]}}
                ]}]}),
            ),
            "spec.rules[0].backendRefs[0].filters",
        ),
        (
            route(json!({"matches": [{"queryParams": [{"name": "a", "value": "b"}]}]})),
            "spec.rules[0].matches[0].queryParams",
        ),
        (
            route(json!({"timeouts": {"backendRequest": "1s"}})),
            "spec.rules[0].timeouts.backendRequest",
        ),
        (
            route(json!({"backendRefs": [{"name": "b", "port": 80, "namespace": "other"}]})),
            "spec.rules[0].backendRefs[0].namespace",
        ),
        (
            json!({"parentRefs": [{"kind": "Service", "name": "web", "port": 80}]}),
            "spec.parentRefs[0].port",
        ),
    ];
    for (spec, field) in cases {
        let error = translate(&spec, "default", false).unwrap_err();
        assert!(error.starts_with(field), "{field}: {error}");
    }
    let gateway_only = json!({"parentRefs": [{"kind": "Gateway", "name": "edge"}]});
    assert_eq!(translate(&gateway_only, "default", false), Ok(None));
}

#[test]
fn http_route_filters_become_the_rules_filters() {
    let spec = json!({"parentRefs": [{"kind": "Service", "name": "web"}], "rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "scheme": "https", "hostname": "new.example", "port": 8443, "statusCode": 301,
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
        {"matches": [{"path": {"type": "Exact", "value": "/moved"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "path": {"type": "ReplaceFullPath", "replaceFullPath": "/here"}}}]},
        {"backendRefs": [{"name": "web-v1", "port": 80}],
         "filters": [
             {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                 "set": [{"name": "x-env", "value": "prod"}], "add": [{"name": "x-tag", "value": "mesh"}],
                 "remove": ["x-debug"]}},
             {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["x-internal"]}}
         ]}
    ]});
    let t = translate(&spec, "default", false).unwrap().unwrap();
    assert_eq!(
        t.rules[0].redirect,
        Some(RequestRedirect {
            scheme: Some("https".into()),
            hostname: Some("new.example".into()),
            port: Some(8443),
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
            status_code: Some(301),
        })
    );
    assert!(t.rules[0].backends.is_empty() && t.rules[0].request_headers.is_none());
    assert_eq!(
        t.rules[1].redirect.as_ref().unwrap().path,
        Some(PathModifier::ReplaceFullPath("/here".into()))
    );
    assert_eq!(t.rules[1].redirect.as_ref().unwrap().status_code, None);
    assert_eq!(
        t.rules[2].request_headers,
        Some(HeaderModifier {
            set: vec![("x-env".into(), "prod".into())],
            add: vec![("x-tag".into(), "mesh".into())],
            remove: vec!["x-debug".into()],
        })
    );
    assert_eq!(
        t.rules[2].response_headers,
        Some(HeaderModifier {
            remove: vec!["x-internal".into()],
            ..HeaderModifier::default()
        })
    );
    assert_eq!(t.rules[2].redirect, None);

    // The values are the Shoal validation's to judge, which names the Shoal field.
    let mut t = t;
    t.rules[2].backends[0].port = None;
    let route = Route {
        parent: ServiceRef::new("web", "default"),
        rules: t.rules,
    };
    let mut bad = route.clone();
    bad.rules[2].request_headers.as_mut().unwrap().set[0].0 = "host".into();
    let resource = |route: Route| fixtures::resource("web", "default", Spec::Route(route));
    let services = vec![fixtures::service("web"), fixtures::service("web-v1")];
    assert_eq!(validate::validate(&resource(route), &services), Ok(()));
    let error = validate::validate(&resource(bad), &services).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("spec.rules[2].request_header_modifier.set[0].name"),
        "{error}"
    );
}

#[test]
fn grpc_methods_become_paths() {
    let spec = json!({"parentRefs": [{"kind": "Service", "name": "greeter"}], "rules": [
        {"matches": [{"method": {"service": "hello.Greeter", "method": "SayHello"}},
                     {"method": {"service": "hello.Admin"}}]}
    ]});
    let t = translate(&spec, "default", true).unwrap().unwrap();
    let paths: Vec<_> = t.rules[0]
        .matches
        .iter()
        .map(|m| m.path.clone().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            PathMatch::Exact("/hello.Greeter/SayHello".into()),
            PathMatch::Prefix("/hello.Admin".into())
        ]
    );
}

#[test]
fn gateway_durations() {
    assert_eq!(duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(duration("0s"), Some(Duration::ZERO));
    for bad in ["", "10", "1.5s", "s", "1d", "1h1m1s1ms1h"] {
        assert_eq!(duration(bad), None, "{bad}");
    }
}

#[test]
fn a_route_status_keeps_other_controllers_entries_and_its_transition_time() {
    use super::status::{CONTROLLER, Condition, StatusPatch};
    let parent = json!({"group": "", "kind": "Service", "name": "web"});
    let other = json!({"parentRef": {"kind": "Gateway", "name": "edge"},
                       "controllerName": "example.com/gateway", "conditions": []});
    let ours = json!({"parentRef": parent, "controllerName": CONTROLLER, "conditions": [{
        "type": "Accepted", "status": "True", "reason": "Accepted", "message": "old",
        "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    let status = json!({"parents": [other, ours]});
    let condition = Condition::accepted(2, "served as the route of service web.default");
    let patch = StatusPatch::gateway(
        super::HTTP_ROUTES,
        "default",
        "web",
        &status,
        vec![(parent, condition)],
    );
    let parents = patch.body["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{parents:?}");
    assert_eq!(parents[0]["controllerName"], "example.com/gateway");
    let written = &parents[1]["conditions"][0];
    assert_eq!(written["observedGeneration"], 2);
    assert_eq!(
        written["lastTransitionTime"], "2026-01-01T00:00:00Z",
        "the status did not change: neither does its transition time"
    );
}

#[test]
fn a_kind_not_installed_counts_as_listed_empty_is_news_once_and_keeps_what_was_listed() {
    use super::{GRPC_ROUTES, HTTP_ROUTES, Policies, Watched};
    use crate::sources::kubernetes::cluster::Event;
    let mut policies = Policies::default();
    assert!(policies.not_installed(HTTP_ROUTES), "news");
    assert!(policies.tables[HTTP_ROUTES].synced());
    assert_eq!(policies.tables[HTTP_ROUTES].len(), 0);
    assert!(!policies.not_installed(HTTP_ROUTES), "said once");
    assert_eq!(policies.missing(), ["httproutes.gateway.networking.k8s.io"]);
    assert!(policies.listed(HTTP_ROUTES), "installed since");
    assert!(!policies.listed(HTTP_ROUTES));
    assert!(policies.missing().is_empty());

    // A kind listed before keeps its objects through a 404.
    let watched = Watched {
        generation: 1,
        spec: json!({}),
        status: serde_json::Value::Null,
    };
    let key = ("default".to_owned(), "greeter".to_owned());
    policies.event(GRPC_ROUTES, Event::Relist);
    policies.event(GRPC_ROUTES, Event::Listed(key, Some(watched)));
    policies.event(GRPC_ROUTES, Event::RelistDone);
    assert!(policies.not_installed(GRPC_ROUTES));
    assert_eq!(policies.tables[GRPC_ROUTES].len(), 1);
}
