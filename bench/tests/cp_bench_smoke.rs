//! `cp-bench` and `cp-bench kubernetes` run end to end at tiny scale against the real control
//! plane, and their JSON holds the figures of every phase.

use std::process::Command;

/// Runs `cp-bench` with `args` against the real control plane, checks it succeeded and printed the table row
/// `row`, and returns its JSON report; `num` reads a figure of it.
fn run(args: &[&str], row: &str) -> serde_json::Value {
    let cp = shoal_tests::control_plane::control_plane_binary().expect("control-plane binary");
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("out.json");
    let output = Command::new(env!("CARGO_BIN_EXE_cp-bench"))
        .args(args)
        .args(["--settle-seconds", "0.2", "--no-pin"])
        .arg("--cp-bin")
        .arg(&cp)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run cp-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cp-bench {args:?} failed:\n{stderr}\n{stdout}"
    );
    assert!(stdout.contains(row), "no table:\n{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
        .expect("valid JSON")
}

/// The figure at `path` of `report`.
fn num(report: &serde_json::Value, path: &str) -> f64 {
    report
        .pointer(path)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {report:#}"))
}

#[test]
fn cp_bench_runs_end_to_end_at_tiny_scale() {
    let report = run(
        &[
            "--proxies",
            "3",
            "--subscriptions",
            "2",
            "--services",
            "4",
            "--endpoints",
            "8",
            "--pushes",
            "3",
            "--churn-rate",
            "40",
            "--churn-seconds",
            "1",
        ],
        "| policy push → last ACK |",
    );
    let num = |path: &str| num(&report, path);
    // 4 services + 1 route + 8 registrations.
    assert_eq!(num("/seed/writes"), 13.0);
    assert_eq!(num("/connect/proxies"), 3.0);
    assert_eq!(num("/connect/cp_connected_gauge"), 3.0);
    // Service 0 and one other: 2 services × 3 keys.
    assert_eq!(num("/connect/keys_per_proxy"), 6.0);
    assert_eq!(num("/push/latency/count"), 3.0);
    assert!(num("/push/latency/max_ms") > 0.0);
    assert_eq!(num("/churn/issued"), 40.0);
    assert_eq!(num("/churn/completed"), 40.0);
    assert_eq!(num("/churn/not_acked"), 0.0);
    assert_eq!(num("/churn/lag/count"), 40.0);
    assert_eq!(num("/resync/proxies_synced"), 3.0);
    // Nothing changed across the restart: nothing is sent again.
    assert_eq!(num("/resync/resources_resent"), 0.0);
}

/// `cp-bench kubernetes` runs end to end at tiny scale (3 proxies, 6 services, 20 pods, 3 changes)
/// against the real control plane in Kubernetes mode, and its JSON holds the figures of every phase.
#[test]
fn cp_bench_kubernetes_runs_end_to_end_at_tiny_scale() {
    let report = run(
        &[
            "kubernetes",
            "--services",
            "6",
            "--pods",
            "20",
            "--proxies",
            "3",
            "--subscriptions",
            "2",
            "--changes",
            "3",
        ],
        "| EndpointSlice change → last ACK |",
    );
    let num = |path: &str| num(&report, path);
    // 6 Services, 6 EndpointSlices, 20 Pods; the control plane holds them all.
    assert_eq!(num("/fill/objects"), 32.0);
    assert_eq!(num("/sync/services"), 6.0);
    assert_eq!(num("/sync/endpoint_slices"), 6.0);
    assert_eq!(num("/sync/meshed_pods"), 20.0);
    assert!(num("/sync/hwm_kib") > 0.0);
    assert_eq!(num("/connect/cp_connected_gauge"), 3.0);
    assert_eq!(num("/connect/keys_per_proxy"), 6.0);
    // Every change reached every proxy.
    assert_eq!(num("/changes/latency/count"), 3.0);
    assert_eq!(num("/changes/subscribers"), 3.0);
    assert!(num("/changes/latency/max_ms") > 0.0);
}
