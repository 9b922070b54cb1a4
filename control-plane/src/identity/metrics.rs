//! The identity metrics: certificates issued and refused (by a bounded `reason`), and the CA rotation's
//! progress (bounded `phase` and `reason` labels).

/// Describes the identity metrics (call once the recorder is installed).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "shoal_cp_certificates_issued_total",
        "Workload certificates the CA signed (Identity.Certify)"
    );
    describe_counter!(
        "shoal_cp_certificates_refused_total",
        "Certify requests refused, by reason: invalid_request, invalid_csr, missing_credential, invalid_credential, unknown_credential, expired_credential, exhausted_credential, revoked_credential, identity_not_granted, verifier_unavailable"
    );
    describe_gauge!(
        "shoal_cp_ca_roots",
        "Roots in the trust bundle (2 during a CA rotation)"
    );
    describe_gauge!(
        "shoal_cp_ca_rotation_phase",
        "1 for the CA rotation phase in effect, 0 for the others: idle, pending (new root trusted, not signing), retiring (old root trusted, not signing)"
    );
    describe_gauge!(
        "shoal_cp_ca_pending_proxies",
        "Connected proxies that have not yet acknowledged the trust bundle with a pending CA root (0 when none is pending)"
    );
    describe_gauge!(
        "shoal_cp_ca_pending_replicas",
        "Kubernetes mode, on the Lease holder: other live control-plane replicas that have not reported every proxy connected to them has a pending CA root (0 when none is pending)"
    );
    describe_counter!(
        "shoal_cp_ca_activations_total",
        "Pending CA roots made active, by reason: propagated (every connected proxy had it), timeout (SHOAL_CP_CA_PROPAGATION_TIMEOUT passed first)"
    );
}

pub(super) fn issued() {
    metrics::counter!("shoal_cp_certificates_issued_total").increment(1);
}

pub(super) fn refused(reason: &'static str) {
    metrics::counter!("shoal_cp_certificates_refused_total", "reason" => reason).increment(1);
}

pub(super) fn roots(count: usize) {
    metrics::gauge!("shoal_cp_ca_roots").set(count as f64);
}

pub(super) fn phase(current: super::ca::Phase) {
    for phase in super::ca::Phase::ALL {
        let value = if phase == current { 1.0 } else { 0.0 };
        metrics::gauge!("shoal_cp_ca_rotation_phase", "phase" => phase.as_str()).set(value);
    }
}

pub(super) fn pending_proxies(count: usize) {
    metrics::gauge!("shoal_cp_ca_pending_proxies").set(count as f64);
}

pub(super) fn pending_replicas(count: usize) {
    metrics::gauge!("shoal_cp_ca_pending_replicas").set(count as f64);
}

pub(super) fn activated(reason: &'static str) {
    metrics::counter!("shoal_cp_ca_activations_total", "reason" => reason).increment(1);
}
