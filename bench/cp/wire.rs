//! What a simulated proxy decodes of a `DiscoveryResponse`: nonce, keys, versions and the markers
//! (see `seed`), nothing else.
//!
//! These messages declare only the fields of `shoal.v1.DiscoveryResponse` the benchmark reads,
//! under the same field numbers; prost skips the others (endpoint addresses, zones, identities,
//! route matches) without allocating. A real proxy decodes everything, but the figures are the
//! control plane's: the simulated proxies share one core, and at 1,000 endpoint changes/s fully
//! decoding every `Endpoints` for 250 subscribers each made them, not the control plane, the
//! limit. The wire is unchanged (the `payload` oneof's members are plain fields on the wire).

use shoal_proto::v1;

/// `shoal.v1.DiscoveryResponse`, lightly.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// Quoted in the ACK.
    #[prost(string, tag = "2")]
    pub nonce: String,
    /// Added or changed resources.
    #[prost(message, repeated, tag = "3")]
    pub resources: Vec<Resource>,
    /// Removed (or absent) keys.
    #[prost(message, repeated, tag = "4")]
    pub removed: Vec<v1::ResourceKey>,
}

/// `shoal.v1.DiscoveryResource`: key, version and the two payloads that carry markers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    /// Type and name.
    #[prost(message, optional, tag = "1")]
    pub key: Option<v1::ResourceKey>,
    /// The control plane's version.
    #[prost(string, tag = "2")]
    pub version: String,
    /// `payload.endpoints`.
    #[prost(message, optional, tag = "11")]
    pub endpoints: Option<Endpoints>,
    /// `payload.route`.
    #[prost(message, optional, tag = "12")]
    pub route: Option<Route>,
}

/// `shoal.v1.Endpoints`: the weights.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Endpoints {
    /// Only `weight` of each endpoint.
    #[prost(message, repeated, tag = "2")]
    pub endpoints: Vec<Endpoint>,
}

/// `shoal.v1.Endpoint`: the port and the weight.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Endpoint {
    /// The Kubernetes mode's marker (see `kube`).
    #[prost(uint32, tag = "2")]
    pub port: u32,
    /// The churn marker (see `seed`).
    #[prost(uint32, tag = "3")]
    pub weight: u32,
}

/// `shoal.v1.Route`: the rules' timeouts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Route {
    /// Only `timeout_ms` of each rule.
    #[prost(message, repeated, tag = "2")]
    pub rules: Vec<RouteRule>,
}

/// `shoal.v1.RouteRule`: the timeout.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteRule {
    /// The push marker (see `seed`).
    #[prost(uint64, tag = "4")]
    pub timeout_ms: u64,
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use shoal_proto::v1::discovery_resource::Payload;

    use super::*;

    #[test]
    fn reads_what_the_full_message_carries() {
        let full = v1::DiscoveryResponse {
            version: String::new(),
            nonce: "7".into(),
            resources: vec![
                v1::DiscoveryResource {
                    key: Some(v1::ResourceKey {
                        r#type: v1::ResourceType::Endpoints as i32,
                        name: "svc-00001.bench".into(),
                    }),
                    version: "00000000000000ab".into(),
                    payload: Some(Payload::Endpoints(v1::Endpoints {
                        service: "svc-00001.bench".into(),
                        endpoints: vec![v1::Endpoint {
                            address: "10.0.0.1".into(),
                            port: 8080,
                            weight: 9,
                            ready: true,
                            ..Default::default()
                        }],
                    })),
                },
                v1::DiscoveryResource {
                    key: None,
                    version: String::new(),
                    payload: Some(Payload::Route(v1::Route {
                        parent_service: "svc-00000.bench".into(),
                        rules: vec![v1::RouteRule {
                            timeout_ms: 10_003,
                            ..Default::default()
                        }],
                    })),
                },
            ],
            removed: vec![v1::ResourceKey::default()],
        };
        let light = Response::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(light.nonce, "7");
        assert_eq!(light.resources[0].key, full.resources[0].key);
        assert_eq!(light.resources[0].version, "00000000000000ab");
        assert_eq!(
            light.resources[0].endpoints.as_ref().unwrap().endpoints[0].weight,
            9
        );
        assert_eq!(
            light.resources[0].endpoints.as_ref().unwrap().endpoints[0].port,
            8080
        );
        assert_eq!(
            light.resources[1].route.as_ref().unwrap().rules[0].timeout_ms,
            10_003
        );
        assert_eq!(light.removed.len(), 1);
    }
}
