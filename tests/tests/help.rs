//! Every binary's `--help` says what the program is and lists its settings (or names the exact doc
//! section), and exits 0.

use std::path::Path;
use std::process::Command;

use shoal_tests::control_plane::{control_plane_binary, shoal_binary, shoalctl_binary};
use shoal_tests::proxy::proxy_binary;

/// Runs `bin --help`; returns its standard output, after checking it exited 0.
fn help(bin: &Path) -> String {
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success(), "{} --help: {out:?}", bin.display());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_control_plane_says_what_it_is_and_lists_every_setting() {
    let text = help(&control_plane_binary().unwrap());
    assert!(text.contains("Shoal's control plane"), "{text}");
    assert!(text.contains("docs/control-plane.md"), "{text}");
    for setting in [
        "SHOAL_CP_ADMIN_ADDR",
        "SHOAL_CP_DISCOVERY_ADDR",
        "SHOAL_CP_METRICS_ADDR",
        "SHOAL_CP_DATA_DIR",
        "SHOAL_CP_TRUST_DOMAIN",
        "SHOAL_CP_CA_CERT_FILE",
        "SHOAL_CP_PUSH_INTERVAL",
        "SHOAL_CP_WEBHOOK_ADDR",
        "SHOAL_CP_WEBHOOK_CERT_FILE",
        "SHOAL_CP_WEBHOOK_KEY_FILE",
        "SHOAL_CP_INJECTOR_CONFIG_FILE",
        "SHOAL_CP_ADMIN_MAX_REQUEST_BYTES",
        "SHOAL_LOG",
    ] {
        assert!(text.contains(setting), "{setting} missing from:\n{text}");
    }
}

#[test]
fn shoal_describes_the_local_mesh_not_another_program() {
    let text = help(&shoal_binary().unwrap());
    assert!(text.contains("runs a whole mesh locally"), "{text}");
    assert!(text.contains("up"), "{text}");
    assert!(
        !text.contains("durable policy"),
        "the control plane crate's description: {text}"
    );
}

#[test]
fn shoalctl_and_the_proxy_describe_themselves() {
    let text = help(&shoalctl_binary().unwrap());
    assert!(text.contains("apply"), "{text}");
    assert!(text.contains("inject"), "{text}");
    let text = help(&proxy_binary().unwrap());
    assert!(
        text.contains("sidecar proxy") && text.contains("docs/configuration.md"),
        "{text}"
    );
}
