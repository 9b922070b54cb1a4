//! The CA as stored in the identity table (`ca/state`): every root in the trust bundle and the key that signs
//! under it. Prost-encoded like the rest of the store; `Debug` is written by hand so a key never reaches a log.

use prost::Message;

/// Key of the CA record in the identity table.
pub(super) const KEY: &str = "ca/state";

/// The whole CA: the active authority first, then any retiring one.
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
