//! A route rule's filters and a fault's scope: valid ones pass, each error names its field.

use super::tests::{assert_rejects, check, fault};
use crate::model::fixtures::{backend, route};
use crate::model::*;

/// The fixture route with `change` made to its first rule.
fn rule_with(change: impl FnOnce(&mut RouteRule)) -> Spec {
    let mut route = route();
    change(&mut route.rules[0]);
    Spec::Route(route)
}

fn redirect_rule(redirect: RequestRedirect) -> impl FnOnce(&mut RouteRule) {
    move |rule| {
        rule.backends.clear();
        rule.request_headers = None;
        rule.matches = vec![RouteMatch {
            path: Some(PathMatch::Prefix("/old".into())),
            ..RouteMatch::default()
        }];
        rule.redirect = Some(redirect);
    }
}

#[test]
fn valid_filters_pass() {
    assert_eq!(check(Spec::Route(route())), Ok(()));
    let full = RequestRedirect {
        scheme: Some("https".into()),
        hostname: Some("example.com".into()),
        port: Some(8443),
        path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
        status_code: Some(301),
    };
    assert_eq!(check(rule_with(redirect_rule(full))), Ok(()));
    assert_eq!(check(Spec::FaultInjection(fault())), Ok(()));
}

#[test]
fn header_edit_errors_name_their_field() {
    let edits = |edits: HeaderModifier| rule_with(move |rule| rule.request_headers = Some(edits));
    let field = "spec.rules[0].request_header_modifier";
    assert_rejects(edits(HeaderModifier::default()), field, "edits nothing");
    let protected = HeaderModifier {
        set: vec![("Shoal-Orig-Proto".into(), "x".into())],
        remove: vec!["connection".into(), "bad name".into()],
        ..HeaderModifier::default()
    };
    assert_rejects(
        edits(protected.clone()),
        &format!("{field}.set[0].name"),
        "mesh's own",
    );
    assert_rejects(
        edits(protected.clone()),
        &format!("{field}.remove[0]"),
        "hop-by-hop",
    );
    assert_rejects(
        edits(protected),
        &format!("{field}.remove[1]"),
        "HTTP token",
    );
    let twice = HeaderModifier {
        set: vec![("x-a".into(), "1".into())],
        add: vec![("X-A".into(), "2\n".into())],
        ..HeaderModifier::default()
    };
    assert_rejects(
        edits(twice.clone()),
        &format!("{field}.add[0].name"),
        "edited twice",
    );
    assert_rejects(
        edits(twice),
        &format!("{field}.add[0].value"),
        "not a header value",
    );
    let response = rule_with(|rule| {
        rule.response_headers = Some(HeaderModifier {
            remove: vec!["host".into()],
            ..HeaderModifier::default()
        })
    });
    assert_rejects(
        response,
        "spec.rules[0].response_header_modifier.remove[0]",
        "routing header",
    );
}

#[test]
fn redirect_errors_name_their_field() {
    let field = "spec.rules[0].request_redirect";
    let bad = RequestRedirect {
        scheme: Some("ftp".into()),
        hostname: Some("Not_A_Host".into()),
        port: Some(0),
        path: Some(PathModifier::ReplaceFullPath("relative".into())),
        status_code: Some(200),
    };
    let spec = rule_with(redirect_rule(bad));
    assert_rejects(
        spec.clone(),
        &format!("{field}.scheme"),
        "`http` or `https`",
    );
    assert_rejects(spec.clone(), &format!("{field}.hostname"), "Not_A_Host");
    assert_rejects(spec.clone(), &format!("{field}.port"), "port 0");
    assert_rejects(
        spec.clone(),
        &format!("{field}.path.replace_full_path"),
        "start with",
    );
    assert_rejects(
        spec,
        &format!("{field}.status_code"),
        "301, 302, 303, 307 or 308",
    );
    // A redirect sends nothing: no backends, retry or request edits beside it.
    let with_backends = rule_with(|rule| {
        rule.redirect = Some(RequestRedirect::default());
        rule.retry = Some(RetryPolicy::default());
        rule.backends = vec![backend("backend-v1", 1)];
    });
    assert_rejects(
        with_backends.clone(),
        "spec.rules[0].backends",
        "no backends",
    );
    assert_rejects(with_backends.clone(), "spec.rules[0].retry", "no retry");
    assert_rejects(
        with_backends,
        "spec.rules[0].request_header_modifier",
        "no request header edits",
    );
    // Replacing the matched prefix needs every match to be a prefix.
    let exact = rule_with(|rule| {
        redirect_rule(RequestRedirect {
            path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
            ..RequestRedirect::default()
        })(rule);
        rule.matches[0].path = Some(PathMatch::Exact("/old".into()));
    });
    assert_rejects(
        exact,
        &format!("{field}.path.replace_prefix_match"),
        "path prefix",
    );
}

#[test]
fn a_fault_scope_is_checked_like_a_route_match() {
    let mut scoped = fault();
    scoped.matches = vec![
        RouteMatch::default(),
        RouteMatch {
            path: Some(PathMatch::Prefix("api".into())),
            ..RouteMatch::default()
        },
    ];
    let spec = Spec::FaultInjection(scoped);
    assert_rejects(spec.clone(), "spec.matches[0]", "empty match");
    assert_rejects(spec, "spec.matches[1].path.prefix", "must start with `/`");
}
