//! Root rotation in three steps, each stored before it takes effect (the store: fsynced; the shared Secret: with
//! optimistic concurrency, a step re-evaluated after a conflict, `Ca::run_step`):
//!
//! 1. [`Ca::rotate`]: the new authority joins the trust bundle **PENDING**: proxies receive it and trust it, but
//!    the current root keeps signing, so no proxy meets a certificate from a root it has not received yet;
//! 2. [`Ca::activate`]: the new authority becomes **ACTIVE** and signs; the old root becomes **RETIRING** until
//!    every certificate it signed has expired. The upkeep task decides when (`identity::propagation`): once
//!    every connected proxy has acknowledged a bundle with the new root, or at the propagation timeout;
//! 3. [`Ca::retire_due`]: the retiring root leaves the bundle at its `retire_at`.
//!
//! One rotation at a time: a second one is refused while a root is pending or retiring.

use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use prost::Message;
use shoal_proto::v1;

use super::authority::Authority;
use super::record::AuthorityRecord;
use super::{Authorities, Ca, CaError, RootFiles, WriteError};

/// Shortest and longest propagation timeouts accepted (`SHOAL_CP_CA_PROPAGATION_TIMEOUT`,
/// `shoalctl ca rotate --activate-after`).
pub const PROPAGATION_TIMEOUT_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

/// Writes tried per step before it gives up ([`CaError::Contended`]): each conflict means another replica's
/// step landed, and steps are rare.
const CONFLICT_ATTEMPTS: usize = 5;

/// What a step decided.
pub(super) enum Step<T> {
    /// Nothing to write.
    Done(T),
    /// Write these authorities, then return the value.
    Write(Authorities, T),
}

/// Where the CA stands in a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No rotation: one root, active.
    Idle,
    /// A new root is in the bundle but does not sign yet.
    Pending,
    /// The new root signs; the old one is still trusted until its certificates have expired.
    Retiring,
}

impl Phase {
    /// Every phase (the values of the `phase` metric label).
    pub const ALL: [Phase; 3] = [Phase::Idle, Phase::Pending, Phase::Retiring];

    /// Lowercase name, as the metric label carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Pending => "pending",
            Phase::Retiring => "retiring",
        }
    }
}

/// The pending root of a rotation in its first phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRoot {
    /// SHA-256 of the root's DER, lowercase hex.
    pub fingerprint: String,
    /// The root certificate, PEM, as the trust bundle carries it.
    pub root_pem: String,
    /// When the rotation started, Unix seconds.
    pub since: u64,
    /// When it becomes active at the latest (the propagation timeout), Unix seconds.
    pub activate_by: u64,
}

/// The text of [`CaError::RotationInProgress`].
pub(super) fn describe_in_progress(phase: &Phase, fingerprint: &str, until: &u64) -> String {
    let (until, at) = (*until, rfc3339(*until));
    match phase {
        Phase::Pending => format!(
            "root {fingerprint} is PENDING (trusted, not signing yet) until every connected proxy has it, at the latest until {until} (Unix seconds, {at}); then the old root retires for one certificate lifetime; rotate again after that"
        ),
        _ => format!(
            "root {fingerprint} is RETIRING until {until} (Unix seconds, {at}); rotate again after that"
        ),
    }
}

fn rfc3339(unix: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(time).to_string()
}

impl Ca {
    /// The rotation phase.
    pub fn phase(&self) -> Phase {
        let current = self.snapshot();
        if current.pending().is_some() {
            Phase::Pending
        } else if current.retiring().is_some() {
            Phase::Retiring
        } else {
            Phase::Idle
        }
    }

