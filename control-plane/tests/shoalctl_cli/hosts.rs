//! One host, one service: `apply` refuses a service whose host or name another service already answers to on
//! the same port (a proxy holding both would NACK it), naming the field and the other service; nothing of it
//! is stored. A service re-applied is not in conflict with itself, and a file that moves a host from one
//! service to another applies whatever its order.

use super::harness::{ControlPlane, expect, shoalctl};

/// A Service `name` on port 80 answering to `hosts`.
fn service(name: &str, hosts: &str) -> String {
    format!(
        "kind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n  hosts: [{hosts}]\n"
    )
}

#[test]
fn a_host_another_service_has_is_refused_naming_the_field_and_the_service() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(dir.path());
    let apply = |yaml: &str| shoalctl(&cp.admin, &["apply", "-f", "-"], yaml);

    expect(
        &apply(&service("alpha", "alpha.example")),
        0,
        &["service/alpha.default created (version 1)"],
    );
    expect(
        &apply(&service("beta", "beta.example, alpha.example")),
        1,
        &[
            "error: service/beta.default (document 1): server rejected the request (INVALID_ARGUMENT): \
             service beta.default: spec.hosts[1]: host \"alpha.example\" is already used by service \"alpha\" \
             (namespace default) on port 80; a proxy routes each host and port to one service",
            "1 of 1 resources were not applied",
        ],
    );
    expect(
        &shoalctl(&cp.admin, &["get", "service", "beta"], ""),
        1,
        &["NOT_FOUND"],
    );
    // A host equal to one of alpha's name forms is alpha's too.
    expect(
        &apply(&service("beta", "alpha.default.svc.cluster.local")),
        1,
        &[
            "spec.hosts[0]: host \"alpha.default.svc.cluster.local\" is already used by service \"alpha\"",
        ],
    );
    // Re-applying alpha, changed or not, does not conflict with itself.
    expect(
        &apply(&service("alpha", "alpha.example")),
        0,
        &["service/alpha.default unchanged (version 1)"],
    );
    expect(
        &apply(&service("alpha", "alpha.example, alpha.test")),
        0,
        &["service/alpha.default configured (version 2)"],
    );

    // Two documents of one file claiming one host: the first applies, the second is refused.
    let both = format!(
        "{}---\n{}",
        service("gamma", "shared.example"),
        service("delta", "shared.example")
    );
    expect(
        &apply(&both),
        1,
        &[
            "service/gamma.default created (version 3)",
            "error: service/delta.default (document 2): server rejected the request (INVALID_ARGUMENT): \
             service delta.default: spec.hosts[0]: host \"shared.example\" is already used by service \"gamma\"",
            "1 of 2 resources were not applied",
        ],
    );

    // A file moving alpha.example from alpha to beta applies although beta comes first: beta is tried again
    // once alpha let go of the host.
    let moved = format!(
        "{}---\n{}",
        service("beta", "alpha.example"),
        service("alpha", "alpha.test")
    );
    let out = expect(&apply(&moved), 0, &[]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "service/alpha.default configured (version 4)",
            "service/beta.default created (version 5)",
        ],
        "{out}"
    );
    cp.stop();
}
