//! The identity metrics: certificates issued and refused (by a bounded `reason`).

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
        "Roots in the trust bundle (2 while a CA rotation retires the old one)"
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
