//! A document over the control plane's Admin request limit is refused with a message naming the limit in bytes
//! and the setting that raises it; with the setting raised, the same document applies.

use super::harness::{ControlPlane, expect, shoalctl};

/// A Service with `hosts` host names: about 16 bytes each on the wire.
fn service_with_hosts(hosts: usize) -> String {
    let hosts: Vec<String> = (0..hosts).map(|i| format!("h{i}.example")).collect();
    format!(
        "kind: Service\nmetadata: {{name: big}}\nspec:\n  ports: [{{port: 80}}]\n  hosts: [{}]\n",
        hosts.join(", ")
    )
}

#[test]
fn a_document_over_the_request_limit_names_the_limit_and_the_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let big = service_with_hosts(6000);
    let limit = ("SHOAL_CP_ADMIN_MAX_REQUEST_BYTES", "65536");
    let cp = ControlPlane::start_with(dir.path(), &[limit]);
    let out = shoalctl(&cp.admin, &["apply", "-f", "-"], &big);
    expect(
        &out,
        1,
        &[
            "error: service/big.default (document 1): the resource is ",
            " bytes in its Apply request, more than the control plane accepts (65536 bytes): raise \
             SHOAL_CP_ADMIN_MAX_REQUEST_BYTES on the control plane (at most 15728640 bytes; \
             docs/control-plane.md#settings), or split the resource",
            "1 of 1 resources were not applied",
        ],
    );
    // The size shoalctl names is the request's: over the limit.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bytes: usize = (stderr.split("the resource is ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {stderr}"));
    assert!(bytes > 65536 && bytes < 2 * big.len(), "{bytes}");
    expect(
        &shoalctl(&cp.admin, &["get", "service", "big"], ""),
        1,
        &["NOT_FOUND"],
    );
    cp.stop();

    // Raised, the same document applies, and reads back whole.
    let cp = ControlPlane::start_with(
        dir.path(),
        &[("SHOAL_CP_ADMIN_MAX_REQUEST_BYTES", "1048576")],
    );
    expect(
        &shoalctl(&cp.admin, &["apply", "-f", "-"], &big),
        0,
        &["service/big.default created (version 1)"],
    );
    expect(
        &shoalctl(&cp.admin, &["get", "service", "big", "-o", "yaml"], ""),
        0,
        &["h0.example", "h5999.example"],
    );
    cp.stop();
}
