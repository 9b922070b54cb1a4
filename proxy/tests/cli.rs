//! The `shoal-proxy` command line. (Having an integration test here also makes `cargo test
//! --workspace` rebuild `target/debug/shoal-proxy`, which the cross-process tests in `tests/`
//! run.)

use std::process::Command;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal-proxy"))
}

#[test]
fn version_and_help() {
    let out = proxy().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = proxy().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("run") && help.contains("init"), "{help}");
}

#[test]
fn init_dry_run_prints_the_rules_without_touching_iptables() {
    let out = proxy()
        .args([
            "init",
            "--dry-run",
            "--proxy-uid",
            "2102",
            "--exclude-outbound-ports",
            "5432",
        ])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(rules.contains("--uid-owner 2102"), "{rules}");
    assert!(rules.contains("--to-ports 15006"), "{rules}");
    assert!(rules.contains("--to-ports 15001"), "{rules}");
    assert!(rules.contains("5432"), "{rules}");
}

#[test]
fn invalid_configuration_exits_2_naming_the_setting() {
    let out = proxy()
        .arg("run")
        .env("SHOAL_MAX_HEADERS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SHOAL_MAX_HEADERS") && err.contains("\"lots\""),
        "{err}"
    );
}
