//! Join tokens: the credential of workloads outside Kubernetes. `shoalctl token create` makes one bound to
//! a namespace and service account; the proxy presents it to `Certify`.
//!
//! A token is `<id>.<secret>`: the id (8 random bytes, hex) is public (listing, revoking, finding a leaked
//! token in logs); the secret (32 random bytes, hex) is shown once, at creation. The store keeps only
//! HMAC-SHA256 of the secret under a fixed, public domain-separation key — a plain keyed hash, not a
//! secret-dependent MAC — and compares with `ring::hmac::verify`, which runs in constant time. Checking and
//! counting a use happen in one store transaction, so a single-use token cannot be used twice, even by two
//! concurrent calls or across a crash.
//!
//! In Kubernetes mode the records live instead in one record shared by every control-plane replica (the Secret
//! `shoal-join-tokens`, [`super::shared_tokens`]): every change — create, revoke, prune, a counted use — is a
//! read-modify-write against the version read, retried on a conflict, so a use counted on two replicas at
//! once counts twice and a single-use token is accepted once across all of them.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::shared_tokens::SharedTokens;
use super::{CredentialVerifier, Granted, Refusal};
use crate::identity::ca::RecordBackend;
use crate::identity::clock::Clock;
use crate::identity::hex;
use crate::identity::spiffe::WorkloadId;
use crate::store::{self, SecretWrite, Store};

/// Key prefix of token records in the store's identity table.
const PREFIX: &str = "token/";
/// Domain separation for the stored hash; changing it invalidates every stored token.
const HASH_KEY: &[u8] = b"shoal join token v1";
/// Lifetime of a token created with no TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Shortest and longest token lifetimes accepted.
pub const TTL_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(30 * 24 * 3600));
/// How long an expired token's record is kept, so that using it says "expired" rather than "unknown".
const KEEP_EXPIRED: u64 = 24 * 3600;

/// What the store keeps of a token.
#[derive(Clone, PartialEq, Message)]
pub(super) struct TokenRecord {
    #[prost(string, tag = "1")]
    pub(super) id: String,
    /// HMAC-SHA256(HASH_KEY, secret).
    #[prost(bytes = "vec", tag = "2")]
    hash: Vec<u8>,
    #[prost(string, tag = "3")]
    namespace: String,
    #[prost(string, tag = "4")]
    service_account: String,
    #[prost(uint64, tag = "5")]
    created_at: u64,
    #[prost(uint64, tag = "6")]
    pub(super) expires_at: u64,
    #[prost(uint32, tag = "7")]
    max_uses: u32,
    #[prost(uint32, tag = "8")]
    uses: u32,
    #[prost(bool, tag = "9")]
    revoked: bool,
}

/// A token as listed: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenInfo {
    /// Public id, the part of the token before the `.`.
    pub id: String,
    /// The identity the token grants.
    pub identity: WorkloadId,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Uses allowed; 0 is unlimited until expiry.
    pub max_uses: u32,
    /// Uses so far.
    pub uses: u32,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A token just created: the only time its secret exists outside the caller's hands.
pub struct NewJoinToken {
    /// `<id>.<secret>`.
    pub token: String,
    /// Its details.
    pub info: JoinTokenInfo,
}

impl std::fmt::Debug for NewJoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewJoinToken")
            .field("token", &"[secret]")
            .field("info", &self.info)
            .finish()
    }
}

/// Why a token operation (create, revoke, list) failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A request field is invalid; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// No token has this id.
    #[error("no join token with id {0:?} (shoalctl token list shows them)")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The shared record (Kubernetes mode: the Secret) could not be read or written.
    #[error("{0}")]
    Shared(String),
    /// A stored record cannot be read.
    #[error("join token record {key}: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The join tokens, in the store or in a shared record. Cheap to clone. Every method blocks on the store or
/// the shared record: call them from blocking threads.
#[derive(Clone)]
pub struct JoinTokens {
    storage: Storage,
    clock: Arc<dyn Clock>,
    random: SystemRandom,
}

/// Where the token records are.
#[derive(Clone)]
enum Storage {
    /// Standalone: one store record per token (`token/<id>`).
    Store(Store),
    /// Kubernetes mode: one record holding them all, shared by the replicas.
    Shared(SharedTokens),
}

