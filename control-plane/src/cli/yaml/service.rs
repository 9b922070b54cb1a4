//! YAML of `Service` and `EndpointRegistration`.

use serde::{Deserialize, Serialize};
use shoal_proto::v1;
use v1::resource::Spec as Wire;

use super::SpecYaml;
use super::common::{is_zero, wire_enum};

wire_enum! {
    /// `protocol`: what a port speaks; left out, the proxy detects it.
    Protocol => v1::Protocol { Http1, Http2, Grpc, Opaque }
}

wire_enum! {
    /// `tls_mode`: mutual TLS on a service or port; left out, a port inherits the service's and a service is
    /// permissive.
    TlsMode => v1::TlsMode { Strict, Permissive, Disabled }
}

/// `kind: Service`. Its name and namespace are the metadata's.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ServiceSpec {
    ports: Vec<Port>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    virtual_addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_mode: Option<TlsMode>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Port {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    port: u32,
    #[serde(skip_serializing_if = "is_zero")]
    target_port: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_mode: Option<TlsMode>,
}

impl SpecYaml for ServiceSpec {
    fn into_wire(self) -> Result<Wire, String> {
        let ports = self.ports.into_iter().map(|p| v1::ServicePort {
            name: p.name,
            port: p.port,
            target_port: p.target_port,
            protocol: Protocol::to_wire(p.protocol),
            tls_mode: TlsMode::to_wire(p.tls_mode),
        });
        Ok(Wire::Service(v1::Service {
            name: String::new(),
            namespace: String::new(),
            ports: ports.collect(),
            virtual_addresses: self.virtual_addresses,
            hosts: self.hosts,
            tls_mode: TlsMode::to_wire(self.tls_mode),
        }))
    }

    fn from_wire(spec: &Wire) -> Option<Self> {
        let Wire::Service(service) = spec else {
            return None;
        };
        let ports = service.ports.iter().map(|p| Port {
            name: p.name.clone(),
            port: p.port,
            target_port: p.target_port,
            protocol: Protocol::from_wire(p.protocol),
            tls_mode: TlsMode::from_wire(p.tls_mode),
        });
        Some(Self {
            ports: ports.collect(),
            virtual_addresses: service.virtual_addresses.clone(),
            hosts: service.hosts.clone(),
            tls_mode: TlsMode::from_wire(service.tls_mode),
        })
    }
}

/// `kind: EndpointRegistration`: one instance of a service.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RegistrationSpec {
    service: String,
    address: String,
    port: u32,
    #[serde(skip_serializing_if = "is_zero")]
    weight: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    zone: String,
    #[serde(skip_serializing_if = "is_zero")]
    ttl_seconds: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    identity: String,
    #[serde(skip_serializing_if = "is_zero")]
    service_port: u32,
}

impl SpecYaml for RegistrationSpec {
    fn into_wire(self) -> Result<Wire, String> {
        Ok(Wire::EndpointRegistration(v1::EndpointRegistration {
            service: self.service,
            address: self.address,
            port: self.port,
            weight: self.weight,
            zone: self.zone,
            ttl_seconds: self.ttl_seconds,
            identity: self.identity,
            service_port: self.service_port,
        }))
    }

    fn from_wire(spec: &Wire) -> Option<Self> {
        let Wire::EndpointRegistration(r) = spec else {
            return None;
        };
        Some(Self {
            service: r.service.clone(),
            address: r.address.clone(),
            port: r.port,
            weight: r.weight,
            zone: r.zone.clone(),
            ttl_seconds: r.ttl_seconds,
            identity: r.identity.clone(),
            service_port: r.service_port,
        })
    }
}
