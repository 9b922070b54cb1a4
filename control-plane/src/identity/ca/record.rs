//! The CA as stored in the identity table (`ca/state`): every root in the trust bundle and the key that signs
//! under it. Prost-encoded like the rest of the store; `Debug` is written by hand so a key never reaches a log.
//!
//! Fields are only ever added, with new tags and defaults that mean what older records meant (a record written
//! before the pending phase existed decodes with `pending: false`: nothing pending).

use prost::Message;

/// Key of the CA record in the identity table.
pub(super) const KEY: &str = "ca/state";

/// The whole CA: the active authority first, then any pending or retiring one.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub(super) struct CaRecord {
    #[prost(message, repeated, tag = "1")]
    pub authorities: Vec<AuthorityRecord>,
}

/// One root and its signer.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub(super) struct AuthorityRecord {
    /// The root certificate (the trust anchor proxies get), PEM.
    #[prost(string, tag = "1")]
    pub root_pem: String,
    /// The intermediate that signs workload certificates, PEM; empty when the root signs them itself.
    #[prost(string, tag = "2")]
    pub intermediate_pem: String,
    /// PKCS#8 PEM of the signing key (the root's, or the intermediate's). Secret.
    #[prost(string, tag = "3")]
    pub signing_key_pem: String,
    /// Whether this root is retiring (trusted, no longer signing).
    #[prost(bool, tag = "4")]
    pub retiring: bool,
    /// When a retiring root leaves the bundle, Unix seconds.
    #[prost(uint64, tag = "5")]
    pub retire_at: u64,
    /// Whether this root is pending (trusted, not signing yet: a rotation's first phase).
    #[prost(bool, tag = "6")]
    pub pending: bool,
    /// When the rotation that added this pending root started, Unix seconds: its propagation timeout runs from
    /// here, across restarts.
    #[prost(uint64, tag = "7")]
    pub pending_since: u64,
    /// This rotation's own propagation timeout, seconds (`shoalctl ca rotate --activate-after`); 0: the
    /// control plane's setting.
    #[prost(uint64, tag = "8")]
    pub activate_after: u64,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord")
            .field("authorities", &self.authorities)
            .finish()
    }
}

impl std::fmt::Debug for AuthorityRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityRecord")
            .field("root_pem", &self.root_pem)
            .field("intermediate_pem", &self.intermediate_pem)
            .field("signing_key_pem", &"[secret]")
            .field("retiring", &self.retiring)
            .field("retire_at", &self.retire_at)
            .field("pending", &self.pending)
            .field("pending_since", &self.pending_since)
            .field("activate_after", &self.activate_after)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_key() {
        let record = CaRecord {
            authorities: vec![AuthorityRecord {
                signing_key_pem: "-----BEGIN PRIVATE KEY-----SECRET".into(),
                ..Default::default()
            }],
        };
        let printed = format!("{record:?}");
        assert!(!printed.contains("SECRET"), "{printed}");
        assert!(printed.contains("[secret]"));
    }
}