impl JoinTokens {
    /// Join tokens kept in `store`, timed by `clock`.
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            storage: Storage::Store(store),
            clock,
            random: SystemRandom::new(),
        }
    }

    /// Join tokens kept in the shared record `backend` (Kubernetes mode: the Secret `shoal-join-tokens`),
    /// timed by `clock`.
    pub fn shared(backend: Arc<dyn RecordBackend>, clock: Arc<dyn Clock>) -> Self {
        Self {
            storage: Storage::Shared(SharedTokens::new(backend)),
            clock,
            random: SystemRandom::new(),
        }
    }

    /// Creates a token granting `namespace`/`service_account` for `ttl` (default [`DEFAULT_TTL`]) and
    /// `max_uses` uses (0: unlimited); on disk before it returns.
    pub fn create(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Option<Duration>,
        max_uses: u32,
    ) -> Result<NewJoinToken, TokenError> {
        let identity = WorkloadId::new(namespace, service_account).map_err(TokenError::Invalid)?;
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        let (min, max) = TTL_BOUNDS;
        if ttl < min || ttl > max {
            return Err(TokenError::Invalid(format!(
                "ttl_seconds {}: expected between {} and {} seconds (1 minute to 30 days)",
                ttl.as_secs(),
                min.as_secs(),
                max.as_secs()
            )));
        }
        let (mut id, mut secret) = ([0u8; 8], [0u8; 32]);
        let filled = self.random.fill(&mut id).and(self.random.fill(&mut secret));
        filled.map_err(|_| TokenError::Invalid("the system random generator failed".into()))?;
        let (id, secret) = (hex(&id), hex(&secret));
        let now = self.clock.unix_seconds();
        let record = TokenRecord {
            id: id.clone(),
            hash: hash(&secret),
            namespace: identity.namespace.clone(),
            service_account: identity.service_account.clone(),
            created_at: now,
            expires_at: now + ttl.as_secs(),
            max_uses,
            uses: 0,
            revoked: false,
        };
        match &self.storage {
            Storage::Store(store) => {
                store.secret_put(&format!("{PREFIX}{id}"), record.encode_to_vec())?
            }
            Storage::Shared(shared) => shared.update(|tokens| {
                tokens.push(record.clone());
                Ok::<_, TokenError>((true, ()))
            })?,
        }
        Ok(NewJoinToken {
            token: format!("{id}.{secret}"),
            info: info(&record)?,
        })
    }

    /// Tokens that have not expired, in `namespace` if given, ordered by creation time.
    pub fn list(&self, namespace: Option<&str>) -> Result<Vec<JoinTokenInfo>, TokenError> {
        let now = self.clock.unix_seconds();
        let mut tokens = Vec::new();
        for record in self.records()? {
            if record.expires_at <= now || namespace.is_some_and(|ns| ns != record.namespace) {
                continue;
            }
            tokens.push(info(&record)?);
        }
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    /// Revokes a token: it can no longer be used. Revoking twice is not an error.
    pub fn revoke(&self, id: &str) -> Result<JoinTokenInfo, TokenError> {
        if id.is_empty() {
            return Err(TokenError::Invalid(
                "id: required: the token's id (shoalctl token list shows them)".into(),
            ));
        }
        let key = format!("{PREFIX}{id}");
        let store = match &self.storage {
            Storage::Store(store) => store,
            Storage::Shared(shared) => {
                return shared.update(|tokens| {
                    let Some(record) = tokens.iter_mut().find(|t| t.id == id) else {
                        return Err(TokenError::NotFound(id.to_owned()));
                    };
                    let changed = !record.revoked;
                    record.revoked = true;
                    Ok((changed, info(record)?))
                });
            }
        };
        store.secret_update(&key, |current| {
            let Some(bytes) = current else {
                return Err(TokenError::NotFound(id.to_owned()));
            };
            let mut record = decode(&key, bytes)?;
            record.revoked = true;
            let info = info(&record)?;
            Ok((SecretWrite::Put(record.encode_to_vec()), info))
        })
    }

    /// Every token record.
    fn records(&self) -> Result<Vec<TokenRecord>, TokenError> {
        match &self.storage {
            Storage::Store(store) => (store.secret_list(PREFIX)?.iter())
                .map(|(key, bytes)| decode(key, bytes))
                .collect(),
            Storage::Shared(shared) => shared.read(),
        }
    }

    /// Deletes the records of tokens expired for more than a day; returns how many.
    pub fn prune_expired(&self) -> Result<usize, TokenError> {
        let now = self.clock.unix_seconds();
        let store = match &self.storage {
            Storage::Store(store) => store,
            Storage::Shared(shared) => {
                return shared.update(|tokens| {
                    let before = tokens.len();
                    tokens.retain(|t| t.expires_at + KEEP_EXPIRED > now);
                    let pruned = before - tokens.len();
                    Ok::<_, TokenError>((pruned > 0, pruned))
                });
            }
        };
        let mut pruned = 0;
        for (key, bytes) in store.secret_list(PREFIX)? {
            let record = decode(&key, &bytes)?;
            if record.expires_at + KEEP_EXPIRED <= now {
                store.secret_update(&key, |_| Ok::<_, TokenError>((SecretWrite::Remove, ())))?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Checks `token` and, when it grants `requested`, counts one use durably.
    pub fn verify_blocking(
        &self,
        token: &str,
        requested: &WorkloadId,
    ) -> Result<WorkloadId, Refusal> {
        let Some((id, secret)) = token.trim().split_once('.') else {
            return Err(Refusal::Malformed(
                "join token is malformed: expected `<id>.<secret>` as printed by `shoalctl token create`"
                    .into(),
            ));
        };
        let unknown =
            || Refusal::Unknown(format!("join token {id} is unknown or its secret is wrong"));
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let now = self.clock.unix_seconds();
        let key = format!("{PREFIX}{id}");
        let store = match &self.storage {
            Storage::Store(store) => store,
            Storage::Shared(shared) => {
                return shared.update(|tokens| {
                    let Some(record) = tokens.iter_mut().find(|t| t.id == id) else {
                        return Err(unknown());
                    };
                    consume(record, secret, now, requested).map(|granted| (true, granted))
                });
            }
        };
        store.secret_update(&key, |current| {
            let record = current.map(|bytes| decode(&key, bytes)).transpose();
            let record = record.map_err(|e| Refusal::Unavailable(e.to_string()))?;
            let Some(mut record) = record else {
                return Err(unknown());
            };
            let granted = consume(&mut record, secret, now, requested)?;
            Ok((SecretWrite::Put(record.encode_to_vec()), granted))
        })
    }
}

#[tonic::async_trait]
impl CredentialVerifier for JoinTokens {
    async fn verify(&self, credential: &str, requested: &WorkloadId) -> Result<Granted, Refusal> {
        let (tokens, credential, requested) =
            (self.clone(), credential.to_owned(), requested.clone());
        // The check commits a use to disk (fsync): off the async workers.
        tokio::task::spawn_blocking(move || tokens.verify_blocking(&credential, &requested))
            .await
            .map_err(|e| Refusal::Unavailable(format!("join token check failed: {e}")))?
            .map(Granted::identity)
    }
}

impl From<store::Error> for Refusal {
    fn from(error: store::Error) -> Self {
        Self::Unavailable(format!("cannot record the join token's use: {error}"))
    }
}

/// Checks `secret` against `record` and, when it grants `requested`, counts one use in `record` (the caller
/// writes it). Refusals leave `record` unchanged.
fn consume(
    record: &mut TokenRecord,
    secret: &str,
    now: u64,
    requested: &WorkloadId,
) -> Result<WorkloadId, Refusal> {
    let id = record.id.clone();
    let unknown = || Refusal::Unknown(format!("join token {id} is unknown or its secret is wrong"));
    let key = hmac::Key::new(hmac::HMAC_SHA256, HASH_KEY);
    if hmac::verify(&key, secret.as_bytes(), &record.hash).is_err() {
        return Err(unknown());
    }
    if record.revoked {
        return Err(Refusal::Revoked(format!("join token {id} was revoked")));
    }
    if record.expires_at <= now {
        return Err(Refusal::Expired(format!(
            "join token {id} expired {}s ago; create a new one with `shoalctl token create`",
            now - record.expires_at
        )));
    }
    if record.max_uses > 0 && record.uses >= record.max_uses {
        return Err(Refusal::Exhausted(format!(
            "join token {id} was already used {} time(s), its limit",
            record.uses
        )));
    }
    let granted = WorkloadId {
        namespace: record.namespace.clone(),
        service_account: record.service_account.clone(),
    };
    if granted != *requested {
        return Err(Refusal::NotGranted {
            what: format!("join token {id}"),
            granted,
            requested: requested.clone(),
        });
    }
    record.uses += 1;
    Ok(granted)
}

fn hash(secret: &str) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, HASH_KEY);
    hmac::sign(&key, secret.as_bytes()).as_ref().to_vec()
}

fn decode(key: &str, bytes: &[u8]) -> Result<TokenRecord, TokenError> {
    TokenRecord::decode(bytes).map_err(|e| TokenError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn info(record: &TokenRecord) -> Result<JoinTokenInfo, TokenError> {
    Ok(JoinTokenInfo {
        id: record.id.clone(),
        identity: WorkloadId {
            namespace: record.namespace.clone(),
            service_account: record.service_account.clone(),
        },
        created_at: record.created_at,
        expires_at: record.expires_at,
        max_uses: record.max_uses,
        uses: record.uses,
        revoked: record.revoked,
    })
}

#[cfg(test)]
#[path = "join_tokens_tests.rs"]
mod tests;
