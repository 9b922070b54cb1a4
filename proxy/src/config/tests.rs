use std::time::Duration;

use super::*;

fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_source(&Source::from_map(pairs.iter().copied()))
}

#[test]
fn defaults_are_documented_values() {
    let c = cfg(&[]).unwrap();
    assert_eq!(c.outbound.addr, "127.0.0.1:15001".parse().unwrap());
    assert_eq!(c.outbound.mode, Mode::Transparent);
    assert_eq!(c.inbound.addr, "0.0.0.0:15006".parse().unwrap());
    assert_eq!(c.admin_addr, "0.0.0.0:15021".parse().unwrap());
    assert_eq!(c.detect_timeout, Duration::from_millis(500));
    assert_eq!(
        c.server_first_ports,
        vec![25, 587, 3306, 5432, 6379, 11211, 27017]
    );
    assert_eq!(c.http.max_header_bytes, 61_440);
    assert_eq!(c.http.max_headers, 100);
    assert_eq!(c.http.response_timeout, Some(Duration::from_secs(30)));
    assert_eq!(c.shutdown_grace, Duration::from_secs(25));
    assert_eq!(c.worker_threads, 1);
}

#[test]
fn invalid_values_name_setting_value_and_expectation() {
    let err = cfg(&[("SHOAL_DETECT_TIMEOUT", "fast")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHOAL_DETECT_TIMEOUT"), "{err}");
    assert!(err.contains("\"fast\""), "{err}");
    assert!(err.contains("expected a duration"), "{err}");

    let err = cfg(&[("SHOAL_OUTBOUND_MODE", "sideways")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SHOAL_OUTBOUND_MODE") && err.contains("`explicit`"),
        "{err}"
    );

    let err = cfg(&[("SHOAL_MAX_HEADERS", "0")]).unwrap_err().to_string();
    assert!(err.contains("from 1 to 1000"), "{err}");

    let err = cfg(&[("SHOAL_SERVER_FIRST_PORTS", "25,smtp")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("`smtp` is not one"), "{err}");

    let err = cfg(&[("SHOAL_ADMIN_ADDR", "localhost")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("IP:PORT"), "{err}");

    let err = cfg(&[("SHOAL_OUTBOUND_TARGET", "nohost")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("HOST:PORT"), "{err}");
}

#[test]
fn conflicting_listener_addresses_are_rejected() {
    let err = cfg(&[
        ("SHOAL_ADMIN_ADDR", "127.0.0.1:9000"),
        ("SHOAL_OUTBOUND_ADDR", "127.0.0.1:9000"),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("different from SHOAL_OUTBOUND_ADDR"), "{err}");
    // An `off` listener does not conflict.
    cfg(&[
        ("SHOAL_ADMIN_ADDR", "127.0.0.1:9000"),
        ("SHOAL_OUTBOUND_ADDR", "127.0.0.1:9000"),
        ("SHOAL_OUTBOUND_MODE", "off"),
    ])
    .unwrap();
}

#[test]
fn zero_response_timeout_disables_it() {
    let c = cfg(&[("SHOAL_RESPONSE_TIMEOUT", "0s")]).unwrap();
    assert_eq!(c.http.response_timeout, None);
}

#[test]
fn yaml_file_keys_map_to_settings_and_env_wins() {
    let mut source = Source::from_yaml(
        "outbound_mode: explicit\nmax_headers: 50\nserver_first_ports: [25, 3306]\n",
        "test.yaml",
    )
    .unwrap();
    source.set("SHOAL_MAX_HEADERS".into(), "60".into(), "env");
    let c = Config::from_source(&source).unwrap();
    assert_eq!(c.outbound.mode, Mode::Explicit);
    assert_eq!(c.http.max_headers, 60);
    assert_eq!(c.server_first_ports, vec![25, 3306]);
}

#[test]
fn yaml_errors_name_the_file_and_key() {
    let err = Source::from_yaml("outbund_mode: explicit\n", "proxy.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("proxy.yaml") && err.contains("outbund_mode"),
        "{err}"
    );

    let source = Source::from_yaml("detect_timeout: soon\n", "proxy.yaml").unwrap();
    let err = Config::from_source(&source).unwrap_err().to_string();
    assert!(err.contains("from proxy.yaml"), "{err}");
}

#[test]
fn identity_settings_are_validated() {
    use crate::identity::{Source, Token};
    // No identity: plain text.
    let c = cfg(&[]).unwrap();
    assert!(c.identity.is_none());
    assert_eq!(c.inbound_tls_mode, crate::tls::TlsMode::Permissive);

    // A token redeemed at the discovery address by default.
    let c = cfg(&[
        ("SHOAL_DISCOVERY_ADDR", "127.0.0.1:15010"),
        ("SHOAL_IDENTITY_TOKEN", "secret"),
        ("SHOAL_NAMESPACE", "shop"),
    ])
    .unwrap();
    let id = c.identity.unwrap();
    assert_eq!(id.namespace, "shop");
    assert_eq!(id.min_version, crate::tls::MinVersion::Tls13);
    match id.source {
        Source::ControlPlane {
            addr,
            token: Token::Join(t),
        } => {
            assert_eq!(addr, "http://127.0.0.1:15010");
            assert_eq!(t, "secret");
        }
        other => panic!("{other:?}"),
    }

    for (pairs, setting, expected) in [
        (
            vec![("SHOAL_IDENTITY_TOKEN", "t")],
            "SHOAL_IDENTITY_ADDR",
            "the control plane's address",
        ),
        (
            vec![
                ("SHOAL_IDENTITY_TOKEN", "t"),
                ("SHOAL_IDENTITY_TOKEN_FILE", "/f"),
            ],
            "SHOAL_IDENTITY_TOKEN_FILE",
            "not both",
        ),
        (
            vec![("SHOAL_IDENTITY_CERT_FILE", "/c")],
            "SHOAL_IDENTITY_CERT_FILE",
            "SHOAL_IDENTITY_KEY_FILE too",
        ),
        (
            vec![
                ("SHOAL_IDENTITY_TOKEN_FILE", "/t"),
                ("SHOAL_IDENTITY_TOKEN_KIND", "aws"),
                ("SHOAL_IDENTITY_ADDR", "cp:15010"),
            ],
            "SHOAL_IDENTITY_TOKEN_KIND",
            "`join` or `kubernetes`",
        ),
        (
            vec![("SHOAL_TLS_MIN_VERSION", "1.1")],
            "SHOAL_TLS_MIN_VERSION",
            "older versions are not supported",
        ),
        (
            vec![("SHOAL_INBOUND_TLS_MODE", "mutual")],
            "SHOAL_INBOUND_TLS_MODE",
            "`strict`, `permissive` or `disabled`",
        ),
    ] {
        let err = cfg(&pairs).unwrap_err().to_string();
        assert!(err.contains(setting) && err.contains(expected), "{err}");
    }
}
