//! The CA on a shared, versioned record (what the Secret is in Kubernetes mode): start-up races, conflicts
//! re-read and re-evaluated, following another replica's changes, seeding from a store, an unreachable record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::identity::ca::{CaSettings, Csr, Phase, RootFiles};
use crate::identity::clock::ManualClock;
use crate::identity::spiffe::TrustDomain;

type Shared = super::super::backend_fake::SharedRecord;

fn settings() -> CaSettings {
    CaSettings {
        trust_domain: TrustDomain::parse("cluster.local").unwrap(),
        cert_ttl: Duration::from_secs(3600),
        root: None,
        propagation_timeout: Duration::from_secs(60),
    }
}

fn replica(shared: &Arc<Shared>, clock: &Arc<ManualClock>) -> Ca {
    Ca::load_shared(shared.clone(), None, settings(), clock.clone()).unwrap()
}

fn fingerprints(ca: &Ca) -> Vec<String> {
    ca.status()
        .roots
        .into_iter()
        .map(|r| r.fingerprint_sha256)
        .collect()
}

#[test]
fn the_second_replica_adopts_the_first_ones_root_even_when_it_lost_the_create_race() {
    let (shared, clock) = (
        Arc::new(Shared::default()),
        Arc::new(ManualClock::starting_now()),
    );
    let a = replica(&shared, &clock);
    // b read "no record" before a's create landed: its own create conflicts, and it reads a's.
    shared.hide_once.store(true, Ordering::SeqCst);
    let b = replica(&shared, &clock);
    assert_eq!(shared.conflicts.load(Ordering::SeqCst), 1);
    assert_eq!(fingerprints(&a), fingerprints(&b));
    assert_eq!(a.roots_pem().len(), 1);
}

#[test]
fn a_concurrent_rotation_is_refused_after_the_conflict_and_followers_install_each_step() {
    let (shared, clock) = (
        Arc::new(Shared::default()),
        Arc::new(ManualClock::starting_now()),
    );
    let (a, b) = (replica(&shared, &clock), replica(&shared, &clock));
    let mut bundle_b = b.bundle();
    bundle_b.borrow_and_update();

    a.rotate(None, None).unwrap();
    assert_eq!(a.phase(), Phase::Pending);
    // b has not followed yet: its rotation's write is against a stale version, conflicts, and the re-read
    // shows a's rotation in progress.
    let refused = b.rotate(None, None).unwrap_err();
    assert!(
        matches!(
            refused,
            CaError::RotationInProgress {
                phase: Phase::Pending,
                ..
            }
        ),
        "{refused}"
    );
    assert_eq!(shared.conflicts.load(Ordering::SeqCst), 1);
    assert_eq!(fingerprints(&a), fingerprints(&b), "b installed a's record");
    assert!(bundle_b.has_changed().unwrap(), "b's bundle watch fired");
    assert_eq!(b.roots_pem().len(), 2);

    // Nothing changed: a refresh installs nothing.
    assert!(!b.refresh().unwrap());
    // a activates; b follows and signs with the new root.
    let pending = a.pending().unwrap().fingerprint;
    assert!(a.activate(&pending).unwrap());
    assert!(b.refresh().unwrap());
    assert_eq!(b.phase(), Phase::Retiring);
    assert_eq!(fingerprints(&b)[0], pending);
    assert_eq!(fingerprints(&a), fingerprints(&b));
    // b activating again: nothing pending any more (the step is evaluated on what b installed).
    assert!(!b.activate(&pending).unwrap());
}

#[test]
fn a_step_on_a_stale_replica_is_decided_again_on_the_current_record() {
    let (shared, clock) = (
        Arc::new(Shared::default()),
        Arc::new(ManualClock::starting_now()),
    );
    let (a, b) = (replica(&shared, &clock), replica(&shared, &clock));
    a.rotate(None, None).unwrap();
    b.refresh().unwrap();
    let pending = a.pending().unwrap().fingerprint;
    assert!(a.activate(&pending).unwrap());
    // b still sees the root pending; its activation conflicts, and the re-read finds it active: no write.
    let writes = shared.versions.load(Ordering::SeqCst);
    assert!(!b.activate(&pending).unwrap());
    assert_eq!(shared.versions.load(Ordering::SeqCst), writes);
    assert_eq!(b.phase(), Phase::Retiring);
}

#[test]
fn a_missing_shared_record_is_seeded_from_the_store_so_the_root_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb")).unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let alone = Ca::load_or_create(store.clone(), settings(), clock.clone()).unwrap();
    let shared = Arc::new(Shared::default());
    let upgraded = Ca::load_shared(shared.clone(), Some(store), settings(), clock.clone()).unwrap();
    assert_eq!(fingerprints(&upgraded), fingerprints(&alone));
    let other = replica(&shared, &clock);
    assert_eq!(fingerprints(&other), fingerprints(&alone));
}

#[test]
fn an_unreachable_shared_record_fails_start_up_naming_it() {
    let shared = Arc::new(Shared::default());
    shared.down.store(true, Ordering::SeqCst);
    let clock = Arc::new(ManualClock::starting_now());
    let error = Ca::load_shared(shared, None, settings(), clock).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, CaError::Unavailable { .. }), "{text}");
    assert!(
        text.contains("the test record") && text.contains("connection refused"),
        "{text}"
    );
}

#[test]
fn replicas_with_an_operator_root_share_one_intermediate_and_another_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (root, fingerprint) = super::super::tests::operator_root(dir.path(), 0o600);
    let other_dir = tempfile::tempdir().unwrap();
    let (other_root, other_fingerprint) =
        super::super::tests::operator_root(other_dir.path(), 0o600);
    let (shared, clock) = (
        Arc::new(Shared::default()),
        Arc::new(ManualClock::starting_now()),
    );
    let with = |root: &RootFiles| CaSettings {
        root: Some(root.clone()),
        ..settings()
    };
    let a = Ca::load_shared(shared.clone(), None, with(&root), clock.clone()).unwrap();
    let b = Ca::load_shared(shared.clone(), None, with(&root), clock.clone()).unwrap();
    assert_eq!(fingerprints(&a), std::slice::from_ref(&fingerprint));
    // One intermediate, made by the first replica: both sign with it.
    let csr = || {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        Csr::from_pem(&pem).unwrap()
    };
    let id = crate::identity::spiffe::WorkloadId::new("shop", "web").unwrap();
    let (from_a, from_b) = (
        a.issue(&csr(), &id, false).unwrap(),
        b.issue(&csr(), &id, false).unwrap(),
    );
    assert_eq!(from_a.chain_pem[1], from_b.chain_pem[1]);
    // A replica configured with another root: refused, naming both.
    let error = Ca::load_shared(shared, None, with(&other_root), clock).unwrap_err();
    assert!(
        matches!(&error, CaError::RootMismatch { configured, stored } if *configured == other_fingerprint && *stored == fingerprint),
        "{error}"
    );
}
