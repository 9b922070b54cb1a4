//! What a `shoalctl` command can fail with, and the exit code of each.

use tonic::{Code, Status};

/// A failed command. The message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or input (a file that cannot be read, a YAML error, an unknown kind): exit code 2.
    #[error("{0}")]
    Input(String),
    /// The control plane cannot be reached: exit code 3.
    #[error(
        "cannot reach the control plane at {server} ({cause}): is shoal-control-plane running? (--server / SHOAL_SERVER)"
    )]
    Unreachable {
        /// The address tried.
        server: String,
        /// What went wrong, for example `connection refused`.
        cause: String,
    },
    /// The server answered with an error (rejected, not found, conflict): exit code 1.
    #[error("{0}")]
    Server(String),
    /// Some resources of an `apply` failed; each was reported already: exit code 1.
    #[error("{failed} of {total} resources were not applied")]
    Partial {
        /// How many failed.
        failed: usize,
        /// How many there were.
        total: usize,
    },
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Server(_) | Self::Partial { .. } => 1,
            Self::Input(_) => 2,
            Self::Unreachable { .. } => 3,
        }
    }

    /// An error answer to a call about `subject` (`route/backend.default`, or empty).
    pub fn from_status(server: &str, status: &Status) -> Self {
        match status.code() {
            // The connection broke or could not be made: tonic reports both as UNAVAILABLE.
            Code::Unavailable | Code::Unknown if is_transport(status) => Self::Unreachable {
                server: server.to_owned(),
                cause: transport_cause(status),
            },
            code => Self::Server(format!(
                "server rejected the request ({}): {}",
                code_name(code),
                status.message()
            )),
        }
    }
}

fn is_transport(status: &Status) -> bool {
    status.code() == Code::Unavailable || std::error::Error::source(status).is_some()
}

/// The innermost cause of a transport failure, which is the one that says what happened.
fn transport_cause(status: &Status) -> String {
    let mut cause: &dyn std::error::Error = status;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    if text.is_empty() {
        status.message().to_owned()
    } else {
        text
    }
}

/// The innermost cause of a connection error.
pub(super) fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

fn code_name(code: Code) -> String {
    // `Code`'s Debug is CamelCase (`InvalidArgument`); operators know the gRPC names (`INVALID_ARGUMENT`).
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let rejected = CliError::from_status("s", &Status::invalid_argument("spec.x: bad"));
        assert_eq!(rejected.exit_code(), 1);
        assert!(
            rejected
                .to_string()
                .contains("(INVALID_ARGUMENT): spec.x: bad")
        );
        let missing = CliError::from_status("s", &Status::not_found("route a.b not found"));
        assert_eq!(missing.exit_code(), 1);
        let down = CliError::from_status("http://x:1", &Status::unavailable("tcp connect error"));
        assert_eq!(down.exit_code(), 3);
        assert!(down.to_string().contains("is shoal-control-plane running?"));
        assert_eq!(CliError::Input("x".into()).exit_code(), 2);
    }
}
