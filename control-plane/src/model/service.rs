//! Services and their instances: `Service`, `Endpoint`, `Endpoints` and `EndpointRegistration`.

use std::net::IpAddr;
use std::time::Duration;

use super::ServiceRef;

/// A logical service: what clients call.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Name, unique within the namespace; equal to the resource's `metadata.name`.
    pub name: String,
    /// Namespace; equal to the resource's `metadata.namespace`.
    pub namespace: String,
    /// The ports the service exposes (at least one, distinct port numbers).
    pub ports: Vec<ServicePort>,
    /// Virtual IP addresses (a Kubernetes ClusterIP): connections to `address:port` go to this service.
    pub virtual_addresses: Vec<IpAddr>,
    /// Host names the service answers to, matched against `Host` / `:authority` in explicit mode.
    pub hosts: Vec<String>,
    /// Mutual TLS for ports that do not set their own; `None` means the mesh default, permissive.
    pub tls_mode: Option<TlsMode>,
}

impl Service {
    /// The service's qualified name.
    pub fn qualified(&self) -> ServiceRef {
        ServiceRef::new(&self.name, &self.namespace)
    }

    /// The port with this number, if the service exposes it.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// A port a service exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Optional name (`http`, `grpc-api`); empty when unnamed.
    pub name: String,
    /// The port clients connect to (never 0).
    pub port: u16,
    /// The port the endpoints listen on; `None` means the same as `port`.
    pub target_port: Option<u16>,
    /// What the port speaks, when known.
    pub protocol: Protocol,
    /// Mutual TLS for this port; `None` inherits the service's.
    pub tls_mode: Option<TlsMode>,
}

/// Mutual TLS on connections to a service's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Only mutually authenticated mesh connections are accepted.
    Strict,
    /// Mesh mTLS and plain text are both accepted.
    Permissive,
    /// No mesh TLS in either direction.
    Disabled,
}

/// A protocol hint for a port; saves the proxy protocol detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Unknown: the proxy detects the protocol on each connection.
    #[default]
    Detect,
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// Opaque TCP, never detected (server-speaks-first protocols).
    Opaque,
}

/// One instance of a service, as proxies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address, without port.
    pub address: IpAddr,
    /// The port to connect to.
    pub port: u16,
    /// Relative load-balancing weight (at least 1).
    pub weight: u32,
    /// Zone (failure domain); empty if unknown.
    pub zone: String,
    /// SPIFFE id the endpoint's proxy presents; `None` for an endpoint outside the mesh (plain text).
    pub identity: Option<String>,
    /// Whether the endpoint may receive new requests.
    pub ready: bool,
    /// The service port this endpoint serves; `None` means every port.
    pub service_port: Option<u16>,
}

/// The current instances of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The service.
    pub service: ServiceRef,
    /// All its endpoints, ready or not.
    pub endpoints: Vec<Endpoint>,
}

/// One instance registered through the admin API by a workload outside Kubernetes; registrations of a service
/// become its [`Endpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRegistration {
    /// The service this instance belongs to.
    pub service: ServiceRef,
    /// IP address, without port.
    pub address: IpAddr,
    /// The port to connect to (never 0).
    pub port: u16,
    /// Relative load-balancing weight (at least 1; the wire's 0 becomes 1).
    pub weight: u32,
    /// Zone (failure domain); empty if unknown.
    pub zone: String,
    /// The registration expires without a heartbeat for this long; `None` means it never expires.
    pub ttl: Option<Duration>,
    /// SPIFFE id the instance's proxy presents; `None` for an instance outside the mesh.
    pub identity: Option<String>,
    /// The service port this instance serves; `None` means every port.
    pub service_port: Option<u16>,
}

impl EndpointRegistration {
    /// The endpoint this registration contributes to its service's [`Endpoints`]. A registered instance is
    /// ready: it stops being an endpoint when its registration is deleted or expires.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.address,
            port: self.port,
            weight: self.weight,
            zone: self.zone.clone(),
            identity: self.identity.clone(),
            ready: true,
            service_port: self.service_port,
        }
    }
}
