//! The endpoints file (`SHOAL_CP_ENDPOINTS_FILE`): static endpoints per service, and DNS names for services
//! outside the mesh.
//!
//! ```yaml
//! services:
//!   - service: web.default
//!     endpoints:
//!       - {address: 10.0.0.1, port: 8080, weight: 1, zone: a, ready: true}
//! dns:
//!   - {service: payments.external, host: api.example.com, port: 443}
//! ```
//!
//! Unknown fields are errors (they are typos), and every error names the field (`services[0].endpoints[1].port`)
//! and, where the YAML parser knows it, the line.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::validate::MAX_WEIGHT;
use crate::model::{Endpoint, ServiceRef, host_name, spiffe_id};

/// The checked content of the endpoints file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointsFile {
    /// Static endpoints by qualified service name (`name.namespace`).
    pub services: BTreeMap<String, Vec<Endpoint>>,
    /// Names to resolve, by qualified service name; several entries of one service are merged.
    pub dns: BTreeMap<String, Vec<DnsTarget>>,
}

/// A DNS name whose addresses are endpoints of a service outside the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsTarget {
    /// Host name to resolve (A and AAAA records, or `/etc/hosts`).
    pub host: String,
    /// The port every resolved address is reached on.
    pub port: u16,
    /// Load-balancing weight of each resolved address.
    pub weight: u32,
    /// Zone of the resolved addresses; empty if unknown.
    pub zone: String,
    /// The service port these endpoints serve; `None` means every port.
    pub service_port: Option<u16>,
}

impl DnsTarget {
    /// The endpoint for one resolved address. Outside the mesh: no identity, so proxies connect in plain
    /// text (or with the service's own TLS); always ready, since DNS has no readiness.
    pub fn endpoint(&self, address: IpAddr) -> Endpoint {
        Endpoint {
            address,
            port: self.port,
            weight: self.weight,
            zone: self.zone.clone(),
            identity: None,
            ready: true,
            service_port: self.service_port,
        }
    }
}

/// Why the endpoints file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read.
    #[error("cannot read the endpoints file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The content is not a valid endpoints file; `message` names the field and, when known, the line.
    #[error("invalid endpoints file {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

impl EndpointsFile {
    /// Reads and checks the file at `path`.
    pub async fn read(path: &Path) -> Result<Self, FileError> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| FileError::Read {
                path: path.to_owned(),
                source,
            })?;
        Self::parse(&text).map_err(|message| FileError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and checks the file's text; the error names the field and, when known, the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        // An empty file is most often one caught half-written (truncate, then write): refusing it keeps the
        // last good content until the writer finishes. An explicit `services: []` empties the source.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Err("the file is empty; write `services: []` to remove every endpoint".into());
        }
        let raw: Raw = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let mut file = Self::default();
        let mut first_at = BTreeMap::new();
        for (i, entry) in raw.services.into_iter().enumerate() {
            let name = entry.service.0;
            if let Some(j) = first_at.insert(name.clone(), i) {
                return Err(format!(
                    "services[{i}].service: {name} is listed twice (also services[{j}]); list all its endpoints in one entry"
                ));
            }
            let endpoints: Vec<Endpoint> = entry
                .endpoints
                .into_iter()
                .map(RawEndpoint::into_model)
                .collect();
            for (k, e) in endpoints.iter().enumerate() {
                weight(e.weight).map_err(|e| format!("services[{i}].endpoints[{k}].{e}"))?;
            }
            distinct(&endpoints).map_err(|e| format!("services[{i}].{e}"))?;
            file.services.insert(name, endpoints);
        }
        for (i, entry) in raw.dns.into_iter().enumerate() {
            let target = DnsTarget {
                host: entry.host.0,
                port: entry.port.get(),
                weight: entry.weight.get(),
                zone: entry.zone,
                service_port: entry.service_port.map(NonZeroU16::get),
            };
            weight(target.weight).map_err(|e| format!("dns[{i}].{e}"))?;
            let targets = file.dns.entry(entry.service.0.clone()).or_default();
            if targets
                .iter()
                .any(|t| t.host == target.host && t.port == target.port)
            {
                return Err(format!(
                    "dns[{i}]: {}:{} is listed twice for {}",
                    target.host, target.port, entry.service.0
                ));
            }
            targets.push(target);
        }
        Ok(file)
    }
}

/// Proxies refuse endpoints weighing more than [`MAX_WEIGHT`] (as registrations do).
fn weight(weight: u32) -> Result<(), String> {
    if weight > MAX_WEIGHT {
        return Err(format!(
            "weight: {weight} is more than the maximum, {MAX_WEIGHT}"
        ));
    }
    Ok(())
}

/// Proxies tell a service's endpoints apart by address, port and service port: a second one with the same
/// three would be lost, so it is an error.
fn distinct(endpoints: &[Endpoint]) -> Result<(), String> {
    let id = |e: &Endpoint| (e.address, e.port, e.service_port);
    for (k, e) in endpoints.iter().enumerate() {
        if let Some(first) = endpoints[..k].iter().position(|o| id(o) == id(e)) {
            return Err(format!(
                "endpoints[{k}]: {}:{} is listed twice (also endpoints[{first}])",
                e.address, e.port
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    dns: Vec<RawDns>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    service: ServiceName,
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    address: IpAddr,
    port: NonZeroU16,
    #[serde(default = "one")]
    weight: NonZeroU32,
    #[serde(default)]
    zone: String,
    #[serde(default = "yes")]
    ready: bool,
    #[serde(default)]
    identity: Option<Identity>,
    #[serde(default)]
    service_port: Option<NonZeroU16>,
}

impl RawEndpoint {
    fn into_model(self) -> Endpoint {
        Endpoint {
            address: self.address,
            port: self.port.get(),
            weight: self.weight.get(),
            zone: self.zone,
            identity: self.identity.map(|i| i.0),
            ready: self.ready,
            service_port: self.service_port.map(NonZeroU16::get),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    service: ServiceName,
    host: HostName,
    port: NonZeroU16,
    #[serde(default = "one")]
    weight: NonZeroU32,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    service_port: Option<NonZeroU16>,
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

fn yes() -> bool {
    true
}

// Checked inside the YAML parser's visit of the scalar (not after it returned the string), so that the error
// carries the field path and line, like the parser's own type errors.

/// Deserialises a string and checks it with `check`.
struct Checked {
    expecting: &'static str,
    check: fn(&str) -> Result<String, String>,
}

impl serde::de::Visitor<'_> for Checked {
    type Value = String;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
        (self.check)(text).map_err(E::custom)
    }
}

/// A qualified service name, `name.namespace`.
struct ServiceName(String);

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let check = |text: &str| ServiceRef::parse(text, None).map(|s| s.to_string());
        let expecting = "a qualified service name `<service>.<namespace>`";
        d.deserialize_str(Checked { expecting, check }).map(Self)
    }
}

/// A host name to resolve; a trailing dot (fully qualified) is allowed.
struct HostName(String);

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let check = |text: &str| {
            let bare = text.strip_suffix('.').unwrap_or(text);
            host_name(bare).map_err(|reason| format!("host {text:?} {reason}"))?;
            Ok(text.to_string())
        };
        d.deserialize_str(Checked {
            expecting: "a host name",
            check,
        })
        .map(Self)
    }
}

/// A SPIFFE id.
struct Identity(String);

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let check = |text: &str| {
            spiffe_id(text).map_err(|reason| format!("identity {text:?} {reason}"))?;
            Ok(text.to_string())
        };
        d.deserialize_str(Checked {
            expecting: "a SPIFFE id",
            check,
        })
        .map(Self)
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
