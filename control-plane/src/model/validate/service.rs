//! Checks for services and endpoint registrations.

use std::collections::HashSet;
use std::net::IpAddr;

use super::{Checker, MAX_WEIGHT};
use crate::model::{EndpointRegistration, Service, dns_label, host_name, spiffe_id};

impl Checker<'_> {
    pub(super) fn service(&mut self, service: &Service, name: &str, namespace: &str) {
        if service.name != name {
            let reason = format!("{:?} differs from metadata.name {name:?}", service.name);
            self.error("spec.name", reason);
        }
        if service.namespace != namespace {
            let reason = format!(
                "{:?} differs from metadata.namespace {namespace:?}",
                service.namespace
            );
            self.error("spec.namespace", reason);
        }
        if service.ports.is_empty() {
            self.error("spec.ports", "at least one port is required");
        }
        let (mut numbers, mut names) = (HashSet::new(), HashSet::new());
        for (i, port) in service.ports.iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            self.port(&format!("{field}.port"), port.port);
            if port.target_port == Some(0) {
                self.port(&format!("{field}.target_port"), 0);
            }
            if port.port != 0 && !numbers.insert(port.port) {
                self.error(
                    format!("{field}.port"),
                    format!("port {} is listed twice", port.port),
                );
            }
            if !port.name.is_empty() {
                if let Err(reason) = dns_label(&port.name) {
                    self.error(format!("{field}.name"), format!("{:?} {reason}", port.name));
                } else if !names.insert(port.name.as_str()) {
                    let reason = format!("name {:?} is used by two ports", port.name);
                    self.error(format!("{field}.name"), reason);
                }
            }
        }
        let mut addresses = HashSet::new();
        for (i, address) in service.virtual_addresses.iter().enumerate() {
            let field = format!("spec.virtual_addresses[{i}]");
            if let Err(reason) = unicast(*address) {
                self.error(field, reason);
            } else if !addresses.insert(address) {
                self.error(field, format!("{address} is listed twice"));
            }
        }
        for (i, host) in service.hosts.iter().enumerate() {
            if let Err(reason) = host_name(host) {
                self.error(format!("spec.hosts[{i}]"), format!("{host:?} {reason}"));
            }
        }
        self.unique_authorities(service);
    }

    pub(super) fn registration(&mut self, registration: &EndpointRegistration) {
        let port = (registration.service_port).map(|p| ("spec.service_port", p));
        self.known_service("spec.service", &registration.service, port);
        if let Err(reason) = unicast(registration.address) {
            self.error("spec.address", reason);
        }
        self.port("spec.port", registration.port);
        if registration.service_port == Some(0) {
            self.port("spec.service_port", 0);
        }
        if registration.weight == 0 || registration.weight > MAX_WEIGHT {
            let weight = registration.weight;
            self.error(
                "spec.weight",
                format!("{weight} is not a weight in 1–{MAX_WEIGHT}"),
            );
        }
        zone(self, "spec.zone", &registration.zone);
        self.duration("spec.ttl_seconds", registration.ttl);
        if let Some(identity) = &registration.identity
            && let Err(reason) = spiffe_id(identity)
        {
            self.error("spec.identity", format!("{identity:?} {reason}"));
        }
    }
}

/// An address traffic can be sent to: not unspecified (`0.0.0.0`, `::`), not multicast or broadcast.
fn unicast(address: IpAddr) -> Result<(), String> {
    let broadcast = matches!(address, IpAddr::V4(v4) if v4.is_broadcast());
    if address.is_unspecified() || address.is_multicast() || broadcast {
        Err(format!("{address} is not a unicast address"))
    } else {
        Ok(())
    }
}

/// Zones are Kubernetes label values (`us-east-1a`): at most 63 letters, digits, `-`, `_` and `.`.
fn zone(check: &mut Checker<'_>, field: &str, zone: &str) {
    let valid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if zone.len() > 63 || !zone.chars().all(valid) {
        let reason =
            format!("{zone:?} is not a zone name (at most 63 letters, digits, `-`, `_`, `.`)");
        check.error(field, reason);
    }
}
