//! Join tokens on a shared, versioned record (what the Secret is in Kubernetes mode): replicas see each other's
//! tokens, a conflict re-applies the change to the current record, and a single-use token is granted once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::identity::clock::ManualClock;
use crate::identity::credentials::{JoinTokens, Refusal, TokenError};
use crate::identity::spiffe::WorkloadId;

type Shared = crate::identity::ca::backend_fake::SharedRecord;

fn replicas() -> (Arc<Shared>, JoinTokens, JoinTokens) {
    let shared = Arc::new(Shared::default());
    let clock = Arc::new(ManualClock::starting_now());
    let replica = || JoinTokens::shared(shared.clone(), clock.clone());
    (shared.clone(), replica(), replica())
}

fn web() -> WorkloadId {
    WorkloadId::new("shop", "web").unwrap()
}

fn uses(tokens: &JoinTokens) -> u32 {
    tokens.list(None).unwrap()[0].uses
}

#[test]
fn a_token_created_on_one_replica_is_used_revoked_and_listed_on_the_others() {
    let (_, a, b) = replicas();
    let unlimited = a.create("shop", "web", None, 0).unwrap();
    let single = a.create("shop", "web", None, 1).unwrap();
    assert_eq!(b.list(None).unwrap().len(), 2);
    assert_eq!(b.verify_blocking(&single.token, &web()), Ok(web()));
    let refused = a.verify_blocking(&single.token, &web()).unwrap_err();
    assert!(matches!(refused, Refusal::Exhausted(_)), "{refused:?}");

    b.revoke(&unlimited.info.id).unwrap();
    let refused = a.verify_blocking(&unlimited.token, &web()).unwrap_err();
    assert!(matches!(refused, Refusal::Revoked(_)), "{refused:?}");
    let missing = b.revoke("0123456789abcdef").unwrap_err();
    assert!(matches!(missing, TokenError::NotFound(_)), "{missing:?}");
    let wrong = format!("{}.{}", single.info.id, "00".repeat(32));
    let refused = b.verify_blocking(&wrong, &web()).unwrap_err();
    assert!(matches!(refused, Refusal::Unknown(_)), "{refused:?}");
}

#[test]
fn a_single_use_consumed_by_another_replica_between_read_and_write_is_refused_after_the_conflict() {
    let (shared, a, b) = replicas();
    let token = a.create("shop", "web", None, 1).unwrap();
    let (other, other_token) = (b.clone(), token.token.clone());
    let granted_to_b = Arc::new(Mutex::new(None));
    let result = granted_to_b.clone();
    *shared.before_write.lock().unwrap() = Some(Box::new(move || {
        *result.lock().unwrap() = Some(other.verify_blocking(&other_token, &web()));
    }));

    let refused = a.verify_blocking(&token.token, &web()).unwrap_err();
    assert_eq!(granted_to_b.lock().unwrap().take(), Some(Ok(web())));
    assert!(matches!(refused, Refusal::Exhausted(_)), "{refused:?}");
    assert_eq!(shared.conflicts.load(Ordering::SeqCst), 1);
    assert_eq!(uses(&a), 1);
}

#[test]
fn uses_counted_at_once_on_two_replicas_both_count() {
    let (shared, a, b) = replicas();
    let token = a.create("shop", "web", None, 0).unwrap();
    let (other, other_token) = (b.clone(), token.token.clone());
    *shared.before_write.lock().unwrap() = Some(Box::new(move || {
        other.verify_blocking(&other_token, &web()).unwrap();
    }));
    assert_eq!(a.verify_blocking(&token.token, &web()), Ok(web()));
    assert_eq!(shared.conflicts.load(Ordering::SeqCst), 1);
    assert_eq!(uses(&b), 2);
}

#[test]
fn concurrent_uses_on_many_replicas_grant_exactly_the_allowed_number() {
    let shared = Arc::new(Shared::default());
    let clock = Arc::new(ManualClock::starting_now());
    let creator = JoinTokens::shared(shared.clone(), clock.clone());
    let token = creator.create("shop", "web", None, 3).unwrap().token;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let replica = JoinTokens::shared(shared.clone(), clock.clone());
            let token = token.clone();
            std::thread::spawn(move || replica.verify_blocking(&token, &web()))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        3,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(Refusal::Exhausted(_)))),
        "{results:?}"
    );
    assert_eq!(uses(&creator), 3);
}

#[test]
fn prune_removes_long_expired_tokens_from_the_shared_record() {
    let shared = Arc::new(Shared::default());
    let clock = Arc::new(ManualClock::starting_now());
    let tokens = JoinTokens::shared(shared.clone(), clock.clone());
    tokens
        .create("shop", "web", Some(std::time::Duration::from_secs(60)), 0)
        .unwrap();
    assert_eq!(tokens.prune_expired().unwrap(), 0);
    clock.advance(std::time::Duration::from_secs(60 + 24 * 3600));
    assert_eq!(tokens.prune_expired().unwrap(), 1);
    let versions = shared.versions.load(Ordering::SeqCst);
    assert_eq!(tokens.prune_expired().unwrap(), 0);
    assert_eq!(
        shared.versions.load(Ordering::SeqCst),
        versions,
        "nothing to prune writes nothing"
    );
}
