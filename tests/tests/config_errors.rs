//! Start-up errors: an invalid setting, state file or config file, or an address already in use,
//! stops the proxy at once with a non-zero exit and a message naming the setting and the value.

use std::time::Duration;

use shoal_tests::ProxyBuilder;
use shoal_tests::proxy::Exited;

/// Start-up failures must be quick; a hung proxy fails the test.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

fn run(builder: ProxyBuilder) -> Exited {
    builder
        .run_to_exit(EXIT_WITHIN)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Asserts a failed start whose stderr mentions every one of `needles`.
fn assert_fails_naming(builder: ProxyBuilder, needles: &[&str]) -> Exited {
    let exited = run(builder);
    assert!(
        !exited.status.success(),
        "the proxy started despite the error; stderr: {}",
        exited.stderr
    );
    for needle in needles {
        assert!(
            exited.stderr.contains(needle),
            "stderr should mention {needle:?}:\n{}",
            exited.stderr
        );
    }
    exited
}

#[test]
fn invalid_duration_names_the_setting_value_and_expectation() {
    let exited = assert_fails_naming(
        ProxyBuilder::new().env("SHOAL_DETECT_TIMEOUT", "fast"),
        &["SHOAL_DETECT_TIMEOUT", "fast", "expected"],
    );
    assert_eq!(
        exited.status.code(),
        Some(2),
        "configuration errors exit with 2"
    );
}

#[test]
fn invalid_mode_is_rejected() {
    assert_fails_naming(
        ProxyBuilder::new().env("SHOAL_OUTBOUND_MODE", "bogus"),
        &["SHOAL_OUTBOUND_MODE", "bogus", "explicit"],
    );
}

#[test]
fn out_of_range_number_is_rejected() {
    assert_fails_naming(
        ProxyBuilder::new().env("SHOAL_MAX_HEADERS", "0"),
        &["SHOAL_MAX_HEADERS", "\"0\""],
    );
    assert_fails_naming(
        ProxyBuilder::new().env("SHOAL_MAX_CONNECTIONS", "lots"),
        &["SHOAL_MAX_CONNECTIONS", "lots"],
    );
}

#[test]
fn invalid_address_is_rejected() {
    assert_fails_naming(
        ProxyBuilder::new()
            .inbound_explicit("127.0.0.1:8080".parse().unwrap())
            .env("SHOAL_INBOUND_ADDR", "localhost:99999"),
        &["SHOAL_INBOUND_ADDR", "localhost:99999"],
    );
}

#[test]
fn invalid_state_file_names_the_file_and_field() {
    assert_fails_naming(
        ProxyBuilder::new()
            .outbound_explicit()
            .state("services:\n  - name: Bad_Name\n    port: 80\n"),
        &[
            "SHOAL_STATE_FILE",
            "state.yaml",
            "services[0].name",
            "Bad_Name",
        ],
    );
}

#[test]
fn missing_state_file_names_the_path() {
    assert_fails_naming(
        ProxyBuilder::new().env("SHOAL_STATE_FILE", "/nonexistent/shoal/state.yaml"),
        &["SHOAL_STATE_FILE", "/nonexistent/shoal/state.yaml"],
    );
}

#[test]
fn unknown_key_in_config_file_is_rejected() {
    assert_fails_naming(
        ProxyBuilder::new().config_file("detect_timeout: 1s\nno_such_setting: 3\n"),
        &["config.yaml", "no_such_setting"],
    );
}

#[test]
fn config_file_values_are_validated_like_env() {
    assert_fails_naming(
        ProxyBuilder::new().config_file("detect_timeout: soon\n"),
        &["SHOAL_DETECT_TIMEOUT", "soon", "config.yaml"],
    );
}

#[test]
fn occupied_port_names_the_setting_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    assert_fails_naming(
        ProxyBuilder::new()
            .inbound_explicit("127.0.0.1:9".parse().unwrap())
            .env("SHOAL_INBOUND_ADDR", addr),
        &["SHOAL_INBOUND_ADDR", &addr.to_string()],
    );
    assert_fails_naming(
        ProxyBuilder::new().env("SHOAL_ADMIN_ADDR", addr),
        &["SHOAL_ADMIN_ADDR", &addr.to_string()],
    );
    drop(taken);
}

#[test]
fn same_address_for_two_listeners_is_rejected() {
    let addr = shoal_tests::closed_port_addr();
    assert_fails_naming(
        ProxyBuilder::new()
            .inbound_explicit("127.0.0.1:9".parse().unwrap())
            .outbound_explicit()
            .env("SHOAL_INBOUND_ADDR", addr)
            .env("SHOAL_OUTBOUND_ADDR", addr),
        &[
            &addr.to_string(),
            "SHOAL_INBOUND_ADDR",
            "SHOAL_OUTBOUND_ADDR",
        ],
    );
}

#[test]
fn a_valid_configuration_starts() {
    // The counterpart: the builder's defaults start a proxy (it must be killed, not exit).
    let err = ProxyBuilder::new()
        .run_to_exit(Duration::from_secs(1))
        .expect_err("a valid configuration must keep running");
    assert!(err.to_string().contains("still running"), "{err:#}");
}
