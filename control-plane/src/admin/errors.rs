//! The one place store and request errors become gRPC statuses, with the codes `admin.proto` documents.

use tonic::{Code, Status};

use crate::model::validate::Invalid;
use crate::store::Error;

/// The status for a store error. The messages already name the resource, the field or both versions.
pub(super) fn from_store(error: &Error) -> Status {
    let code = match error {
        Error::Invalid(_) => Code::InvalidArgument,
        Error::NotFound { .. } => Code::NotFound,
        Error::AlreadyExists { .. } | Error::TargetTaken { .. } => Code::AlreadyExists,
        Error::Conflict { .. } => Code::Aborted,
        Error::Compacted { .. } | Error::Ahead { .. } => Code::OutOfRange,
        // Only at start-up in practice; another process holds the file, which may go away.
        Error::Locked { .. } => Code::Unavailable,
        Error::Storage { .. } | Error::Corrupt { .. } => Code::Internal,
    };
    Status::new(code, error.to_string())
}

/// A resource that failed conversion from the wire (a wrong enum number, a bad address, a missing spec).
pub(super) fn from_invalid(invalid: &Invalid) -> Status {
    Status::invalid_argument(invalid.to_string())
}

/// A request field that is missing or malformed: `field: reason`.
pub(super) fn bad_field(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// A blocking store call that panicked or was cancelled: the write may or may not have happened.
pub(super) fn join(error: &tokio::task::JoinError) -> Status {
    Status::internal(format!(
        "the store write did not finish ({error}); read the resource to see whether it was applied"
    ))
}

/// The metric label of a status code: the gRPC name (`NOT_FOUND`).
pub(super) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `result` label of a store write.
pub(super) fn write_result(error: &Error) -> &'static str {
    match error {
        Error::Invalid(_) => "invalid",
        Error::NotFound { .. } => "not_found",
        Error::AlreadyExists { .. } | Error::TargetTaken { .. } => "already_exists",
        Error::Conflict { .. } => "conflict",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ResourceKey, ResourceKind};

    #[test]
    fn conflicts_abort_naming_both_versions() {
        let key = ResourceKey::new(ResourceKind::Route, "default", "backend");
        let status = from_store(&Error::Conflict {
            key,
            expected: 3,
            actual: 5,
        });
        assert_eq!(status.code(), Code::Aborted);
        assert!(status.message().contains("version 5"), "{status:?}");
        assert!(status.message().contains("expected 3"), "{status:?}");
    }

    #[test]
    fn missing_resources_are_not_found() {
        let key = ResourceKey::new(ResourceKind::Service, "default", "backend");
        let status = from_store(&Error::NotFound { key });
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(code_name(status.code()), "NOT_FOUND");
    }
}
