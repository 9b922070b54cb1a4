//! Validation on write: every resource is checked here before the store accepts it, so an invalid resource is
//! never stored or pushed. Errors name the field path as operators write it (proto field names under
//! `metadata.` / `spec.`), and every error of a resource is reported at once.
//!
//! Cross-resource checks use a read view of existing services ([`Catalog`]): a route's parent service and
//! backends, mirror destinations and endpoint registrations must name a known service (and a port it
//! exposes), and a service may not claim a `Host` / `:authority` another service answers to on the same port
//! (`authority`). The targets of the other policies are not checked, so such a policy may be written before its
//! service; deleting a service does not delete what refers to it.
//!
//! What a proxy checks when a resource is pushed (proxy/src/discovery/resources.rs) is checked here too, so
//! what a proxy would NACK is refused at `apply`; `proxy_rules` runs the cases both sides share
//! (proto/testdata/pushed-resource-checks.txt).
//!
//! Every kind and field the model has is enforced by shoal-proxy: a new one lands in the same change as the
//! proxy's enforcement, or is refused here naming the field.

mod authority;
#[cfg(test)]
mod authority_tests;
mod filter;
#[cfg(test)]
mod filter_tests;
mod policy;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod proxy_rules;
mod route;
mod service;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use super::{Resource, Service, ServiceRef, Spec, dns_label};

/// Longest duration any setting accepts: anything longer is a typo (ms instead of s) rather than intent.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest regular expression accepted, in bytes.
pub const MAX_REGEX_LEN: usize = 1024;
/// Largest compiled regular expression, in bytes; keeps matching cheap on every proxy.
pub const MAX_REGEX_SIZE: usize = 1 << 20;
/// Largest weight of a backend or endpoint (the Gateway API's bound; sums stay far from overflow).
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Most attempts a retry policy may make, the first included.
pub const MAX_ATTEMPTS: u32 = 10;
/// Most labels on one resource.
pub const MAX_LABELS: usize = 64;

/// One problem, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, for example `spec.rules[1].backends`.
    pub field: String,
    /// What is wrong and what was expected.
    pub reason: String,
}

impl FieldError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error one level down: `field` becomes `prefix.field`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A resource that was rejected, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// Which resource, for example `route backend.default`.
    pub subject: String,
    /// The problems, in field order (at least one).
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Invalid {
    /// `route backend.default: spec.rules[1].backends: weights sum to 0; spec.…`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.subject)?;
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// A read view of the services that exist, for the checks that span resources.
pub trait Catalog {
    /// The service with this qualified name, if it exists.
    fn service(&self, service: &ServiceRef) -> Option<&Service>;

    /// Every service, in a stable order (the first one claiming an authority is the one an error names).
    fn services(&self) -> Box<dyn Iterator<Item = &Service> + '_>;
}

/// A plain list of services is a catalog (tests, static files).
impl Catalog for Vec<Service> {
    fn service(&self, service: &ServiceRef) -> Option<&Service> {
        self.iter()
            .find(|s| s.name == service.name && s.namespace == service.namespace)
    }

    fn services(&self) -> Box<dyn Iterator<Item = &Service> + '_> {
        Box::new(self.iter())
    }
}

/// Checks `resource` before it is stored, against its own rules and the services in `catalog`; every error at
/// once.
pub fn validate(resource: &Resource, catalog: &dyn Catalog) -> Result<(), Invalid> {
    let mut check = Checker {
        errors: Vec::new(),
        catalog,
    };
    check.metadata(resource);
    let meta = &resource.metadata;
    match &resource.spec {
        Spec::Service(s) => check.service(s, &meta.name, &meta.namespace),
        Spec::EndpointRegistration(r) => check.registration(r),
        Spec::Route(r) => check.route(r),
        Spec::BackendPolicy(p) => check.backend_policy(p),
        Spec::AuthorizationPolicy(p) => check.authorization(p),
        Spec::RateLimit(l) => check.rate_limit(l),
        Spec::FaultInjection(f) => check.fault_injection(f),
        Spec::Mirror(m) => check.mirror(m),
    }
    if check.errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid {
            subject: resource.key().to_string(),
            errors: check.errors,
        })
    }
}

