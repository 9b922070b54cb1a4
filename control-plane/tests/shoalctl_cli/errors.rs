//! Bad input: a clear message naming what to fix, and the documented exit code.

use super::harness::{ControlPlane, expect, shoalctl, text};

/// Two services on port 8080 and a route between them whose canary backend names `{port}`.
fn ported_route(port: u16) -> String {
    format!(
        "kind: Service\nmetadata: {{name: backend}}\nspec: {{ports: [{{port: 8080}}]}}\n---\n\
         kind: Service\nmetadata: {{name: backend-v2}}\nspec: {{ports: [{{port: 8080}}, {{port: 9443}}]}}\n---\n\
         kind: Route\nmetadata: {{name: backend}}\nspec:\n  parent_service: backend\n  rules:\n  \
         - backends: [{{service: backend, weight: 90}}, {{service: backend-v2, weight: 10, port: {port}}}]\n"
    )
}

/// A backend's port must be one of its service's: another is refused naming the field, and nothing of the
/// route is stored; one it has is accepted.
#[test]
fn a_backend_port_the_service_lacks_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(dir.path());
    let out = shoalctl(&cp.admin, &["apply", "-f", "-"], &ported_route(9090));
    expect(
        &out,
        1,
        &[
            "service/backend.default created",
            "service/backend-v2.default created",
            "error: route/backend.default (document 3): server rejected the request (INVALID_ARGUMENT): \
             route backend.default: spec.rules[0].backends[1].port: service backend-v2.default has no port 9090",
            "1 of 3 resources were not applied",
        ],
    );
    expect(
        &shoalctl(&cp.admin, &["get", "route", "backend"], ""),
        1,
        &["NOT_FOUND"],
    );
    expect(
        &shoalctl(&cp.admin, &["apply", "-f", "-"], &ported_route(9443)),
        0,
        &["route/backend.default created"],
    );
    expect(
        &shoalctl(&cp.admin, &["get", "route", "backend", "-o", "yaml"], ""),
        0,
        &["port: 9443"],
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