    /// Starts a rotation: a new authority (generated, or under `root`) joins the trust bundle as pending, while
    /// the current one keeps signing. `activate_after` overrides the propagation timeout for this rotation.
    /// Stored before it takes effect. Blocks on the store.
    pub fn rotate(
        &self,
        root: Option<RootFiles>,
        activate_after: Option<Duration>,
    ) -> Result<v1::CaStatusResponse, CaError> {
        if let Some(after) = activate_after {
            let (min, max) = PROPAGATION_TIMEOUT_BOUNDS;
            if after < min || after > max {
                return Err(CaError::Invalid(format!(
                    "activate_after_seconds: {} is out of range: give 1 to 86400 seconds, or 0 for the control plane's propagation timeout",
                    after.as_secs()
                )));
            }
        }
        let td = &self.settings.trust_domain;
        // Made once, on the first evaluation that gets past the checks (a re-evaluation after a conflict reuses it).
        let mut made: Option<(Authority, u64)> = None;
        let next = self.run_step(|current| {
            if let Some(pending) = current.pending() {
                return Err(CaError::RotationInProgress {
                    phase: Phase::Pending,
                    fingerprint: pending.fingerprint.clone(),
                    until: self.activate_by(pending),
                });
            }
            if let Some(retiring) = current.retiring() {
                return Err(CaError::RotationInProgress {
                    phase: Phase::Retiring,
                    fingerprint: retiring.fingerprint.clone(),
                    until: retiring.record.retire_at,
                });
            }
            if made.is_none() {
                let now = self.clock.now();
                let new = match &root {
                    Some(root) => Authority::under_root(&root.cert_pem, &root.key_pem, td, now)?,
                    None => Authority::generate_root(td, now)?,
                };
                made = Some((new, crate::identity::clock::unix_seconds(now)));
            }
            let Some((new, since)) = &made else {
                return Err(CaError::Generate("the new authority was not made".into()));
            };
            if current
                .list
                .iter()
                .any(|a| a.fingerprint == new.fingerprint)
            {
                return Err(CaError::Invalid(format!(
                    "root {} is already in the trust bundle; rotate to a different root",
                    new.fingerprint
                )));
            }
            let pending = Authority::from_record(AuthorityRecord {
                pending: true,
                pending_since: *since,
                activate_after: activate_after.map_or(0, |d| d.as_secs()),
                ..new.record.clone()
            })?;
            let next = Authorities {
                list: vec![
                    Authority::from_record(current.active().record.clone())?,
                    pending,
                ],
                version: String::new(),
            };
            let logged = (
                next.list[1].fingerprint.clone(),
                next.list[0].fingerprint.clone(),
                self.activate_by(&next.list[1]),
            );
            Ok(Step::Write(next, logged))
        })?;
        let (new_root, signing_root, activate_by) = next;
        tracing::info!(%new_root, %signing_root, activate_by, "CA rotation started: the new root is pending (trusted, not signing) until every connected proxy has it");
        Ok(self.status())
    }

    /// The pending root, if a rotation is in its first phase.
    pub fn pending(&self) -> Option<PendingRoot> {
        let current = self.snapshot();
        current.pending().map(|a| PendingRoot {
            fingerprint: a.fingerprint.clone(),
            root_pem: a.record.root_pem.clone(),
            since: a.record.pending_since,
            activate_by: self.activate_by(a),
        })
    }

    /// Makes the pending root `fingerprint` active (it signs from now on) and the current one retiring, until
    /// every certificate it may have signed has expired. Stored first. Returns false when that root is not
    /// pending (any more). Blocks on the store.
    pub fn activate(&self, fingerprint: &str) -> Result<bool, CaError> {
        let activated = self.run_step(|current| {
            let Some(pending) = current.pending().filter(|a| a.fingerprint == fingerprint) else {
                return Ok(Step::Done(None));
            };
            let old = current.active();
            // The longest a certificate signed by the old authority can still be valid: issued just now, with
            // today's lifetime (never past its signer's expiry).
            let now = self.clock.unix_seconds();
            let retire_at = (now + self.settings.cert_ttl.as_secs()).min(old.signer_not_after);
            let next = Authorities {
                list: vec![
                    Authority::from_record(AuthorityRecord {
                        pending: false,
                        pending_since: 0,
                        activate_after: 0,
                        ..pending.record.clone()
                    })?,
                    Authority::from_record(AuthorityRecord {
                        retiring: true,
                        retire_at,
                        ..old.record.clone()
                    })?,
                ],
                version: String::new(),
            };
            let logged = (
                next.list[0].fingerprint.clone(),
                next.list[1].fingerprint.clone(),
                retire_at,
            );
            Ok(Step::Write(next, Some(logged)))
        })?;
        let Some((active_root, retiring_root, retire_at)) = activated else {
            return Ok(false);
        };
        tracing::info!(%active_root, %retiring_root, retire_at, "CA root activated: new certificates are signed by it");
        Ok(true)
    }