/// Collects the errors of one resource; the per-kind checks live in the submodules.
struct Checker<'a> {
    errors: Vec<FieldError>,
    catalog: &'a dyn Catalog,
}

impl Checker<'_> {
    fn error(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError::new(field, reason));
    }

    fn metadata(&mut self, resource: &Resource) {
        let meta = &resource.metadata;
        if let Err(reason) = dns_label(&meta.name) {
            self.error("metadata.name", format!("{:?} {reason}", meta.name));
        }
        if let Err(reason) = dns_label(&meta.namespace) {
            self.error(
                "metadata.namespace",
                format!("{:?} {reason}", meta.namespace),
            );
        }
        if meta.labels.len() > MAX_LABELS {
            let n = meta.labels.len();
            self.error(
                "metadata.labels",
                format!("{n} labels; at most {MAX_LABELS} are allowed"),
            );
        }
        let label_char = |c: char| c.is_ascii_alphanumeric() || "-_./".contains(c);
        for (key, value) in &meta.labels {
            if key.is_empty() || key.len() > 253 || !key.chars().all(label_char) {
                let reason = "label keys are 1–253 letters, digits, `-`, `_`, `.` and `/`";
                self.error(format!("metadata.labels[{key:?}]"), reason);
            }
            if value.len() > 253 || value.chars().any(char::is_control) {
                let reason = "label values are at most 253 characters, without control characters";
                self.error(format!("metadata.labels[{key:?}]"), reason);
            }
        }
    }

    /// An optional duration: when set, positive and at most [`MAX_DURATION`].
    fn duration(&mut self, field: &str, value: Option<Duration>) {
        if let Some(value) = value {
            self.required_duration(field, value);
        }
    }

    /// A duration that must be positive and at most [`MAX_DURATION`].
    fn required_duration(&mut self, field: &str, value: Duration) {
        let unit = |d: Duration| {
            if field.ends_with("_seconds") {
                format!("{} s", d.as_secs())
            } else {
                format!("{} ms", d.as_millis())
            }
        };
        if value.is_zero() {
            self.error(field, "must be positive");
        } else if value > MAX_DURATION {
            let (value, max) = (unit(value), unit(MAX_DURATION));
            self.error(
                field,
                format!("{value} is longer than the maximum, {max} (24 h)"),
            );
        }
    }

    /// A share of requests: 0–100.
    fn percent(&mut self, field: &str, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.error(field, format!("{value} is not a percentage from 0 to 100"));
        }
    }

    /// A ratio that must be in (0, 1].
    fn ratio(&mut self, field: &str, value: f64) {
        if !(value > 0.0 && value <= 1.0) {
            self.error(field, format!("{value} is not a ratio in (0, 1]"));
        }
    }

    /// A count that, when set, must be positive (the wire's 0 already means "default").
    fn positive(&mut self, field: &str, value: Option<u32>) {
        if value == Some(0) {
            self.error(field, "must be positive when set");
        }
    }

    fn port(&mut self, field: &str, port: u16) {
        if port == 0 {
            self.error(field, "port 0 is not a valid port; expected 1–65535");
        }
    }

    fn regex(&mut self, field: &str, pattern: &str) {
        if pattern.len() > MAX_REGEX_LEN {
            let n = pattern.len();
            self.error(
                field,
                format!("regex is {n} bytes; at most {MAX_REGEX_LEN} are allowed"),
            );
            return;
        }
        let built = regex::RegexBuilder::new(pattern)
            .size_limit(MAX_REGEX_SIZE)
            .build();
        if let Err(error) = built {
            // The syntax error is a multi-line drawing; its last line says what is wrong.
            let text = error.to_string();
            let what = text.lines().last().unwrap_or_default();
            let what = what.trim().trim_start_matches("error: ");
            self.error(field, format!("invalid regex {pattern:?}: {what}"));
        }
    }

    /// A reference to a service that must exist and, if a port is named, expose it.
    fn known_service(&mut self, field: &str, service: &ServiceRef, port: Option<(&str, u16)>) {
        match self.catalog.service(service) {
            None => self.error(field, format!("unknown service {service}; create it first")),
            Some(found) => {
                if let Some((port_field, port)) = port
                    && port != 0
                    && found.port(port).is_none()
                {
                    self.error(port_field, format!("service {service} has no port {port}"));
                }
            }
        }
    }
}
