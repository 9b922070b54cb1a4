//! Wire conversions for services, ports, endpoints and endpoint registrations.

use std::time::Duration;

use shoal_proto::v1;

use super::{by_value, each, enumeration, ip, nonzero, optional_port, port, service_ref, text};
use crate::model::validate::FieldError;
use crate::model::{
    Endpoint, EndpointRegistration, Endpoints, Protocol, Service, ServicePort, TlsMode,
};

impl TryFrom<v1::Service> for Service {
    type Error = FieldError;

    fn try_from(wire: v1::Service) -> Result<Self, FieldError> {
        Ok(Self {
            name: wire.name,
            namespace: wire.namespace,
            ports: each(wire.ports, "ports", ServicePort::try_from)?,
            virtual_addresses: each(wire.virtual_addresses, "virtual_addresses", |a| ip(&a, ""))?,
            hosts: wire.hosts,
            tls_mode: tls_mode(wire.tls_mode)?,
        })
    }
}

impl From<&Service> for v1::Service {
    fn from(service: &Service) -> Self {
        Self {
            name: service.name.clone(),
            namespace: service.namespace.clone(),
            ports: service.ports.iter().map(Into::into).collect(),
            virtual_addresses: service
                .virtual_addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            hosts: service.hosts.clone(),
            tls_mode: tls_mode_wire(service.tls_mode),
        }
    }
}

impl TryFrom<v1::ServicePort> for ServicePort {
    type Error = FieldError;

    fn try_from(wire: v1::ServicePort) -> Result<Self, FieldError> {
        let protocol = enumeration::<v1::Protocol>(wire.protocol, "protocol")?;
        Ok(Self {
            name: wire.name,
            port: port(wire.port, "port")?,
            target_port: optional_port(wire.target_port, "target_port")?,
            protocol: protocol.into(),
            tls_mode: tls_mode(wire.tls_mode)?,
        })
    }
}

impl From<&ServicePort> for v1::ServicePort {
    fn from(port: &ServicePort) -> Self {
        Self {
            name: port.name.clone(),
            port: port.port.into(),
            target_port: port.target_port.unwrap_or(0).into(),
            protocol: v1::Protocol::from(port.protocol).into(),
            tls_mode: tls_mode_wire(port.tls_mode),
        }
    }
}

impl From<v1::Protocol> for Protocol {
    fn from(wire: v1::Protocol) -> Self {
        match wire {
            v1::Protocol::Unspecified => Self::Detect,
            v1::Protocol::Http1 => Self::Http1,
            v1::Protocol::Http2 => Self::Http2,
            v1::Protocol::Grpc => Self::Grpc,
            v1::Protocol::Opaque => Self::Opaque,
        }
    }
}

impl From<Protocol> for v1::Protocol {
    fn from(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Detect => Self::Unspecified,
            Protocol::Http1 => Self::Http1,
            Protocol::Http2 => Self::Http2,
            Protocol::Grpc => Self::Grpc,
            Protocol::Opaque => Self::Opaque,
        }
    }
}

/// A wire TLS mode; unspecified is `None` (inherit).
fn tls_mode(wire: i32) -> Result<Option<TlsMode>, FieldError> {
    Ok(match enumeration::<v1::TlsMode>(wire, "tls_mode")? {
        v1::TlsMode::Unspecified => None,
        v1::TlsMode::Strict => Some(TlsMode::Strict),
        v1::TlsMode::Permissive => Some(TlsMode::Permissive),
        v1::TlsMode::Disabled => Some(TlsMode::Disabled),
    })
}

fn tls_mode_wire(mode: Option<TlsMode>) -> i32 {
    let wire = match mode {
        None => v1::TlsMode::Unspecified,
        Some(TlsMode::Strict) => v1::TlsMode::Strict,
        Some(TlsMode::Permissive) => v1::TlsMode::Permissive,
        Some(TlsMode::Disabled) => v1::TlsMode::Disabled,
    };
    wire.into()
}

impl TryFrom<v1::Endpoint> for Endpoint {
    type Error = FieldError;

    fn try_from(wire: v1::Endpoint) -> Result<Self, FieldError> {
        Ok(Self {
            address: ip(&wire.address, "address")?,
            port: port(wire.port, "port")?,
            // The wire's 0 is the default weight, 1.
            weight: wire.weight.max(1),
            zone: wire.zone,
            identity: text(wire.identity),
            ready: wire.ready,
            service_port: optional_port(wire.service_port, "service_port")?,
        })
    }
}

impl From<&Endpoint> for v1::Endpoint {
    fn from(endpoint: &Endpoint) -> Self {
        Self {
            address: endpoint.address.to_string(),
            port: endpoint.port.into(),
            weight: endpoint.weight,
            zone: endpoint.zone.clone(),
            identity: endpoint.identity.clone().unwrap_or_default(),
            ready: endpoint.ready,
            service_port: endpoint.service_port.unwrap_or(0).into(),
        }
    }
}

impl TryFrom<v1::Endpoints> for Endpoints {
    type Error = FieldError;

    fn try_from(wire: v1::Endpoints) -> Result<Self, FieldError> {
        Ok(Self {
            service: service_ref(&wire.service, None, "service")?,
            endpoints: each(wire.endpoints, "endpoints", Endpoint::try_from)?,
        })
    }
}

impl From<&Endpoints> for v1::Endpoints {
    fn from(endpoints: &Endpoints) -> Self {
        Self {
            service: endpoints.service.to_string(),
            endpoints: endpoints.endpoints.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<v1::EndpointRegistration> for EndpointRegistration {
    type Error = FieldError;

    /// Requires a qualified service name; the `v1::Resource` conversion also accepts a bare one.
    fn try_from(wire: v1::EndpointRegistration) -> Result<Self, FieldError> {
        registration(wire, None)
    }
}

/// An endpoint registration, with bare service names taken to be in `namespace` when it is given.
pub(super) fn registration(
    wire: v1::EndpointRegistration,
    namespace: Option<&str>,
) -> Result<EndpointRegistration, FieldError> {
    Ok(EndpointRegistration {
        service: service_ref(&wire.service, namespace, "service")?,
        address: ip(&wire.address, "address")?,
        port: port(wire.port, "port")?,
        weight: wire.weight.max(1),
        zone: wire.zone,
        ttl: nonzero(wire.ttl_seconds).map(Duration::from_secs),
        identity: text(wire.identity),
        service_port: optional_port(wire.service_port, "service_port")?,
    })
}

impl From<&EndpointRegistration> for v1::EndpointRegistration {
    fn from(registration: &EndpointRegistration) -> Self {
        Self {
            service: registration.service.to_string(),
            address: registration.address.to_string(),
            port: registration.port.into(),
            weight: registration.weight,
            zone: registration.zone.clone(),
            ttl_seconds: registration.ttl.map_or(0, |ttl| ttl.as_secs()),
            identity: registration.identity.clone().unwrap_or_default(),
            service_port: registration.service_port.unwrap_or(0).into(),
        }
    }
}

by_value!(
    Service => v1::Service,
    ServicePort => v1::ServicePort,
    Endpoint => v1::Endpoint,
    Endpoints => v1::Endpoints,
    EndpointRegistration => v1::EndpointRegistration,
);
