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
    assert_eq!(c.http.mirror_max_in_flight, 100);
}

#[test]
fn the_mirror_cap_is_bounded() {
    assert_eq!(
        cfg(&[("SHOAL_MIRROR_MAX_IN_FLIGHT", "5")])
            .unwrap()
            .http
            .mirror_max_in_flight,
        5
    );
    for bad in ["0", "100001", "many"] {
        let err = cfg(&[("SHOAL_MIRROR_MAX_IN_FLIGHT", bad)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SHOAL_MIRROR_MAX_IN_FLIGHT"), "{err}");
    }
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
        ("SHOAL_DISCOVERY_ADDR", "http://127.0.0.1:15010"),
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

/// A PEM file in the temporary directory, removed on drop.
struct TempPem(std::path::PathBuf);

impl TempPem {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "shoal-config-test-{}-{name}.pem",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempPem {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn control_plane_tls_settings_are_validated() {
    // Bare HOST:PORT and https:// are TLS; http:// is plaintext and needs no anchors.
    let c = cfg(&[("SHOAL_DISCOVERY_ADDR", "http://cp:15010")]).unwrap();
    assert_eq!(c.discovery.unwrap().addr, "http://cp:15010");
    assert!(c.control_plane_tls.is_none());
    for addr in ["cp:15010", "https://cp:15010"] {
        let err = cfg(&[("SHOAL_DISCOVERY_ADDR", addr)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE")
                && err.contains("SHOAL_DISCOVERY_ADDR=https://cp:15010 uses TLS"),
            "{err}"
        );
    }
    let err = cfg(&[
        ("SHOAL_IDENTITY_ADDR", "cp:15010"),
        ("SHOAL_IDENTITY_TOKEN", "t"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE")
            && err.contains("SHOAL_IDENTITY_ADDR"),
        "{err}"
    );
    let err = cfg(&[("SHOAL_DISCOVERY_ADDR", "ftp://cp:15010")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SHOAL_DISCOVERY_ADDR") && err.contains("https://HOST:PORT"),
        "{err}"
    );

    // The anchors file: missing, not PEM, no certificate, or not a CA are all named.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = params.self_signed(&key).unwrap();
    let good = TempPem::new("good", &root.pem());
    let empty = TempPem::new("empty", "just text\n");
    let broken = TempPem::new(
        "broken",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    );
    for (file, expected) in [
        ("/nonexistent/anchors.pem", "cannot read"),
        (empty.path(), "no PEM certificate"),
        (broken.path(), "not PEM"),
    ] {
        let err = cfg(&[
            ("SHOAL_DISCOVERY_ADDR", "cp:15010"),
            ("SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE", file),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE") && err.contains(expected),
            "{file}: {err}"
        );
    }

    let c = cfg(&[
        ("SHOAL_DISCOVERY_ADDR", "cp:15010"),
        ("SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE", good.path()),
    ])
    .unwrap();
    assert_eq!(c.discovery.unwrap().addr, "https://cp:15010");
    let tls = c.control_plane_tls.unwrap();
    assert_eq!(tls.anchors.len(), 1);
    assert_eq!(
        tls.identity.as_str(),
        crate::control_plane::DEFAULT_IDENTITY
    );

    let c = cfg(&[
        ("SHOAL_DISCOVERY_ADDR", "cp:15010"),
        ("SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE", good.path()),
        (
            "SHOAL_CONTROL_PLANE_IDENTITY",
            "spiffe://mesh.example/ns/infra/sa/shoal-control-plane",
        ),
    ])
    .unwrap();
    assert_eq!(
        c.control_plane_tls.unwrap().identity.trust_domain(),
        "mesh.example"
    );
    let err = cfg(&[
        ("SHOAL_DISCOVERY_ADDR", "cp:15010"),
        ("SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE", good.path()),
        ("SHOAL_CONTROL_PLANE_IDENTITY", "shoal-control-plane"),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("SHOAL_CONTROL_PLANE_IDENTITY"), "{err}");
}

#[test]
fn tracing_settings_are_off_by_default_and_validated() {
    assert!(cfg(&[]).unwrap().tracing.is_none());
    let t = cfg(&[("SHOAL_TRACING_OTLP_ENDPOINT", "collector:4317")])
        .unwrap()
        .tracing
        .unwrap();
    assert_eq!(t.endpoint, "http://collector:4317");
    assert_eq!(t.sampling_ratio, 0.01);
    assert_eq!((t.batch_size, t.max_queue), (512, 2048));
    assert_eq!(t.flush_interval, Duration::from_secs(5));
    assert_eq!(t.export_timeout, Duration::from_secs(10));
    let t = cfg(&[
        ("SHOAL_TRACING_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ("SHOAL_TRACING_SAMPLING_RATIO", "25%"),
        ("SHOAL_TRACING_RESOURCE_ATTRIBUTES", "a=1, b = two"),
    ])
    .unwrap()
    .tracing
    .unwrap();
    assert_eq!(t.sampling_ratio, 0.25);
    assert_eq!(
        t.resource_attributes,
        [("a".into(), "1".into()), ("b".into(), "two".into())]
    );
    for (pairs, expected) in [
        (
            &[("SHOAL_TRACING_OTLP_ENDPOINT", "https://collector:4317")][..],
            "plaintext only",
        ),
        (
            &[("SHOAL_TRACING_OTLP_ENDPOINT", "collector")][..],
            "HOST:PORT or http://HOST:PORT",
        ),
        (
            &[
                ("SHOAL_TRACING_OTLP_ENDPOINT", "c:4317"),
                ("SHOAL_TRACING_SAMPLING_RATIO", "1.5"),
            ][..],
            "SHOAL_TRACING_SAMPLING_RATIO",
        ),
        (
            &[
                ("SHOAL_TRACING_OTLP_ENDPOINT", "c:4317"),
                ("SHOAL_TRACING_MAX_QUEUE", "10"),
            ][..],
            "a full batch must fit",
        ),
        (
            &[
                ("SHOAL_TRACING_OTLP_ENDPOINT", "c:4317"),
                ("SHOAL_TRACING_RESOURCE_ATTRIBUTES", "novalue"),
            ][..],
            "`novalue` is not one",
        ),
    ] {
        let err = cfg(pairs).unwrap_err().to_string();
        assert!(err.contains(expected), "{pairs:?}: {err}");
    }
}
