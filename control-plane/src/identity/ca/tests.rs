use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::identity::clock::ManualClock;
use crate::identity::spiffe::WorkloadId;

const TTL: Duration = Duration::from_secs(3600);

struct Fixture {
    store: Store,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb")).unwrap();
    Fixture {
        store,
        clock: Arc::new(ManualClock::starting_now()),
        _dir: dir,
    }
}

fn settings(root: Option<RootFiles>) -> CaSettings {
    CaSettings {
        trust_domain: TrustDomain::parse("cluster.local").unwrap(),
        cert_ttl: TTL,
        root,
    }
}

fn ca(f: &Fixture, root: Option<RootFiles>) -> Ca {
    Ca::load_or_create(f.store.clone(), settings(root), f.clock.clone()).unwrap()
}

/// A CSR from a fresh key, asking for things the CA must ignore (a DNS name, a CA bit, a subject).
fn csr() -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "admin");
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn web() -> WorkloadId {
    WorkloadId::new("shop", "web").unwrap()
}

/// Validates `chain` (leaf first) against `roots` as a TLS peer would, with webpki, at `at`.
pub(crate) fn verify(
    chain: &[String],
    roots: &[String],
    at: SystemTime,
) -> Result<(), rustls::Error> {
    let der = |pem: &String| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(der(root)).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .unwrap();
    let intermediates: Vec<_> = chain[1..].iter().map(der).collect();
    let now = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    verifier
        .verify_client_cert(&der(&chain[0]), &intermediates, now)
        .map(drop)
}

#[test]
fn issues_a_spiffe_leaf_that_chains_to_the_root() {
    let f = fixture();
    let ca = ca(&f, None);
    let issued = ca.issue(&Csr::from_pem(&csr()).unwrap(), &web()).unwrap();
    assert_eq!(issued.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(
        issued.chain_pem.len(),
        1,
        "a self-generated root signs directly"
    );
    assert_eq!(issued.trust_bundle_pem, ca.roots_pem());

    let der = CertificateDer::from_pem_slice(issued.chain_pem[0].as_bytes()).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1, "{sans:?}");
    assert!(matches!(
        sans[0],
        GeneralName::URI("spiffe://cluster.local/ns/shop/sa/web")
    ));
    assert!(!leaf.is_ca());
    assert_eq!(
        leaf.subject().iter().count(),
        0,
        "the CSR's subject is dropped"
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let now = crate::identity::clock::unix_seconds(f.clock.now()) as i64;
    let validity = leaf.validity();
    assert_eq!(
        validity.not_before.timestamp(),
        now - BACKDATE.as_secs() as i64
    );
    assert_eq!(validity.not_after.timestamp(), now + TTL.as_secs() as i64);
    assert_eq!(issued.not_after, (now + TTL.as_secs() as i64) as u64);

    verify(&issued.chain_pem, &issued.trust_bundle_pem, f.clock.now()).expect("chain verifies");
    let expired = f.clock.now() + TTL + Duration::from_secs(1);
    assert!(verify(&issued.chain_pem, &issued.trust_bundle_pem, expired).is_err());
    let other = Ca::load_or_create(fixture().store, settings(None), f.clock.clone()).unwrap();
    assert!(
        verify(&issued.chain_pem, &other.roots_pem(), f.clock.now()).is_err(),
        "another CA's root must not validate it"
    );
}

#[test]
fn tampered_and_garbage_csrs_are_refused() {
    let key = KeyPair::generate().unwrap();
    let request = CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let mut der = request.der().to_vec();
    assert!(Csr::from_der(&der).is_ok());
    // Flip a byte in the public key: the self-signature no longer matches.
    let pos = der
        .windows(key.public_key_raw().len())
        .position(|w| w == key.public_key_raw())
        .unwrap();
    der[pos + 10] ^= 0xff;
    let error = Csr::from_der(&der).unwrap_err();
    assert!(error.contains("signature does not verify"), "{error}");
    let error = Csr::from_pem("hello").unwrap_err();
    assert!(error.starts_with("csr_pem: not a PKCS#10"), "{error}");
    assert!(
        Csr::from_der(b"\x30\x03\x02\x01\x00")
            .unwrap_err()
            .starts_with("csr_der")
    );
}

#[test]
fn the_ca_survives_a_restart() {
    let f = fixture();
    let first = ca(&f, None).status();
    let again = ca(&f, None).status();
    assert_eq!(
        first.roots[0].fingerprint_sha256,
        again.roots[0].fingerprint_sha256
    );
    assert_eq!(first.roots.len(), 1);
}

fn operator_root(dir: &std::path::Path, mode: u32) -> (RootFiles, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "ACME root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.subject_alt_names = vec![SanType::DnsName("acme.example".try_into().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("root.pem"), dir.join("root.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode)).unwrap();
    let files = RootFiles::read(&cert_path, &key_path);
    let fingerprint =
        crate::identity::hex(ring::digest::digest(&ring::digest::SHA256, cert.der()).as_ref());
    (files.unwrap_or_else(|e| panic!("{e}")), fingerprint)
}

