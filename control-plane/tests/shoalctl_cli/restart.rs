//! The store outlives the process: same resources, versions that keep growing; bad settings fail start-up.

use std::process::Command;

use super::harness::{CONTROL_PLANE, ControlPlane, exit_of, expect, shoalctl, text};

#[test]
fn restart_keeps_resources_and_versions_keep_growing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let cp = ControlPlane::start(&data);
    let svc = "kind: Service\nmetadata: {name: backend}\nspec: {ports: [{port: 80}]}\n";
    let changed = "kind: Service\nmetadata: {name: backend}\nspec: {ports: [{port: 81}]}\n";
    let apply = |cp: &ControlPlane, yaml: &str, want: &str| {
        expect(
            &shoalctl(&cp.admin, &["apply", "-f", "-"], yaml),
            0,
            &[want],
        );
    };
    apply(&cp, svc, "service/backend.default created (version 1)");
    // Identical content: nothing written, the version stays.
    apply(&cp, svc, "service/backend.default unchanged (version 1)");
    apply(
        &cp,
        changed,
        "service/backend.default configured (version 2)",
    );
    cp.stop();

    let cp = ControlPlane::start(&data);
    let json = expect(
        &shoalctl(&cp.admin, &["get", "svc", "backend", "-o", "json"], ""),
        0,
        &[],
    );
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["metadata"]["resource_version"], 2, "{json}");
    apply(
        &cp,
        changed,
        "service/backend.default unchanged (version 2)",
    );
    apply(&cp, svc, "service/backend.default configured (version 3)");
    cp.stop();
}

#[test]
fn invalid_settings_fail_start_up_naming_the_setting() {
    let output = exit_of(Command::new(CONTROL_PLANE).env("SHOAL_CP_ADMIN_ADDR", "localhost"));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("SHOAL_CP_ADMIN_ADDR=\"localhost\""),
        "{}",
        text(&output.stderr)
    );
}
