//! `mirrors` of the state description (a `Mirror` from discovery): a share of the requests to a
//! service copied to a shadow service, whose answers are compared with the primary's. The stage
//! that copies and compares is `outbound::http::mirror`.

use http::HeaderName;
use serde::{Deserialize, Serialize};

use crate::metrics::MirrorMetrics;

/// The most response headers one mirror compares (the control plane's limit too).
pub(crate) const MAX_COMPARE_HEADERS: usize = 32;

/// One service's mirror as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorSpec {
    /// The service (`name` or `name.namespace`) whose requests are copied.
    pub(crate) service: String,
    /// The shadow service receiving the copies.
    pub(crate) mirror: String,
    /// The shadow's port; absent: the port of the service the request named.
    #[serde(default)]
    pub(crate) port: Option<u16>,
    /// Share of requests copied, 0–100.
    pub(crate) percent: f64,
    /// Response header names (lower-case) compared besides the status and the body.
    #[serde(default)]
    pub(crate) compare_headers: Vec<String>,
}

/// A mirror's checked terms, before the shadow is looked up in the state.
#[derive(Debug, Clone)]
pub(crate) struct MirrorTerms {
    pub(crate) percent: f64,
    pub(crate) port: Option<u16>,
    pub(crate) compare_headers: Vec<HeaderName>,
}

impl MirrorSpec {
    /// Checks the mirror (the control plane's checks, `validate/policy.rs`); errors name the
    /// field under `at`.
    pub(crate) fn resolve(&self, at: &str) -> Result<MirrorTerms, String> {
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(format!(
                "{at}.percent: {} is not a percentage from 0 to 100",
                self.percent
            ));
        }
        if self.port == Some(0) {
            return Err(format!("{at}.port: must be 1-65535"));
        }
        if qualify(&self.mirror) == qualify(&self.service) {
            return Err(format!(
                "{at}.mirror: {} mirrors to itself; name another service",
                qualify(&self.service)
            ));
        }
        if self.compare_headers.len() > MAX_COMPARE_HEADERS {
            return Err(format!(
                "{at}.compare_headers: {} names; at most {MAX_COMPARE_HEADERS}",
                self.compare_headers.len()
            ));
        }
        let mut compare_headers: Vec<HeaderName> = Vec::new();
        for (i, name) in self.compare_headers.iter().enumerate() {
            let field = format!("{at}.compare_headers[{i}]");
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(format!("{field}: header name {name:?} must be lower-case"));
            }
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{field}: {name:?} is not a header name"))?;
            if compare_headers.contains(&parsed) {
                return Err(format!("{field}: {name:?} is listed twice"));
            }
            compare_headers.push(parsed);
        }
        Ok(MirrorTerms {
            percent: self.percent,
            port: self.port,
            compare_headers,
        })
    }
}

/// `name` → `name.default`; a qualified name stays.
pub(crate) fn qualify(service: &str) -> String {
    if service.contains('.') {
        service.to_string()
    } else {
        format!("{service}.default")
    }
}

/// A service's mirror, resolved against the state (what `/config` shows).
#[derive(Debug, Serialize)]
pub(crate) struct Mirror {
    /// The shadow service, `name.namespace`.
    #[serde(rename = "mirror_service")]
    pub(crate) name: String,
    /// The shadow's port the copies go to.
    #[serde(rename = "mirror_port")]
    pub(crate) port: u16,
    /// Index of the shadow's entry in `State::services` (an index, not an `Arc`: two services
    /// mirroring to each other would otherwise keep each other, and every state, alive).
    #[serde(skip)]
    pub(crate) shadow: usize,
    /// Share of requests copied, 0–100.
    pub(crate) percent: f64,
    /// Response headers compared besides the status and the body hash.
    #[serde(serialize_with = "serialize_names")]
    pub(crate) compare_headers: Vec<HeaderName>,
    /// Outcome counters per route label: index 0 for requests that matched no rule, `i + 1` for
    /// rule `i` of the service's route.
    #[serde(skip)]
    pub(crate) metrics: Vec<MirrorMetrics>,
}

impl Mirror {
    /// The counters of a request that matched rule `rule` (`None`: no rule).
    pub(crate) fn metrics(&self, rule: Option<usize>) -> &MirrorMetrics {
        let i = rule.map_or(0, |r| r + 1);
        self.metrics.get(i).unwrap_or(&self.metrics[0])
    }
}

fn serialize_names<S: serde::Serializer>(names: &[HeaderName], ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_seq(names.iter().map(HeaderName::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(f: impl FnOnce(&mut MirrorSpec)) -> Result<MirrorTerms, String> {
        let mut s = MirrorSpec {
            service: "web".into(),
            mirror: "web-shadow".into(),
            port: None,
            percent: 10.0,
            compare_headers: vec!["content-type".into()],
        };
        f(&mut s);
        s.resolve("mirrors[0]")
    }

    #[test]
    fn errors_name_the_field() {
        assert!(spec(|_| {}).is_ok());
        let err = |f: fn(&mut MirrorSpec)| spec(f).expect_err("rejected");
        assert!(err(|s| s.percent = 101.0).starts_with("mirrors[0].percent:"));
        assert!(err(|s| s.port = Some(0)).starts_with("mirrors[0].port:"));
        assert!(err(|s| s.mirror = "web.default".into()).contains("mirrors to itself"));
        assert!(
            err(|s| s.compare_headers = vec!["ETag".into()]).starts_with(
                "mirrors[0].compare_headers[0]: header name \"ETag\" must be lower-case"
            )
        );
        assert!(
            err(|s| s.compare_headers = vec!["etag".into(), "a b".into()])
                .starts_with("mirrors[0].compare_headers[1]:")
        );
        assert!(
            err(|s| s.compare_headers = vec!["etag".into(), "etag".into()])
                .contains("listed twice")
        );
    }
}