#[test]
fn an_operator_root_gets_an_intermediate_that_signs_workloads() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (root, fingerprint) = operator_root(dir.path(), 0o600);
    let ca = ca(&f, Some(root.clone()));
    assert_eq!(ca.status().roots[0].fingerprint_sha256, fingerprint);
    let issued = ca.issue(&Csr::from_pem(&csr()).unwrap(), &web()).unwrap();
    assert_eq!(issued.chain_pem.len(), 2, "leaf and intermediate");
    verify(
        &issued.chain_pem,
        std::slice::from_ref(&root.cert_pem),
        f.clock.now(),
    )
    .expect("chains to the operator's root");
    assert!(
        verify(
            &issued.chain_pem[..1],
            std::slice::from_ref(&root.cert_pem),
            f.clock.now()
        )
        .is_err()
    );

    // Restarting with the same root is fine; with another one, start-up says what to do.
    assert!(Ca::load_or_create(f.store.clone(), settings(Some(root)), f.clock.clone()).is_ok());
    let (other, _) = operator_root(dir.path(), 0o600);
    let error =
        Ca::load_or_create(f.store.clone(), settings(Some(other)), f.clock.clone()).unwrap_err();
    assert!(error.to_string().contains("shoalctl ca rotate"), "{error}");
}

#[test]
fn unusable_operator_roots_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("root.key");
    let _ = operator_root(dir.path(), 0o600);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = RootFiles::read(&dir.path().join("root.pem"), &key_path)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("readable by group or others (mode 0644)"),
        "{error}"
    );

    let (a, _) = operator_root(dir.path(), 0o600);
    let (b, _) = operator_root(tempfile::tempdir().unwrap().path(), 0o600);
    let mismatched = RootFiles {
        cert_pem: a.cert_pem,
        key_pem: b.key_pem.clone(),
    };
    let f = fixture();
    let error = Ca::load_or_create(f.store.clone(), settings(Some(mismatched)), f.clock.clone())
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("does not belong to the root certificate"),
        "{error}"
    );

    // A leaf (not a CA) as root.
    let leaf = rcgen::generate_simple_self_signed(vec!["x.example".to_owned()]).unwrap();
    let not_ca = RootFiles {
        cert_pem: leaf.cert.pem(),
        key_pem: leaf.signing_key.serialize_pem(),
    };
    let error =
        Ca::load_or_create(f.store.clone(), settings(Some(not_ca)), f.clock.clone()).unwrap_err();
    assert!(
        error.to_string().contains("not a CA certificate"),
        "{error}"
    );
}

#[test]
fn rotation_keeps_both_roots_until_the_old_certificates_expire() {
    let f = fixture();
    let ca = ca(&f, None);
    let before = ca.issue(&Csr::from_pem(&csr()).unwrap(), &web()).unwrap();
    let old_root = ca.roots_pem();
    let mut bundle = ca.bundle();
    bundle.borrow_and_update();

    let status = ca.rotate(None).unwrap();
    assert!(
        bundle.has_changed().unwrap(),
        "rotation notifies the bundle"
    );
    assert_eq!(status.roots.len(), 2);
    assert_eq!(status.roots[0].state, v1::CaRootState::Active as i32);
    assert_eq!(status.roots[1].state, v1::CaRootState::Retiring as i32);
    let now = f.clock.unix_seconds();
    assert_eq!(status.roots[1].retire_at_unix_seconds, now + TTL.as_secs());
    assert_eq!(status.roots[1].certificate_pem, old_root[0]);

    let after = ca.issue(&Csr::from_pem(&csr()).unwrap(), &web()).unwrap();
    assert_eq!(after.trust_bundle_pem.len(), 2);
    let new_root = vec![status.roots[0].certificate_pem.clone()];
    verify(&after.chain_pem, &new_root, f.clock.now())
        .expect("new certificates chain to the new root");
    assert!(verify(&after.chain_pem, &old_root, f.clock.now()).is_err());
    // Both generations validate against the bundle every proxy now has: no failed handshake mid-rotation.
    verify(&before.chain_pem, &after.trust_bundle_pem, f.clock.now()).unwrap();
    verify(&after.chain_pem, &after.trust_bundle_pem, f.clock.now()).unwrap();

    let error = ca.rotate(None).unwrap_err();
    assert!(
        matches!(error, CaError::RotationInProgress { .. }),
        "{error}"
    );

    // A restart mid-rotation keeps both roots and the schedule.
    let reloaded = Ca::load_or_create(f.store.clone(), settings(None), f.clock.clone()).unwrap();
    assert_eq!(reloaded.status(), ca.status());

    assert!(!ca.retire_due().unwrap(), "not yet");
    f.clock.advance(TTL);
    assert!(ca.retire_due().unwrap());
    assert_eq!(ca.roots_pem(), new_root);
    assert_eq!(ca.next_retirement(), None);
    let reloaded = Ca::load_or_create(f.store.clone(), settings(None), f.clock.clone()).unwrap();
    assert_eq!(reloaded.roots_pem(), new_root, "retirement is stored");
    assert!(ca.rotate(None).is_ok(), "the next rotation may start");
}
