//! The join tokens of Kubernetes mode: one record holding every token (the Secret `shoal-join-tokens`, through
//! the CA's [`RecordBackend`] seam), shared by the control-plane replicas.
//!
//! Every change is read-modify-write: read the record and its version, change the tokens, write against that
//! version; a conflict (another replica wrote first) re-reads and applies the change again to what is there
//! now. So two uses counted at once on two replicas both count, and a single-use token's one use is granted
//! to exactly one of them: the other re-reads, finds it used, and refuses it as exhausted.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use super::join_tokens::{TokenError, TokenRecord};
use crate::identity::ca::{RecordBackend, WriteError};

/// How many times a change is re-applied after conflicts before it gives up (each conflict means another
/// replica's change went through).
const ATTEMPTS: u32 = 20;

/// Every token, as the shared record holds them.
#[derive(Clone, PartialEq, Message)]
struct TokenSet {
    #[prost(message, repeated, tag = "1")]
    tokens: Vec<TokenRecord>,
}

/// The shared record of join tokens.
#[derive(Clone)]
pub(super) struct SharedTokens {
    backend: Arc<dyn RecordBackend>,
}

impl SharedTokens {
    pub(super) fn new(backend: Arc<dyn RecordBackend>) -> Self {
        Self { backend }
    }

    /// Every token (none when the record does not exist yet).
    pub(super) fn read(&self) -> Result<Vec<TokenRecord>, TokenError> {
        Ok(self.read_versioned()?.0)
    }

    fn read_versioned(&self) -> Result<(Vec<TokenRecord>, Option<String>), TokenError> {
        let stored = (self.backend.read()).map_err(|e| TokenError::Shared(e.to_string()))?;
        let Some(stored) = stored else {
            return Ok((Vec::new(), None));
        };
        let set = TokenSet::decode(stored.bytes.as_slice()).map_err(|e| TokenError::Corrupt {
            key: self.backend.describe(),
            reason: e.to_string(),
        })?;
        Ok((set.tokens, Some(stored.version)))
    }

    /// Applies `change` to the current tokens and writes them if it says they changed (`(true, _)`), against
    /// the version read; on a conflict, reads again and applies `change` again. An error from `change` is
    /// returned as is, nothing written.
    pub(super) fn update<T, E: From<TokenError>>(
        &self,
        mut change: impl FnMut(&mut Vec<TokenRecord>) -> Result<(bool, T), E>,
    ) -> Result<T, E> {
        for attempt in 0..ATTEMPTS {
            let (mut tokens, version) = self.read_versioned()?;
            let (changed, result) = change(&mut tokens)?;
            if !changed {
                return Ok(result);
            }
            let bytes = TokenSet { tokens }.encode_to_vec();
            match self.backend.write(version.as_deref(), bytes) {
                Ok(_) => return Ok(result),
                Err(WriteError::Conflict) => {
                    // Spread replicas that collided apart a little before they try again.
                    std::thread::sleep(Duration::from_millis(u64::from(attempt % 5) * 3));
                }
                Err(WriteError::Failed(error)) => {
                    return Err(TokenError::Shared(error.to_string()).into());
                }
            }
        }
        Err(TokenError::Shared(format!(
            "{} kept changing under this change ({ATTEMPTS} conflicts in a row); try again",
            self.backend.describe()
        ))
        .into())
    }
}

impl From<TokenError> for super::Refusal {
    fn from(error: TokenError) -> Self {
        Self::Unavailable(format!("cannot check the join token: {error}"))
    }
}

#[cfg(test)]
#[path = "shared_tokens_tests.rs"]
mod tests;
