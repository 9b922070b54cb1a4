//! `shoalctl token` and `shoalctl ca` against the real binaries; the Identity service on the discovery
//! listener; the CA surviving restarts (also mid-rotation); CA settings that stop start-up.

use std::process::Command;

use shoal_proto::v1;

use super::harness::{CONTROL_PLANE, ControlPlane, exit_of, expect, http_get, shoalctl, text};

fn ca_status(server: &str) -> serde_json::Value {
    let out = expect(
        &shoalctl(server, &["ca", "status", "-o", "json"], ""),
        0,
        &[],
    );
    serde_json::from_str(&out).expect("json")
}

fn certify(
    discovery: &str,
    token: &str,
    ns: &str,
    sa: &str,
) -> Result<v1::CertifyResponse, tonic::Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(discovery.to_owned())
            .unwrap()
            .connect()
            .await
            .expect("discovery listener");
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let request = v1::CertifyRequest {
            csr: Some(v1::certify_request::Csr::CsrPem(csr)),
            credential: Some(v1::certify_request::Credential::JoinToken(token.to_owned())),
            namespace: ns.into(),
            service_account: sa.into(),
        };
        let mut client = v1::identity_client::IdentityClient::new(channel);
        client
            .certify(request)
            .await
            .map(tonic::Response::into_inner)
    })
}

#[test]
fn tokens_from_shoalctl_get_certificates_from_the_discovery_listener() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlane::start(&dir.path().join("data"));
    let created = shoalctl(
        &cp.admin,
        &[
            "token", "create", "-n", "shop", "-s", "web", "--ttl", "30m", "--uses", "1",
        ],
        "",
    );
    let stdout = expect(&created, 0, &["ns/shop/sa/web", "single use"]);
    let token = stdout.trim();
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout is the token alone: {stdout:?}"
    );
    let (id, secret) = token.split_once('.').expect("<id>.<secret>");
    assert_eq!((id.len(), secret.len()), (16, 64));

    let issued = certify(&cp.discovery, token, "shop", "web").expect("certified");
    assert_eq!(issued.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    let again = certify(&cp.discovery, token, "shop", "web").expect_err("single use");
    assert_eq!(again.code(), tonic::Code::Unauthenticated);
    let metrics = http_get(&cp.metrics, "/metrics");
    assert!(
        metrics.contains("shoal_cp_certificates_issued_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_cp_certificates_refused_total{reason=\"exhausted_credential\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("shoal_cp_ca_roots 1"), "{metrics}");

    let table = expect(
        &shoalctl(&cp.admin, &["token", "list"], ""),
        0,
        &["ID", id, "1/1", "used up"],
    );
    assert!(!table.contains(secret), "the secret is never listed");
    let json = expect(
        &shoalctl(
            &cp.admin,
            &["token", "list", "-n", "shop", "-o", "json"],
            "",
        ),
        0,
        &[],
    );
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json[0]["id"], id);
    assert_eq!(json[0]["uses"], 1);
    expect(
        &shoalctl(&cp.admin, &["token", "revoke", id], ""),
        0,
        &["revoked"],
    );
    expect(
        &shoalctl(&cp.admin, &["token", "list"], ""),
        0,
        &["revoked"],
    );

    let yaml = expect(
        &shoalctl(
            &cp.admin,
            &["token", "create", "-n", "shop", "-s", "api", "-o", "yaml"],
            "",
        ),
        0,
        &["token: ", "serviceAccount: api"],
    );
    assert!(yaml.contains("maxUses: 0"), "{yaml}");

    // Errors: the server's (exit 1, naming the field or id) and bad input (exit 2).
    expect(
        &shoalctl(
            &cp.admin,
            &["token", "create", "-n", "Shop", "-s", "web"],
            "",
        ),
        1,
        &["INVALID_ARGUMENT", "namespace \"Shop\""],
    );
    expect(
        &shoalctl(
            &cp.admin,
            &[
                "token", "create", "-n", "shop", "-s", "web", "--ttl", "soon",
            ],
            "",
        ),
        2,
        &["--ttl"],
    );
    expect(
        &shoalctl(
            &cp.admin,
            &["token", "create", "-n", "shop", "-s", "web", "--ttl", "40d"],
            "",
        ),
        1,
        &["ttl_seconds"],
    );
    expect(
        &shoalctl(&cp.admin, &["token", "revoke", "0123456789abcdef"], ""),
        1,
        &["NOT_FOUND", "no join token with id"],
    );
    expect(
        &shoalctl(&cp.admin, &["token", "create", "-n", "shop"], ""),
        2,
        &["--service-account"],
    );
    expect(
        &shoalctl("http://127.0.0.1:1", &["token", "list"], ""),
        3,
        &["cannot reach the control plane"],
    );
    cp.stop();
}

#[test]
fn the_ca_and_a_rotation_in_progress_survive_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let cp = ControlPlane::start(&data);
    let first = ca_status(&cp.admin);
    assert_eq!(first["trustDomain"], "cluster.local");
    assert_eq!(first["workloadCertificateTtlSeconds"], 86400);
    let fingerprint = first["roots"][0]["fingerprintSha256"]
        .as_str()
        .unwrap()
        .to_owned();
    expect(
        &shoalctl(&cp.admin, &["ca", "status"], ""),
        0,
        &["ACTIVE", &fingerprint, "valid 1day"],
    );
    cp.stop();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("store.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the data file holds CA keys: owner only"
        );
    }

    let cp = ControlPlane::start(&data);
    assert_eq!(
        ca_status(&cp.admin)["roots"][0]["fingerprintSha256"],
        fingerprint.as_str(),
        "same root after a restart"
    );
    let rotated = expect(
        &shoalctl(&cp.admin, &["ca", "rotate", "-o", "json"], ""),
        0,
        &["CA rotation started", "is PENDING"],
    );
    let rotated: serde_json::Value = serde_json::from_str(&rotated).expect("json");
    assert_eq!(
        rotated["roots"][0]["fingerprintSha256"],
        fingerprint.as_str()
    );
    assert_eq!(rotated["roots"][1]["state"], "PENDING");
    assert!(rotated["roots"][1]["activateBy"].is_string(), "{rotated}");
    // No proxy is connected: nothing to wait for, the new root signs at the next upkeep tick (1 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let rotating = loop {
        let status = ca_status(&cp.admin);
        if status["roots"][1]["state"] == "RETIRING" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still {status}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        rotating["roots"][1]["fingerprintSha256"],
        fingerprint.as_str()
    );
    assert_eq!(rotating["roots"][0]["state"], "ACTIVE");
    expect(
        &shoalctl(&cp.admin, &["ca", "status"], ""),
        0,
        &["RETIRING", "ACTIVATES BY", "RETIRES AT"],
    );
    expect(
        &shoalctl(&cp.admin, &["ca", "rotate"], ""),
        1,
        &[
            "FAILED_PRECONDITION",
            "rotation is in progress",
            "is RETIRING",
        ],
    );
    expect(
        &shoalctl(&cp.admin, &["ca", "rotate", "--activate-after", "2d"], ""),
        2,
        &["--activate-after", "1s to 24h"],
    );
    expect(
        &shoalctl(&cp.admin, &["ca", "rotate", "--cert", "root.pem"], ""),
        2,
        &["--key"],
    );
    cp.stop();

    let cp = ControlPlane::start(&data);
    assert_eq!(
        ca_status(&cp.admin)["roots"],
        rotating["roots"],
        "both roots and the schedule survive"
    );
    cp.stop();
}

