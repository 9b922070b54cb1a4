use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::*;
use crate::identity::ca::CaSettings;
use crate::identity::clock::ManualClock;
use crate::identity::spiffe::TrustDomain;
use crate::store::Store;

const TTL: Duration = Duration::from_secs(3600);

struct Fixture {
    identity: Identity,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb")).unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let settings = CaSettings {
        trust_domain: TrustDomain::parse("mesh.test").unwrap(),
        cert_ttl: TTL,
        root: None,
        propagation_timeout: Duration::from_secs(60),
    };
    let identity = Identity::open(store, settings, clock.clone()).unwrap();
    Fixture {
        identity,
        clock,
        _dir: dir,
    }
}

/// The leaf's DER and whether the chain verifies, as a TLS client would, against `roots_pem` at the
/// CA's (manual) time.
fn check(
    f: &Fixture,
    cert: &ServerCert,
    roots_pem: &[String],
) -> (Vec<u8>, Result<(), rustls::Error>) {
    let key = cert.certified_key();
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let provider = rustls::crypto::ring::default_provider();
    let parsed = rustls::server::ParsedCertificate::try_from(&key.cert[0]).unwrap();
    let verified = rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &key.cert[1..],
        UnixTime::since_unix_epoch(Duration::from_secs(f.identity.clock.unix_seconds())),
        provider.signature_verification_algorithms.all,
    );
    (key.cert[0].to_vec(), verified)
}

fn spiffe_uri(der: &[u8]) -> String {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    match san.value.general_names.as_slice() {
        [GeneralName::URI(uri)] => uri.to_string(),
        other => panic!("unexpected SANs {other:?}"),
    }
}

#[test]
fn issues_the_control_plane_identity_and_renews_at_seventy_percent() {
    let f = fixture();
    let cert = ServerCert::new(&f.identity, "shoal-system").unwrap();
    assert_eq!(
        cert.spiffe_id(),
        "spiffe://mesh.test/ns/shoal-system/sa/shoal-control-plane"
    );
    let (leaf, verified) = check(&f, &cert, &f.identity.ca.roots_pem());
    verified.expect("the certificate chains to the CA's root");
    assert_eq!(spiffe_uri(&leaf), cert.spiffe_id());
    // Issued now for the CA's certificate lifetime: due after 70 % of it.
    let due = cert.renew_in().as_secs();
    assert!((2515..=2520).contains(&due), "renews in {due}s");
    f.clock.advance(Duration::from_secs(2000));
    let due = cert.renew_in().as_secs();
    assert!((515..=520).contains(&due), "renews in {due}s");
    f.clock.advance(Duration::from_secs(1000));
    assert_eq!(cert.renew_in(), Duration::ZERO, "overdue renews at once");

    cert.renew().unwrap();
    let (renewed, verified) = check(&f, &cert, &f.identity.ca.roots_pem());
    verified.unwrap();
    assert_ne!(renewed, leaf, "renewal swaps in a new certificate");
    let due = cert.renew_in().as_secs();
    assert!(
        (2515..=2520).contains(&due),
        "renews in {due}s after renewal"
    );

    let error = ServerCert::new(&f.identity, "Bad_NS")
        .unwrap_err()
        .to_string();
    assert!(error.contains("namespace"), "{error}");
}

#[tokio::test]
async fn a_rotation_swaps_in_a_certificate_from_the_new_signer() {
    let f = fixture();
    let cert = ServerCert::new(&f.identity, "shoal-system").unwrap();
    let old_roots = f.identity.ca.roots_pem();
    let (_closing_tx, closing) = watch::channel(false);
    tokio::spawn(cert.clone().maintain(closing));
    assert!(!cert.signer_changed());

    let ca = f.identity.ca.clone();
    let status = tokio::task::spawn_blocking(move || ca.rotate(None, None).unwrap())
        .await
        .unwrap();
    let pending = (status.roots.iter())
        .find(|r| r.state == shoal_proto::v1::CaRootState::Pending as i32)
        .expect("the rotated-in root is pending")
        .clone();
    let new_root = pending.certificate_pem.clone();
    assert_ne!(new_root, old_roots[0]);
    // Pending: in the bundle, not signing; the control plane's certificate stays with the old signer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!cert.signer_changed(), "a pending root does not sign");
    assert!(check(&f, &cert, &old_roots).1.is_ok());
    let ca = f.identity.ca.clone();
    let fingerprint = pending.fingerprint_sha256.clone();
    assert!(
        tokio::task::spawn_blocking(move || ca.activate(&fingerprint).unwrap())
            .await
            .unwrap()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while check(&f, &cert, std::slice::from_ref(&new_root)).1.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate was not reissued by the new signer within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!cert.signer_changed());
    assert!(
        check(&f, &cert, &old_roots).1.is_err(),
        "the new certificate no longer chains to the old root"
    );
}
