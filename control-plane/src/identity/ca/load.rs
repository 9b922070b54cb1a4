//! Start-up: the CA record read from where it lives, or created there (adopting another replica's when it wins the
//! race to create it), and checked.

use prost::Message;

use super::authority::{self, Authority};
use super::backend::{self, RecordBackend, WriteError};
use super::record::CaRecord;
use super::{Authorities, CaError, CaSettings};
use crate::identity::clock::Clock;
use crate::store::Store;

/// What one start-up attempt found.
pub(super) enum Attempt {
    Loaded(Authorities),
    /// Created by someone else meanwhile: read again.
    Again,
    /// The backend failed (a shared one is retried until the deadline).
    Unreachable(CaError),
}

pub(super) fn load_once(
    backend: &dyn RecordBackend,
    seed: Option<&Store>,
    settings: &CaSettings,
    clock: &dyn Clock,
) -> Result<Attempt, CaError> {
    let stored = match backend.read() {
        Ok(stored) => stored,
        Err(error) => return Ok(Attempt::Unreachable(error)),
    };
    let record = backend.describe();
    if let Some(stored) = stored {
        let authorities = decode(&stored)?;
        check_root(&authorities, settings)?;
        tracing::info!(root = %authorities.active().fingerprint, roots = authorities.list.len(), %record, "CA loaded");
        if let Some(pending) = authorities.pending() {
            tracing::info!(root = %pending.fingerprint, since = pending.record.pending_since, "CA rotation resumed: the new root is pending until proxies have it");
        }
        return Ok(Attempt::Loaded(authorities));
    }
    let seeded = match seed {
        Some(store) => backend::local_record(store)?,
        None => None,
    };
    let (mut authorities, origin) = match seeded {
        Some(bytes) => {
            let authorities = decode(&backend::Stored {
                bytes,
                version: String::new(),
            })?;
            check_root(&authorities, settings)?;
            (
                authorities,
                "the CA this replica's store held (kept on upgrade)",
            )
        }
        None => {
            let now = clock.now();
            let authority = match &settings.root {
                Some(root) => Authority::under_root(
                    &root.cert_pem,
                    &root.key_pem,
                    &settings.trust_domain,
                    now,
                )?,
                None => Authority::generate_root(&settings.trust_domain, now)?,
            };
            let origin = if settings.root.is_some() {
                "intermediate under the operator's root"
            } else {
                "self-signed root"
            };
            let authorities = Authorities {
                list: vec![authority],
                version: String::new(),
            };
            (authorities, origin)
        }
    };
    match backend.write(None, authorities.record().encode_to_vec()) {
        Ok(version) => authorities.version = version,
        Err(WriteError::Conflict) => return Ok(Attempt::Again),
        Err(WriteError::Failed(error)) => return Ok(Attempt::Unreachable(error)),
    }
    tracing::info!(root = %authorities.active().fingerprint, origin, %record, "CA created and stored");
    Ok(Attempt::Loaded(authorities))
}

/// The authorities of a stored record, checked: an active one first.
pub(super) fn decode(stored: &backend::Stored) -> Result<Authorities, CaError> {
    let record =
        CaRecord::decode(stored.bytes.as_slice()).map_err(|e| CaError::Corrupt(e.to_string()))?;
    let list = (record.authorities.into_iter())
        .map(Authority::from_record)
        .collect::<Result<Vec<_>, _>>()?;
    if list
        .first()
        .is_none_or(|a| a.record.pending || a.record.retiring)
    {
        return Err(CaError::Corrupt(
            "the stored CA has no active authority first".into(),
        ));
    }
    Ok(Authorities {
        list,
        version: stored.version.clone(),
    })
}

/// The operator root in the settings, if any, must be one of the stored CA's roots.
fn check_root(authorities: &Authorities, settings: &CaSettings) -> Result<(), CaError> {
    let Some(root) = &settings.root else {
        return Ok(());
    };
    let (der, _) = authority::first_certificate(&root.cert_pem, "SHOAL_CP_CA_CERT_FILE")?;
    let configured =
        crate::identity::hex(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
    if !authorities.list.iter().any(|a| a.fingerprint == configured) {
        return Err(CaError::RootMismatch {
            configured,
            stored: authorities.active().fingerprint.clone(),
        });
    }
    Ok(())
}
