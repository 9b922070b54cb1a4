use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::identity::clock::ManualClock;

fn tokens() -> (JoinTokens, Arc<ManualClock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb")).unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    (JoinTokens::new(store, clock.clone()), clock, dir)
}

fn id(ns: &str, sa: &str) -> WorkloadId {
    WorkloadId::new(ns, sa).unwrap()
}

#[test]
fn a_token_grants_its_identity_and_nothing_else() {
    let (tokens, _, _dir) = tokens();
    let new = tokens.create("shop", "web", None, 0).unwrap();
    assert_eq!(new.info.expires_at - new.info.created_at, 3600);
    assert!(new.token.starts_with(&format!("{}.", new.info.id)));
    assert_eq!(
        tokens.verify_blocking(&new.token, &id("shop", "web")),
        Ok(id("shop", "web"))
    );
    let refused = tokens
        .verify_blocking(&new.token, &id("shop", "admin"))
        .unwrap_err();
    assert_eq!(refused.reason(), "identity_not_granted");
    let status = refused.status(&Default::default());
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!(
            "join token {} grants spiffe://cluster.local/ns/shop/sa/web, not spiffe://cluster.local/ns/shop/sa/admin",
            new.info.id
        )
    );
    // A refused request does not count as a use.
    assert_eq!(tokens.list(None).unwrap()[0].uses, 1);
}

#[test]
fn expired_reused_revoked_unknown_and_malformed_tokens_are_refused() {
    let (tokens, clock, _dir) = tokens();
    let web = id("shop", "web");
    let once = tokens.create("shop", "web", None, 1).unwrap();
    assert!(tokens.verify_blocking(&once.token, &web).is_ok());
    let reused = tokens.verify_blocking(&once.token, &web).unwrap_err();
    assert_eq!(reused.reason(), "exhausted_credential", "{reused}");

    let revoked = tokens.create("shop", "web", None, 0).unwrap();
    assert!(tokens.revoke(&revoked.info.id).unwrap().revoked);
    let refused = tokens.verify_blocking(&revoked.token, &web).unwrap_err();
    assert_eq!(refused.reason(), "revoked_credential");

    let wrong_secret = format!("{}.{}", revoked.info.id, "00".repeat(32));
    assert_eq!(
        tokens
            .verify_blocking(&wrong_secret, &web)
            .unwrap_err()
            .reason(),
        "unknown_credential"
    );
    let unknown = format!("{}.{}", "ab".repeat(8), "00".repeat(32));
    assert_eq!(
        tokens.verify_blocking(&unknown, &web).unwrap_err().reason(),
        "unknown_credential"
    );
    assert_eq!(
        tokens
            .verify_blocking("garbage", &web)
            .unwrap_err()
            .reason(),
        "invalid_credential"
    );

    let short = tokens
        .create("shop", "web", Some(Duration::from_secs(60)), 0)
        .unwrap();
    clock.advance(Duration::from_secs(61));
    let expired = tokens.verify_blocking(&short.token, &web).unwrap_err();
    assert_eq!(expired.reason(), "expired_credential");
    assert!(expired.to_string().contains("expired 1s ago"), "{expired}");
    assert_eq!(
        expired.status(&Default::default()).code(),
        tonic::Code::Unauthenticated
    );
    assert!(
        tokens
            .list(None)
            .unwrap()
            .iter()
            .all(|t| t.id != short.info.id),
        "expired tokens are not listed"
    );
    clock.advance(Duration::from_secs(25 * 3600));
    assert_eq!(tokens.prune_expired().unwrap(), 3);
}

#[test]
fn bad_requests_name_the_field() {
    let (tokens, _, _dir) = tokens();
    let error = tokens
        .create("Shop", "web", None, 0)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("namespace \"Shop\""), "{error}");
    let error = tokens.create("shop", "", None, 0).unwrap_err().to_string();
    assert!(error.starts_with("service_account"), "{error}");
    let error = tokens
        .create("shop", "web", Some(Duration::from_secs(5)), 0)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("ttl_seconds 5"), "{error}");
    let error = tokens.revoke("0123456789abcdef").unwrap_err().to_string();
    assert!(error.contains("no join token with id"), "{error}");
}

#[test]
fn the_store_holds_only_a_hash_of_the_secret() {
    let (tokens, _, dir) = tokens();
    let new = tokens.create("shop", "web", None, 0).unwrap();
    let secret = new.token.split_once('.').unwrap().1.to_owned();
    drop(tokens);
    let bytes = std::fs::read(dir.path().join("store.redb")).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(new.info.id.as_bytes()),
        "the record is in the file"
    );
    assert!(
        !contains(secret.as_bytes()),
        "the secret is stored in clear"
    );
}
