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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbortSpec {
    pub(crate) percent: f64,
    pub(crate) http_status: u16,
}

/// A service's faults, checked (what `/config` shows).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Fault {
    /// Share of requests delayed (0–100), and by how long.
    pub(crate) delay: Option<(f64, Duration)>,
    /// Share of requests answered with this status (0–100) instead of being sent.
    pub(crate) abort: Option<(f64, u16)>,
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
                if !(200..=599).contains(&a.http_status) {
                    return Err(format!(
                        "{at}.abort.http_status: {} is not an HTTP status in 200–599",
                        a.http_status
                    ));
                }
                Some((p, a.http_status))
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
