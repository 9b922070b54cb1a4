//! Bad input: a clear message naming what to fix, and the documented exit code.

use super::harness::{ControlPlane, expect, shoalctl, text};

const UNENFORCED: &str = include_str!("unenforced.yaml");

/// What shoal-proxy does not enforce yet is refused at `apply`, each document naming its kind or field, and
/// nothing of it is stored; the same route without those fields is accepted.
#[test]
fn what_the_proxy_does_not_enforce_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(dir.path());
    let see = "see docs/shoalctl.md#refused-until-enforced";
    let out = shoalctl(&cp.admin, &["apply", "-f", "-"], UNENFORCED);
    expect(
        &out,
        1,
        &[
            "service/backend.default created",
            "service/backend-v2.default created",
            "error: route/backend.default (document 3): server rejected the request (INVALID_ARGUMENT): \
             route backend.default: spec.rules[0].backends[1].port: not enforced by shoal-proxy yet; remove it (the proxy calls a \
             backend on the port the request came in on; see docs/shoalctl.md#refused-until-enforced)",
            see,
            "1 of 5 resources were not applied",
        ],
    );
    expect(
        &shoalctl(&cp.admin, &["get", "route", "backend"], ""),
        1,
        &["NOT_FOUND"],
    );
    let route = "kind: Route\nmetadata: {name: backend}\nspec:\n  parent_service: backend\n  rules:\n  - backends: [{service: backend, weight: 90}, {service: backend-v2, weight: 10}]\n    timeout_ms: 2000\n";
    expect(
        &shoalctl(&cp.admin, &["apply", "-f", "-"], route),
        0,
        &["route/backend.default created (version 5)"],
    );
    cp.stop();
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(dir.path());
    let apply = |yaml: &str| shoalctl(&cp.admin, &["apply", "-f", "-"], yaml);

    expect(
        &apply("kind: Gateway\nmetadata: {name: a}\nspec: {}\n"),
        2,
        &[
            "<stdin>: document 1",
            "unknown kind \"Gateway\"",
            "BackendPolicy",
        ],
    );
    let syntax = "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\nkind: Service\nmetadata: {name: b\n";
    expect(&apply(syntax), 2, &["document 2", "line"]);
    expect(
        &apply("kind: Service\nmetadata: {name: a}\nspec: {prots: []}\n"),
        2,
        &["unknown field `prots`", "line 3"],
    );
    expect(&apply("# nothing\n"), 2, &["no resources found"]);
    expect(
        &shoalctl(&cp.admin, &["apply", "-f", "/nonexistent/mesh.yaml"], ""),
        2,
        &["cannot read /nonexistent/mesh.yaml"],
    );
    let get = shoalctl(&cp.admin, &["get", "service", "a"], "");
    expect(&get, 1, &["NOT_FOUND"]);
    assert!(
        text(&get.stdout).is_empty(),
        "nothing applied after input errors"
    );

    // The server's validation error names the field; the valid documents are still applied.
    let invalid = "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\nkind: Route\nmetadata: {name: a}\nspec: {parent_service: a, rules: [{backends: [{service: nowhere}]}]}\n";
    expect(
        &apply(invalid),
        1,
        &[
            "service/a.default created",
            "route/a.default (document 2)",
            "INVALID_ARGUMENT",
            "spec.rules[0].backends[0].service",
            "1 of 2 resources were not applied",
        ],
    );
    // A route of a service that does not exist is refused the same way, naming the field.
    let orphan = "kind: Route\nmetadata: {name: ghost}\nspec: {parent_service: ghost, rules: [{backends: [{service: a}]}]}\n";
    expect(
        &apply(orphan),
        1,
        &[
            "route/ghost.default (document 1)",
            "INVALID_ARGUMENT",
            "spec.parent_service: unknown service ghost.default; create it first",
        ],
    );

    expect(
        &shoalctl(&cp.admin, &["get", "gateways"], ""),
        2,
        &[
            "unknown kind \"gateways\"",
            "valid kinds: Service, EndpointRegistration",
        ],
    );
    expect(
        &shoalctl(&cp.admin, &["delete", "route", "nothing"], ""),
        1,
        &["route nothing.default not found"],
    );
    expect(&shoalctl(&cp.admin, &["get"], ""), 2, &["Usage"]);
    expect(
        &shoalctl(&cp.admin, &["get", "svc", "-o", "xml"], ""),
        2,
        &["xml"],
    );
    expect(
        &shoalctl("not a url", &["get", "svc"], ""),
        2,
        &["--server"],
    );

    // A port nobody listens on: bind one, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let server = format!("http://{closed}");
    let down = shoalctl(&server, &["get", "svc"], "");
    expect(
        &down,
        3,
        &[
            &format!("cannot reach the control plane at {server}"),
            "is shoal-control-plane running? (--server / SHOAL_SERVER)",
        ],
    );
    expect(
        &shoalctl(
            &server,
            &["apply", "-f", "-"],
            "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n",
        ),
        3,
        &["cannot reach"],
    );
    cp.stop();
}