#[test]
fn ca_settings_that_cannot_work_stop_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("root.pem"), dir.path().join("root.key"));
    std::fs::write(&cert_file, root.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |settings: &[(&str, &str)]| {
        let output = exit_of(
            Command::new(CONTROL_PLANE)
                .env("SHOAL_CP_ADMIN_ADDR", "127.0.0.1:0")
                .env("SHOAL_CP_DISCOVERY_ADDR", "127.0.0.1:0")
                .env("SHOAL_CP_METRICS_ADDR", "127.0.0.1:0")
                .env("SHOAL_CP_DATA_DIR", dir.path().join("data"))
                .envs(settings.iter().copied()),
        );
        (output.status.code(), text(&output.stderr))
    };
    let (cert, keyf) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    let (code, stderr) = run(&[
        ("SHOAL_CP_CA_CERT_FILE", cert),
        ("SHOAL_CP_CA_KEY_FILE", keyf),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("readable by group or others (mode 0644)"),
        "{stderr}"
    );
    let (code, stderr) = run(&[("SHOAL_CP_CA_CERT_FILE", cert)]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("SHOAL_CP_CA_KEY_FILE"), "{stderr}");
    let (code, stderr) = run(&[("SHOAL_CP_CERT_TTL", "5s")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("SHOAL_CP_CERT_TTL=\"5s\"") && stderr.contains("from 10s to 30d"),
        "{stderr}"
    );

    // With the key private, the control plane runs an intermediate under the operator's root.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cp = ControlPlane::start_with(
        &dir.path().join("data"),
        &[
            ("SHOAL_CP_CA_CERT_FILE", cert),
            ("SHOAL_CP_CA_KEY_FILE", keyf),
            ("SHOAL_CP_TRUST_DOMAIN", "mesh.example"),
        ],
    );
    let status = ca_status(&cp.admin);
    assert_eq!(status["trustDomain"], "mesh.example");
    assert_eq!(status["roots"][0]["certificatePem"], root.pem());
    cp.stop();
}
