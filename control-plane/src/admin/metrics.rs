//! The admin API's metrics: requests, store writes and registrations. Names are the public contract that
//! dashboards use; labels are bounded (method, code, kind, result).

use metrics::{counter, describe_counter, describe_gauge, gauge};
use tonic::Status;

use super::errors::code_name;
use crate::model::ResourceKind;

/// Metric names.
pub mod names {
    /// Counter: admin API calls, by `method` and gRPC `code`.
    pub const ADMIN_REQUESTS: &str = "shoal_cp_admin_requests_total";
    /// Counter: store writes, by resource `kind`, `op` (apply, create, replace, delete, expire) and `result`.
    pub const STORE_WRITES: &str = "shoal_cp_store_writes_total";
    /// Gauge: endpoint registrations in the store.
    pub const REGISTRATIONS_ACTIVE: &str = "shoal_cp_registrations_active";
    /// Counter: registrations deleted because no heartbeat arrived within their ttl.
    pub const REGISTRATIONS_EXPIRED: &str = "shoal_cp_registrations_expired_total";
}

/// Describes every admin metric (once, when the recorder is installed).
pub fn describe() {
    use names::*;
    describe_counter!(
        ADMIN_REQUESTS,
        "Admin API calls, by method and gRPC status code"
    );
    describe_counter!(
        STORE_WRITES,
        "Store writes, by resource kind, operation and result (ok, invalid, not_found, already_exists, conflict, error)"
    );
    describe_gauge!(REGISTRATIONS_ACTIVE, "Endpoint registrations in the store");
    describe_counter!(
        REGISTRATIONS_EXPIRED,
        "Endpoint registrations deleted because no heartbeat arrived within their ttl"
    );
}

/// Counts one admin call and passes its result through.
pub(super) fn request<T>(method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => "OK",
        Err(status) => code_name(status.code()),
    };
    counter!(names::ADMIN_REQUESTS, "method" => method, "code" => code).increment(1);
    result
}

/// Counts one store write.
pub(super) fn store_write(kind: ResourceKind, op: &'static str, result: &'static str) {
    let kind = kind.as_str();
    counter!(names::STORE_WRITES, "kind" => kind, "op" => op, "result" => result).increment(1);
}

/// Sets the number of registrations.
pub(super) fn registrations_active(count: usize) {
    gauge!(names::REGISTRATIONS_ACTIVE).set(count as f64);
}

/// Counts one expired registration.
pub(super) fn registration_expired() {
    counter!(names::REGISTRATIONS_EXPIRED).increment(1);
}
