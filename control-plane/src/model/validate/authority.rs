//! One authority, one service: a proxy routes each `Host` / `:authority` (with the port) to one service, and
//! one holding two services that claim the same authority NACKs the later one. So a service whose name or hosts
//! give an authority another service already has on the same port is refused here, naming the field that makes
//! it and the service that has it. The list of authorities is the proxy's own
//! ([`shoal_proto::authority::authorities`]), so the two cannot drift.

use std::collections::HashMap;

use shoal_proto::authority::authorities;

use super::{Catalog, Checker, FieldError};
use crate::model::Service;

impl Checker<'_> {
    /// Refuses the authorities of `service` that another service of the catalog claims on the same port.
    pub(super) fn unique_authorities(&mut self, service: &Service) {
        let found = conflicts(service, self.catalog);
        self.errors.extend(found);
        let found = address_conflicts(service, self.catalog);
        self.errors.extend(found);
    }
}

/// The virtual addresses of `service` that another service of `catalog` has on one of the same ports: a
/// transparent proxy maps each original destination (address and port) to one service, and would route
/// such a destination to whichever it met last.
pub(super) fn address_conflicts(service: &Service, catalog: &dyn Catalog) -> Vec<FieldError> {
    let same = |s: &Service| s.name == service.name && s.namespace == service.namespace;
    let mut errors = Vec::new();
    for (i, address) in service.virtual_addresses.iter().enumerate() {
        let clash = catalog.services().filter(|s| !same(s)).find_map(|other| {
            let shared_port = other
                .ports
                .iter()
                .map(|p| p.port)
                .find(|port| service.ports.iter().any(|p| p.port == *port))?;
            other
                .virtual_addresses
                .contains(address)
                .then_some((other, shared_port))
        });
        if let Some((other, port)) = clash {
            errors.push(FieldError::new(
                format!("spec.virtual_addresses[{i}]"),
                format!(
                    "address {address} is already used by service {:?} (namespace {}) on port {port}; \
                     a transparent proxy routes each address and port to one service",
                    other.name, other.namespace
                ),
            ));
        }
    }
    errors
}

/// The authorities of `service` that another service of `catalog` claims on the same port, one error per field
/// and other service. The service itself (an update) is not another service.
pub(super) fn conflicts(service: &Service, catalog: &dyn Catalog) -> Vec<FieldError> {
    let ports: Vec<u16> = (service.ports.iter().map(|p| p.port))
        .filter(|&p| p != 0)
        .collect();
    let same = |s: &Service| s.name == service.name && s.namespace == service.namespace;
    // Only what the others claim on this service's ports can collide; the first claimant is named.
    let mut claimed: HashMap<String, &Service> = HashMap::new();
    for other in catalog.services().filter(|s| !same(s)) {
        for port in other.ports.iter().map(|p| p.port) {
            if ports.contains(&port) {
                for authority in authorities(&other.name, &other.namespace, port, &other.hosts) {
                    claimed.entry(authority).or_insert(other);
                }
            }
        }
    }
    let mut errors: Vec<FieldError> = Vec::new();
    if claimed.is_empty() {
        return errors;
    }
    let mut reported: Vec<(String, String)> = Vec::new();
    for &port in &ports {
        let implied = authorities(&service.name, &service.namespace, port, &[]);
        for authority in authorities(&service.name, &service.namespace, port, &service.hosts) {
            let Some(other) = claimed.get(&authority) else {
                continue;
            };
            let host = (authority.strip_suffix(&format!(":{port}"))).unwrap_or(&authority);
            let field = if implied.contains(&authority) {
                "metadata.name".to_owned()
            } else {
                let i = (service.hosts.iter())
                    .position(|h| h.eq_ignore_ascii_case(host))
                    .unwrap_or_default();
                format!("spec.hosts[{i}]")
            };
            // One error per field and other service: `host:80` and the bare `host` are one claim.
            let owner = (field.clone(), format!("{}.{}", other.name, other.namespace));
            if reported.contains(&owner) {
                continue;
            }
            reported.push(owner);
            let reason = format!(
                "host {host:?} is already used by service {:?} (namespace {}) on port {port}; \
                 a proxy routes each host and port to one service",
                other.name, other.namespace
            );
            errors.push(FieldError::new(field, reason));
        }
    }
    errors
}
