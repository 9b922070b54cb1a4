//! Shoal's wire contract: the `shoal.v1` protobuf messages and gRPC services shared by the proxy and the control
//! plane.
//!
//! The `.proto` files in `proto/shoal/v1/` are the documented contract; this crate only compiles them (at build
//! time, with `protox`, so no `protoc` is needed) into prost messages and tonic clients and servers:
//!
//! - [`v1::discovery_server::Discovery`] / [`v1::discovery_client::DiscoveryClient`]: one bidirectional stream
//!   per proxy; on-demand subscriptions, incremental updates, ACK/NACK.
//! - [`v1::identity_server::Identity`] / [`v1::identity_client::IdentityClient`]: CSR + credential in, workload
//!   certificate out.
//! - [`v1::admin_server::Admin`] / [`v1::admin_client::AdminClient`]: operator API (resource CRUD with optimistic
//!   concurrency, registration heartbeats, proxy sync status, join tokens, CA rotation).
//!
//! Wire types stay wire types: the proxy and the control plane each convert them into their own domain types at
//! their edge (`TryFrom`), where validation lives. The one piece of meaning both sides must compute identically
//! lives here too: [`authority::authorities`], the `Host` / `:authority` values a service answers to, which the
//! proxy routes by and the control plane keeps unique across services.

/// Version 1 of the Shoal protocol (protobuf package `shoal.v1`), generated from `proto/shoal/v1/*.proto`.
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

pub mod authority;

pub mod filters;

/// Test cases both sides run: what a proxy rejects when pushed, the control plane refuses at `apply`.
#[cfg(feature = "test-util")]
pub mod checks;

#[cfg(test)]
mod tests {
    use super::v1::{
        DiscoveryResource, DiscoveryResponse, Endpoint, Endpoints, ResourceKey, ResourceType,
        discovery_resource::Payload,
    };
    use prost::Message;

    /// Fails if code generation breaks or changes the encoding of a discovery update.
    #[test]
    fn discovery_response_round_trips() {
        let response = DiscoveryResponse {
            version: "42".to_owned(),
            nonce: "n-1".to_owned(),
            resources: vec![DiscoveryResource {
                key: Some(ResourceKey {
                    r#type: ResourceType::Endpoints.into(),
                    name: "backend.default".to_owned(),
                }),
                version: "7".to_owned(),
                payload: Some(Payload::Endpoints(Endpoints {
                    service: "backend.default".to_owned(),
                    endpoints: vec![Endpoint {
                        address: "10.0.0.7".to_owned(),
                        port: 8080,
                        weight: 1,
                        zone: "zone-a".to_owned(),
                        identity: "spiffe://cluster.local/ns/default/sa/backend".to_owned(),
                        ready: true,
                        service_port: 0,
                    }],
                })),
            }],
            removed: vec![ResourceKey {
                r#type: ResourceType::Route.into(),
                name: "old.default".to_owned(),
            }],
        };

        let bytes = response.encode_to_vec();
        let decoded = DiscoveryResponse::decode(bytes.as_slice()).expect("decodes");

        assert_eq!(decoded, response);
        assert_eq!(
            decoded.removed[0].r#type(),
            ResourceType::Route,
            "enum getter maps the wire value back"
        );
    }
}
