//! `faults` of the state description (a `FaultInjection` from discovery): delays and aborts the
//! calling proxy injects into a share of the requests to a service, for chaos experiments. The
//! stage that injects them is `outbound::http::fault`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::Match;
use super::spec::{MatchSpec, build_match, humantime_opt};

/// One service's faults as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    /// The service (`name` or `name.namespace`) whose callers see the faults.
    pub(crate) service: String,
    #[serde(default)]
    pub(crate) delay: Option<DelaySpec>,
    #[serde(default)]
    pub(crate) abort: Option<AbortSpec>,
    /// Which requests the faults may hit (a route rule's matches); empty: every request.
    #[serde(default)]
    pub(crate) matches: Vec<MatchSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DelaySpec {
    pub(crate) percent: f64,
    #[serde(default, with = "humantime_opt")]
    pub(crate) duration: Option<Duration>,
}

/// `abort`: at least one of the statuses; `http_status` defaults to 503 when only `grpc_status` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbortSpec {
    pub(crate) percent: f64,
    #[serde(default)]
    pub(crate) http_status: Option<u16>,
    #[serde(default)]
    pub(crate) grpc_status: Option<u8>,
}

/// An abort, checked.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Abort {
    /// Share of requests answered instead of being sent (0–100).
    pub(crate) percent: f64,
    /// The answer's HTTP status (a gRPC request's too when `grpc_status` is unset).
    pub(crate) http_status: u16,
    /// The gRPC code (1–16) a gRPC request is answered with, in a trailers-only HTTP 200.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grpc_status: Option<u8>,
}

/// The HTTP status of an abort that sets only `grpc_status` (what non-gRPC requests get).
const DEFAULT_ABORT_STATUS: u16 = 503;

/// A service's faults, checked (what `/config` shows).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Fault {
    /// Share of requests delayed (0–100), and by how long.
    pub(crate) delay: Option<(f64, Duration)>,
    /// A share of requests answered instead of being sent.
    pub(crate) abort: Option<Abort>,
    /// The requests the faults may hit: any of these matching; empty: every request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) matches: Vec<Match>,
}

impl Fault {
    /// Whether the faults may hit this request (its scope); the shares are drawn after.
    pub(crate) fn scoped_to<B>(&self, req: &http::Request<B>) -> bool {
        self.matches.is_empty()
            || (self.matches.iter())
                .any(|m| m.matches(req.method(), req.uri().path(), req.headers()))
    }
}

impl FaultSpec {
    /// Checks the faults (the control plane's checks, `validate/policy.rs`); errors name the
    /// field under `at`.
    pub(crate) fn resolve(&self, at: &str) -> Result<Fault, String> {
        let percent = |field: &str, p: f64| {
            if (0.0..=100.0).contains(&p) {
                Ok(p)
            } else {
                Err(format!(
                    "{at}.{field}: {p} is not a percentage from 0 to 100"
                ))
            }
        };
        if self.delay.is_none() && self.abort.is_none() {
            return Err(format!(
                "{at}: a fault injection needs a delay, an abort or both"
            ));
        }
        let delay = match &self.delay {
            None => None,
            Some(d) => {
                let p = percent("delay.percent", d.percent)?;
                match d.duration {
                    Some(t) if !t.is_zero() && t <= Duration::from_secs(24 * 3600) => Some((p, t)),
                    _ => {
                        return Err(format!(
                            "{at}.delay.duration: required, between 1ms and 24h"
                        ));
                    }
                }
            }
        };
        let abort = match &self.abort {
            None => None,
            Some(a) => {
                let p = percent("abort.percent", a.percent)?;
                if a.http_status.is_none() && a.grpc_status.is_none() {
                    return Err(format!(
                        "{at}.abort: set `http_status`, `grpc_status` or both"
                    ));
                }
                let http_status = a.http_status.unwrap_or(DEFAULT_ABORT_STATUS);
                if !(200..=599).contains(&http_status) {
                    return Err(format!(
                        "{at}.abort.http_status: {http_status} is not an HTTP status in 200–599"
                    ));
                }
                if let Some(code) = a.grpc_status
                    && !(1..=16).contains(&code)
                {
                    return Err(format!(
                        "{at}.abort.grpc_status: {code} is not a gRPC status in 1–16"
                    ));
                }
                Some(Abort {
                    percent: p,
                    http_status,
                    grpc_status: a.grpc_status,
                })
            }
        };
        let matches = (self.matches.iter().enumerate())
            .map(|(i, m)| build_match(m.clone(), &format!("{at}.matches[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Fault {
            delay,
            abort,
            matches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abort(http_status: Option<u16>, grpc_status: Option<u8>) -> Result<Fault, String> {
        FaultSpec {
            service: "app".to_owned(),
            delay: None,
            abort: Some(AbortSpec {
                percent: 1.0,
                http_status,
                grpc_status,
            }),
            matches: Vec::new(),
        }
        .resolve("faults[0]")
    }

    #[test]
    fn abort_statuses_default_and_errors_name_the_field() {
        let only_grpc = abort(None, Some(14)).unwrap().abort.unwrap();
        assert_eq!(
            (only_grpc.http_status, only_grpc.grpc_status),
            (503, Some(14))
        );
        let err = abort(None, Some(17)).unwrap_err();
        assert!(err.starts_with("faults[0].abort.grpc_status: 17"), "{err}");
        let err = abort(Some(503), Some(0)).unwrap_err();
        assert!(err.starts_with("faults[0].abort.grpc_status: 0"), "{err}");
        let err = abort(None, None).unwrap_err();
        assert!(err.starts_with("faults[0].abort: set"), "{err}");
        let err = abort(Some(99), None).unwrap_err();
        assert!(err.starts_with("faults[0].abort.http_status: 99"), "{err}");
    }
}