    /// Drops retiring roots whose time has come (stored first); returns whether the bundle changed. Blocks on
    /// the store when it does.
    pub fn retire_due(&self) -> Result<bool, CaError> {
        let now = self.clock.unix_seconds();
        let due = |a: &Authority| a.record.retiring && a.record.retire_at <= now;
        let retired = self.run_step(|current| {
            if !current.list.iter().any(due) {
                return Ok(Step::Done(Vec::new()));
            }
            let kept = (current.list.iter())
                .filter(|a| !due(a))
                .map(|a| Authority::from_record(a.record.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let retired = (current.list.iter())
                .filter(|a| due(a))
                .map(|a| a.fingerprint.clone())
                .collect::<Vec<_>>();
            let next = Authorities {
                list: kept,
                version: String::new(),
            };
            Ok(Step::Write(next, retired))
        })?;
        for root in &retired {
            tracing::info!(%root, "retired CA root removed from the trust bundle");
        }
        Ok(!retired.is_empty())
    }

    /// When the next retiring root is due, Unix seconds.
    pub fn next_retirement(&self) -> Option<u64> {
        let current = self.snapshot();
        (current.list.iter())
            .filter(|a| a.record.retiring)
            .map(|a| a.record.retire_at)
            .min()
    }

    /// When the pending authority `a` becomes active at the latest: the rotation's start plus its own timeout,
    /// or the setting in force now (whole seconds, rounded up).
    pub(super) fn activate_by(&self, a: &Authority) -> u64 {
        let timeout = if a.record.activate_after > 0 {
            a.record.activate_after
        } else {
            let timeout = self.settings.propagation_timeout;
            timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)
        };
        a.record.pending_since.saturating_add(timeout)
    }

    /// Evaluates a step on the authorities installed and writes its result against their version (with the
    /// steps' lock held throughout). When another replica wrote first, installs what it wrote and evaluates
    /// again: the step then sees, e.g., the rotation that replica started.
    fn run_step<T>(
        &self,
        mut evaluate: impl FnMut(&Authorities) -> Result<Step<T>, CaError>,
    ) -> Result<T, CaError> {
        let _step = self.step();
        for _ in 0..CONFLICT_ATTEMPTS {
            let current = self.snapshot();
            let (mut next, value) = match evaluate(&current)? {
                Step::Done(value) => return Ok(value),
                Step::Write(next, value) => (next, value),
            };
            match self
                .backend
                .write(Some(&current.version), next.record().encode_to_vec())
            {
                Ok(version) => {
                    next.version = version;
                    self.install(next);
                    return Ok(value);
                }
                Err(WriteError::Conflict) => {
                    tracing::info!(record = %self.backend.describe(), "the CA record changed under this step (another replica wrote it): reading it and deciding again");
                    self.reload()?;
                }
                Err(WriteError::Failed(error)) => return Err(error),
            }
        }
        Err(CaError::Contended(self.backend.describe()))
    }

    /// Installs `next` as the authorities in effect; the bundle watch fires when their roots changed.
    pub(super) fn install(&self, next: Authorities) {
        let roots = next.roots_pem();
        *self
            .authorities
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        self.bundle.send_if_modified(|current| {
            let changed = *current != roots;
            *current = roots;
            changed
        });
    }

    pub(super) fn step(&self) -> MutexGuard<'_, ()> {
        self.steps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
