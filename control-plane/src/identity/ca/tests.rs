use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::identity::clock::ManualClock;
use crate::identity::spiffe::WorkloadId;

const TTL: Duration = Duration::from_secs(3600);
const PROPAGATION: Duration = Duration::from_secs(60);

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
        propagation_timeout: PROPAGATION,
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
    let issued = ca
        .issue(&Csr::from_pem(&csr()).unwrap(), &web(), false)
        .unwrap();
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

pub(super) fn operator_root(dir: &std::path::Path, mode: u32) -> (RootFiles, String) {
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
    let issued = ca
        .issue(&Csr::from_pem(&csr()).unwrap(), &web(), false)
        .unwrap();
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

fn issue(ca: &Ca) -> Issued {
    ca.issue(&Csr::from_pem(&csr()).unwrap(), &web(), false)
        .unwrap()
}

fn state(status: &v1::CaStatusResponse) -> Vec<v1::CaRootState> {
    (status.roots.iter())
        .map(|r| v1::CaRootState::try_from(r.state).unwrap())
        .collect()
}

/// Rotates, and makes the pending root active as the upkeep task would; returns the pending root.
fn rotate_and_activate(ca: &Ca) -> PendingRoot {
    ca.rotate(None, None).unwrap();
    let pending = ca.pending().expect("a pending root");
    assert!(ca.activate(&pending.fingerprint).unwrap());
    pending
}

#[test]
fn a_rotated_in_root_is_trusted_but_the_old_root_keeps_signing_until_activation() {
    use v1::CaRootState::{Active, Pending, Retiring};
    let f = fixture();
    let ca = ca(&f, None);
    let before = issue(&ca);
    let old_root = ca.roots_pem();
    let mut bundle = ca.bundle();
    bundle.borrow_and_update();
    assert_eq!(ca.phase(), Phase::Idle);

    let status = ca.rotate(None, None).unwrap();
    assert!(
        bundle.has_changed().unwrap(),
        "rotation notifies the bundle"
    );
    assert_eq!(ca.phase(), Phase::Pending);
    assert_eq!(state(&status), [Active, Pending]);
    assert_eq!(status.roots[0].certificate_pem, old_root[0]);
    let now = f.clock.unix_seconds();
    assert_eq!(status.roots[1].pending_since_unix_seconds, now);
    assert_eq!(
        status.roots[1].activate_by_unix_seconds,
        now + PROPAGATION.as_secs()
    );
    assert_eq!(status.roots[1].retire_at_unix_seconds, 0);
    let new_root = vec![status.roots[1].certificate_pem.clone()];
    let pending = ca.pending().unwrap();
    assert_eq!(pending.root_pem, new_root[0]);
    assert_eq!(pending.fingerprint, status.roots[1].fingerprint_sha256);

    // PENDING: both roots in the bundle (Certify returns it), but the old root still signs.
    assert_eq!(ca.roots_pem(), [old_root[0].clone(), new_root[0].clone()]);
    let during = issue(&ca);
    assert_eq!(during.trust_bundle_pem, ca.roots_pem());
    verify(&during.chain_pem, &old_root, f.clock.now()).expect("issued by the old root");
    assert!(verify(&during.chain_pem, &new_root, f.clock.now()).is_err());
    assert_eq!(during.root_fingerprint, status.roots[0].fingerprint_sha256);

    // Activation, 30 s later: the new root signs, the old one retires one lifetime after *activation*.
    f.clock.advance(Duration::from_secs(30));
    bundle.borrow_and_update();
    assert!(!ca.activate("not-the-pending-root").unwrap());
    assert_eq!(ca.phase(), Phase::Pending);
    assert!(ca.activate(&pending.fingerprint).unwrap());
    assert!(
        bundle.has_changed().unwrap(),
        "activation notifies the bundle"
    );
    assert!(!ca.activate(&pending.fingerprint).unwrap(), "only once");
    assert_eq!(ca.phase(), Phase::Retiring);
    assert_eq!(ca.pending(), None);
    let status = ca.status();
    assert_eq!(state(&status), [Active, Retiring]);
    assert_eq!(status.roots[0].certificate_pem, new_root[0]);
    assert_eq!(status.roots[0].activate_by_unix_seconds, 0);
    assert_eq!(status.roots[0].pending_since_unix_seconds, 0);
    let activated = f.clock.unix_seconds();
    assert_eq!(
        status.roots[1].retire_at_unix_seconds,
        activated + TTL.as_secs()
    );
    let after = issue(&ca);
    verify(&after.chain_pem, &new_root, f.clock.now()).expect("issued by the new root");
    // Every generation validates against the bundle every proxy has: no failed handshake.
    for chain in [&before.chain_pem, &during.chain_pem, &after.chain_pem] {
        verify(chain, &after.trust_bundle_pem, f.clock.now()).unwrap();
    }
    let reloaded = Ca::load_or_create(f.store.clone(), settings(None), f.clock.clone()).unwrap();
    assert_eq!(reloaded.status(), ca.status(), "activation is stored");

    assert!(!ca.retire_due().unwrap(), "not yet");
    f.clock.advance(TTL);
    assert!(ca.retire_due().unwrap());
    assert_eq!(ca.roots_pem(), new_root);
    assert_eq!(ca.next_retirement(), None);
    assert_eq!(ca.phase(), Phase::Idle);
    let reloaded = Ca::load_or_create(f.store.clone(), settings(None), f.clock.clone()).unwrap();
    assert_eq!(reloaded.roots_pem(), new_root, "retirement is stored");
    assert!(ca.rotate(None, None).is_ok(), "the next rotation may start");
}

#[test]
fn a_second_rotation_is_refused_in_each_phase_naming_it() {
    let f = fixture();
    let ca = ca(&f, None);
    let status = ca.rotate(None, None).unwrap();
    let pending = ca.pending().unwrap();
    let error = ca.rotate(None, None).unwrap_err();
    assert!(
        matches!(&error, CaError::RotationInProgress { phase: Phase::Pending, fingerprint, until }
            if *fingerprint == pending.fingerprint && *until == pending.activate_by),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("is PENDING"), "{message}");
    assert!(message.contains(&pending.fingerprint), "{message}");
    assert!(
        message.contains(&pending.activate_by.to_string()),
        "{message}"
    );
    assert_eq!(ca.status(), status, "nothing changed");

    assert!(ca.activate(&pending.fingerprint).unwrap());
    let old = ca.status().roots[1].clone();
    let error = ca.rotate(None, None).unwrap_err();
    assert!(
        matches!(&error, CaError::RotationInProgress { phase: Phase::Retiring, fingerprint, until }
            if *fingerprint == old.fingerprint_sha256 && *until == old.retire_at_unix_seconds),
        "{error:?}"
    );
    assert!(error.to_string().contains("is RETIRING"), "{error}");

    // Out-of-range --activate-after is refused naming the field, before anything else.
    f.clock.advance(TTL);
    ca.retire_due().unwrap();
    for after in [Duration::ZERO, Duration::from_secs(86_401)] {
        let error = ca.rotate(None, Some(after)).unwrap_err();
        assert!(matches!(error, CaError::Invalid(_)), "{error:?}");
        assert!(
            error.to_string().starts_with("activate_after_seconds"),
            "{error}"
        );
    }
    assert_eq!(ca.phase(), Phase::Idle);
}

#[test]
fn a_restart_during_pending_resumes_it_with_the_stored_start() {
    let f = fixture();
    let ca = ca(&f, None);
    let status = ca.rotate(None, Some(Duration::from_secs(300))).unwrap();
    let pending = ca.pending().unwrap();
    assert_eq!(
        pending.activate_by,
        pending.since + 300,
        "the rotation's own timeout"
    );
    f.clock.advance(Duration::from_secs(100));

    let reloaded = Ca::load_or_create(f.store.clone(), settings(None), f.clock.clone()).unwrap();
    assert_eq!(reloaded.status(), status);
    assert_eq!(
        reloaded.pending(),
        Some(pending.clone()),
        "the timeout runs from the stored start"
    );
    assert_eq!(reloaded.phase(), Phase::Pending);
    let old_root = vec![status.roots[0].certificate_pem.clone()];
    verify(&issue(&reloaded).chain_pem, &old_root, f.clock.now())
        .expect("the old root still signs");

    // Without an override, a restart with another setting moves the deadline (still from the stored start).
    let f = fixture();
    let second = Ca::load_or_create(f.store.clone(), settings(None), f.clock.clone()).unwrap();
    second.rotate(None, None).unwrap();
    let since = second.pending().unwrap().since;
    let longer = CaSettings {
        propagation_timeout: Duration::from_millis(120_500),
        ..settings(None)
    };
    let reloaded = Ca::load_or_create(f.store.clone(), longer, f.clock.clone()).unwrap();
    assert_eq!(
        reloaded.pending().unwrap().activate_by,
        since + 121,
        "whole seconds, rounded up"
    );
}

#[test]
fn a_record_stored_before_the_pending_phase_existed_still_loads() {
    /// The CA record as the previous release wrote it (tags 1 to 5, no pending fields).
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldCaRecord {
        #[prost(message, repeated, tag = "1")]
        authorities: Vec<OldAuthorityRecord>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldAuthorityRecord {
        #[prost(string, tag = "1")]
        root_pem: String,
        #[prost(string, tag = "2")]
        intermediate_pem: String,
        #[prost(string, tag = "3")]
        signing_key_pem: String,
        #[prost(bool, tag = "4")]
        retiring: bool,
        #[prost(uint64, tag = "5")]
        retire_at: u64,
    }
    // Two authorities from this release, written the old way: a rotation in its retiring phase.
    let f = fixture();
    let ca = ca(&f, None);
    rotate_and_activate(&ca);
    let stored = f.store.secret_get(record::KEY).unwrap().unwrap();
    let current = record::CaRecord::decode(stored.as_slice()).unwrap();
    let old = OldCaRecord {
        authorities: (current.authorities.iter())
            .map(|a| OldAuthorityRecord {
                root_pem: a.root_pem.clone(),
                intermediate_pem: a.intermediate_pem.clone(),
                signing_key_pem: a.signing_key_pem.clone(),
                retiring: a.retiring,
                retire_at: a.retire_at,
            })
            .collect(),
    };
    f.store
        .secret_put(record::KEY, old.encode_to_vec())
        .unwrap();
    let loaded = Ca::load_or_create(f.store.clone(), settings(None), f.clock.clone()).unwrap();
    assert_eq!(loaded.status(), ca.status());
    assert_eq!(loaded.phase(), Phase::Retiring);
    assert_eq!(loaded.pending(), None);
}

/// The upkeep's decision against a real discovery hub: a CA, its trust bundle published into the hub,
/// and proxies registered with the hub whose ACK state the test sets.
mod propagation {
    use std::sync::Arc;

    use shoal_proto::v1::ResourceType;

    use super::*;
    use crate::discovery::Hub;
    use crate::discovery::catalog::{Key, key};
    use crate::identity::Identity;
    use crate::identity::propagation::{Decision, RECONNECT_GRACE_SECONDS, advance, decide};

    struct Mesh {
        f: Fixture,
        identity: Identity,
        hub: Arc<Hub>,
        bundle: Key,
        _close: tokio::sync::watch::Sender<bool>,
    }

    fn mesh() -> Mesh {
        let f = fixture();
        let identity = Identity::open(f.store.clone(), settings(None), f.clock.clone()).unwrap();
        let hub = Hub::new();
        let (close, closing) = tokio::sync::watch::channel(false);
        tokio::spawn(crate::identity::bundle::publish(
            identity.clone(),
            hub.clone(),
            closing,
        ));
        Mesh {
            f,
            identity,
            hub,
            bundle: key(ResourceType::TrustBundle, "cluster.local"),
            _close: close,
        }
    }

    impl Mesh {
        /// Rotates and waits (5 s at most) until the hub carries the bundle with the pending root; returns
        /// its version.
        async fn rotate(&self) -> u64 {
            self.identity.ca.rotate(None, None).unwrap();
            let root = self.identity.ca.pending().unwrap().root_pem;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(entry) = self.hub.entry(&self.bundle)
                    && matches!(&entry.payload(), Some(v1::discovery_resource::Payload::TrustBundle(b)) if b.roots_pem.contains(&root))
                {
                    return entry.version;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the bundle was not published"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        async fn advance(&self) -> Option<Decision> {
            advance(&self.identity, &self.hub, 0, None).await
        }

        fn new_root_signs(&self) -> bool {
            let status = self.identity.ca.status();
            let issued = issue(&self.identity.ca);
            verify(
                &issued.chain_pem,
                &[status.roots[0].certificate_pem.clone()],
                self.f.clock.now(),
            )
            .is_ok()
                && self.identity.ca.phase() == Phase::Retiring
        }
    }

    fn hello(id: &str) -> v1::Hello {
        v1::Hello {
            proxy_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn activation_waits_until_every_connected_subscribed_proxy_acked_the_bundle() {
        let m = mesh();
        let old_version = m.hub.entry(&m.bundle).map_or(0, |e| e.version);
        let a = m.hub.registry.register(hello("a"), "10.0.0.1:5000".into());
        let b = m.hub.registry.register(hello("b"), "10.0.0.2:5000".into());
        let unsubscribed = m.hub.registry.register(hello("c"), "10.0.0.3:5000".into());
        a.entry
            .set_key_state(m.bundle.clone(), old_version, old_version);
        b.entry
            .set_key_state(m.bundle.clone(), old_version, old_version);
        let version = m.rotate().await;
        assert_ne!(version, old_version);

        assert_eq!(m.advance().await, Some(Decision::Wait { waiting: 2 }));
        a.entry.set_key_state(m.bundle.clone(), version, version);
        // b was sent the new bundle but has not ACKed it yet.
        b.entry
            .set_key_state(m.bundle.clone(), version, old_version);
        assert_eq!(m.advance().await, Some(Decision::Wait { waiting: 1 }));
        assert_eq!(m.identity.ca.phase(), Phase::Pending);
        assert!(!m.new_root_signs());

        b.entry.set_key_state(m.bundle.clone(), version, version);
        assert_eq!(m.advance().await, Some(Decision::Propagated { proxies: 2 }));
        assert!(m.new_root_signs(), "{:?}", m.identity.ca.status());
        assert_eq!(m.advance().await, None, "nothing pending any more");
        drop((a, b, unsubscribed));
    }

    #[tokio::test]
    async fn a_proxy_that_never_acks_holds_activation_until_the_timeout_and_is_named() {
        let m = mesh();
        let silent = m
            .hub
            .registry
            .register(hello("silent"), "10.0.0.9:5000".into());
        silent.entry.set_key_state(m.bundle.clone(), 0, 0);
        m.rotate().await;
        let activate_by = m.identity.ca.pending().unwrap().activate_by;
        m.f.clock.advance(PROPAGATION - Duration::from_secs(1));
        assert_eq!(m.advance().await, Some(Decision::Wait { waiting: 1 }));
        assert_eq!(m.identity.ca.phase(), Phase::Pending);
        m.f.clock.advance(Duration::from_secs(1));
        assert_eq!(m.f.clock.unix_seconds(), activate_by);
        assert_eq!(
            m.advance().await,
            Some(Decision::TimedOut {
                missing: vec!["silent (10.0.0.9:5000)".into()]
            })
        );
        assert!(m.new_root_signs());
        drop(silent);
    }

    #[tokio::test]
    async fn with_no_proxy_connected_activation_is_immediate() {
        let m = mesh();
        m.rotate().await;
        assert_eq!(m.advance().await, Some(Decision::Propagated { proxies: 0 }));
        assert!(m.new_root_signs());
    }

    #[tokio::test]
    async fn with_other_replicas_activation_waits_for_their_reports_or_the_timeout() {
        let m = mesh();
        m.rotate().await;
        let fingerprint = m.identity.ca.pending().unwrap().fingerprint;
        let replicas = crate::identity::replicas::Replicas::new("holder");
        // Settling (the holder has just seen the root pending), then another replica waiting for a proxy:
        // no proxy of the holder's own holds it, yet it stays pending.
        assert_eq!(
            advance(&m.identity, &m.hub, 0, Some(&replicas)).await,
            Some(Decision::Wait { waiting: 0 })
        );
        let report =
            format!(r#"{{"fingerprint":"{fingerprint}","propagated":false,"waiting":1,"seq":1}}"#);
        replicas.observe(
            &std::collections::BTreeMap::from([("other".to_owned(), report)]),
            std::time::Instant::now(),
        );
        assert_eq!(
            advance(&m.identity, &m.hub, 0, Some(&replicas)).await,
            Some(Decision::Wait { waiting: 0 })
        );
        assert_eq!(m.identity.ca.phase(), Phase::Pending);
        // The timeout still activates it.
        m.f.clock.advance(PROPAGATION);
        assert_eq!(
            advance(&m.identity, &m.hub, 0, Some(&replicas)).await,
            Some(Decision::TimedOut { missing: vec![] })
        );
        assert!(m.new_root_signs());
    }

    #[test]
    fn a_resumed_rotation_counts_acks_only_after_the_reconnect_grace() {
        let pending = PendingRoot {
            fingerprint: "f".into(),
            root_pem: "pem".into(),
            since: 1_000,
            activate_by: 1_060,
        };
        let acked = |acked| crate::discovery::registry::KeyAck {
            proxy_id: "p".into(),
            address: "a".into(),
            acked,
        };
        let counts_from = 1_010 + RECONNECT_GRACE_SECONDS;
        let all = [acked(true)];
        assert_eq!(
            decide(&pending, 1_012, Some(&all), counts_from),
            Decision::Wait { waiting: 0 }
        );
        assert_eq!(
            decide(&pending, counts_from, Some(&all), counts_from),
            Decision::Propagated { proxies: 1 }
        );
        // Not published yet: wait, then the timeout decides.
        assert_eq!(
            decide(&pending, 1_059, None, 0),
            Decision::Wait { waiting: 0 }
        );
        assert_eq!(
            decide(&pending, 1_060, None, 0),
            Decision::TimedOut { missing: vec![] }
        );
        let some = [acked(true), acked(false)];
        assert_eq!(
            decide(&pending, 1_001, Some(&some), 0),
            Decision::Wait { waiting: 1 }
        );
        assert_eq!(
            decide(&pending, 1_060, Some(&some), 0),
            Decision::TimedOut {
                missing: vec!["p (a)".into()]
            }
        );
    }
}
